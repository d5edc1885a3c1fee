"""One row of a customer file, checked and turned into identify traits (pure).

A customer file (CSV with a header, or JSON Lines) has one customer a row.
Known columns, matched case-insensitively after trimming:

* ``user_id`` (or ``anonymous_id``): who the row is; one of them is required.
* ``email``, ``phone``, ``first_name``, ``last_name``, ``timezone``,
  ``locale``, ``birthday``: the profile's columns. Unlike an ``identify``
  call, which keeps a value it cannot use as a custom trait, an import
  refuses the row: a file is fixed and loaded again, a live call is not.
* ``<channel>_consent`` for each consent channel (``email_consent``,
  ``sms_consent``, ...): ``yes``/``no``, ``true``/``false``, ``1``/``0``,
  ``y``/``n``, ``да``/``нет``; blank says nothing. Its provenance comes from
  ``<channel>_consent_source``, ``_consent_at`` and ``_consent_text``, else
  the row's ``consent_source``, ``consent_at`` and ``consent_text``.

Every other column becomes a custom trait under its header; a blank cell
sets nothing (an import never clears a value). CSV cells are text; JSON
Lines values keep their JSON types.

:func:`parse_row` checks every field and returns either a
:class:`CustomerRow` or the list of :class:`Rejection` values naming each
bad field, so a report shows all a row's problems at once. Reasons never
quote the refused value, so they hold no personal data.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import phonenumbers

from touchline.clock import utc
from touchline.ingest.segment import MAX_ID_LENGTH
from touchline.ingest.traits import (
    CONSENT_TRAIT,
    MAX_NAME_LENGTH,
    json_safe,
    normalize_email,
    normalize_locale,
    normalize_timezone,
)
from touchline.messaging.phone import DEFAULT_REGION
from touchline.store.consent import CONSENT_CHANNELS

#: The identity columns; a row needs one of them.
IDENTITY_COLUMNS = ("user_id", "anonymous_id")
#: Profile columns a row may set, as the header names them.
PROFILE_COLUMNS = (
    "email",
    "phone",
    "first_name",
    "last_name",
    "timezone",
    "locale",
    "birthday",
)
#: Provenance columns of consent; prefixed with ``<channel>_`` they apply to one channel.
CONSENT_DETAILS = ("consent_source", "consent_at", "consent_text")
#: Words meaning yes and no in a consent column (lower-cased).
YES = frozenset({"yes", "y", "true", "1", "да", "д"})
NO = frozenset({"no", "n", "false", "0", "нет", "н"})
#: Longest custom-trait header kept; the store's rejection field is this wide.
MAX_FIELD_LENGTH = 200

_DOTTED_DATE = re.compile(r"^(\d{1,2})\.(\d{1,2})\.(\d{4})$")
_SOURCE_MAX, _TEXT_MAX = 500, 200


@dataclass(frozen=True)
class Rejection:
    """Why one field of one row was refused."""

    line: int
    field: str
    reason: str


@dataclass(frozen=True)
class ConsentChoice:
    """What a row says about one channel's marketing consent, and where it came from."""

    channel: str
    granted: bool
    source: str | None
    at: datetime | None
    text_version: str | None


@dataclass(frozen=True)
class CustomerRow:
    """A row that passed every check: the identify call it becomes."""

    line: int
    user_id: str | None
    anonymous_id: str | None
    traits: dict[str, Any]
    consents: list[ConsentChoice] = field(default_factory=list)

    @property
    def addresses(self) -> dict[str, str]:
        """The row's email and phone, for the erased-address check."""
        return {k: str(self.traits[k]) for k in ("email", "phone") if self.traits.get(k)}


class Header:
    """A file's column names, matched to what they mean once per file."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = [str(n).strip() for n in names]
        self.keys = [n.casefold() for n in self.names]

    def problems(self) -> list[str]:
        """What makes the header unusable: duplicates, or no identity column."""
        found: list[str] = []
        seen: set[str] = set()
        for name, key in zip(self.names, self.keys, strict=True):
            if not key:
                found.append("a column has no name")
            elif key in seen:
                found.append(f"column {name!r} appears twice")
            seen.add(key)
        if not any(k in seen for k in IDENTITY_COLUMNS):
            found.append("a user_id (or anonymous_id) column is required")
        return found


def parse_row(
    line: int,
    raw: Mapping[str, Any],
    *,
    now: datetime,
    region: str = DEFAULT_REGION,
) -> CustomerRow | list[Rejection]:
    """Check one row (keys as in the file's header) and build its traits.

    ``now`` refuses birthdays and consent times in the future; ``region`` is
    where a phone written without ``+`` and a country code is assumed to be.
    """
    cells = {str(k).strip().casefold(): (str(k).strip(), v) for k, v in raw.items()}
    problems: list[Rejection] = []

    def reject(name: str, reason: str) -> None:
        problems.append(Rejection(line, name[:MAX_FIELD_LENGTH], reason))

    for key, (name, value) in cells.items():
        if isinstance(value, str) and not _storable(value):
            reject(name, "holds a NUL character or bytes that are not UTF-8")
            cells[key] = (name, None)

    ids: dict[str, str | None] = {}
    for key in IDENTITY_COLUMNS:
        value = _text(cells, key)
        if value is not None and not isinstance(value, str):
            reject(key, "must be text")
            value = None
        elif value is not None and len(value) > MAX_ID_LENGTH:
            reject(key, f"longer than {MAX_ID_LENGTH} characters")
            value = None
        ids[key] = value
    if (
        ids["user_id"] is None
        and ids["anonymous_id"] is None
        and not any(p.field in IDENTITY_COLUMNS for p in problems)
    ):
        reject("user_id", "required: every row needs a user_id or an anonymous_id")

    traits: dict[str, Any] = {}
    for key in PROFILE_COLUMNS:
        value = _text(cells, key)
        if value is None:
            continue
        checked, reason = _check_profile_field(key, value, now=now, region=region)
        if reason is not None:
            reject(key, reason)
        else:
            traits[key] = checked

    consents = _consents(cells, now=now, reject=reject)

    used = {*IDENTITY_COLUMNS, *PROFILE_COLUMNS, *CONSENT_DETAILS}
    used |= {f"{c}_consent" for c in CONSENT_CHANNELS}
    used |= {f"{c}_{d}" for c in CONSENT_CHANNELS for d in CONSENT_DETAILS}
    for key, (name, value) in cells.items():
        if key in used or _blank(value):
            continue
        if key == CONSENT_TRAIT:
            reject(name, "use <channel>_consent columns, e.g. email_consent")
            continue
        if len(name) > MAX_FIELD_LENGTH:
            reject(name, f"the column name is longer than {MAX_FIELD_LENGTH} characters")
            continue
        traits[name] = json_safe(value)

    if problems:
        return problems
    return CustomerRow(
        line=line,
        user_id=ids["user_id"],
        anonymous_id=ids["anonymous_id"],
        traits=traits,
        consents=consents,
    )


def parse_consent_value(value: Any) -> bool | None:
    """``True``/``False`` for a yes or no word (or a JSON boolean), ``None`` otherwise."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return {1: True, 0: False}.get(value)
    if isinstance(value, str):
        word = value.strip().casefold()
        if word in YES:
            return True
        if word in NO:
            return False
    return None


def parse_date(value: str) -> date | None:
    """``YYYY-MM-DD`` or ``DD.MM.YYYY`` (how Russian spreadsheets write dates), else ``None``."""
    text = value.strip()
    dotted = _DOTTED_DATE.match(text)
    try:
        if dotted:
            day, month, year = (int(part) for part in dotted.groups())
            return date(year, month, day)
        return date.fromisoformat(text) if len(text) == 10 else None
    except ValueError:
        return None


def parse_time(value: str) -> datetime | None:
    """An ISO-8601 date-time (a naive one is UTC) or a date (its UTC midnight), else ``None``."""
    text = value.strip().replace("Z", "+00:00")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        day = parse_date(text)
        if day is None:
            return None
        parsed = datetime(day.year, day.month, day.day)
    try:
        return utc(parsed)
    except (OverflowError, ValueError):
        return None


# -- fields ----------------------------------------------------------------------------


def _check_profile_field(
    key: str, value: Any, *, now: datetime, region: str
) -> tuple[Any, str | None]:
    """``(value for the identify traits, None)`` or ``(None, reason)``."""
    if key == "phone":
        return _phone(value, region)
    if not isinstance(value, str):
        return None, "must be text"
    if key == "email":
        email = normalize_email(value)
        return (email, None) if email else (None, "not an email address")
    if key in ("first_name", "last_name"):
        name = " ".join(value.split())
        if len(name) > MAX_NAME_LENGTH:
            return None, f"longer than {MAX_NAME_LENGTH} characters"
        return name, None
    if key == "timezone":
        zone = normalize_timezone(value.strip())
        return (zone, None) if zone else (None, "not an IANA time zone such as Europe/Moscow")
    if key == "locale":
        locale = normalize_locale(value)
        return (locale, None) if locale else (None, "not a locale tag such as ru-RU")
    day = parse_date(value)
    if day is None:
        return None, "not a date: write YYYY-MM-DD or DD.MM.YYYY"
    if day > now.date():
        return None, "is in the future"
    return day.isoformat(), None


def _phone(value: Any, region: str) -> tuple[str | None, str | None]:
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None, "must be text"
    try:
        number = phonenumbers.parse(str(value).strip(), region)
    except phonenumbers.NumberParseException:
        return None, "not a phone number"
    if not phonenumbers.is_valid_number(number):
        return None, f"not a valid phone number (numbers without + are read as {region})"
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164), None


def _consents(
    cells: Mapping[str, tuple[str, Any]], *, now: datetime, reject: Any
) -> list[ConsentChoice]:
    shared = _provenance(cells, "", now=now, reject=reject)
    choices: list[ConsentChoice] = []
    for channel in sorted(CONSENT_CHANNELS):
        column = f"{channel}_consent"
        _, value = cells.get(column, (column, None))
        if _blank(value):
            continue
        granted = parse_consent_value(value)
        if granted is None:
            reject(column, "not yes or no (also true/false, 1/0, да/нет)")
            continue
        own = _provenance(cells, f"{channel}_", now=now, reject=reject)
        choices.append(
            ConsentChoice(
                channel=channel,
                granted=granted,
                source=own[0] or shared[0],
                at=own[1] or shared[1],
                text_version=own[2] or shared[2],
            )
        )
    return choices


def _provenance(
    cells: Mapping[str, tuple[str, Any]], prefix: str, *, now: datetime, reject: Any
) -> tuple[str | None, datetime | None, str | None]:
    source = _text(cells, f"{prefix}consent_source")
    text = _text(cells, f"{prefix}consent_text")
    at: datetime | None = None
    raw_at = _text(cells, f"{prefix}consent_at")
    if raw_at is not None:
        at = parse_time(raw_at)
        if at is None:
            reject(
                f"{prefix}consent_at", "not an ISO-8601 date-time such as 2025-03-01T10:00:00+03:00"
            )
        elif at > now:
            reject(f"{prefix}consent_at", "is in the future")
            at = None
    return (
        source[:_SOURCE_MAX] if source else None,
        at,
        text[:_TEXT_MAX] if text else None,
    )


def _text(cells: Mapping[str, tuple[str, Any]], key: str) -> Any:
    """The cell's value with text trimmed; ``None`` when absent or blank."""
    _, value = cells.get(key, (key, None))
    if _blank(value):
        return None
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _storable(value: str) -> bool:
    """No NUL (PostgreSQL refuses it) and no undecodable bytes (surrogate escapes)."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


__all__ = [
    "CONSENT_DETAILS",
    "ConsentChoice",
    "CustomerRow",
    "Header",
    "IDENTITY_COLUMNS",
    "PROFILE_COLUMNS",
    "Rejection",
    "parse_consent_value",
    "parse_date",
    "parse_row",
    "parse_time",
]
