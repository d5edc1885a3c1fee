"""Report counters kept current as things happen, so reports never scan raw rows.

Every fact a report shows — a customer entering a journey, a message sent,
delivered, opened, clicked, a conversion and its revenue — adds to one row of
``daily_stats`` keyed by (workspace, UTC day, journey, step, variant,
channel), in the same transaction that records the fact. A report then sums
a few hundred rows however many millions of messages lie behind them.

The increment is one ``INSERT ... ON CONFLICT DO UPDATE SET n = n + excluded.n``
(both SQLite and PostgreSQL have it), so concurrent writers add up without a
read-modify-write race. Journey-level facts (entries, goal conversions, the
holdout) use ``step_id = ""``, message facts their step, variant and channel;
workspace-level facts that belong to no journey use ``journey_id = 0``.

Revenue is kept with its sum of squares per group (treated and holdout), so
uplift intervals can be computed from the rollup alone (see
:mod:`touchline.measure.stats`).

Many facts of one batch land on one row (every entry into a journey bumps the
journey's row of the day), and an upsert holds that row's lock until the
transaction commits: two workers would take turns on it. A worker's batch
therefore collects its bumps in a :class:`RollupBuffer` (:func:`deferred`) and
writes them just before it commits, summed per row and in a fixed row order:
the lock is held for a moment, and two writers never wait on each other in a
cycle. A savepoint that rolls back drops the bumps made inside it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, bindparam, select
from sqlalchemy.dialects import postgresql, sqlite

from touchline.store.tables import daily_stats, outbox

#: Counters a fact may add to; anything else is a programming error.
COUNTERS = frozenset(
    {
        "entered",
        "holdout_entered",
        "sent",
        "delivered",
        "undelivered",
        "bounced",
        "complained",
        "failed",
        "skipped",
        "opened",
        "clicked",
        "machine_opened",
        "machine_clicked",
        "unsubscribed",
        "converted",
        "revenue",
        "revenue_sq",
        "holdout_converted",
        "holdout_revenue",
        "holdout_revenue_sq",
        "attributed",
        "attributed_revenue",
        "sms_parts",
        "sms_cost",
    }
)

_UPSERTS: dict[tuple[str, frozenset[str]], Any] = {}
#: Where a connection keeps its :class:`RollupBuffer` while one is open (``Connection.info``).
_BUFFER = "touchline.rollup_buffer"

Key = tuple[str, date, int, str, str, str]


class RollupBuffer:
    """Bumps made in one transaction, written together by :meth:`flush` before it commits."""

    def __init__(self) -> None:
        self._items: list[tuple[Key, dict[str, Any]]] = []

    def add(self, key: Key, values: dict[str, Any]) -> None:
        self._items.append((key, values))

    def mark(self) -> int:
        """A point to come back to when the savepoint opened now rolls back."""
        return len(self._items)

    def rollback_to(self, mark: int) -> None:
        del self._items[mark:]

    def flush(self, conn: Connection) -> int:
        """Write the bumps, one upsert per row in key order; returns the rows written."""
        summed: dict[Key, dict[str, Any]] = {}
        for key, values in self._items:
            row = summed.setdefault(key, {})
            for name, value in values.items():
                row[name] = row.get(name, 0) + value
        self._items.clear()
        for key in sorted(summed):
            _write(conn, key, summed[key])
        return len(summed)


@contextmanager
def deferred(conn: Connection) -> Iterator[RollupBuffer]:
    """Collect :func:`bump` calls on ``conn`` and write them when the block ends without error."""
    buffer = RollupBuffer()
    conn.info[_BUFFER] = buffer
    try:
        yield buffer
        buffer.flush(conn)
    finally:
        conn.info.pop(_BUFFER, None)


def bump(
    conn: Connection,
    *,
    workspace_id: str,
    at: datetime,
    journey_id: int | None = None,
    step_id: str | None = None,
    variant: str | None = None,
    channel: str | None = None,
    **counters: int | Decimal | float,
) -> None:
    """Add ``counters`` to the row of (workspace, day of ``at``, journey, step, variant, channel)."""
    unknown = set(counters) - COUNTERS
    if unknown:
        raise ValueError(f"unknown report counters {sorted(unknown)}")
    values = {name: _number(value) for name, value in counters.items() if value}
    if not values:
        return
    row: Key = (
        workspace_id,
        day_of(at),
        journey_id or 0,
        step_id or "",
        variant or "",
        channel or "",
    )
    buffer = conn.info.get(_BUFFER)
    if buffer is not None:
        buffer.add(row, values)
        return
    _write(conn, row, values)


def _write(conn: Connection, row: Key, values: dict[str, Any]) -> None:
    values = {name: value for name, value in values.items() if value}
    if not values:
        return
    key = (conn.dialect.name, frozenset(values))
    stmt = _UPSERTS.get(key)
    if stmt is None:
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        insert = dialect.insert(daily_stats)
        stmt = insert.on_conflict_do_update(
            index_elements=[
                "workspace_id",
                "day",
                "journey_id",
                "step_id",
                "variant",
                "channel",
            ],
            set_={name: daily_stats.c[name] + insert.excluded[name] for name in values},
        )
        _UPSERTS[key] = stmt
    workspace_id, day, journey_id, step_id, variant, channel = row
    conn.execute(
        stmt,
        {
            "workspace_id": workspace_id,
            "day": day,
            "journey_id": journey_id,
            "step_id": step_id,
            "variant": variant,
            "channel": channel,
            **values,
        },
    )


_MESSAGE_ROW = select(
    outbox.c.workspace_id,
    outbox.c.journey_id,
    outbox.c.step_id,
    outbox.c.variant,
    outbox.c.channel,
).where(outbox.c.id == bindparam("oid"))


def bump_message(conn: Connection, outbox_id: int, *, at: datetime, **counters: Any) -> None:
    """Add ``counters`` to the row of message ``outbox_id``'s journey, step, variant and channel."""
    row = conn.execute(_MESSAGE_ROW, {"oid": outbox_id}).first()
    if row is None:
        return
    bump(
        conn,
        workspace_id=row.workspace_id,
        at=at,
        journey_id=row.journey_id,
        step_id=row.step_id,
        variant=row.variant,
        channel=row.channel,
        **counters,
    )


def day_of(at: datetime) -> date:
    """The UTC calendar day a fact is counted on."""
    if at.tzinfo is None:
        raise ValueError("report times must be timezone-aware")
    return at.astimezone(UTC).date()


def conversion_counters(value: Decimal | None, *, holdout: bool) -> Mapping[str, Any]:
    """The counters one goal conversion adds: count, revenue and its square, by group."""
    revenue = value or Decimal(0)
    if holdout:
        return {
            "holdout_converted": 1,
            "holdout_revenue": revenue,
            "holdout_revenue_sq": revenue * revenue,
        }
    return {"converted": 1, "revenue": revenue, "revenue_sq": revenue * revenue}


def _number(value: int | Decimal | float) -> int | Decimal:
    if isinstance(value, float):
        return Decimal(str(value))
    return value


__all__ = [
    "COUNTERS",
    "RollupBuffer",
    "bump",
    "bump_message",
    "conversion_counters",
    "day_of",
    "deferred",
]
