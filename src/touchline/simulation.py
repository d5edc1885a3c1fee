"""Replaying events through the real engine on a virtual clock.

A :class:`Simulation` owns a throw-away SQLite store with one workspace and
the journeys under test. Events (Segment-format dicts with a ``timestamp``)
are fed in time order; before each one, every timer due earlier fires at
its own due time, so "wait 1 hour, unless an order came first" plays out
exactly as it would live. Nothing is delivered: the messages journeys
record in the outbox are read back and reported.

The same class runs ``touchline simulate`` and ``touchline demo``; the demo
passes ``on_message`` to let synthetic customers react to what they get.
"""

from __future__ import annotations

import heapq
import itertools
import json
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from touchline.clock import utc
from touchline.errors import InputError
from touchline.ingest.segment import parse_payload
from touchline.journeys.loader import LoadedJourney
from touchline.store.db import make_engine, migrate, transaction
from touchline.store.ingest import ingest
from touchline.store.journeys import apply_journeys
from touchline.store.tables import journeys, outbox, profiles
from touchline.store.workspaces import create_workspace
from touchline.testing import FrozenClock
from touchline.worker.loop import Worker


@dataclass(frozen=True)
class SimulatedMessage:
    """A message a journey would send, as ``touchline simulate`` prints it."""

    at: str
    user_id: str | None
    journey: str
    step: str
    channel: str
    template: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


def event_time(raw: dict[str, Any]) -> datetime:
    """The ``timestamp`` of a raw event, which simulation requires."""
    stamp = raw.get("timestamp")
    if not isinstance(stamp, str):
        raise InputError("every simulated event needs a string `timestamp` (ISO-8601)")
    try:
        return utc(datetime.fromisoformat(stamp.replace("Z", "+00:00")))
    except ValueError:
        raise InputError(f"timestamp {stamp!r} is not ISO-8601") from None


class Simulation:
    """A throw-away store, the given journeys, and a virtual clock."""

    def __init__(
        self,
        journeys_: list[LoadedJourney],
        *,
        start: datetime,
        timezone: str = "UTC",
        workdir: Path | None = None,
    ) -> None:
        self._owned_dir = workdir is None
        self.workdir = (
            Path(tempfile.mkdtemp(prefix="touchline-sim-")) if workdir is None else workdir
        )
        self.engine: Engine = make_engine(
            f"sqlite:///{self.workdir / 'simulation.db'}", durable=False
        )
        migrate(self.engine)
        self.clock = FrozenClock(start)
        created = create_workspace(self.engine, "simulation", now=start, timezone=timezone)
        self.workspace_id = created.id
        with transaction(self.engine) as conn:
            apply_journeys(conn, self.workspace_id, journeys_, now=start)
        self.worker = Worker(
            self.engine, clock=self.clock, owner="simulation", batch=500, event_time_as_now=True
        )
        self._queue: list[tuple[datetime, int, dict[str, Any]]] = []
        self._seq = itertools.count()
        self._last_outbox_id = 0
        self.events_ingested = 0

    # -- feeding ----------------------------------------------------------------------

    def add(self, raw: dict[str, Any], *, at: datetime | None = None) -> None:
        """Queue a raw Segment event; ``at`` overrides (and rewrites) its timestamp."""
        if at is not None:
            raw = {**raw, "timestamp": utc(at).isoformat()}
        when = event_time(raw)
        heapq.heappush(self._queue, (when, next(self._seq), raw))

    def add_all(self, raws: Iterable[dict[str, Any]]) -> None:
        for raw in raws:
            self.add(raw)

    # -- running ----------------------------------------------------------------------

    def run(
        self,
        *,
        until: datetime | None = None,
        on_message: Callable[[SimulatedMessage, Simulation], None] | None = None,
        on_progress: Callable[[datetime], None] | None = None,
    ) -> Iterator[SimulatedMessage]:
        """Replay queued events in time order, then fire timers up to ``until``.

        Yields messages as they are recorded. ``on_message`` may queue new
        events (a customer reacting); they must not be earlier than the message.
        """
        while True:
            while self._queue and (until is None or self._queue[0][0] <= until):
                when = self._queue[0][0]
                yield from self._fire_timers_until(when, on_message)
                if self._queue[0][0] < when:
                    continue  # a reaction was queued before the event we were heading for
                when, _, raw = heapq.heappop(self._queue)
                self.clock.set(max(when, self.clock.now()))
                batch = [raw]
                while self._queue and self._queue[0][0] == when:
                    batch.append(heapq.heappop(self._queue)[2])
                self._ingest(batch)
                yield from self._drain(on_message)
                if on_progress:
                    on_progress(self.clock.now())
            if until is None:
                return
            yield from self._fire_timers_until(until, on_message)
            if not self._queue or self._queue[0][0] > until:
                return

    def _ingest(self, raws: list[dict[str, Any]]) -> None:
        now = self.clock.now()
        parsed = []
        for raw in raws:
            kind = raw.get("type", "track")
            parsed.extend(parse_payload(raw, kind=kind, received_at=now))
        ingest(self.engine, self.workspace_id, parsed, now=now)
        self.events_ingested += len(parsed)

    def _fire_timers_until(
        self, when: datetime, on_message: Callable[[SimulatedMessage, Simulation], None] | None
    ) -> Iterator[SimulatedMessage]:
        while True:
            due = self.worker.next_due()
            if due is None or due > when:
                return
            if self._queue and self._queue[0][0] < due:
                return  # a reaction event comes first
            self.clock.set(max(due, self.clock.now()))
            yield from self._drain(on_message)

    def _drain(
        self, on_message: Callable[[SimulatedMessage, Simulation], None] | None
    ) -> Iterator[SimulatedMessage]:
        while self.worker.run_once(self.clock.now()) > 0:
            continue
        for message in self._new_messages():
            if on_message:
                on_message(message, self)
            yield message

    def _new_messages(self) -> list[SimulatedMessage]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(
                    outbox.c.id,
                    outbox.c.created_at,
                    outbox.c.step_id,
                    outbox.c.channel,
                    outbox.c.template,
                    journeys.c.key,
                    profiles.c.user_id,
                )
                .join(journeys, journeys.c.id == outbox.c.journey_id)
                .join(profiles, profiles.c.id == outbox.c.profile_id)
                .where(outbox.c.id > self._last_outbox_id)
                .order_by(outbox.c.id)
            ).all()
        if rows:
            self._last_outbox_id = rows[-1].id
        return [
            SimulatedMessage(
                at=r.created_at.isoformat().replace("+00:00", "Z"),
                user_id=r.user_id,
                journey=r.key,
                step=r.step_id,
                channel=r.channel,
                template=r.template,
            )
            for r in rows
        ]

    def close(self) -> None:
        self.engine.dispose()
        if self._owned_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Simulation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_ndjson(lines: Iterable[str], *, source: str) -> list[dict[str, Any]]:
    """Parse one JSON object per line; blank lines are skipped; errors name the line."""
    out = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{source}:{number}: not JSON: {exc.msg}") from None
        if not isinstance(raw, dict):
            raise InputError(f"{source}:{number}: each line must be a JSON object")
        try:
            event_time(raw)
        except InputError as exc:
            raise InputError(f"{source}:{number}: {exc.message}") from None
        out.append(raw)
    return out
