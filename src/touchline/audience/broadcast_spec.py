"""What a broadcast is: the definition a marketer writes, and the pure rules of sending it.

A broadcast is written as YAML (``touchline broadcast create FILE``) or JSON
(``POST /admin/v1/broadcasts``) with the same fields::

    broadcast: black-friday            # key: lowercase letters, digits, '-', '_'
    name: Black Friday, 48 hours only
    audience: vip                      # a segment key, or `all`
    channel: sms
    template: bf-sms                   # or ab_test.variants[].template
    purpose: marketing                 # or transactional
    send_at: 2026-11-27T06:00:00Z      # optional: without it the broadcast is a draft
    local_time: "11:00"                # optional: each customer's own 11:00
    rate: 600                          # optional: at most this many messages a minute
    properties: {deadline: "30 Nov"}   # template data, as event.properties
    ab_test:
      variants: [{name: a, template: bf-a}, {name: b, template: bf-b}]
      sample: 20                       # percent of the audience in the test
      wait: 4h
      metric: click                    # click | open | conversion
      fallback: best                   # best | first

Everything here is pure: validation, the draw of each customer's phase and
variant, the order of time-zone groups and the spacing of a throttled send.
:mod:`touchline.audience.broadcasts` stores and runs what this module decides.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from touchline.clock import utc
from touchline.errors import InputError, SpecError, SpecProblem
from touchline.journeys.durations import format_duration
from touchline.journeys.loader import DOCUMENT_FIELD, line_of, read_yaml
from touchline.journeys.localtime import next_local_time, zone
from touchline.journeys.spec import Duration, TimeOfDay

__all__ = [
    "ALL",
    "KEY_RE",
    "ABTest",
    "BroadcastSpec",
    "TestVariant",
    "draw",
    "journey_key",
    "journey_spec",
    "load_broadcast_data",
    "load_broadcast_text",
    "next_slot",
    "phase_groups",
    "recipient_lot",
]

ALL = "all"
"""The audience that is every (unmerged, reachable) customer of the workspace."""

KEY_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,53}$")
"""Broadcast keys: 54 characters at most, so the journey key ``broadcast:<key>`` fits 64."""

CHANNEL_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
MAX_RATE = 1_000_000
"""Messages a minute; above this a rate limits nothing a dispatcher could reach."""
MAX_WAIT = timedelta(days=30)
"""Longest A/B wait: an undecided test holds the rest of the audience back that long."""
MAX_VARIANTS = 10


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TestVariant(_Model):
    """One version of the message in an A/B test."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    template: str = Field(min_length=1, max_length=200)


class ABTest(_Model):
    """Send variants to a sample, wait, then the winner to everyone else."""

    variants: list[TestVariant] = Field(min_length=2, max_length=MAX_VARIANTS)
    sample: float = Field(
        default=20, gt=0, le=100, description="percent of the audience that takes the test"
    )
    wait: Duration = Field(
        default=timedelta(hours=4), description="from the test's last message to the decision"
    )
    metric: Literal["click", "open", "conversion"] = "click"
    min_sample: int = Field(
        default=100, ge=1, le=100_000_000, description="messages each variant needs to be judged"
    )
    confidence: float = Field(default=0.95, ge=0.8, le=0.999)
    fallback: Literal["best", "first"] = Field(
        default="best",
        description="with no significant winner: the best point estimate, or the first variant",
    )

    @field_validator("wait")
    @classmethod
    def _wait(cls, value: timedelta) -> timedelta:
        if value > MAX_WAIT:
            raise ValueError(f"must be at most {format_duration(MAX_WAIT)}")
        return value

    @field_validator("variants")
    @classmethod
    def _unique(cls, value: list[TestVariant]) -> list[TestVariant]:
        names = [v.name for v in value]
        if len(set(names)) != len(names):
            raise ValueError("variant names must be unique")
        return value


class BroadcastSpec(_Model):
    """A broadcast as written; see the module docstring for an example."""

    broadcast: str = Field(description="stable key, e.g. black-friday")
    name: str | None = Field(default=None, max_length=200)
    audience: str = Field(min_length=1, max_length=64, description="segment key, or all")
    channel: str
    template: str | None = Field(default=None, min_length=1, max_length=200)
    purpose: Literal["marketing", "transactional"] = "marketing"
    category: Literal["engaging", "selling", "transactional"] | None = None
    send_at: datetime | None = None
    local_time: TimeOfDay | None = None
    rate: Annotated[int, Field(ge=1, le=MAX_RATE)] | None = None
    properties: dict[str, Any] = Field(default_factory=dict)
    cap_exempt: bool = False
    when_capped: Literal["skip", "defer"] = "skip"
    ab_test: ABTest | None = None

    @field_validator("broadcast")
    @classmethod
    def _key(cls, value: str) -> str:
        if not KEY_RE.match(value):
            raise ValueError("must be 1-54 lowercase letters, digits, '-' or '_'")
        return value

    @field_validator("channel")
    @classmethod
    def _channel(cls, value: str) -> str:
        if not CHANNEL_RE.match(value):
            raise ValueError("must be 1-64 lowercase letters, digits, '-' or '_' (email, sms...)")
        return value

    @field_validator("send_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        return None if value is None else utc(value)

    @model_validator(mode="after")
    def _content(self) -> BroadcastSpec:
        if (self.template is None) == (self.ab_test is None):
            raise ValueError("give either template: or ab_test: with its variants, not both")
        if self.purpose == "transactional" and self.category not in (None, "transactional"):
            raise ValueError("a transactional broadcast has category transactional")
        if self.purpose == "marketing" and self.category == "transactional":
            raise ValueError("category transactional needs purpose: transactional")
        return self

    # -- derived -------------------------------------------------------------------

    @property
    def journey_category(self) -> str:
        """Caps and consent topics go by this, as for journeys."""
        if self.purpose == "transactional":
            return "transactional"
        return self.category or "selling"

    @property
    def variant_names(self) -> list[str]:
        return [v.name for v in self.ab_test.variants] if self.ab_test else []

    def template_of(self, variant: str | None) -> str:
        if self.ab_test is None or variant is None:
            assert self.template is not None
            return self.template
        return next(v.template for v in self.ab_test.variants if v.name == variant)

    def step_of(self, variant: str | None) -> str:
        """The journey step a message of ``variant`` is counted on."""
        if self.ab_test is None or variant is None:
            return "send"
        return f"send-{self.variant_names.index(variant) + 1}"

    def templates(self) -> list[tuple[str, str]]:
        """(field, template key) for every template the broadcast names."""
        if self.ab_test is None:
            assert self.template is not None
            return [("template", self.template)]
        return [
            (f"ab_test.variants[{i}].template", v.template)
            for i, v in enumerate(self.ab_test.variants)
        ]

    def to_data(self) -> dict[str, Any]:
        """JSON-safe normal form (durations and times as the text the loader reads)."""
        data = self.model_dump(mode="json", exclude_none=True)
        if self.local_time is not None:
            data["local_time"] = self.local_time.strftime("%H:%M")
        if self.ab_test is not None:
            data["ab_test"]["wait"] = format_duration(self.ab_test.wait)
        return data


# -- loading ---------------------------------------------------------------------------


def load_broadcast_data(data: Any) -> BroadcastSpec:
    """Validate parsed JSON; :class:`InputError` ``invalid_broadcast`` names each bad field."""
    if not isinstance(data, dict):
        raise InputError("a broadcast is an object of fields", code="invalid_broadcast")
    try:
        return BroadcastSpec.model_validate(data)
    except ValidationError as exc:
        problems = [f"{_field(path)}: {message}" for path, message in _problems(exc)]
        raise InputError("; ".join(problems), code="invalid_broadcast") from None


def load_broadcast_text(text: str, *, file: str) -> BroadcastSpec:
    """Parse a broadcast YAML file; :class:`SpecError` lists every problem by line and field."""
    data, lines, problems = read_yaml(text, file=file)
    if not problems and not isinstance(data, dict):
        problems = [SpecProblem(file, 1, DOCUMENT_FIELD, "a broadcast is a mapping of fields")]
    if not problems:
        try:
            return BroadcastSpec.model_validate(data)
        except ValidationError as exc:
            problems = [
                SpecProblem(file, line_of(lines, path), _field(path), message)
                for path, message in _problems(exc)
            ]
    error = SpecError(sorted(problems, key=lambda p: p.line or 0))
    error.code = "invalid_broadcast"
    raise error


def _problems(exc: ValidationError) -> list[tuple[tuple[str | int, ...], str]]:
    out = []
    for error in exc.errors(include_url=False):
        # Pydantic names the union member or validator after the field; keep the field path.
        path = tuple(p for p in error["loc"] if not (isinstance(p, str) and "[" in p))
        path = tuple(p for p in path if p not in ("function-after", "constrained-int"))
        message = str(error["msg"])
        for prefix in ("Value error, ", "Assertion failed, "):
            message = message.removeprefix(prefix)
        if message.startswith("Input should be "):
            message = "must be " + message.removeprefix("Input should be ")
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        elif error["type"] == "missing":
            message = "is required"
        out.append((path, message))
    return out


def _field(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or DOCUMENT_FIELD


# -- the journey a broadcast is registered as -------------------------------------------


def journey_key(key: str) -> str:
    """The journeys-table key of broadcast ``key``; ':' keeps it apart from journey files."""
    return f"broadcast:{key}"


def journey_spec(spec: BroadcastSpec) -> dict[str, Any]:
    """The journey spec a broadcast is stored as: a split (with A/B) and one send per variant.

    Only reports and the admin API read it; the journey row's status ("broadcast")
    and empty trigger keep the engine from ever entering anyone into it.
    """
    purpose = spec.purpose
    send = {"channel": spec.channel, "purpose": purpose, "when_capped": spec.when_capped}
    data: dict[str, Any] = {
        "journey": f"broadcast-{spec.broadcast}",
        "name": spec.name or spec.broadcast,
        "category": spec.journey_category,
        "cap_exempt": spec.cap_exempt,
        "trigger": {"event": journey_key(spec.broadcast)},
        "entry": {"reentry": "never"},
    }
    if spec.ab_test is None:
        data["steps"] = [{"id": "send", "send": {**send, "template": spec.template}}]
        return data
    names = spec.variant_names
    share = 100 / len(names)
    split = [{"name": name, "percent": share, "goto": spec.step_of(name)} for name in names]
    split[-1]["percent"] = 100 - share * (len(names) - 1)
    steps: list[dict[str, Any]] = [{"id": "split", "split": split}]
    for name in names:
        steps.append(
            {
                "id": spec.step_of(name),
                "send": {**send, "template": spec.template_of(name)},
                "next": "exit",
            }
        )
    data["steps"] = steps
    return data


# -- who gets what, when --------------------------------------------------------------


def draw(broadcast_id: int, profile_id: int, what: str) -> float:
    """A stable number in [0, 1) for this customer in this broadcast: the same every time."""
    digest = hashlib.sha256(f"{broadcast_id}\x1f{what}\x1f{profile_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass(frozen=True)
class Lot:
    """A recipient's phase (``test`` or ``main``) and, in the test, their variant."""

    phase: str
    variant: str | None


def recipient_lot(spec: BroadcastSpec, broadcast_id: int, profile_id: int) -> Lot:
    """The customer's place in the broadcast, drawn deterministically.

    Without an A/B test everyone is in ``main``. With one, ``sample`` percent
    (by one draw) take the test, split evenly between the variants by a second,
    independent draw; the rest wait for the winner.
    """
    if spec.ab_test is None:
        return Lot("main", None)
    if draw(broadcast_id, profile_id, "sample") * 100 >= spec.ab_test.sample:
        return Lot("main", None)
    names = spec.variant_names
    index = int(draw(broadcast_id, profile_id, "variant") * len(names))
    return Lot("test", names[min(index, len(names) - 1)])


def phase_groups(
    zones: Sequence[str], *, start: datetime, local_time: time | None, default_zone: str
) -> list[tuple[str, datetime]]:
    """The phase's time-zone groups and when each may start, earliest first.

    Without ``local_time`` there is one group (zone ``""``) starting at
    ``start``. With it, each zone's group starts at the first ``local_time`` in
    that zone at or after ``start`` (DST-correct): Vladivostok's 11:00 comes
    seven hours before Moscow's. Ties are ordered by zone name so the order,
    and with it every throttled slot, is the same on every run.
    """
    if local_time is None:
        return [("", start)]
    found = [
        (name, next_local_time(start, local_time, tz=zone(name or default_zone, default_zone)))
        for name in zones
    ]
    return sorted(found, key=lambda item: (item[1], item[0]))


def next_slot(group_start: datetime, previous: datetime | None, *, rate: int | None) -> datetime:
    """When the next message may go: its group's start, but no sooner than the rate allows.

    With a rate of ``r`` a minute each message is at least ``60 / r`` seconds
    after the one before it in the broadcast's order (groups earliest first,
    then by customer id), so the pace holds across overlapping time zones and
    every slot follows from the recipient's position alone.
    """
    if rate is None or previous is None:
        return group_start
    return max(group_start, previous + timedelta(microseconds=round(60_000_000 / rate)))
