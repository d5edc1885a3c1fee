"""Exporting customers, or a segment's members, as CSV with their consent state.

The columns are those :mod:`touchline.audience.customer_rows` imports, so an
exported file can be imported into another workspace as it is:
``user_id``, the profile columns, then for each consent channel asked for
``<channel>_consent`` (``yes``, ``no``, or empty when there is no counting
record — a grant awaiting double opt-in counts as none),
``<channel>_consent_at`` and ``<channel>_consent_source`` of the record
that decides it; then one column per custom trait asked for.

Profiles are read in pages of :data:`EXPORT_PAGE` by id (keyset
pagination), each page in a short read of its own, so an export of millions
holds no long transaction and little memory. Merged and erased profiles are
left out.

Cells a spreadsheet would take for a formula (``=``, ``+``, ``-``, ``@``)
are prefixed with ``'``, except phone numbers in E.164 form, so opening the
file never runs anything a customer typed.
"""

from __future__ import annotations

import csv
import json
import re
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, TextIO

from sqlalchemy import Engine, Select, select

from touchline.audience.customer_rows import CONSENT_DETAILS, PROFILE_COLUMNS
from touchline.errors import InputError, NotFound
from touchline.messaging.policies import MARKETING, ConsentRecord, consent_state
from touchline.store.consent import CONSENT_CHANNELS
from touchline.store.tables import consents, profiles, segment_members, segments

#: Profiles per page: one query for them and one for their consent rows.
EXPORT_PAGE = 1000
#: Consent channels exported unless others are asked for.
DEFAULT_CHANNELS = ("email", "sms")
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_E164 = re.compile(r"^\+\d{6,15}$")


@dataclass(frozen=True)
class ExportResult:
    """How many customers were written."""

    rows: int


def export_customers(
    engine: Engine,
    workspace_id: str,
    out: TextIO,
    *,
    channels: Sequence[str] = DEFAULT_CHANNELS,
    traits: Sequence[str] = (),
) -> ExportResult:
    """Write every live customer of the workspace to ``out`` as CSV."""
    query = select(profiles).where(profiles.c.workspace_id == workspace_id)
    return _export(engine, workspace_id, query, out, channels=channels, traits=traits)


def export_segment(
    engine: Engine,
    workspace_id: str,
    key: str,
    out: TextIO,
    *,
    channels: Sequence[str] = DEFAULT_CHANNELS,
    traits: Sequence[str] = (),
) -> ExportResult:
    """Write the current members of segment ``key`` to ``out`` as CSV.

    Raises :class:`NotFound` ``segment_unknown`` for a key the workspace lacks.
    """
    with engine.connect() as conn:
        segment_id = conn.execute(
            select(segments.c.id).where(
                segments.c.workspace_id == workspace_id, segments.c.key == key
            )
        ).scalar()
    if segment_id is None:
        raise NotFound(f"no segment {key!r} in this workspace", code="segment_unknown")
    query = (
        select(profiles)
        .join(segment_members, segment_members.c.profile_id == profiles.c.id)
        .where(
            segment_members.c.segment_id == segment_id,
            segment_members.c.workspace_id == workspace_id,
        )
    )
    return _export(engine, workspace_id, query, out, channels=channels, traits=traits)


def header(channels: Sequence[str], traits: Sequence[str]) -> list[str]:
    """The export's column names, in order."""
    _check(channels, traits)
    columns = ["user_id", *PROFILE_COLUMNS]
    for channel in channels:
        columns.extend([f"{channel}_consent", f"{channel}_consent_at", f"{channel}_consent_source"])
    return columns + list(traits)


def _check(channels: Sequence[str], traits: Sequence[str]) -> None:
    unknown = [c for c in channels if c not in CONSENT_CHANNELS]
    if unknown:
        raise InputError(
            f"channels: {', '.join(unknown)} take no consent; use any of {sorted(CONSENT_CHANNELS)}"
        )
    reserved = {"user_id", "anonymous_id", *PROFILE_COLUMNS, *CONSENT_DETAILS}
    reserved |= {f"{c}_{d}" for c in CONSENT_CHANNELS for d in ("consent", *CONSENT_DETAILS)}
    clash = [t for t in traits if t.strip().casefold() in reserved]
    if clash:
        raise InputError(f"traits: {', '.join(clash)} would clash with the export's own columns")


def _export(
    engine: Engine,
    workspace_id: str,
    query: Select[Any],
    out: TextIO,
    *,
    channels: Sequence[str],
    traits: Sequence[str],
) -> ExportResult:
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header(channels, traits))
    written = 0
    for page in _pages(engine, workspace_id, query):
        states = _consent_states(engine, workspace_id, [row.id for row in page], channels)
        for row in page:
            writer.writerow(
                [_cell(v) for v in _line(row, states.get(row.id, {}), channels, traits)]
            )
            written += 1
    return ExportResult(rows=written)


def _pages(engine: Engine, workspace_id: str, query: Select[Any]) -> Iterator[Sequence[Any]]:
    """The query's live profiles, a page at a time, by ascending id."""
    last = 0
    live = query.where(profiles.c.merged_into.is_(None), profiles.c.erased_at.is_(None))
    while True:
        with engine.connect() as conn:
            page = conn.execute(
                live.where(profiles.c.id > last).order_by(profiles.c.id).limit(EXPORT_PAGE)
            ).all()
        if not page:
            return
        yield page
        last = page[-1].id


def _consent_states(
    engine: Engine, workspace_id: str, ids: list[int], channels: Sequence[str]
) -> dict[int, dict[str, ConsentRecord | None]]:
    """``{profile: {channel: the record deciding consent, or None}}`` (granted or not)."""
    records: dict[int, list[ConsentRecord]] = defaultdict(list)
    if channels and ids:
        with engine.connect() as conn:
            for r in conn.execute(
                select(consents)
                .where(
                    consents.c.workspace_id == workspace_id,
                    consents.c.profile_id.in_(ids),
                    consents.c.channel.in_(list(channels)),
                    consents.c.topic.is_(None),
                )
                .order_by(consents.c.at, consents.c.id)
            ):
                records[r.profile_id].append(
                    ConsentRecord(
                        channel=r.channel,
                        purpose=r.purpose,
                        granted=r.granted,
                        at=r.at,
                        source=r.source,
                        confirmed=r.confirmed,
                    )
                )
    states: dict[int, dict[str, ConsentRecord | None]] = {}
    for pid, found in records.items():
        states[pid] = {}
        for channel in channels:
            _, record = consent_state(found, channel=channel, purpose=MARKETING)
            counts = record is not None and (record.confirmed or not record.granted)
            states[pid][channel] = record if counts else None
    return states


def _line(
    row: Any,
    states: dict[str, ConsentRecord | None],
    channels: Sequence[str],
    traits: Sequence[str],
) -> list[Any]:
    values: list[Any] = [row.user_id, *(getattr(row, c) for c in PROFILE_COLUMNS)]
    for channel in channels:
        record = states.get(channel)
        if record is None:
            values.extend(["", "", ""])
        else:
            values.extend(["yes" if record.granted else "no", record.at, record.source])
    custom = row.traits or {}
    values.extend(custom.get(name) for name in traits)
    return values


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, dict | list):
        value = json.dumps(value, ensure_ascii=False, sort_keys=True)
    text = str(value)
    if text.startswith(_FORMULA_STARTS) and not _E164.match(text):
        return "'" + text
    return text


__all__ = [
    "DEFAULT_CHANNELS",
    "EXPORT_PAGE",
    "ExportResult",
    "export_customers",
    "export_segment",
    "header",
]
