"""Funnels: how many customers go from one event to the next, and where they drop off.

A :class:`Funnel` is an ordered list of :class:`FunnelStep` (an event name and
an optional ``where`` condition in the journey condition language, whose only
root is ``event``) and a conversion ``window``. :func:`compute_funnel`
measures it over one workspace's events for a period ``[since, until)``.

Semantics, per customer (profile):

* **Start.** The customer's first event matching step 1 with
  ``since <= timestamp < until`` starts their one attempt. Later step-1
  events neither restart it nor add attempts: a customer counts once.
* **Order.** Step k is the earliest event matching step k at or after the
  event that matched step k-1. Equal timestamps are allowed and taken in
  funnel order (events sent together often share a timestamp), and one
  event satisfies at most one step. Events before step k-1 never count, so
  steps done out of order do not convert.
* **Window.** Every later step must happen within ``window`` of step 1
  (``timestamp - start <= window``, inclusive), even past ``until``.
* **Matching.** Events match on ``name`` whatever their type (track, page,
  screen), as journey triggers do. ``where`` sees ``event.name``,
  ``event.type``, ``event.properties`` and ``event.timestamp``.
* **Journey split.** With ``split_by_journey``, a customer is *in the
  journey* when they have an instance of it, in any status, whose
  ``entered_at`` is at or before their step-1 time; every other customer who
  started is *not in the journey*. Profile merges move instances as they move
  events, so both sides name the surviving profile.
* **Segment split.** With ``split_by_segment``, a customer is *in the
  segment* when the segment's recorded history (``segment_changes``) has them
  a member at their step-1 time: their last change at or before it is an
  entry. Membership that began later (often *because* of the funnel's own
  conversion, as in "customers with an order") does not count, so the split
  compares people by who they were when they started. A segment has no
  history before it was first built; everyone is *not in* it before then.

Figures per step: customers reaching it, conversion from the previous step
and from step 1 (None where the base is zero), and the median time from the
previous step among the customers who reached it.

How it runs: one query streams the events bearing a step's name in
``[since, until + window)`` ordered by ``(profile_id, timestamp, id)``, in
batches of STREAM_BATCH rows (a server-side cursor on PostgreSQL), and one
pass walks each customer's events keeping only that customer's state. The
query keeps only customers with a step-1 name in ``[since, until)``. Work is
O(E) rows for E such events plus the database's sort (O(E log E) at worst);
memory is one customer's events sharing one timestamp, plus one float per
customer and step for the medians. Steps are matched in Python because
conditions are compiled to Python, not to SQL.
"""

from __future__ import annotations

import csv
import io
import statistics
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import chain, groupby
from operator import attrgetter
from typing import Any, TextIO

from sqlalchemy import Connection, func, literal, select

from touchline.clock import utc
from touchline.errors import ConditionError, InputError, NotFound
from touchline.journeys.conditions import Condition, compile_condition
from touchline.journeys.durations import format_duration, parse_duration
from touchline.store.tables import events, instances, journeys, segment_changes, segments

__all__ = [
    "DEFAULT_PERIOD",
    "GROUP_ALL",
    "GROUP_IN",
    "GROUP_OUT",
    "MAX_EVENT_NAME",
    "MAX_STEPS",
    "LATEST",
    "MAX_WINDOW",
    "Funnel",
    "FunnelReport",
    "FunnelStep",
    "GroupFigures",
    "StepFigures",
    "build_funnel",
    "compute_funnel",
    "parse_steps",
    "parse_window",
    "render_table",
    "resolve_period",
    "summarize",
    "trace_attempt",
]

# More steps than this makes a report nobody reads and multiplies per-event matching.
MAX_STEPS = 20
# Bounds how far past `until` one report reads events.
MAX_WINDOW = timedelta(days=366)
# The period a report covers when `since` is not given: the month before `until`.
DEFAULT_PERIOD = timedelta(days=30)
# Rows fetched per round trip while streaming: few round trips, bounded memory.
STREAM_BATCH = 5000
# The same limit as the events.name column.
MAX_EVENT_NAME = 200
# Width used when the output is not a terminal, so the table does not wrap at 80 columns.
FILE_WIDTH = 110
# The latest `until`: leaves room for the window after it without leaving the calendar.
LATEST = datetime(9999, 1, 1, tzinfo=UTC)
# A step's `where` sees the event only.
EVENT_ROOTS = frozenset({"event"})

GROUP_ALL, GROUP_IN, GROUP_OUT = "all", "in_journey", "not_in_journey"
GROUP_IN_SEGMENT, GROUP_OUT_SEGMENT = "in_segment", "not_in_segment"


# -- definitions ---------------------------------------------------------------------


@dataclass(frozen=True)
class FunnelStep:
    """An event name and, optionally, a condition the event must meet.

    ``where`` is compiled on construction; a bad one raises ConditionError.
    """

    event: str
    where: str | None = None
    _condition: Condition | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.event, str) or not self.event.strip():
            raise InputError("a funnel step needs an event name")
        if len(self.event) > MAX_EVENT_NAME:
            raise InputError(f"an event name is at most {MAX_EVENT_NAME} characters")
        where = self.where.strip() if isinstance(self.where, str) else self.where
        object.__setattr__(self, "where", where or None)
        if where:
            object.__setattr__(self, "_condition", compile_condition(where, roots=EVENT_ROOTS))

    def matches(self, event: Any) -> bool:
        """Whether ``event`` (with ``name``, ``type``, ``properties`` and ``timestamp``
        attributes, such as an events row) has this step's name and meets its condition."""
        if event.name != self.event:
            return False
        if self._condition is None:
            return True
        scope = {
            "name": event.name,
            "type": event.type,
            "properties": event.properties or {},
            "timestamp": event.timestamp,
        }
        return self._condition.test({"event": scope})


@dataclass(frozen=True)
class Funnel:
    """Two to MAX_STEPS steps in order, and how long after step 1 the others may come."""

    steps: Sequence[FunnelStep]
    window: timedelta

    def __post_init__(self) -> None:
        steps = tuple(self.steps)
        if not 2 <= len(steps) <= MAX_STEPS:
            raise InputError(f"a funnel has 2 to {MAX_STEPS} steps, not {len(steps)}")
        if not all(isinstance(s, FunnelStep) for s in steps):
            raise InputError("every funnel step must be a FunnelStep")
        if not timedelta() < self.window <= MAX_WINDOW:
            raise InputError(f"the window must be longer than zero and at most {MAX_WINDOW.days}d")
        object.__setattr__(self, "steps", steps)

    @property
    def has_conditions(self) -> bool:
        return any(s.where for s in self.steps)


def parse_window(text: str) -> timedelta:
    """A window such as ``7d``, ``36h`` or ``1d12h``; InputError naming the problem."""
    try:
        window = parse_duration(text)
    except (ValueError, OverflowError) as exc:
        raise InputError(f"window: {exc}") from None
    if window > MAX_WINDOW:
        raise InputError(f"window: {text!r} is longer than {MAX_WINDOW.days}d")
    return window


def build_funnel(steps: Sequence[tuple[str, str | None]], *, window: str | timedelta) -> Funnel:
    """A :class:`Funnel` from ``(event, where)`` pairs; errors name the step (1-based)."""
    if not 2 <= len(steps) <= MAX_STEPS:
        raise InputError(f"a funnel has 2 to {MAX_STEPS} steps, not {len(steps)}")
    built = []
    for number, (event, where) in enumerate(steps, start=1):
        try:
            built.append(FunnelStep(event, where))
        except ConditionError as exc:
            raise ConditionError(f"step {number} where: {exc.message}", column=exc.column) from None
        except InputError as exc:
            raise InputError(f"step {number}: {exc.message}") from None
    return Funnel(built, parse_window(window) if isinstance(window, str) else window)


def parse_steps(names: str, conditions: Sequence[str] = ()) -> list[tuple[str, str | None]]:
    """``(event, where)`` pairs from command-line text.

    ``names`` is comma-separated (``"Product Viewed,Order Completed"``); each
    of ``conditions`` is ``N=CONDITION`` giving step N (1-based) its ``where``.
    InputError for an empty name, a bad or repeated N.
    """
    events = [name.strip() for name in names.split(",")]
    if any(not name for name in events):
        raise InputError(f"steps: {names!r} has an empty event name; separate names with commas")
    wheres: dict[int, str] = {}
    for item in conditions:
        number, sep, source = item.partition("=")
        if not sep or not number.strip().isdigit() or not source.strip():
            raise InputError(
                f"where: {item!r} is not N=CONDITION, e.g. 2=event.properties.total > 100"
            )
        n = int(number)
        if not 1 <= n <= len(events):
            raise InputError(f"where: there is no step {n}; the funnel has {len(events)} steps")
        if n in wheres:
            raise InputError(f"where: step {n} is given two conditions; join them with 'and'")
        wheres[n] = source.strip()
    return [(event, wheres.get(n)) for n, event in enumerate(events, start=1)]


def resolve_period(
    since: datetime | None, until: datetime | None, *, now: datetime
) -> tuple[datetime, datetime]:
    """``[since, until)`` in UTC: ``until`` defaults to ``now``, ``since`` to DEFAULT_PERIOD
    before ``until``; naive times are UTC. InputError unless ``since < until`` and
    ``until`` is no later than LATEST."""
    try:
        end = utc(until) if until is not None else utc(now)
        start = utc(since) if since is not None else end - DEFAULT_PERIOD
    except OverflowError:
        raise InputError("since and until must lie between the years 1 and 9999") from None
    if start >= end:
        raise InputError("since must be before until")
    if end > LATEST:
        raise InputError(f"until must be no later than {LATEST:%Y-%m-%d}")
    return start, end


# -- figures --------------------------------------------------------------------------


@dataclass(frozen=True)
class StepFigures:
    """One step's figures within one group of customers."""

    number: int
    event: str
    where: str | None
    customers: int
    from_previous: float | None  # None for step 1, or when no customer reached step k-1
    from_first: float | None  # None when no customer started
    median_from_previous: timedelta | None  # None for step 1, or when nobody reached step k

    def as_dict(self) -> dict[str, Any]:
        median = self.median_from_previous
        return {
            "step": self.number,
            "event": self.event,
            "where": self.where,
            "customers": self.customers,
            "conversion_from_previous": _ratio(self.from_previous),
            "conversion_from_first": _ratio(self.from_first),
            "median_seconds_from_previous": None if median is None else median.total_seconds(),
        }


@dataclass(frozen=True)
class GroupFigures:
    """The funnel's table for one group: ``all``, ``in_journey``, ``not_in_journey``,
    ``in_segment`` or ``not_in_segment``."""

    group: str
    steps: tuple[StepFigures, ...]

    @property
    def started(self) -> int:
        return self.steps[0].customers

    def as_dict(self) -> dict[str, Any]:
        return {"group": self.group, "steps": [s.as_dict() for s in self.steps]}


@dataclass(frozen=True)
class FunnelReport:
    """What :func:`compute_funnel` measured; ``groups`` starts with ``all``."""

    funnel: Funnel
    since: datetime
    until: datetime
    journey: str | None
    groups: tuple[GroupFigures, ...]
    segment: str | None = None

    def group(self, name: str) -> GroupFigures:
        """The figures of group ``name``; KeyError when the report has no such group."""
        for g in self.groups:
            if g.group == name:
                return g
        raise KeyError(name)

    def as_dict(self) -> dict[str, Any]:
        return {
            "steps": [{"event": s.event, "where": s.where} for s in self.funnel.steps],
            "window": format_duration(self.funnel.window),
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "split_by_journey": self.journey,
            "split_by_segment": self.segment,
            "groups": [g.as_dict() for g in self.groups],
        }

    def to_csv(self) -> str:
        """One row per group and step, with a header; ratios as fractions of 1."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["group", *_CSV_COLUMNS])
        for g in self.groups:
            for s in g.steps:
                row = s.as_dict()
                writer.writerow(
                    [g.group, *("" if row[c] is None else row[c] for c in _CSV_COLUMNS)]
                )
        return out.getvalue()


_CSV_COLUMNS = (
    "step",
    "event",
    "where",
    "customers",
    "conversion_from_previous",
    "conversion_from_first",
    "median_seconds_from_previous",
)


def _ratio(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


class _Tally:
    """Customers reaching each step, and the gaps from the step before, for one group."""

    def __init__(self, size: int) -> None:
        self.reached = [0] * size
        self.gaps = [array("d") for _ in range(size)]

    def add(self, times: Sequence[datetime]) -> None:
        for k, at in enumerate(times):
            self.reached[k] += 1
            if k:
                self.gaps[k].append((at - times[k - 1]).total_seconds())

    def figures(self, funnel: Funnel, group: str) -> GroupFigures:
        first = self.reached[0]
        rows = []
        for k, step in enumerate(funnel.steps):
            n, before = self.reached[k], self.reached[k - 1] if k else 0
            gaps = self.gaps[k]
            rows.append(
                StepFigures(
                    number=k + 1,
                    event=step.event,
                    where=step.where,
                    customers=n,
                    from_previous=(n / before) if k and before else None,
                    from_first=(n / first) if first else None,
                    median_from_previous=(
                        timedelta(seconds=statistics.median(gaps)) if gaps else None
                    ),
                )
            )
        return GroupFigures(group, tuple(rows))


def summarize(
    funnel: Funnel, attempts: Iterable[Sequence[datetime]], *, group: str = GROUP_ALL
) -> GroupFigures:
    """The figures of ``group`` from each customer's :func:`trace_attempt` times."""
    tally = _Tally(len(funnel.steps))
    for times in attempts:
        if times:
            tally.add(times)
    return tally.figures(funnel, group)


# -- the query -----------------------------------------------------------------------


def compute_funnel(
    conn: Connection,
    workspace_id: str,
    funnel: Funnel,
    *,
    since: datetime,
    until: datetime,
    split_by_journey: str | None = None,
    split_by_segment: str | None = None,
) -> FunnelReport:
    """Measure ``funnel`` over the workspace's events (semantics in the module docstring).

    ``since`` and ``until`` are aware datetimes with ``since < until``.
    ``split_by_journey`` is a journey key of this workspace (NotFound otherwise);
    it adds the groups ``in_journey`` and ``not_in_journey`` after ``all``;
    ``split_by_segment`` names a segment instead and adds ``in_segment`` and
    ``not_in_segment``. One split at a time.
    """
    if since.tzinfo is None or until.tzinfo is None:
        raise InputError("since and until must be aware datetimes")
    if since >= until:
        raise InputError("since must be before until")
    if until > LATEST:
        raise InputError(f"until must be no later than {LATEST:%Y-%m-%d}")
    if split_by_journey is not None and split_by_segment is not None:
        raise InputError("split by a journey or by a segment, not both")
    segment_id = None
    if split_by_segment is not None:
        segment_id = conn.execute(
            select(segments.c.id).where(
                segments.c.workspace_id == workspace_id, segments.c.key == split_by_segment
            )
        ).scalar()
        if segment_id is None:
            raise NotFound(f"no segment {split_by_segment!r} in this workspace")
    journey_id = None
    if split_by_journey is not None:
        journey_id = conn.execute(
            select(journeys.c.id).where(
                journeys.c.workspace_id == workspace_id, journeys.c.key == split_by_journey
            )
        ).scalar()
        if journey_id is None:
            raise NotFound(f"no journey {split_by_journey!r} in this workspace")

    size = len(funnel.steps)
    names: tuple[str, ...] = (GROUP_ALL,)
    if journey_id is not None:
        names = (GROUP_ALL, GROUP_IN, GROUP_OUT)
    elif segment_id is not None:
        names = (GROUP_ALL, GROUP_IN_SEGMENT, GROUP_OUT_SEGMENT)
    tallies = {name: _Tally(size) for name in names}
    query = _event_stream(workspace_id, funnel, since, until, journey_id)
    if conn.dialect.name != "sqlite":
        # A server-side cursor; SQLite's driver already steps through results lazily.
        query = query.execution_options(yield_per=STREAM_BATCH)
    rows = conn.execute(query)
    history = _History(conn, segment_id, until) if segment_id is not None else None
    for profile_id, customer in groupby(rows, key=attrgetter("profile_id")):
        first, walk = _peek(customer)
        times = trace_attempt(funnel, walk, since=since, until=until)
        if not times:
            continue
        tallies[GROUP_ALL].add(times)
        if journey_id is not None:
            entered = first.first_entered
            inside = entered is not None and entered <= times[0]
            tallies[GROUP_IN if inside else GROUP_OUT].add(times)
        elif history is not None:
            inside = history.member_at(profile_id, times[0])
            tallies[GROUP_IN_SEGMENT if inside else GROUP_OUT_SEGMENT].add(times)

    return FunnelReport(
        funnel=funnel,
        since=since,
        until=until,
        journey=split_by_journey,
        groups=tuple(tallies[name].figures(funnel, name) for name in names),
        segment=split_by_segment,
    )


class _History:
    """A segment's changes, read alongside the event stream: both go in profile order.

    Memory is one customer's changes; the two cursors advance together, so the
    split costs one more ordered scan of the segment's changes before ``until``.
    """

    def __init__(self, conn: Connection, segment_id: int, until: datetime) -> None:
        query = (
            select(segment_changes.c.profile_id, segment_changes.c.at, segment_changes.c.change)
            .where(segment_changes.c.segment_id == segment_id, segment_changes.c.at < until)
            .order_by(segment_changes.c.profile_id, segment_changes.c.at, segment_changes.c.id)
        )
        if conn.dialect.name != "sqlite":
            query = query.execution_options(yield_per=STREAM_BATCH)
        self._rows = iter(conn.execute(query))
        self._next: Any = next(self._rows, None)

    def member_at(self, profile_id: int, at: datetime) -> bool:
        """Whether the customer's last change at or before ``at`` was an entry.

        Called with increasing ``profile_id``; changes of customers skipped on
        the way are passed over.
        """
        while self._next is not None and self._next.profile_id < profile_id:
            self._next = next(self._rows, None)
        member = False
        while self._next is not None and self._next.profile_id == profile_id:
            if self._next.at <= at:
                member = self._next.change == "entered"
            self._next = next(self._rows, None)
        return member


def _peek(rows: Iterable[Any]) -> tuple[Any, Iterable[Any]]:
    """The first of ``rows`` (which must not be empty), and all of them again."""
    it = iter(rows)
    first = next(it)
    return first, chain((first,), it)


def _event_stream(
    workspace_id: str, funnel: Funnel, since: datetime, until: datetime, journey_id: int | None
) -> Any:
    """SELECT of the candidate events, in the order :func:`trace_attempt` walks them."""
    names = sorted({s.event for s in funnel.steps})
    detail = (
        [events.c.type, events.c.properties]
        if funnel.has_conditions
        else [literal("").label("type"), literal(None).label("properties")]
    )
    # Customers who did something named like step 1 in the period; nobody else can start.
    starters = select(events.c.profile_id).where(
        events.c.workspace_id == workspace_id,
        events.c.name == funnel.steps[0].event,
        events.c.timestamp >= since,
        events.c.timestamp < until,
    )
    query = (
        select(events.c.profile_id, events.c.timestamp, events.c.name, *detail)
        .where(
            events.c.workspace_id == workspace_id,
            events.c.name.in_(names),
            events.c.timestamp >= since,
            events.c.timestamp < until + funnel.window,
            events.c.profile_id.in_(starters),
        )
        .order_by(events.c.profile_id, events.c.timestamp, events.c.id)
    )
    if journey_id is None:
        return query
    entered = (
        select(instances.c.profile_id, func.min(instances.c.entered_at).label("first_entered"))
        .where(instances.c.journey_id == journey_id)
        .group_by(instances.c.profile_id)
        .subquery("entered")
    )
    return query.add_columns(entered.c.first_entered).select_from(
        events.outerjoin(entered, entered.c.profile_id == events.c.profile_id)
    )


def trace_attempt(
    funnel: Funnel, rows: Iterable[Any], *, since: datetime, until: datetime
) -> list[datetime]:
    """The times one customer reached each step, in order (empty: never started).

    ``rows`` are one customer's events ordered by (timestamp, id), each with
    ``timestamp``, ``name``, ``type`` and ``properties`` attributes. Events
    sharing a timestamp are matched in funnel order whatever their id order,
    each used at most once. Reads no further than it must.
    """
    steps, size = funnel.steps, len(funnel.steps)
    times: list[datetime] = []
    deadline = until  # set to step 1's time + window once the attempt starts
    at: datetime | None = None
    unused: list[Any] = []  # events at timestamp `at` that matched no step yet
    for row in rows:
        ts = row.timestamp
        if not times:
            if ts >= until:
                break
            if ts < since:
                continue
        elif ts > deadline:
            break
        if ts != at:
            at, unused = ts, []
        unused.append(row)
        # Each event taken may make an earlier one at the same time the next step's.
        while (hit := _first_match(steps[len(times)], unused)) is not None:
            del unused[hit]
            times.append(ts)
            if len(times) == size:
                return times
            deadline = times[0] + funnel.window
    return times


def _first_match(step: FunnelStep, candidates: list[Any]) -> int | None:
    for i, event in enumerate(candidates):
        if step.matches(event):
            return i
    return None


# -- printing ------------------------------------------------------------------------


def render_table(report: FunnelReport, out: TextIO) -> None:
    """Print ``report`` for people: one table per group, ASCII when ``out`` is a file."""
    from rich import box
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(file=out, highlight=False)
    if not console.is_terminal:
        console = Console(file=out, highlight=False, width=FILE_WIDTH, no_color=True)
    frame = box.SIMPLE_HEAD if console.is_terminal else box.ASCII
    window = format_duration(report.funnel.window)
    console.print(
        f"[bold]Funnel[/bold]: {report.since.isoformat()} to {report.until.isoformat()}, "
        f"window {window}"
    )
    journey = escape(report.journey or "")
    segment = escape(report.segment or "")
    titles = {
        GROUP_ALL: "All customers",
        GROUP_IN: f"In journey {journey}",
        GROUP_OUT: f"Not in journey {journey}",
        GROUP_IN_SEGMENT: f"In segment {segment} when they started",
        GROUP_OUT_SEGMENT: f"Not in segment {segment} when they started",
    }
    for g in report.groups:
        console.print()
        console.print(f"[bold]{titles[g.group]}[/bold]  ({g.started} started)")
        t = Table(box=frame, show_edge=not console.is_terminal, pad_edge=False)
        t.add_column("step", justify="right")
        t.add_column("event", no_wrap=True)
        for name in ("customers", "from previous", "from first", "median time from previous"):
            t.add_column(name, justify="right")
        for s in g.steps:
            label = s.event + (f" where {s.where}" if s.where else "")
            median = s.median_from_previous
            t.add_row(
                str(s.number),
                escape(label),
                str(s.customers),
                _percent(s.from_previous),
                _percent(s.from_first),
                "-" if median is None else format_duration(median),
            )
        console.print(t)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"
