"""What a segment means, for one customer: pure evaluation over loaded facts.

A :class:`SegmentSpec` compiles to a tree of small frozen nodes. The leaves
that read history (events, message events) are answered by *facts* the store
loads with one indexed aggregate query per customer
(:mod:`touchline.audience.segment_sql`); trait conditions run in the journeys'
expression language over the customer's profile; consent runs through the
dispatcher's own delivery rules (:func:`touchline.messaging.policies.decide`).
Nothing here touches the database or the clock.

Time. Windows end at ``now``: an event is within ``90d`` while
``timestamp > now - 90d``, so it leaves the window at ``timestamp + 90d``.
:func:`next_change` is the earliest instant after ``now`` at which some
leaf's answer can change with no new event: the oldest event in a window
leaving it, a first/last time crossing its bound. The store keeps it as the
customer's segment timer, so a segment such as "no order for 30 days" is
re-evaluated for that customer exactly then, and nobody is rescanned.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from functools import cached_property
from typing import Any

from touchline.audience.segment_spec import AT_LEAST_ONCE, Compare, Condition, SegmentSpec
from touchline.audience.segment_traits import TraitNode, parse_trait_condition
from touchline.journeys.conditions import compile_condition

__all__ = [
    "CompiledSegment",
    "ConsentTest",
    "EventAgg",
    "EventTime",
    "Facts",
    "MessageAgg",
    "Node",
    "TraitTest",
    "compile_segment",
    "holds",
    "next_change",
]

Bounds = tuple[tuple[str, Any], ...]
Where = tuple[tuple[str, Any], ...]

_OPS = {
    ">=": lambda a, b: a >= b,
    ">": lambda a, b: a > b,
    "<=": lambda a, b: a <= b,
    "<": lambda a, b: a < b,
    "==": lambda a, b: a == b,
}


def _sig(*parts: Any) -> str:
    """A stable name for the facts a leaf needs; equal leaves share one column.

    Leaves keep theirs once computed (``cached_property``): evaluation and
    builds read it several times per customer.
    """
    return json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))


@dataclass(frozen=True)
class EventAgg:
    """Count (``prop`` None) or sum of ``prop`` over matching events within the window."""

    name: str
    where: Where
    within: timedelta | None
    prop: str | None
    bounds: Bounds

    @cached_property
    def sig(self) -> str:
        seconds = None if self.within is None else self.within.total_seconds()
        return _sig("agg", self.name, self.where, seconds, self.prop)


@dataclass(frozen=True)
class EventTime:
    """The first or last matching event: ``after`` means within ``span``, else before it."""

    name: str
    where: Where
    which: str  # first | last
    span: timedelta
    after: bool

    @cached_property
    def sig(self) -> str:
        return _sig(self.which, self.name, self.where)


@dataclass(frozen=True)
class MessageAgg:
    """Messages (distinct) with a human row of one of ``kinds`` within the window."""

    kinds: tuple[str, ...]
    channel: str | None
    within: timedelta | None
    bounds: Bounds

    @cached_property
    def sig(self) -> str:
        seconds = None if self.within is None else self.within.total_seconds()
        return _sig("msg", self.kinds, self.channel, seconds)


@dataclass(frozen=True)
class TraitTest:
    source: str
    tree: TraitNode


@dataclass(frozen=True)
class ConsentTest:
    """Whether a marketing message on ``channel`` (``topic``) would pass consent and suppression."""

    channel: str
    topic: str | None


@dataclass(frozen=True)
class Junction:
    op: str  # all | any
    parts: tuple[Node, ...]


@dataclass(frozen=True)
class Negation:
    part: Node


Node = EventAgg | EventTime | MessageAgg | TraitTest | ConsentTest | Junction | Negation


@dataclass(frozen=True)
class CompiledSegment:
    """A segment ready to evaluate: its tree and its leaves grouped by what they read."""

    id: int
    key: str
    checksum: str
    root: Node
    built: bool = True  # False until a first full build: its changes are not announced

    def leaves(self) -> Iterator[Node]:
        stack: list[Node] = [self.root]
        while stack:
            node = stack.pop()
            if isinstance(node, Junction):
                stack.extend(node.parts)
            elif isinstance(node, Negation):
                stack.append(node.part)
            else:
                yield node

    def of(self, kind: type[Any]) -> list[Any]:
        return [leaf for leaf in self.leaves() if isinstance(leaf, kind)]

    @property
    def timed(self) -> bool:
        """Whether the answer can change with no new event (windows, first/last times)."""
        return any(
            isinstance(leaf, EventTime) or getattr(leaf, "within", None) is not None
            for leaf in self.leaves()
        )


def compile_segment(
    spec: SegmentSpec, *, segment_id: int = 0, checksum: str = "", built: bool = True
) -> CompiledSegment:
    return CompiledSegment(segment_id, spec.segment, checksum, _compile(spec.match), built)


def _bounds(compare: Compare | None) -> Bounds:
    return (compare or AT_LEAST_ONCE).bounds()


def _compile(cond: Condition) -> Node:
    kind = cond.kind
    if kind in ("all", "any"):
        return Junction(kind, tuple(_compile(c) for c in (cond.all or cond.any or [])))
    if kind == "not":
        assert cond.not_ is not None
        return Negation(_compile(cond.not_))
    where = tuple(sorted((cond.where or {}).items()))
    if kind == "event":
        assert cond.event is not None
        if cond.sum is not None:
            leaf: Node = EventAgg(
                cond.event, where, cond.within, cond.sum.property, _bounds(cond.sum)
            )
        else:
            leaf = EventAgg(cond.event, where, cond.within, None, _bounds(cond.count))
        if cond.without is None:
            return leaf
        absent = EventAgg(cond.without, (), cond.within, None, AT_LEAST_ONCE.bounds())
        return Junction("all", (leaf, Negation(absent)))
    if kind in ("first", "last"):
        name = cond.first if kind == "first" else cond.last
        assert name is not None
        span = cond.within if cond.within is not None else cond.before
        assert span is not None
        return EventTime(name, where, kind, span, cond.within is not None)
    if kind == "messages":
        kinds = tuple(sorted(set(cond.messages or ())))
        return MessageAgg(kinds, cond.channel, cond.within, _bounds(cond.count))
    if kind == "profile":
        assert cond.profile is not None
        return TraitTest(cond.profile, parse_trait_condition(cond.profile))
    assert cond.consent is not None
    return ConsentTest(cond.consent, cond.topic)


# ------------------------------------------------------------------ evaluation


@dataclass
class Facts:
    """One customer's answers to the leaves, loaded at ``now``.

    ``aggregates`` maps an :class:`EventAgg` or :class:`MessageAgg` ``sig`` to
    (value, oldest time in the window); ``times`` an :class:`EventTime` ``sig``
    to its first or last time; ``profile`` is the ``profile`` root of trait
    conditions (None for a merged or missing profile: never a member);
    ``reachable`` maps (channel, topic) to the consent answer.
    """

    aggregates: dict[str, tuple[Any, datetime | None]] = field(default_factory=dict)
    times: dict[str, datetime | None] = field(default_factory=dict)
    profile: Mapping[str, Any] | None = None
    reachable: dict[tuple[str, str | None], bool] = field(default_factory=dict)


def _within_bounds(value: Any, bounds: Bounds) -> bool:
    if isinstance(value, Decimal):
        value = float(value) if value != value.to_integral_value() else int(value)
    return all(_OPS[op](value, bound) for op, bound in bounds)


def holds(node: Node, facts: Facts, now: datetime) -> bool:
    """Whether the customer whose ``facts`` these are matches ``node`` at ``now``."""
    if isinstance(node, Junction):
        parts = (holds(p, facts, now) for p in node.parts)
        return all(parts) if node.op == "all" else any(parts)
    if isinstance(node, Negation):
        return not holds(node.part, facts, now)
    if isinstance(node, EventAgg | MessageAgg):
        value, _oldest = facts.aggregates.get(node.sig, (0, None))
        return _within_bounds(value or 0, node.bounds)
    if isinstance(node, EventTime):
        at = facts.times.get(node.sig)
        if at is None:
            return False
        return at > now - node.span if node.after else at <= now - node.span
    if isinstance(node, TraitTest):
        if facts.profile is None:
            return False
        return compile_condition(node.source, roots=frozenset({"profile"})).test(
            {"profile": facts.profile}
        )
    assert isinstance(node, ConsentTest)
    return facts.reachable.get((node.channel, node.topic), False)


def next_change(segment: CompiledSegment, facts: Facts, now: datetime) -> datetime | None:
    """The earliest instant after ``now`` at which a leaf may answer differently, if any."""
    due: list[datetime] = []
    for leaf in segment.leaves():
        if isinstance(leaf, EventAgg | MessageAgg) and leaf.within is not None:
            _value, oldest = facts.aggregates.get(leaf.sig, (0, None))
            if oldest is not None:
                due.append(oldest + leaf.within)
        elif isinstance(leaf, EventTime):
            at = facts.times.get(leaf.sig)
            if at is not None:
                due.append(at + leaf.span)
    later = [d for d in due if d > now]
    return min(later) if later else None
