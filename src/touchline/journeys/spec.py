"""The journey file format as pydantic models.

A journey file is YAML; :mod:`touchline.journeys.loader` turns it into a
:class:`JourneySpec` and reports problems with file, line and field. The
models here check the shape of each part; :func:`semantic_problems` checks
what spans parts (step ids, goto targets, percentages, conditions).

The engine reads a :class:`JourneySpec` only; it never sees YAML.
"""

from __future__ import annotations

import re
from datetime import time, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from touchline.journeys.durations import format_duration, parse_duration, parse_time_of_day

EXIT = "exit"
"""The goto target that ends the journey."""

KEY_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    return parse_duration(value)


def _time(value: Any) -> time:
    if isinstance(value, time):
        return value
    return parse_time_of_day(value)


Duration = Annotated[timedelta, BeforeValidator(_duration)]
TimeOfDay = Annotated[time, BeforeValidator(_time)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Category(StrEnum):
    """The seeds' three kinds of trigger message; caps and consent differ by kind."""

    transactional = "transactional"
    engaging = "engaging"
    selling = "selling"


class Reentry(StrEnum):
    always = "always"  # every trigger enters, even while already inside
    never = "never"  # once per customer, ever
    not_within = "not_within"  # not if the customer entered within `not_within`
    once_per_key = "once_per_key"  # once per distinct entry key (e.g. cart_id)


DATE_EVENT = "Date Reached"
"""The event a date trigger stores for a customer whose date is due (see audience.dates)."""
SCHEDULE_EVENT = "Schedule Reached"
"""The event a schedule stores for each member of its audience (see audience.schedules)."""
TRAIT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_OFFSET_RE = re.compile(r"^([+-]?)(\d{1,3})([dw])$")
MAX_OFFSET_DAYS = 366
"""Furthest a date trigger may fire from its date: a year, so each occurrence is one year's."""
MAX_GRACE = timedelta(days=30)
"""Longest a date trigger may still fire late; shorter than a year so occurrences never blur."""


class DateTrigger(_Model):
    """A date the customer's profile holds, at a local time, optionally days before or after."""

    trait: str = Field(
        description="the date: birthday or created_at (profile columns), or a custom trait "
        "holding an ISO date or date-time, e.g. createdAt",
        json_schema_extra={"pattern": TRAIT_RE.pattern},
    )
    at: TimeOfDay = Field(description="local time of day in the customer's zone, e.g. 10:00")
    offset: str = Field(
        default="0d",
        description="days from the date: -3d is three days before, 7d a week after, "
        "also in weeks (2w); default the day itself",
        json_schema_extra={"pattern": _OFFSET_RE.pattern},
    )
    repeat: Literal["yearly", "once"] = Field(
        default="yearly",
        description="yearly: every anniversary (birthdays); once: the date itself "
        "(a week after sign-up)",
    )
    grace: Duration = Field(
        default=timedelta(days=1),
        description="how late an occurrence may still fire (a worker was down); older ones "
        "are skipped and recorded. Default 1d, at most 30d",
    )

    @field_validator("trait")
    @classmethod
    def _trait(cls, value: str) -> str:
        if not TRAIT_RE.match(value):
            raise ValueError(
                "trait must be a profile column (birthday, created_at) or a custom trait "
                "name: letters, digits and '_', at most 64"
            )
        return value

    @field_validator("offset", mode="before")
    @classmethod
    def _offset(cls, value: Any) -> Any:
        match = _OFFSET_RE.match(value) if isinstance(value, str) else None
        if match is None:
            raise ValueError(
                f"{value!r} is not a day offset; write days or weeks with an optional sign, "
                "e.g. -3d, 7d or 2w"
            )
        days = int(match.group(2)) * (7 if match.group(3) == "w" else 1)
        if days > MAX_OFFSET_DAYS:
            raise ValueError(f"offset {value!r} is more than {MAX_OFFSET_DAYS} days")
        return value

    @field_validator("grace")
    @classmethod
    def _grace(cls, value: timedelta) -> timedelta:
        if value > MAX_GRACE:
            raise ValueError(f"grace is at most {format_duration(MAX_GRACE)}")
        return value

    @property
    def offset_days(self) -> int:
        """The offset as signed days: -3 for -3d."""
        match = _OFFSET_RE.match(self.offset)
        assert match is not None
        days = int(match.group(2)) * (7 if match.group(3) == "w" else 1)
        return -days if match.group(1) == "-" else days


class ScheduleTrigger(_Model):
    """A cron schedule on the workspace's clock that enters an audience at each run."""

    cron: str = Field(
        description="five cron fields in the workspace's time zone, e.g. '0 10 * * MON' "
        "(Mondays at 10:00)",
    )
    audience: str = Field(
        description="who enters at each run: a segment key, or all for every customer",
    )

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        from touchline.audience.schedules import check_cron

        return check_cron(value)

    @field_validator("audience")
    @classmethod
    def _audience(cls, value: str) -> str:
        if not KEY_RE.match(value):
            raise ValueError("audience must be a segment key or all")
        return value


TRIGGER_KINDS = ("event", "date", "schedule", "segment")
SEGMENT_ENTERED = "Segment Entered"
"""The event stored when a customer enters a segment (see audience.segments)."""
SEGMENT_EXITED = "Segment Exited"
"""The event stored when a customer leaves a segment."""


class Trigger(_Model):
    event: str | None = Field(default=None, min_length=1, max_length=200)
    date: DateTrigger | None = Field(
        default=None,
        description="fire on a date of the customer's profile (a birthday, a sign-up date) "
        "at a local time",
    )
    schedule: ScheduleTrigger | None = Field(
        default=None, description="enter an audience on a cron schedule in the workspace's zone"
    )
    segment: str | None = Field(
        default=None,
        description="enter when the customer enters this segment (its key), or leaves it "
        "with on: exit",
        json_schema_extra={"pattern": KEY_RE.pattern},
    )
    on: Literal["enter", "exit"] | None = Field(
        default=None, description="with segment: enter (the default) or exit"
    )
    where: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Trigger:
        kinds = [k for k in TRIGGER_KINDS if getattr(self, k) is not None]
        if len(kinds) != 1:
            found = ", ".join(kinds) or "none"
            raise ValueError(
                f"a trigger needs exactly one of event, date, schedule or segment (found: {found})"
            )
        if self.on is not None and self.segment is None:
            raise ValueError("on: (enter or exit) goes with segment:")
        if self.segment is not None and not KEY_RE.match(self.segment):
            raise ValueError("segment must be a segment key: lowercase letters, digits, '-', '_'")
        return self

    @property
    def kind(self) -> Literal["event", "date", "schedule", "segment"]:
        if self.date is not None:
            return "date"
        if self.schedule is not None:
            return "schedule"
        if self.segment is not None:
            return "segment"
        return "event"

    @property
    def event_name(self) -> str:
        """The event that enters the journey: the trigger's own, or the one a date or
        schedule stores (stored on the journey row, so an index finds the journey)."""
        if self.date is not None:
            return DATE_EVENT
        if self.schedule is not None:
            return SCHEDULE_EVENT
        if self.segment is not None:
            return SEGMENT_EXITED if self.on == "exit" else SEGMENT_ENTERED
        assert self.event is not None
        return self.event


class Entry(_Model):
    reentry: Reentry = Reentry.not_within
    not_within: Duration | None = None
    key: str | None = Field(
        default=None, description="trigger property that names the entry, e.g. cart_id"
    )

    @model_validator(mode="after")
    def _rules(self) -> Entry:
        if self.reentry is Reentry.not_within and self.not_within is None:
            object.__setattr__(self, "not_within", timedelta(days=1))
        if self.reentry is Reentry.once_per_key and not self.key:
            raise ValueError(
                "reentry once_per_key needs `key`, the trigger property that names an entry"
            )
        return self


class EventMatch(_Model):
    """An event that matters to a running instance (exit, goal, awaited event)."""

    event: str = Field(min_length=1, max_length=200)
    match: str | None = Field(
        default=None, description="property that must equal the trigger's, e.g. cart_id"
    )
    where: str | None = None


class Goal(EventMatch):
    within: Duration = timedelta(days=7)
    value: str | None = Field(default=None, description="expression for the conversion's value")
    exit: bool = True


class WaitUntil(_Model):
    time: TimeOfDay
    weekdays: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] | None = None

    @field_validator("weekdays")
    @classmethod
    def _non_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("weekdays must list at least one day, or be left out")
        return value


class WaitFor(EventMatch):
    timeout: Duration
    on_event: str | None = None
    on_timeout: str | None = None


class BranchCase(_Model):
    when: str
    goto: str


class Branch(_Model):
    cases: list[BranchCase] = Field(min_length=1)
    otherwise: str | None = None


class Variant(_Model):
    name: str = Field(min_length=1, max_length=64)
    percent: float = Field(gt=0, le=100)
    goto: str | None = None


WINNER_MIN_SAMPLE = 100
"""Fewest customers (or messages) per variant an automatic winner may rest on: the
decision is final, and below this the tests' approximations are too rough to trust."""


class Winner(_Model):
    """When a split names its best variant by itself, and on what figures.

    Once every variant has min_sample and one beats each other significantly at
    confidence, that winner is recorded for good and every new customer reaching
    the split gets it (touchline.measure.winners).
    """

    metric: Literal["conversion", "click", "revenue"] = Field(
        default="conversion",
        description="conversion (the goal, per entry), click (clicks per message sent after "
        "the split) or revenue (goal value per entry)",
    )
    min_sample: int = Field(
        ge=WINNER_MIN_SAMPLE,
        le=100_000_000,
        description="entries (messages for click) each variant needs before a winner is named",
    )
    confidence: float = Field(
        default=0.95, ge=0.8, le=0.999, description="confidence level of the test, e.g. 0.95"
    )

    @field_validator("confidence", mode="before")
    @classmethod
    def _fraction(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool) and 1 < value <= 100:
            raise ValueError(f"confidence is a fraction such as 0.95, not a percentage ({value:g})")
        return value


class Send(_Model):
    channel: str = Field(min_length=1, max_length=64)
    template: str = Field(min_length=1, max_length=200)
    purpose: Literal["marketing", "transactional"] | None = None
    when_capped: Literal["skip", "defer"] = "skip"


class UpdateProfile(_Model):
    set: dict[str, Any] = Field(default_factory=dict)
    compute: dict[str, str] = Field(default_factory=dict)
    unset: list[str] = Field(default_factory=list)


class Unsubscribe(_Model):
    """Withdraw the customer's marketing consent for a channel (or one topic of it)."""

    channel: Literal["email", "sms", "telegram", "push", "whatsapp", "viber", "call"] = Field(
        description="the channel to unsubscribe the customer from, e.g. email"
    )
    reason: str = Field(
        default="journey",
        min_length=1,
        max_length=100,
        description="why, kept in the consent ledger, e.g. inactive",
    )
    topic: Literal["engaging", "selling"] | None = Field(
        default=None,
        description="only this topic of the channel; left out, the whole channel "
        "(which also suppresses the address)",
    )


STEP_KINDS = (
    "wait",
    "wait_until",
    "wait_for",
    "branch",
    "split",
    "send",
    "update_profile",
    "unsubscribe",
    "exit",
)


class Step(_Model):
    """One step; exactly one of the kind fields is set."""

    id: str = ""
    next: str | None = None
    wait: Duration | None = None
    wait_until: WaitUntil | None = None
    wait_for: WaitFor | None = None
    branch: Branch | None = None
    split: list[Variant] | None = None
    send: Send | None = None
    update_profile: UpdateProfile | None = None
    unsubscribe: Unsubscribe | None = Field(
        default=None,
        description="Record a consent withdrawal in the ledger (list hygiene, e.g. after a "
        "reactivation series went unanswered).",
    )
    exit: Literal[True] | str | None = None
    winner: Winner | None = Field(
        default=None,
        description="with split: name the best variant once the figures allow, then send "
        "every new customer to it",
    )

    @model_validator(mode="after")
    def _one_kind(self) -> Step:
        kinds = [k for k in STEP_KINDS if getattr(self, k) is not None]
        if len(kinds) != 1:
            found = ", ".join(kinds) or "none"
            raise ValueError(
                f"a step needs exactly one of {', '.join(STEP_KINDS)} (found: {found})"
            )
        return self

    @property
    def kind(self) -> str:
        for k in STEP_KINDS:
            if getattr(self, k) is not None:
                return k
        raise AssertionError("validated step without a kind")


class JourneySpec(_Model):
    journey: str = Field(description="stable key of the journey, e.g. abandoned-cart")
    name: str | None = None
    description: str | None = None
    category: Category = Category.engaging
    status: Literal["active", "paused"] = "active"
    holdout: float = Field(
        default=0,
        ge=0,
        le=50,
        description=(
            "percent of customers (chosen by a stable hash of journey and customer) who go "
            "through the journey but receive nothing: the control group that uplift is measured on"
        ),
    )
    cap_exempt: bool = Field(
        default=False,
        description="marketing sends of this journey ignore the workspace's frequency caps",
    )
    trigger: Trigger
    entry: Entry = Field(default_factory=Entry)
    exit_on: list[EventMatch] = Field(default_factory=list)
    goal: Goal | None = None
    steps: list[Step] = Field(min_length=1)

    @field_validator("journey")
    @classmethod
    def _key(cls, value: str) -> str:
        if not KEY_RE.match(value):
            raise ValueError(
                "journey key must be 1-64 characters of lowercase letters, digits, '-' or '_'"
            )
        return value

    @model_validator(mode="after")
    def _step_ids(self) -> JourneySpec:
        for index, step in enumerate(self.steps):
            if not step.id:
                object.__setattr__(step, "id", f"step-{index + 1}")
        return self

    # -- navigation used by the engine -------------------------------------------

    def step(self, step_id: str) -> Step:
        return self._index()[step_id][1]

    def next_after(self, step_id: str) -> str:
        """Where a step goes when it names no target: its `next`, else the following step."""
        index, step = self._index()[step_id]
        if step.next:
            return step.next
        if index + 1 < len(self.steps):
            return self.steps[index + 1].id
        return EXIT

    def _index(self) -> dict[str, tuple[int, Step]]:
        cached = self.__dict__.get("_step_index")
        if cached is None:
            cached = {s.id: (i, s) for i, s in enumerate(self.steps)}
            self.__dict__["_step_index"] = cached
        return cached

    def listened_events(self) -> set[str]:
        """Every event name an instance of this journey may wait for."""
        names = {m.event for m in self.exit_on}
        if self.goal:
            names.add(self.goal.event)
        names.update(s.wait_for.event for s in self.steps if s.wait_for)
        return names


def semantic_problems(spec: JourneySpec) -> list[tuple[tuple[str | int, ...], str]]:
    """Problems the field validators cannot see: ids, targets, splits, conditions.

    Returns ``(location, message)`` pairs; the location is a path into the
    YAML document such as ``("steps", 2, "branch", "cases", 0, "when")``.
    """
    from touchline.errors import ConditionError
    from touchline.journeys.conditions import compile_condition

    problems: list[tuple[tuple[str | int, ...], str]] = []
    ids: dict[str, int] = {}
    for index, step in enumerate(spec.steps):
        if step.id == EXIT:
            problems.append((("steps", index, "id"), "'exit' is reserved; choose another step id"))
        elif not KEY_RE.match(step.id):
            problems.append(
                (("steps", index, "id"), "step id must be lowercase letters, digits, '-' or '_'")
            )
        if step.id in ids:
            problems.append(
                (
                    ("steps", index, "id"),
                    f"step id {step.id!r} is used twice (also step {ids[step.id] + 1})",
                )
            )
        ids.setdefault(step.id, index)

    def target(loc: tuple[str | int, ...], value: str | None) -> None:
        if value is not None and value != EXIT and value not in ids:
            known = ", ".join(sorted(ids)) or "none"
            problems.append((loc, f"no step with id {value!r} (steps: {known}, or 'exit')"))

    def condition(loc: tuple[str | int, ...], source: str | None) -> None:
        if source is None:
            return
        try:
            compile_condition(source)
        except ConditionError as exc:
            col = f" (column {exc.column})" if exc.column else ""
            problems.append((loc, f"{exc.message}{col}"))

    if spec.entry.reentry is Reentry.once_per_key and not spec.entry.key:
        problems.append(
            (
                ("entry", "key"),
                "reentry once_per_key needs `key`, the trigger property that names an entry",
            )
        )
    condition(("trigger", "where"), spec.trigger.where)
    for i, match in enumerate(spec.exit_on):
        condition(("exit_on", i, "where"), match.where)
    if spec.goal:
        condition(("goal", "where"), spec.goal.where)
        condition(("goal", "value"), spec.goal.value)
    for index, step in enumerate(spec.steps):
        base: tuple[str | int, ...] = ("steps", index)
        target((*base, "next"), step.next)
        if step.wait_for:
            target((*base, "wait_for", "on_event"), step.wait_for.on_event)
            target((*base, "wait_for", "on_timeout"), step.wait_for.on_timeout)
            condition((*base, "wait_for", "where"), step.wait_for.where)
        if step.branch:
            for i, case in enumerate(step.branch.cases):
                target((*base, "branch", "cases", i, "goto"), case.goto)
                condition((*base, "branch", "cases", i, "when"), case.when)
            target((*base, "branch", "otherwise"), step.branch.otherwise)
        if step.split:
            total = sum(v.percent for v in step.split)
            if abs(total - 100) > 1e-6:
                problems.append(
                    ((*base, "split"), f"variant percentages add up to {total:g}, not 100")
                )
            names = [v.name for v in step.split]
            if len(set(names)) != len(names):
                problems.append(((*base, "split"), "variant names must be unique"))
            for i, variant in enumerate(step.split):
                target((*base, "split", i, "goto"), variant.goto)
        if step.update_profile:
            for name, source in step.update_profile.compute.items():
                condition((*base, "update_profile", "compute", name), source)
        if step.winner:
            problems.extend(_winner_problems(spec, step, base))
    return problems


def _winner_problems(
    spec: JourneySpec, step: Step, base: tuple[str | int, ...]
) -> list[tuple[tuple[str | int, ...], str]]:
    """What makes a step's ``winner:`` impossible to decide."""
    assert step.winner is not None
    loc = (*base, "winner")
    if not step.split:
        return [(loc, f"winner: belongs to a split step; this is a {step.kind} step")]
    if len(step.split) < 2:
        return [(loc, "a winner needs at least two variants to compare")]
    metric = step.winner.metric
    if metric in ("conversion", "revenue") and spec.goal is None:
        return [
            (
                (*loc, "metric"),
                f"metric {metric} is measured on the journey's goal; add goal: or use click",
            )
        ]
    if metric == "click" and not any(s.send for s in spec.steps):
        return [((*loc, "metric"), "metric click counts clicks on messages, and no step sends")]
    return []


def describe_duration(delta: timedelta) -> str:
    return format_duration(delta)
