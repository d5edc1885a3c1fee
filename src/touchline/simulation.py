"""Replaying events through the real engine on a virtual clock.

A :class:`Simulation` owns a throw-away SQLite store with one workspace and
the journeys under test. Events (Segment-format dicts with a ``timestamp``)
are fed in time order; before each one, every timer due earlier fires at
its own due time, so "wait 1 hour, unless an order came first" plays out
exactly as it would live. Nothing is delivered, but every message the
journeys record is judged by the same delivery rules the dispatcher applies
(consent, suppression, frequency caps, quiet hours in the customer's zone) at
the moment it was recorded. A message the rules defer is judged again when
the rule lets go, so ``at`` is when it would really go out; a message sent in
the future counts toward the caps of later ones, as it would live.

The same class runs ``touchline simulate`` and ``touchline demo``; the demo
passes ``on_message`` to let synthetic customers react to what they get.
"""

from __future__ import annotations

import heapq
import itertools
import json
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select, update

from touchline.audience.segments import LoadedSegment, build_segment, save_segments
from touchline.clock import utc
from touchline.errors import InputError
from touchline.ingest.segment import parse_payload
from touchline.journeys.loader import LoadedJourney
from touchline.measure.rollups import bump_message
from touchline.messaging.policies import Decision
from touchline.messaging.rules import PolicyCache, apply_verdict, judge, unreachable
from touchline.store.db import make_engine, migrate, transaction
from touchline.store.ingest import ingest
from touchline.store.journeys import apply_journeys
from touchline.store.tables import journeys, outbox, profiles, workspaces
from touchline.store.workspaces import create_workspace
from touchline.testing import FrozenClock
from touchline.worker.loop import Worker

#: A message deferred this many times in a row is reported skipped (a policy loop).
MAX_DEFERRALS = 16


@dataclass(frozen=True)
class SimulatedMessage:
    """A message a journey would send, as ``touchline simulate`` prints it."""

    at: str
    user_id: str | None
    journey: str
    step: str
    channel: str
    template: str
    outcome: str = "sent"  # sent | deferred | skipped
    reason: str = "ok"  # the rule that deferred or skipped it, e.g. quiet_hours

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
        settings: Mapping[str, Any] | None = None,
        segments: Sequence[LoadedSegment] = (),
    ) -> None:
        """``segments`` are stored and built (empty) before the first event, so
        membership moves with the replayed events and segment triggers fire."""
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
            save_segments(conn, self.workspace_id, segments, now=start)
            apply_journeys(conn, self.workspace_id, journeys_, now=start)
            if settings:
                conn.execute(
                    update(workspaces)
                    .where(workspaces.c.id == self.workspace_id)
                    .values(settings=dict(settings))
                )
        for item in segments:
            build_segment(self.engine, self.workspace_id, item.spec.segment, now=start)
        self.worker = Worker(
            self.engine, clock=self.clock, owner="simulation", batch=500, event_time_as_now=True
        )
        self._queue: list[tuple[datetime, int, dict[str, Any]]] = []
        self._seq = itertools.count()
        self._last_outbox_id = 0
        self.events_ingested = 0
        self.policies = PolicyCache(ttl=0.0)
        #: Messages by outcome; skips by the rule that stopped them, deferrals also by rule.
        self.outcomes: Counter[str] = Counter()

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
        out: list[SimulatedMessage] = []
        with transaction(self.engine) as conn:
            rows = conn.execute(
                select(outbox, journeys.c.key.label("journey_key"))
                .join(journeys, journeys.c.id == outbox.c.journey_id)
                .where(outbox.c.id > self._last_outbox_id)
                .order_by(outbox.c.id)
            ).all()
            for row in rows:
                profile = conn.execute(
                    select(profiles).where(profiles.c.id == row.profile_id)
                ).one()
                at, outcome, reason = self._judge(conn, row, profile)
                out.append(
                    SimulatedMessage(
                        at=at.isoformat().replace("+00:00", "Z"),
                        user_id=profile.user_id,
                        journey=row.journey_key,
                        step=row.step_id,
                        channel=row.channel,
                        template=row.template,
                        outcome=outcome,
                        reason=reason,
                    )
                )
                self.outcomes[outcome if outcome != "skipped" else reason] += 1
                if outcome == "deferred":
                    self.outcomes[f"deferred:{reason}"] += 1
        if rows:
            self._last_outbox_id = rows[-1].id
        return out

    def _judge(self, conn: Any, row: Any, profile: Any) -> tuple[datetime, str, str]:
        """Apply the delivery rules to one new message: (when it goes, outcome, reason)."""
        at, outcome, reason = self._verdict(conn, row, profile)
        # Simulated sends and skips feed the report rollups as real ones would (a holdout
        # message, skipped when recorded, is not counted live either).
        if row.status != "skipped":
            bump_message(conn, row.id, at=at, **{"skipped" if outcome == "skipped" else "sent": 1})
        return at, outcome, reason

    def _verdict(self, conn: Any, row: Any, profile: Any) -> tuple[datetime, str, str]:
        at = row.created_at
        if row.status == "skipped":  # decided when recorded: the journey's control group
            return at, "skipped", row.reason or "skipped"
        first_reason: str | None = None
        policy = self.policies.get(conn, row.workspace_id)
        for _ in range(MAX_DEFERRALS):
            skip = unreachable(row, profile)
            if skip is not None:
                decision = skip
            else:
                decision = judge(
                    conn, row, profile, journey_key=row.journey_key, policy=policy, now=at
                )
            if decision.outcome == "skip":
                apply_verdict(conn, row.id, decision, now=at, owner=None)
                return at, "skipped", decision.reason
            if decision.outcome == "send":
                conn.execute(
                    update(outbox)
                    .where(outbox.c.id == row.id)
                    .values(
                        status="sent", sent_at=at, reason="simulated", deferred_reason=first_reason
                    )
                )
                if first_reason is None:
                    return at, "sent", "ok"
                return at, "deferred", first_reason
            assert decision.not_before is not None
            first_reason = first_reason or decision.reason
            at = decision.not_before
        apply_verdict(conn, row.id, Decision("skip", "deferred_too_often"), now=at, owner=None)
        return at, "skipped", "deferred_too_often"

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
