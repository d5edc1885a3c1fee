"""The worker loop: claim due events and timers, process them, repeat.

Workers are stateless; run any number of them against one store. ``run_once``
does one round and returns how much it did, so tests and simulations can
drive the loop turn by turn with a frozen clock.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Engine, case, func, select
from sqlalchemy.exc import DBAPIError, PendingRollbackError

from touchline.audience.alerts import fire_alerts
from touchline.audience.broadcast_runner import advance_broadcasts
from touchline.audience.segment_runtime import fire_segment_timers, next_segment_timer
from touchline.audience.time_triggers import TimeTriggers
from touchline.clock import Clock
from touchline.errors import StoreError
from touchline.measure.winners import evaluate_experiments
from touchline.store.db import transaction
from touchline.store.runtime import RunStats, Runtime, sweep_expired_listeners
from touchline.store.tables import EVENT_PENDING, events, timers
from touchline.worker.claims import claim_events, claim_timers, process_events, process_timers

if TYPE_CHECKING:
    from touchline.ops.metrics import Metrics

log = logging.getLogger("touchline.worker")

# How often (in clock time) a worker deletes listeners whose window has passed.
SWEEP_EVERY = timedelta(minutes=1)
# How often (in clock time) a worker judges split tests with `winner:`: rollups move
# slowly against a minute, and with no such test the check is one query.
EVALUATE_EVERY = timedelta(minutes=1)
# Longest pause between reconnection attempts while the store is unreachable.
MAX_RECONNECT_DELAY = 10.0


@dataclass
class WorkerTotals:
    events: int = 0
    timers: int = 0
    failed: int = 0
    stats: RunStats = field(default_factory=RunStats)


class Worker:
    """Claims and processes due work. Safe to run many at once on one store."""

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Clock,
        owner: str,
        batch: int = 200,
        lease_seconds: int = 60,
        poll_ms: int = 200,
        event_time_as_now: bool = False,
        metrics: Metrics | None = None,
    ) -> None:
        """``metrics``, when given, observes each fired timer's lateness, counts the
        items handled and the rounds lost to the store."""
        self.engine = engine
        self.clock = clock
        self.owner = owner
        self.batch = batch
        self.lease = timedelta(seconds=lease_seconds)
        self.poll = poll_ms / 1000
        self.event_time_as_now = event_time_as_now
        self.metrics = metrics
        self.runtime = Runtime()
        self.totals = WorkerTotals()
        self.time_triggers = TimeTriggers(engine, owner=owner, lease=self.lease, batch=batch)
        self._last_sweep: datetime | None = None
        self._last_evaluation: datetime | None = None

    def run_once(self, now: datetime | None = None) -> int:
        """One round: a batch of events, then a batch of due timers. Returns items processed."""
        now = now or self.clock.now()
        done = 0
        ids = claim_events(
            self.engine, owner=self.owner, now=now, lease=self.lease, limit=self.batch
        )
        if ids:
            result = process_events(
                self.engine,
                self.runtime,
                ids,
                owner=self.owner,
                now=now,
                event_time_as_now=self.event_time_as_now,
            )
            self.totals.events += result.processed
            self.totals.failed += result.failed
            self.totals.stats.add(result.stats)
            done += result.processed + result.failed
            if self.metrics is not None:
                self.metrics.count_items("event", processed=result.processed, failed=result.failed)
        ids = claim_timers(
            self.engine, owner=self.owner, now=now, lease=self.lease, limit=self.batch
        )
        if ids:
            result = process_timers(self.engine, self.runtime, ids, owner=self.owner, now=now)
            if self.metrics is not None:
                self.metrics.observe_lateness(result.lateness)
                self.metrics.count_items("timer", processed=result.processed, failed=result.failed)
            self.totals.timers += result.processed
            self.totals.failed += result.failed
            self.totals.stats.add(result.stats)
            done += result.processed + result.failed
        # Segment answers that flip with time ("no order for 30 days"), customer by customer.
        done += fire_segment_timers(
            self.engine, owner=self.owner, now=now, lease=self.lease, limit=self.batch
        )
        # Restocks and price drops the catalog recorded, a chunk of customers at a time.
        done += fire_alerts(self.engine, now=now)
        # Broadcasts due: start, snapshot, queue a few chunks, judge an A/B test.
        done += advance_broadcasts(self.engine, owner=self.owner, now=now, lease=self.lease)
        # Dates due (birthdays...), date backfills and schedule runs, a chunk at a time.
        done += self.time_triggers.run_once(now)
        if self._last_sweep is None or now - self._last_sweep >= SWEEP_EVERY:
            with transaction(self.engine) as conn:
                sweep_expired_listeners(conn, now=now)
            self._last_sweep = now
        if self._last_evaluation is None or now - self._last_evaluation >= EVALUATE_EVERY:
            with transaction(self.engine) as conn:
                decisions = evaluate_experiments(conn, now=now)
            if any(d.recorded for d in decisions):
                self.runtime.winners.forget()  # route this worker's next entries at once
            self._last_evaluation = now
        return done

    def next_due(self) -> datetime | None:
        """When the next piece of work becomes claimable, if any (for virtual clocks).

        That is the earliest timer, or the end of a lease or retry back-off on a
        timer or pending event, whichever comes first.
        """
        ready = case(
            (timers.c.lease_until > timers.c.due_at, timers.c.lease_until),
            else_=timers.c.due_at,
        )
        with self.engine.connect() as conn:
            due = conn.execute(select(func.min(ready))).scalar_one_or_none()
            retry = conn.execute(
                select(func.min(events.c.lease_until)).where(events.c.status == EVENT_PENDING)
            ).scalar_one_or_none()
            dated = self.time_triggers.next_due(conn)
            segment_due = next_segment_timer(conn)
        return min((t for t in (due, retry, dated, segment_due) if t is not None), default=None)

    def run(self, stop: threading.Event) -> None:
        """Loop until ``stop`` is set. Store outages are waited out, not fatal."""
        delay = self.poll
        while not stop.is_set():
            try:
                done = self.run_once()
                delay = self.poll
            except (StoreError, DBAPIError, PendingRollbackError) as exc:
                delay = min(max(delay * 2, 0.5), MAX_RECONNECT_DELAY)
                log.warning("store unavailable, retrying in %.1fs: %s", delay, exc)
                if self.metrics is not None:
                    self.metrics.count_outage("worker")
                done = 0
            if done == 0:
                stop.wait(delay)


def run_forever(worker: Worker) -> None:
    """Run ``worker`` in the foreground until interrupted."""
    stop = threading.Event()
    try:
        worker.run(stop)
    except KeyboardInterrupt:
        stop.set()
        time.sleep(0)
