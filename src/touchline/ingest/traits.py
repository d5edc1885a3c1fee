"""Normalising profile traits from ``identify`` calls (pure).

:func:`normalize_traits` splits a traits object into the profile's known
columns and a JSON-safe dict of custom traits:

* ``email``: trimmed and lower-cased; kept only if it looks like an address
  (one ``@``, a dot in the domain, no spaces, at most 254 characters).
* ``phone``: E.164 via ``phonenumbers``. The default region for numbers
  without ``+`` is the trait ``country`` (or ``address.country``) when it is
  a two-letter code, else the region of the context locale, else ``RU``.
  Numbers that do not parse or are not valid are kept raw (trimmed) with
  ``phone_valid=False``, so an operator can see and fix them.
* ``timezone``: must be an IANA name known to zoneinfo.
* ``locale``: ``ll``, ``ll-RR`` or ``ll-Ssss-RR`` (``_`` accepted), written
  canonically: ``ru_ru`` becomes ``ru-RU``.
* ``birthday``: ``YYYY-MM-DD``; a date-time string contributes its date part
  as written (not converted to UTC — a midnight in Moscow stays that day).
* ``firstName``/``first_name``, ``lastName``/``last_name``; when neither is
  given, ``name`` is split at the first space into first and last name
  (otherwise ``name`` stays a custom trait). Whitespace runs become one space.

A known field whose value is invalid is not set; it stays in the custom traits
under its own key, so nothing the client sent is lost. A known field that is
``null`` or blank is ignored: ``identify`` never clears a column.

The device's ``context.locale`` and ``context.timezone`` (analytics.js sends
both) are offered as :attr:`NormalizedTraits.fallbacks`: the store writes
them only into a profile that has no value yet, so an explicit trait always
wins over what the browser reported.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from functools import cache
from typing import Any
from zoneinfo import available_timezones

import phonenumbers

DEFAULT_PHONE_REGION = "RU"
# Column widths in the profiles table; longer values cannot be stored there.
MAX_NAME_LENGTH = 200
MAX_PHONE_LENGTH = 64
MAX_EMAIL_LENGTH = 254  # RFC 5321 path limit

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")
_LOCALE = re.compile(r"^([A-Za-z]{2,3})(?:[-_]([A-Za-z]{4}))?(?:[-_]([A-Za-z]{2}|[0-9]{3}))?$")
_DATE_PREFIX = re.compile(r"^(\d{4}-\d{2}-\d{2})(?:[T ].*)?$")
#: The identify trait that carries consent changes (see store.consent.consent_from_identify).
CONSENT_TRAIT = "consent"
_NAME_KEYS = ("firstName", "first_name", "lastName", "last_name", "name")


@dataclass(frozen=True)
class NormalizedTraits:
    """Known profile columns (``None`` = not given) plus custom traits."""

    email: str | None = None
    phone: str | None = None
    phone_valid: bool | None = None
    timezone: str | None = None
    locale: str | None = None
    birthday: date | None = None
    first_name: str | None = None
    last_name: str | None = None
    custom: dict[str, Any] = field(default_factory=dict)
    fallbacks: dict[str, Any] = field(default_factory=dict)

    def columns(self) -> dict[str, Any]:
        """The known columns that were given, ready for a profiles UPDATE."""
        values = {
            "email": self.email,
            "phone": self.phone,
            "timezone": self.timezone,
            "locale": self.locale,
            "birthday": self.birthday,
            "first_name": self.first_name,
            "last_name": self.last_name,
        }
        out: dict[str, Any] = {key: value for key, value in values.items() if value is not None}
        if self.phone is not None:
            out["phone_valid"] = self.phone_valid
        return out


def normalize_traits(
    traits: Mapping[str, Any], *, context: Mapping[str, Any] | None = None
) -> NormalizedTraits:
    """Split ``traits`` into known columns and custom traits (see module docstring).

    ``context`` is the message's Segment context; its ``locale`` picks the
    phone region and, with its ``timezone``, fills :attr:`fallbacks`.
    """
    custom: dict[str, Any] = {}
    known: dict[str, Any] = {}
    for key, value in traits.items():
        key = str(key)
        if key in _NAME_KEYS or key in ("email", "phone", "timezone", "locale", "birthday"):
            continue
        if key == CONSENT_TRAIT:  # goes to the consent ledger, not the profile
            continue
        custom[key] = json_safe(value)

    ctx = context or {}
    context_locale = normalize_locale(ctx.get("locale"))

    email = _blank_to_none(traits.get("email"))
    if email is not None:
        normalized = normalize_email(email)
        if normalized is None:
            custom["email"] = json_safe(email)
        else:
            known["email"] = normalized

    phone = _blank_to_none(traits.get("phone"))
    if phone is not None:
        region = _country(traits) or _region_of(context_locale) or DEFAULT_PHONE_REGION
        number, valid = normalize_phone(phone, region=region)
        if number is None:
            custom["phone"] = json_safe(phone)
        else:
            known["phone"], known["phone_valid"] = number, valid

    _known_or_custom(traits, "timezone", normalize_timezone, known, custom)
    _known_or_custom(traits, "locale", normalize_locale, known, custom)
    _known_or_custom(traits, "birthday", normalize_birthday, known, custom)
    known.update(_names(traits, custom))

    fallbacks: dict[str, Any] = {}
    if context_locale is not None:
        fallbacks["locale"] = context_locale
    context_timezone = normalize_timezone(ctx.get("timezone"))
    if context_timezone is not None:
        fallbacks["timezone"] = context_timezone
    return NormalizedTraits(**known, custom=custom, fallbacks=fallbacks)


def normalize_email(value: Any) -> str | None:
    """The address trimmed and lower-cased, or ``None`` if it is not one."""
    if not isinstance(value, str):
        return None
    email = value.strip().lower()
    if len(email) > MAX_EMAIL_LENGTH or not _EMAIL.match(email):
        return None
    return email


def normalize_phone(value: Any, *, region: str = DEFAULT_PHONE_REGION) -> tuple[str | None, bool]:
    """``(number, valid)``: E.164 and ``True``, or the raw text and ``False``.

    ``(None, False)`` when there is nothing storable (not text, blank, or
    longer than the phone column).
    """
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None, False
    raw = str(value).strip()
    if not raw or len(raw) > MAX_PHONE_LENGTH:
        return None, False
    try:
        parsed = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        return raw, False
    if not phonenumbers.is_valid_number(parsed):
        return raw, False
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164), True


def normalize_timezone(value: Any) -> str | None:
    """``value`` if it is an IANA time zone name zoneinfo knows, else ``None``."""
    if isinstance(value, str) and value in _timezones():
        return value
    return None


def normalize_locale(value: Any) -> str | None:
    """A canonical ``ll[-Ssss][-RR]`` tag, or ``None`` if ``value`` is not one."""
    if not isinstance(value, str):
        return None
    match = _LOCALE.match(value.strip())
    if match is None:
        return None
    language, script, region = match.groups()
    parts = [language.lower()]
    if script:
        parts.append(script.title())
    if region:
        parts.append(region.upper())
    return "-".join(parts)


def normalize_birthday(value: Any) -> date | None:
    """The date in ``value`` (``YYYY-MM-DD`` or a date-time string), else ``None``."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if not isinstance(value, str):
        return None
    match = _DATE_PREFIX.match(value.strip())
    if match is None:
        return None
    try:
        return date.fromisoformat(match.group(1))
    except ValueError:
        return None


def json_safe(value: Any) -> Any:
    """``value`` as plain JSON data: dates become ISO strings, NaN becomes null."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Decimal):
        return json_safe(float(value))
    if isinstance(value, Mapping):
        return {str(key): json_safe(child) for key, child in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(child) for child in value]
    if isinstance(value, date):  # datetime is a date too
        return value.isoformat()
    return str(value)


@cache
def _timezones() -> frozenset[str]:
    return frozenset(available_timezones())


def _blank_to_none(value: Any) -> Any:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return value


def _known_or_custom(
    traits: Mapping[str, Any],
    key: str,
    normalize: Any,
    known: dict[str, Any],
    custom: dict[str, Any],
) -> None:
    value = _blank_to_none(traits.get(key))
    if value is None:
        return
    normalized = normalize(value)
    if normalized is None:
        custom[key] = json_safe(value)
    else:
        known[key] = normalized


def _names(traits: Mapping[str, Any], custom: dict[str, Any]) -> dict[str, str]:
    """First and last name columns; values that are not names go to ``custom``."""
    names = {}
    for key in _NAME_KEYS:
        value = _blank_to_none(traits.get(key))
        if value is None:
            continue
        cleaned = _clean_name(value)
        if cleaned is None:
            custom[key] = json_safe(value)
        else:
            names[key] = cleaned
    first = names.get("firstName") or names.get("first_name")
    last = names.get("lastName") or names.get("last_name")
    full = names.get("name")
    if first is None and last is None and full is not None:
        first, _, rest = full.partition(" ")
        last = rest or None
    elif full is not None:
        custom["name"] = full
    out = {}
    if first is not None:
        out["first_name"] = first
    if last is not None:
        out["last_name"] = last
    return out


def _clean_name(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    text = " ".join(value.split())
    return text[:MAX_NAME_LENGTH] or None


def _country(traits: Mapping[str, Any]) -> str | None:
    candidates = [traits.get("country")]
    address = traits.get("address")
    if isinstance(address, Mapping):
        candidates.append(address.get("country"))
    for value in candidates:
        if isinstance(value, str) and len(value.strip()) == 2 and value.strip().isalpha():
            return value.strip().upper()
    return None


def _region_of(locale: str | None) -> str | None:
    if locale is None:
        return None
    last = locale.rsplit("-", 1)[-1]
    return last if len(last) == 2 and last.isupper() else None


__all__ = [
    "DEFAULT_PHONE_REGION",
    "NormalizedTraits",
    "json_safe",
    "normalize_birthday",
    "normalize_email",
    "normalize_locale",
    "normalize_phone",
    "normalize_timezone",
    "normalize_traits",
]
