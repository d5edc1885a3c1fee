"""Claiming due work with leases, and processing it exactly once.

A worker first *claims* a batch: one short transaction stamps
``lease_owner``/``lease_until`` on up to N due rows (PostgreSQL picks them with
``FOR UPDATE SKIP LOCKED`` inside ``UPDATE ... RETURNING``, so workers never
wait on each other; SQLite runs the same statement under ``BEGIN IMMEDIATE``,
one writer at a time). It then *processes* the batch in one transaction with
a savepoint per item. Each item's effects include a conditional write that
only succeeds while the lease is still ours (``DELETE timer ... WHERE
lease_owner = me``, ``UPDATE event SET status = done ... WHERE lease_owner =
me``): if a worker stalls past its lease and another takes the item, exactly
one of them commits. A worker that dies leaves its lease to expire, and the
rows are claimed again.

A failing item rolls back its savepoint only; the rest of the batch commits.
Its failure is recorded and it is retried with backoff, then parked as failed
— a poison event never stops a worker.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Table,
    and_,
    bindparam,
    delete,
    exists,
    or_,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError, PendingRollbackError

from touchline.audience.observers import observe_event
from touchline.measure.rollups import deferred as deferred_rollups
from touchline.store.db import transaction
from touchline.store.runtime import RunStats, Runtime
from touchline.store.tables import (
    EVENT_DONE,
    EVENT_FAILED,
    EVENT_PENDING,
    events,
    instances,
    listeners,
    timers,
)

log = logging.getLogger("touchline.worker")

# An item that failed this many times is parked as failed instead of retried.
MAX_ATTEMPTS = 5
# Retry delay after the n-th failure: BASE * 2**(n-1), capped.
RETRY_BASE = timedelta(seconds=5)
RETRY_CAP = timedelta(minutes=10)


@dataclass
class BatchResult:
    processed: int = 0
    skipped: int = 0
    failed: int = 0
    stats: RunStats = field(default_factory=RunStats)
    # Seconds each fired timer ran behind its due time (timers only).
    lateness: list[float] = field(default_factory=list)


def _claim(
    engine: Engine,
    table: Table,
    *,
    due: ColumnElement[bool],
    order: ColumnElement[Any],
    owner: str,
    now: datetime,
    lease: timedelta,
    limit: int,
) -> list[int]:
    t = table
    free = or_(t.c.lease_until.is_(None), t.c.lease_until <= now)
    pick = select(t.c.id).where(due, free).order_by(order).limit(limit)
    with transaction(engine) as conn:
        if conn.dialect.name == "postgresql":
            pick = pick.with_for_update(skip_locked=True)
        stmt = (
            update(t)
            .where(t.c.id.in_(pick.scalar_subquery()))
            .values(lease_owner=owner, lease_until=now + lease, attempts=t.c.attempts + 1)
            .returning(t.c.id)
        )
        return [row[0] for row in conn.execute(stmt)]


def claim_events(
    engine: Engine, *, owner: str, now: datetime, lease: timedelta, limit: int
) -> list[int]:
    """Lease up to ``limit`` pending events, oldest first."""
    return _claim(
        engine,
        events,
        due=events.c.status == EVENT_PENDING,
        order=events.c.id,
        owner=owner,
        now=now,
        lease=lease,
        limit=limit,
    )


def claim_timers(
    engine: Engine, *, owner: str, now: datetime, lease: timedelta, limit: int
) -> list[int]:
    """Lease up to ``limit`` timers due at or before ``now``, earliest first."""
    return _claim(
        engine,
        timers,
        due=timers.c.due_at <= now,
        order=timers.c.due_at,
        owner=owner,
        now=now,
        lease=lease,
        limit=limit,
    )


def store_lost(exc: BaseException) -> bool:
    """Whether ``exc`` means the connection to the store is gone (a restart, a network cut).

    Such a failure says nothing about the item being processed: it must end the
    batch, not be recorded against the item as a poison one.
    """
    if isinstance(exc, PendingRollbackError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def process_events(
    engine: Engine,
    runtime: Runtime,
    ids: list[int],
    *,
    owner: str,
    now: datetime,
    event_time_as_now: bool = False,
) -> BatchResult:
    """Run claimed events through the journeys, in arrival order per customer.

    ``event_time_as_now`` makes each event's own timestamp the engine's "now";
    simulation uses it to replay history on a virtual clock.
    """
    result = BatchResult()
    failures: list[tuple[int, str]] = []
    with transaction(engine) as conn, deferred_rollups(conn) as rollups:
        rows = conn.execute(
            select(events)
            .where(
                events.c.id.in_(ids),
                events.c.lease_owner == owner,
                events.c.status == EVENT_PENDING,
            )
            .order_by(events.c.profile_id, events.c.id)
        ).all()
        result.skipped += len(ids) - len(rows)
        for row in rows:
            earlier = conn.execute(
                select(
                    exists().where(
                        events.c.profile_id == row.profile_id,
                        events.c.status == EVENT_PENDING,
                        events.c.id < row.id,
                    )
                )
            ).scalar_one()
            if earlier:
                # Another worker holds an older event of this customer; keep order.
                conn.execute(
                    update(events)
                    .where(events.c.id == row.id, events.c.lease_owner == owner)
                    .values(lease_owner=None, lease_until=None, attempts=events.c.attempts - 1)
                )
                result.skipped += 1
                continue
            item_now = row.timestamp if event_time_as_now else now
            savepoint, mark = conn.begin_nested(), rollups.mark()
            try:
                observe_event(conn, row, now=item_now)
                stats = runtime.handle_event(conn, row, now=item_now)
                done = conn.execute(
                    update(events)
                    .where(events.c.id == row.id, events.c.lease_owner == owner)
                    .values(status=EVENT_DONE, lease_owner=None, lease_until=None, error=None)
                ).rowcount
                if done != 1:
                    savepoint.rollback()
                    rollups.rollback_to(mark)
                    result.skipped += 1
                    continue
                savepoint.commit()
                result.processed += 1
                result.stats.add(stats)
            except Exception as exc:  # noqa: BLE001 - one poison event must not stop the batch
                if store_lost(exc):
                    raise  # not the event's fault: the batch ends, its leases run out, it is retried
                savepoint.rollback()
                rollups.rollback_to(mark)
                log.warning("event %s failed: %s", row.id, exc, exc_info=True)
                failures.append((row.id, f"{type(exc).__name__}: {exc}"))
    if failures:
        _record_event_failures(engine, failures, owner=owner, now=now)
        result.failed += len(failures)
    return result


def _backoff(attempts: int) -> timedelta:
    return min(RETRY_BASE * 2 ** max(attempts - 1, 0), RETRY_CAP)


def _record_event_failures(
    engine: Engine, failures: list[tuple[int, str]], *, owner: str, now: datetime
) -> None:
    with transaction(engine) as conn:
        for event_id, error in failures:
            attempts = conn.execute(
                select(events.c.attempts).where(events.c.id == event_id)
            ).scalar_one()
            values: dict[str, object] = {"error": error[:2000], "lease_owner": None}
            if attempts >= MAX_ATTEMPTS:
                values.update(status=EVENT_FAILED, lease_until=None)
            else:
                values["lease_until"] = now + _backoff(attempts)
            conn.execute(
                update(events)
                .where(events.c.id == event_id, events.c.lease_owner == owner)
                .values(**values)
            )


_DELETE_LEASED_TIMER = delete(timers).where(
    timers.c.id == bindparam("tid"), timers.c.lease_owner == bindparam("owner")
)


def process_timers(
    engine: Engine, runtime: Runtime, ids: list[int], *, owner: str, now: datetime
) -> BatchResult:
    """Fire claimed timers. Each fires once: its row is deleted in the same savepoint."""
    result = BatchResult()
    failures: list[tuple[int, str]] = []
    with transaction(engine) as conn, deferred_rollups(conn) as rollups:
        rows = conn.execute(
            select(timers)
            .where(timers.c.id.in_(ids), timers.c.lease_owner == owner)
            .order_by(timers.c.profile_id, timers.c.due_at)
        ).all()
        result.skipped += len(ids) - len(rows)
        for row in rows:
            savepoint, mark = conn.begin_nested(), rollups.mark()
            try:
                gone = conn.execute(_DELETE_LEASED_TIMER, {"tid": row.id, "owner": owner}).rowcount
                if gone != 1:  # cleared by an event this batch, or the lease was lost
                    savepoint.rollback()
                    rollups.rollback_to(mark)
                    result.skipped += 1
                    continue
                stats = runtime.handle_timer(conn, row, now=now)
                savepoint.commit()
                result.processed += 1
                result.lateness.append((now - row.due_at).total_seconds())
                result.stats.add(stats)
            except Exception as exc:  # noqa: BLE001 - one broken instance must not stop the batch
                if store_lost(exc):
                    raise  # not the timer's fault: the batch ends, its leases run out, it is retried
                savepoint.rollback()
                rollups.rollback_to(mark)
                log.warning("timer %s failed: %s", row.id, exc, exc_info=True)
                failures.append((row.id, f"{type(exc).__name__}: {exc}"))
    if failures:
        _record_timer_failures(engine, failures, owner=owner, now=now)
        result.failed += len(failures)
    return result


def _record_timer_failures(
    engine: Engine, failures: list[tuple[int, str]], *, owner: str, now: datetime
) -> None:
    with transaction(engine) as conn:
        for timer_id, error in failures:
            row = conn.execute(
                select(timers.c.attempts, timers.c.instance_id).where(timers.c.id == timer_id)
            ).first()
            if row is None:
                continue
            if row.attempts >= MAX_ATTEMPTS:
                _fail_instance(conn, row.instance_id, error, now=now)
            else:
                conn.execute(
                    update(timers)
                    .where(timers.c.id == timer_id, timers.c.lease_owner == owner)
                    .values(lease_owner=None, lease_until=now + _backoff(row.attempts))
                )


def _fail_instance(conn: Connection, instance_id: int, error: str, *, now: datetime) -> None:
    """Park an instance whose steps keep failing; its reason stays for the operator."""
    conn.execute(delete(timers).where(timers.c.instance_id == instance_id))
    conn.execute(delete(listeners).where(listeners.c.instance_id == instance_id))
    conn.execute(
        update(instances)
        .where(and_(instances.c.id == instance_id, instances.c.status == "active"))
        .values(status="failed", exit_reason=error[:200], ended_at=now, updated_at=now)
    )
