"""Each customer's next date occurrence, kept in ``date_timers`` and fired once.

One row per (date-triggered journey, customer) holds the occurrence it waits
for (``occurrence``, ``due_at`` in UTC) and what became of the previous one
(``handled``, ``outcome``). Rows are (re)computed by :func:`refresh` — for a
chunk of customers when a journey is applied or new customers appear, and for
one customer when an ``identify`` may have changed their date or zone — and
fired by :func:`fire_due`, which a worker calls on rows it has leased.

Firing stores an ordinary ``track`` event (:data:`~touchline.journeys.spec.DATE_EVENT`)
whose ``messageId`` is derived from the journey, the customer and the
occurrence, with ``INSERT ... ON CONFLICT DO NOTHING``: a firing retried
after a crash, or raced by a second worker, stores nothing new. The journey
enters on that event like on any other; then the row moves on to the next
occurrence, in the same transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, Engine, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from touchline.audience.dates import (
    DATE_EVENT,
    Occurrence,
    date_message_id,
    date_properties,
    plan,
    settle,
    trait_date,
)
from touchline.journeys.localtime import zone
from touchline.journeys.spec import DateTrigger
from touchline.store.db import insert_ignore, transaction
from touchline.store.tables import (
    EVENT_PENDING,
    date_timers,
    events,
    journeys,
    profiles,
    workspaces,
)
from touchline.store.tables import time_triggers as jobs

log = logging.getLogger("touchline.dates")

# The profile columns a date is read from (plus what identifies and locates the customer).
PROFILE_COLUMNS = (
    profiles.c.id,
    profiles.c.workspace_id,
    profiles.c.user_id,
    profiles.c.timezone,
    profiles.c.birthday,
    profiles.c.created_at,
    profiles.c.traits,
    profiles.c.merged_into,
)


@dataclass(frozen=True)
class DateJourney:
    """A date-triggered journey as its timers need it."""

    journey_id: int
    workspace_id: str
    key: str
    rule: DateTrigger
    active: bool = True


@dataclass
class FireResult:
    """What one batch of due timers did."""

    fired: int = 0
    late: int = 0
    paused: int = 0
    moved: int = 0
    dropped: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)

    @property
    def handled(self) -> int:
        return self.fired + self.late + self.paused + self.moved + self.dropped


def workspace_zone(conn: Connection, workspace_id: str, cache: dict[str, str]) -> str:
    """The workspace's IANA zone name (cached by the caller for a batch)."""
    name = cache.get(workspace_id)
    if name is None:
        name = (
            conn.execute(
                select(workspaces.c.timezone).where(workspaces.c.id == workspace_id)
            ).scalar_one_or_none()
            or "UTC"
        )
        cache[workspace_id] = name
    return name


def date_journeys(conn: Connection, workspace_id: str) -> list[DateJourney]:
    """The workspace's journeys with a date trigger (one indexed read)."""
    rows = conn.execute(
        select(jobs.c.journey_id, jobs.c.rule, journeys.c.key, journeys.c.status)
        .join(journeys, journeys.c.id == jobs.c.journey_id)
        .where(jobs.c.workspace_id == workspace_id, jobs.c.kind == "date")
        .order_by(jobs.c.journey_id)
    ).all()
    return [
        DateJourney(
            r.journey_id,
            workspace_id,
            r.key,
            DateTrigger.model_validate(r.rule),
            active=r.status == "active",
        )
        for r in rows
    ]


# -- computing rows ---------------------------------------------------------------------


def refresh(
    conn: Connection,
    journey: DateJourney,
    people: Sequence[Any],
    *,
    now: datetime,
    zones: dict[str, str],
) -> int:
    """Bring the journey's timers of ``people`` (``profiles`` rows) in line with their data.

    A customer without the date gets no row (a row that recorded an earlier
    occurrence is kept, emptied, so it is never fired twice); a merged profile
    loses its row. An occurrence that went by unfired is recorded ``late``.
    Returns how many rows changed.
    """
    if not people:
        return 0
    existing = {
        r.profile_id: r
        for r in conn.execute(
            select(date_timers).where(
                date_timers.c.journey_id == journey.journey_id,
                date_timers.c.profile_id.in_([p.id for p in people]),
            )
        )
    }
    tz_default = workspace_zone(conn, journey.workspace_id, zones)
    changed = 0
    fresh: list[dict[str, Any]] = []
    for person in people:
        row = existing.get(person.id)
        if person.merged_into is not None:
            if row is not None:
                conn.execute(delete(date_timers).where(date_timers.c.id == row.id))
                changed += 1
            continue
        tz = zone(person.timezone, tz_default)
        value = trait_date(person, journey.rule.trait, tz)
        held = _held(row)
        passed, current = settle(
            journey.rule,
            value,
            tz=tz,
            handled=row.handled if row is not None else None,
            held=held,
            now=now,
        )
        values: dict[str, Any] = {
            "occurrence": current.anchor if current else None,
            "due_at": current.due_at if current else None,
        }
        if passed is not None:
            values.update(handled=passed, outcome="late", handled_at=now)
        if row is None:
            if current is not None:
                fresh.append(
                    {
                        "workspace_id": journey.workspace_id,
                        "journey_id": journey.journey_id,
                        "profile_id": person.id,
                        "occurrence": current.anchor,
                        "due_at": current.due_at,
                        "attempts": 0,
                    }
                )
        elif passed is not None or held != _held_of(current):
            conn.execute(
                update(date_timers)
                .where(date_timers.c.id == row.id)
                .values(attempts=0, error=None, **values)
            )
            changed += 1
    if fresh:
        # One statement for the chunk; a row another worker just made is left as it is.
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        conn.execute(
            dialect.insert(date_timers).on_conflict_do_nothing(
                index_elements=["journey_id", "profile_id"]
            ),
            fresh,
        )
        changed += len(fresh)
    return changed


def refresh_profile(conn: Connection, workspace_id: str, profile_id: int, *, now: datetime) -> int:
    """Recompute one customer's timers in every date-triggered journey of the workspace.

    For whatever changes a customer's dates or zone outside an ``identify``
    (an import, an erasure); the worker's observer calls it for each identify.
    """
    found = date_journeys(conn, workspace_id)
    if not found:
        return 0
    person = conn.execute(select(*PROFILE_COLUMNS).where(profiles.c.id == profile_id)).first()
    if person is None:
        return 0
    zones: dict[str, str] = {}
    return sum(refresh(conn, j, [person], now=now, zones=zones) for j in found)


def observe_identify(conn: Connection, row: Any, *, now: datetime) -> None:
    """Observer: an ``identify`` (or ``alias``) may change the customer's dates or zone."""
    if row.type in ("identify", "alias"):
        refresh_profile(conn, row.workspace_id, row.profile_id, now=now)


# -- firing ---------------------------------------------------------------------------------


def fire_due(
    engine: Engine,
    ids: Iterable[int],
    *,
    owner: str,
    now: datetime,
    rules: dict[int, DateJourney] | None = None,
) -> FireResult:
    """Fire leased timers that are due: one transaction, a savepoint per timer.

    Each timer's effects (the event, the row's next occurrence) commit only
    while the lease is still ours; a failing timer rolls back alone and is
    reported in ``failed`` for the caller to hold back.
    """
    result = FireResult()
    ids = list(ids)
    if not ids:
        return result
    zones: dict[str, str] = {}
    with transaction(engine) as conn:
        rows = conn.execute(
            select(date_timers)
            .where(date_timers.c.id.in_(ids), date_timers.c.lease_owner == owner)
            .order_by(date_timers.c.profile_id, date_timers.c.id)
        ).all()
        journeys_by_id = _journeys(conn, {r.journey_id for r in rows})
        people = {
            p.id: p
            for p in conn.execute(
                select(*PROFILE_COLUMNS).where(profiles.c.id.in_({r.profile_id for r in rows}))
            )
        }
        for row in rows:
            savepoint = conn.begin_nested()
            try:
                kind = _fire_one(
                    conn,
                    row,
                    journeys_by_id.get(row.journey_id),
                    people.get(row.profile_id),
                    owner=owner,
                    now=now,
                    zones=zones,
                )
                if kind is None:  # the lease went to another worker
                    savepoint.rollback()
                    continue
                savepoint.commit()
                setattr(result, kind, getattr(result, kind) + 1)
            except Exception as exc:  # noqa: BLE001 - one bad timer must not stop the batch
                savepoint.rollback()
                log.warning("date timer %s failed: %s", row.id, exc, exc_info=True)
                result.failed.append((row.id, f"{type(exc).__name__}: {exc}"))
    return result


def _fire_one(
    conn: Connection,
    row: Any,
    journey: DateJourney | None,
    person: Any,
    *,
    owner: str,
    now: datetime,
    zones: dict[str, str],
) -> str | None:
    """Settle one due timer; returns what happened (a FireResult counter), None if not ours."""
    mine = (date_timers.c.id == row.id, date_timers.c.lease_owner == owner)
    if journey is None or person is None or person.merged_into is not None:
        gone = conn.execute(delete(date_timers).where(*mine)).rowcount
        return "dropped" if gone == 1 else None
    tz = zone(person.timezone, workspace_zone(conn, journey.workspace_id, zones))
    value = trait_date(person, journey.rule.trait, tz)
    passed, current = settle(
        journey.rule, value, tz=tz, handled=row.handled, held=_held(row), now=now
    )
    values: dict[str, Any] = {}
    outcome = "moved"
    if current is not None and current.due_at <= now:
        assert value is not None  # an occurrence comes from a date
        # A paused journey's occurrence passes unfired: resuming it sends no old greetings.
        outcome = "fired" if journey.active else "paused"
        values.update(handled=current.anchor, outcome=outcome, handled_at=now)
        if journey.active:
            _store_event(conn, journey, person, value, current, now=now)
        current = plan(journey.rule, value, tz=tz, handled=current.anchor, now=now)
    elif passed is not None:
        outcome = "late"
        values.update(handled=passed, outcome=outcome, handled_at=now)
        log.info(
            "journey %s: %s of customer %s passed over, %s late",
            journey.key,
            passed,
            person.id,
            now - row.due_at,
        )
    values.update(
        occurrence=current.anchor if current else None,
        due_at=current.due_at if current else None,
        lease_owner=None,
        lease_until=None,
        attempts=0,
        error=None,
    )
    done = conn.execute(update(date_timers).where(*mine).values(**values)).rowcount
    return outcome if done == 1 else None


def _store_event(
    conn: Connection,
    journey: DateJourney,
    person: Any,
    value: date,
    found: Occurrence,
    *,
    now: datetime,
) -> bool:
    """Store the occurrence's event, once: its messageId names the journey, customer and date."""
    return (
        insert_ignore(
            conn,
            events,
            {
                "workspace_id": journey.workspace_id,
                "message_id": date_message_id(journey.key, person.id, found.anchor),
                "type": "track",
                "name": DATE_EVENT,
                "profile_id": person.id,
                "user_id": person.user_id,
                "anonymous_id": None,
                "properties": date_properties(
                    journey.rule, journey=journey.key, value=value, found=found
                ),
                "traits": None,
                "context": None,
                "timestamp": found.due_at,
                "received_at": now,
                "status": EVENT_PENDING,
                "attempts": 0,
            },
            key=["workspace_id", "message_id"],
        )
        > 0
    )


def _journeys(conn: Connection, ids: set[int]) -> dict[int, DateJourney]:
    if not ids:
        return {}
    rows = conn.execute(
        select(
            jobs.c.journey_id, jobs.c.workspace_id, jobs.c.rule, journeys.c.key, journeys.c.status
        )
        .join(journeys, journeys.c.id == jobs.c.journey_id)
        .where(jobs.c.journey_id.in_(ids), jobs.c.kind == "date")
    ).all()
    return {
        r.journey_id: DateJourney(
            r.journey_id,
            r.workspace_id,
            r.key,
            DateTrigger.model_validate(r.rule),
            active=r.status == "active",
        )
        for r in rows
    }


def _held(row: Any) -> tuple[date, datetime] | None:
    if row is None or row.occurrence is None or row.due_at is None:
        return None
    return (row.occurrence, row.due_at)


def _held_of(found: Occurrence | None) -> tuple[date, datetime] | None:
    return None if found is None else (found.anchor, found.due_at)
