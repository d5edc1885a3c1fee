"""The journey engine: pure functions from (instance, input, now) to commands.

Nothing here touches a database, the network or the wall clock. The store
loads an instance, calls one of :func:`enter`, :func:`on_event` or
:func:`on_timer`, and applies the returned commands in one transaction. That
is what makes journeys testable with literal datetimes and lets
``touchline simulate`` replay history through the same code.

An instance runs steps until it has to wait (a duration, a local time, an
event) or ends. While it waits, the store keeps a timer and/or listeners for
it; when one fires, the engine is called again.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from touchline.journeys.conditions import compile_condition
from touchline.journeys.localtime import next_local_time, zone
from touchline.journeys.spec import EXIT, Category, EventMatch, JourneySpec, Reentry

# A turn that passes more steps than this without waiting is a loop in the
# journey (goto back without a wait); the instance is stopped, not the worker.
MAX_STEPS_PER_TURN = 200

ListenerKind = Literal["wait", "exit", "goal"]
TimerKind = Literal["resume", "timeout"]


# -- what the engine reads -------------------------------------------------------


@dataclass(frozen=True)
class EventView:
    """An event as journeys see it."""

    name: str
    properties: Mapping[str, Any]
    timestamp: datetime
    id: int | None = None
    type: str = "track"

    def scope(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "properties": dict(self.properties),
            "timestamp": self.timestamp,
        }


@dataclass
class ProfileView:
    """A customer as journeys see it. ``traits`` holds every trait, known or custom."""

    id: int
    user_id: str | None = None
    timezone: str | None = None
    traits: dict[str, Any] = field(default_factory=dict)
    #: Keys of the segments the customer is in: ``"vip" in profile.segments``.
    segments: frozenset[str] = frozenset()

    @property
    def key(self) -> str:
        """Stable identity for deterministic choices (splits, holdouts)."""
        return self.user_id if self.user_id else f"#{self.id}"

    def scope(self) -> dict[str, Any]:
        scope = dict(self.traits)
        scope["id"] = self.user_id
        scope["user_id"] = self.user_id
        scope["timezone"] = self.timezone
        scope["traits"] = self.traits
        scope["segments"] = sorted(self.segments)
        return scope


@dataclass
class InstanceState:
    """One customer's pass through one journey version."""

    id: int
    journey: str
    profile_id: int
    entered_at: datetime
    trigger: dict[str, Any]
    entry_key: str | None = None
    status: Literal["active", "completed", "exited"] = "active"
    step_id: str | None = None
    context: dict[str, Any] = field(default_factory=dict)
    visits: dict[str, int] = field(default_factory=dict)
    goal_reached_at: datetime | None = None
    exit_reason: str | None = None

    def to_state(self) -> dict[str, Any]:
        """The JSON-safe part the store keeps in ``instances.state``."""
        trigger = dict(self.trigger)
        if isinstance(trigger.get("timestamp"), datetime):
            trigger["timestamp"] = trigger["timestamp"].isoformat()
        return {"trigger": trigger, "context": self.context, "visits": self.visits}


@dataclass(frozen=True)
class EntryHistory:
    """What the store knows about the customer's earlier entries into this journey."""

    last_entered_at: datetime | None = None
    active: bool = False
    key_seen: bool = False


# -- what the engine returns -----------------------------------------------------


@dataclass(frozen=True)
class Send:
    step_id: str
    channel: str
    template: str
    purpose: str
    category: str
    idempotency_key: str
    variant: str | None
    when_capped: str
    cap_exempt: bool = False
    held_out: bool = False  # the customer is in the journey's control group: record, don't send


@dataclass(frozen=True)
class ScheduleTimer:
    step_id: str
    kind: TimerKind
    due_at: datetime


@dataclass(frozen=True)
class Listen:
    kind: ListenerKind
    event_name: str
    step_id: str | None
    match_value: str | None
    expires_at: datetime | None


@dataclass(frozen=True)
class ClearWait:
    """Drop the instance's current wait: its timers and ``wait`` listeners."""


@dataclass(frozen=True)
class StopListening:
    kind: ListenerKind


@dataclass(frozen=True)
class SetTraits:
    set: dict[str, Any]
    unset: tuple[str, ...] = ()


@dataclass(frozen=True)
class Log:
    step_id: str
    action: str
    detail: str | None = None


@dataclass(frozen=True)
class Convert:
    event_id: int | None
    event_name: str
    value: Decimal | None
    at: datetime


@dataclass(frozen=True)
class Unsubscribe:
    """Withdraw the customer's marketing consent for ``channel`` (or its ``topic``)."""

    step_id: str
    channel: str
    reason: str
    topic: str | None = None


@dataclass(frozen=True)
class End:
    """The instance is over: drop timers and listeners (a goal listener stays if open)."""

    status: Literal["completed", "exited"]
    reason: str
    keep_goal: bool


Command = (
    Send
    | ScheduleTimer
    | Listen
    | ClearWait
    | StopListening
    | SetTraits
    | Log
    | Convert
    | Unsubscribe
    | End
)


@dataclass
class Outcome:
    instance: InstanceState
    commands: list[Command]


@dataclass(frozen=True)
class EntryDecision:
    enter: bool
    reason: str
    entry_key: str | None


# -- entry ------------------------------------------------------------------------


def entry_key(spec: JourneySpec, event: EventView) -> str | None:
    """The value that names this entry (``entry.key`` read from the trigger), if any."""
    if not spec.entry.key:
        return None
    return _key_value(event.properties.get(spec.entry.key))


def decide_entry(
    spec: JourneySpec,
    *,
    profile: ProfileView,
    event: EventView,
    history: EntryHistory,
    now: datetime,
) -> EntryDecision:
    """Whether ``event`` puts the customer into the journey, and why not if it doesn't."""
    key = entry_key(spec, event)
    if spec.status != "active":
        return EntryDecision(False, "journey paused", key)
    if event.name != spec.trigger.event_name:
        return EntryDecision(False, "not the trigger event", key)
    if (
        spec.trigger.kind in ("date", "schedule")
        and event.properties.get("journey") != spec.journey
    ):
        # Date and schedule events name the journey they were stored for.
        return EntryDecision(False, "stored for another journey", key)
    if spec.trigger.kind == "segment" and event.properties.get("segment") != spec.trigger.segment:
        return EntryDecision(False, "another segment", key)
    if spec.trigger.where:
        scope = _scope(profile=profile, event=event, trigger=event.scope(), context={}, now=now)
        if not compile_condition(spec.trigger.where).test(scope):
            return EntryDecision(False, "trigger filter did not match", key)
    rule = spec.entry.reentry
    if rule is Reentry.once_per_key:
        if key is None:
            return EntryDecision(False, f"trigger has no {spec.entry.key!r} to key the entry", key)
        if history.key_seen:
            return EntryDecision(False, f"already entered for {spec.entry.key}={key}", key)
    elif rule is Reentry.never:
        if history.last_entered_at is not None:
            return EntryDecision(False, "re-entry is never allowed", key)
    elif rule is Reentry.not_within:
        if history.active:
            return EntryDecision(False, "already inside the journey", key)
        window = spec.entry.not_within or timedelta()
        if history.last_entered_at is not None and now - history.last_entered_at < window:
            return EntryDecision(False, "entered too recently", key)
    return EntryDecision(True, "entered", key)


def enter(
    spec: JourneySpec,
    instance: InstanceState,
    *,
    profile: ProfileView,
    event: EventView,
    now: datetime,
    workspace_timezone: str = "UTC",
    control_group: bool = False,
) -> Outcome:
    """Start a new instance (already decided by :func:`decide_entry`) and run it to its first wait.

    ``control_group`` says the customer is in the workspace-wide control group:
    a marketing journey then counts them on its holdout side, since they go
    through it and receive nothing, chosen by a hash independent of the journey's.
    """
    run = _Run(spec, instance, profile=profile, event=event, now=now, tz=workspace_timezone)
    if control_group and spec.category is not Category.transactional:
        run.instance.context["holdout"] = True
        run.instance.context["control_group"] = True
    elif spec.holdout and in_holdout(spec.journey, profile.key, spec.holdout):
        # Decided once, at entry: changing the percentage later moves no one already inside.
        run.instance.context["holdout"] = True
    for match in spec.exit_on:
        run.emit(Listen("exit", match.event, None, run.match_value(match), None))
    if spec.goal:
        run.emit(
            Listen(
                "goal",
                spec.goal.event,
                None,
                run.match_value(spec.goal),
                instance.entered_at + spec.goal.within,
            )
        )
    run.go(spec.steps[0].id)
    return run.outcome()


# -- later inputs -------------------------------------------------------------------


def on_event(
    spec: JourneySpec,
    instance: InstanceState,
    *,
    kind: ListenerKind,
    step_id: str | None,
    profile: ProfileView,
    event: EventView,
    now: datetime,
    workspace_timezone: str = "UTC",
) -> Outcome:
    """An event a listener of this instance was waiting for has arrived."""
    run = _Run(spec, instance, profile=profile, event=event, now=now, tz=workspace_timezone)
    inst = run.instance
    if kind == "goal":
        goal = spec.goal
        if goal is None or inst.goal_reached_at is not None:
            return run.outcome()
        if now > inst.entered_at + goal.within or not run.matches(goal):
            return run.outcome()
        inst.goal_reached_at = now
        run.emit(StopListening("goal"))
        run.emit(Convert(event.id, event.name, run.goal_value(), now))
        run.emit(Log(inst.step_id or "goal", "converted", event.name))
        if goal.exit and inst.status == "active":
            run.end("exited", f"goal reached: {event.name}")
        return run.outcome()
    if inst.status != "active":
        return run.outcome()
    if kind == "exit":
        for match in spec.exit_on:
            if match.event == event.name and run.matches(match):
                run.end("exited", f"exit event: {event.name}")
                break
        return run.outcome()
    # kind == "wait": only the step the instance is waiting at may be resumed.
    if step_id is None or inst.step_id != step_id:
        return run.outcome()
    step = spec.step(step_id)
    if step.wait_for is None or step.wait_for.event != event.name or not run.matches(step.wait_for):
        return run.outcome()
    run.emit(ClearWait())
    run.emit(Log(step_id, "event", event.name))
    run.go(step.wait_for.on_event or spec.next_after(step_id))
    return run.outcome()


def on_timer(
    spec: JourneySpec,
    instance: InstanceState,
    *,
    kind: TimerKind,
    step_id: str,
    profile: ProfileView,
    now: datetime,
    workspace_timezone: str = "UTC",
) -> Outcome:
    """A timer of this instance is due."""
    run = _Run(spec, instance, profile=profile, event=None, now=now, tz=workspace_timezone)
    inst = run.instance
    if inst.status != "active" or inst.step_id != step_id:
        return run.outcome()  # stale: the instance moved on
    step = spec.step(step_id)
    run.emit(ClearWait())
    if kind == "timeout" and step.wait_for is not None:
        run.emit(Log(step_id, "timeout"))
        run.go(step.wait_for.on_timeout or spec.next_after(step_id))
    else:
        run.go(spec.next_after(step_id))
    return run.outcome()


# -- the step runner ----------------------------------------------------------------


class _Run:
    """One turn of one instance: walks steps and collects commands."""

    def __init__(
        self,
        spec: JourneySpec,
        instance: InstanceState,
        *,
        profile: ProfileView,
        event: EventView | None,
        now: datetime,
        tz: str,
    ) -> None:
        self.spec = spec
        # Only these parts are ever changed; copying them keeps the inputs untouched.
        self.instance = dataclasses.replace(
            instance,
            trigger=dict(instance.trigger),
            context=copy.deepcopy(instance.context),
            visits=dict(instance.visits),
        )
        self.profile = dataclasses.replace(profile, traits=dict(profile.traits))
        self.event = event
        self.now = now
        self.tz = zone(profile.timezone, tz)
        self.commands: list[Command] = []

    def emit(self, command: Command) -> None:
        self.commands.append(command)

    def outcome(self) -> Outcome:
        return Outcome(self.instance, self.commands)

    def scope(self) -> dict[str, Any]:
        event = self.event.scope() if self.event else self.instance.trigger
        return _scope(
            profile=self.profile,
            event=event,
            trigger=self.instance.trigger,
            context=self.instance.context,
            now=self.now,
        )

    def match_value(self, match: EventMatch) -> str | None:
        if not match.match:
            return None
        return _key_value(self.instance.trigger.get("properties", {}).get(match.match))

    def matches(self, match: EventMatch) -> bool:
        assert self.event is not None
        if match.match:
            expected = self.match_value(match)
            got = _key_value(self.event.properties.get(match.match))
            if expected is None or got != expected:
                return False
        return not match.where or compile_condition(match.where).test(self.scope())

    def goal_value(self) -> Decimal | None:
        goal = self.spec.goal
        assert goal is not None and self.event is not None
        if goal.value:
            raw = compile_condition(goal.value).evaluate(self.scope())
        else:
            props = self.event.properties
            raw = next(
                (props[k] for k in ("revenue", "total", "value") if props.get(k) is not None), None
            )
        if raw is None or isinstance(raw, bool):
            return None
        try:
            value = Decimal(str(raw))
        except (InvalidOperation, ValueError):
            return None
        return value.quantize(Decimal("0.01")) if value.is_finite() else None

    def end(self, status: Literal["completed", "exited"], reason: str) -> None:
        inst = self.instance
        inst.status = status
        inst.exit_reason = reason
        goal_open = (
            self.spec.goal is not None
            and inst.goal_reached_at is None
            and self.now <= inst.entered_at + self.spec.goal.within
        )
        self.emit(Log(inst.step_id or "-", status, reason))
        self.emit(End(status, reason, keep_goal=goal_open))

    def go(self, target: str) -> None:
        """Run from step ``target`` until a wait or the end."""
        spec, inst = self.spec, self.instance
        passed = 0
        while True:
            if target == EXIT:
                self.end("completed", "reached the end")
                return
            passed += 1
            if passed > MAX_STEPS_PER_TURN:
                self.end("exited", f"stopped: more than {MAX_STEPS_PER_TURN} steps without a wait")
                return
            step = spec.step(target)
            inst.step_id = target
            visit = inst.visits.get(target, 0) + 1
            inst.visits[target] = visit
            self.emit(Log(target, "entered"))
            kind = step.kind
            if kind == "wait":
                assert step.wait is not None
                self.emit(ScheduleTimer(target, "resume", self.now + step.wait))
                return
            if kind == "wait_until":
                assert step.wait_until is not None
                due = next_local_time(
                    self.now, step.wait_until.time, tz=self.tz, weekdays=step.wait_until.weekdays
                )
                self.emit(ScheduleTimer(target, "resume", due))
                return
            if kind == "wait_for":
                wait = step.wait_for
                assert wait is not None
                expires = self.now + wait.timeout
                self.emit(Listen("wait", wait.event, target, self.match_value(wait), expires))
                self.emit(ScheduleTimer(target, "timeout", expires))
                return
            if kind == "branch":
                assert step.branch is not None
                scope = self.scope()
                chosen = next(
                    (c.goto for c in step.branch.cases if compile_condition(c.when).test(scope)),
                    None,
                )
                self.emit(Log(target, "branch", chosen or "otherwise"))
                target = chosen or step.branch.otherwise or spec.next_after(target)
                continue
            if kind == "split":
                assert step.split is not None
                variant = pick_variant(spec.journey, target, self.profile.key, step.split)
                inst.context.setdefault("variants", {})[target] = variant.name
                inst.context["variant"] = variant.name
                self.emit(Log(target, "variant", variant.name))
                target = variant.goto or spec.next_after(target)
                continue
            if kind == "send":
                self._send(target, visit)
                target = spec.next_after(target)
                continue
            if kind == "update_profile":
                self._update_profile(target)
                target = spec.next_after(target)
                continue
            if kind == "unsubscribe":
                # List hygiene, not a message: it applies to the holdout too.
                withdraw = step.unsubscribe
                assert withdraw is not None
                what = (
                    f"{withdraw.channel}/{withdraw.topic}" if withdraw.topic else withdraw.channel
                )
                self.emit(Unsubscribe(target, withdraw.channel, withdraw.reason, withdraw.topic))
                self.emit(Log(target, "unsubscribed", f"{what}: {withdraw.reason}"))
                target = spec.next_after(target)
                continue
            # kind == "exit"
            reason = step.exit if isinstance(step.exit, str) else f"exit step {target}"
            self.end("exited", reason)
            return

    def _send(self, step_id: str, visit: int) -> None:
        send = self.spec.step(step_id).send
        assert send is not None
        inst = self.instance
        purpose = send.purpose or (
            "transactional" if self.spec.category is Category.transactional else "marketing"
        )
        variant = inst.context.get("variant")
        self.emit(
            Send(
                step_id=step_id,
                channel=send.channel,
                template=send.template,
                purpose=purpose,
                category=self.spec.category.value,
                idempotency_key=f"{inst.id}:{step_id}:{visit}",
                variant=variant,
                when_capped=send.when_capped,
                cap_exempt=self.spec.cap_exempt,
                held_out=purpose == "marketing" and bool(inst.context.get("holdout")),
            )
        )

    def _update_profile(self, step_id: str) -> None:
        update = self.spec.step(step_id).update_profile
        assert update is not None
        values = dict(update.set)
        scope = self.scope()
        for name, source in update.compute.items():
            values[name] = _json_safe(compile_condition(source).evaluate(scope))
        for name, value in values.items():
            self.profile.traits[name] = value
            if name == "timezone" and isinstance(value, str):
                self.profile.timezone = value
                self.tz = zone(value, self.tz.key)
        for name in update.unset:
            self.profile.traits.pop(name, None)
        self.emit(SetTraits(values, tuple(update.unset)))


# -- helpers ------------------------------------------------------------------------


def in_holdout(journey: str, customer: str, percent: float) -> bool:
    """Whether a customer is in a journey's control group: the same answer every time."""
    digest = hashlib.sha256(f"{journey}\x1fholdout\x1f{customer}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100 < percent


def pick_variant(journey: str, step_id: str, customer: str, variants: list[Any]) -> Any:
    """The variant a customer gets at a split: the same every time for the same inputs."""
    digest = hashlib.sha256(f"{journey}\x1f{step_id}\x1f{customer}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64 * 100
    edge = 0.0
    for variant in variants:
        edge += variant.percent
        if point < edge:
            return variant
    return variants[-1]


def _key_value(value: Any) -> str | None:
    """Match keys compare as text, so an id sent once as 42 and once as "42" still matches."""
    if value is None or isinstance(value, (dict, list)):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value)
    return text[:200] if text else None


def _scope(
    *,
    profile: ProfileView,
    event: Mapping[str, Any] | EventView | None,
    trigger: Mapping[str, Any],
    context: Mapping[str, Any],
    now: datetime,
) -> dict[str, Any]:
    if isinstance(event, EventView):
        event = event.scope()
    return {
        "profile": profile.scope(),
        "event": event,
        "trigger": trigger,
        "context": context,
        "now": now,
    }


def _json_safe(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return float(value)
    return value
