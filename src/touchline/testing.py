"""Helpers for testing journeys: a frozen clock and a worker driven until idle.

Users test their own journeys with these the same way touchline's tests do::

    clock = FrozenClock(datetime(2026, 3, 1, 9, 0, tzinfo=UTC))
    worker = Worker(engine, clock=clock, owner="test")
    ingest(...)
    run_until_idle(worker, clock)                      # process what is due now
    run_until_idle(worker, clock, until=clock.now() + timedelta(days=3))
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from touchline.clock import utc
from touchline.ingest.segment import parse_payload
from touchline.store.ingest import ingest
from touchline.worker.loop import Worker


class FrozenClock:
    """A clock that moves only when told to."""

    def __init__(self, now: datetime) -> None:
        self._now = utc(now)

    def now(self) -> datetime:
        return self._now

    def set(self, when: datetime) -> None:
        when = utc(when)
        if when < self._now:
            raise ValueError("a FrozenClock does not go backwards")
        self._now = when

    def advance(self, delta: timedelta) -> datetime:
        self.set(self._now + delta)
        return self._now


def run_until_idle(
    worker: Worker,
    clock: FrozenClock,
    *,
    until: datetime | None = None,
    max_rounds: int = 1_000_000,
) -> int:
    """Process everything due now; with ``until``, also move the clock timer by timer up to it.

    The clock jumps straight to each next due timer, so three simulated days
    take as long as the work in them. Returns the number of items processed.
    """
    total = 0
    for _ in range(max_rounds):
        done = worker.run_once(clock.now())
        total += done
        if done:
            continue
        if until is None:
            return total
        due = worker.next_due()
        if due is None or due > until:
            if clock.now() >= until:
                return total
            clock.set(until)
            continue
        clock.set(max(due, clock.now()))
    raise RuntimeError(f"still busy after {max_rounds} rounds; is a journey looping?")


def send_events(
    engine: Engine, workspace_id: str, raws: list[dict[str, Any]], *, now: datetime
) -> int:
    """Ingest raw Segment-format events as if posted at ``now``; returns how many were new."""
    parsed = []
    for raw in raws:
        parsed.extend(parse_payload(raw, kind=raw.get("type", "track"), received_at=now))
    return ingest(engine, workspace_id, parsed, now=now).accepted


def track(
    user_id: str, event: str, properties: dict[str, Any] | None = None, **fields: Any
) -> dict[str, Any]:
    """A raw Segment ``track`` message, for tests: ``track("u1", "Order Completed", {...})``."""
    return {
        "type": "track",
        "userId": user_id,
        "event": event,
        "properties": properties or {},
        **fields,
    }


def identify(user_id: str, **traits: Any) -> dict[str, Any]:
    """A raw Segment ``identify`` message with ``traits``."""
    return {"type": "identify", "userId": user_id, "traits": traits}
