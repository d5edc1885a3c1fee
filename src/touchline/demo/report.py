"""What a demo run did, read back from the simulation's store, and printed for people.

:func:`collect` queries the store (instances, outbox, conversions, step_log,
events, and the report rollups for the holdout uplift) into a
:class:`DemoReport`; :func:`render` prints it with rich. The output is meant to be read in a terminal and in a log file alike: headings
are plain words and tables fall back to ASCII borders when ``out`` is not a
terminal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TextIO

from rich import box
from rich.console import Console
from rich.table import Table
from sqlalchemy import Connection, Engine, case, distinct, func, select

from touchline.measure import reports
from touchline.store.tables import (
    conversions,
    events,
    instances,
    journeys,
    outbox,
    segment_changes,
    segments,
    step_log,
    workspaces,
)

SECTIONS = (
    "Customers per journey",
    "Messages per journey and channel",
    "Delivery rules",
    "Exits",
    "Goals",
    "A/B tests",
    "Events ingested",
    "Segments over time",
    "Time taken",
    "Holdout uplift",
)
"""Headings :func:`render` prints, in order (acceptance tests look for them)."""

# Width used when ``out`` is not a terminal, so tables do not wrap at 80 columns.
FILE_WIDTH = 130


@dataclass(frozen=True)
class JourneyFigures:
    key: str
    name: str
    category: str
    entered: int
    customers: int
    active: int
    completed: int
    exited: int
    messages: int
    conversions: int
    revenue: Decimal


@dataclass(frozen=True)
class VariantFigures:
    journey: str
    step: str
    variant: str
    assigned: int
    messages: int
    conversions: int
    revenue: Decimal


@dataclass
class DemoReport:
    """Every figure the demo prints; times in seconds of wall clock."""

    workdir: Path
    customers: int
    days: int
    seed: int
    start: datetime
    end: datetime
    journeys: list[JourneyFigures] = field(default_factory=list)
    # (journey, channel, template, count)
    messages: list[tuple[str, str, str, int]] = field(default_factory=list)
    # (outcome, channel, rule, count): what consent, caps, quiet hours... did
    rules: list[tuple[str, str, str, int]] = field(default_factory=list)
    # (journey, status, reason, count)
    exits: list[tuple[str, str, str, int]] = field(default_factory=list)
    variants: list[VariantFigures] = field(default_factory=list)
    # journeys with a holdout, read from the rollups by touchline.measure.reports
    uplifts: list[reports.JourneyFigures] = field(default_factory=list)
    events: list[tuple[str, int]] = field(default_factory=list)  # (event name, count)
    #: Instants the segment sizes are read at, and each segment's (key, sizes at them).
    segment_times: list[datetime] = field(default_factory=list)
    segments: list[tuple[str, list[int]]] = field(default_factory=list)
    reactions: int = 0
    timers: int = 0  # timers fired (waits ending, wait_for timeouts)
    failures: int = 0
    generate_seconds: float = 0.0
    simulate_seconds: float = 0.0
    total_seconds: float = 0.0

    @property
    def events_total(self) -> int:
        return sum(n for _, n in self.events)

    @property
    def messages_total(self) -> int:
        return sum(n for *_, n in self.messages)


def collect(engine: Engine, report: DemoReport) -> DemoReport:
    """Fill ``report``'s figures from the store of a finished simulation."""
    with engine.connect() as conn:
        per_journey = {
            r.journey_id: r
            for r in conn.execute(
                select(
                    instances.c.journey_id,
                    func.count().label("entered"),
                    func.count(distinct(instances.c.profile_id)).label("customers"),
                    func.sum(case((instances.c.status == "active", 1), else_=0)).label("active"),
                    func.sum(case((instances.c.status == "completed", 1), else_=0)).label(
                        "completed"
                    ),
                    func.sum(case((instances.c.status == "exited", 1), else_=0)).label("exited"),
                ).group_by(instances.c.journey_id)
            )
        }
        sent: dict[int, int] = {
            journey_id: n
            for journey_id, n in conn.execute(
                select(outbox.c.journey_id, func.count()).group_by(outbox.c.journey_id)
            )
        }
        goals = {
            r.journey_id: r
            for r in conn.execute(
                select(
                    conversions.c.journey_id,
                    func.count().label("n"),
                    func.sum(conversions.c.value).label("value"),
                ).group_by(conversions.c.journey_id)
            )
        }
        names = {}
        for j in conn.execute(select(journeys).order_by(journeys.c.id)):
            names[j.id] = j.key
            figures = per_journey.get(j.id)
            goal = goals.get(j.id)
            report.journeys.append(
                JourneyFigures(
                    key=j.key,
                    name=j.name,
                    category=j.category,
                    entered=figures.entered if figures else 0,
                    customers=figures.customers if figures else 0,
                    active=int(figures.active or 0) if figures else 0,
                    completed=int(figures.completed or 0) if figures else 0,
                    exited=int(figures.exited or 0) if figures else 0,
                    messages=sent.get(j.id, 0),
                    conversions=goal.n if goal else 0,
                    revenue=Decimal(goal.value or 0) if goal else Decimal(0),
                )
            )
        report.messages = [
            (names[r.journey_id], r.channel, r.template, r.n)
            for r in conn.execute(
                select(
                    outbox.c.journey_id,
                    outbox.c.channel,
                    outbox.c.template,
                    func.count().label("n"),
                )
                .group_by(outbox.c.journey_id, outbox.c.channel, outbox.c.template)
                .order_by(outbox.c.journey_id, outbox.c.channel, outbox.c.template)
            )
        ]
        report.rules = _rules(conn)
        report.exits = [
            (names[r.journey_id], r.status, r.exit_reason or "", r.n)
            for r in conn.execute(
                select(
                    instances.c.journey_id,
                    instances.c.status,
                    instances.c.exit_reason,
                    func.count().label("n"),
                )
                .where(instances.c.status != "active")
                .group_by(instances.c.journey_id, instances.c.status, instances.c.exit_reason)
                .order_by(instances.c.journey_id, func.count().desc())
            )
        ]
        report.variants = _variants(conn, names)
        report.uplifts = _uplifts(conn, report)
        report.segment_times, report.segments = _segment_sizes(conn, report)
        report.events = [
            (name or f"({kind})", n)
            for name, kind, n in conn.execute(
                select(events.c.name, events.c.type, func.count())
                .group_by(events.c.name, events.c.type)
                .order_by(func.count().desc(), events.c.name)
            )
        ]
    return report


def _segment_sizes(
    conn: Connection, report: DemoReport
) -> tuple[list[datetime], list[tuple[str, list[int]]]]:
    """Each segment's size at the end of every week (at most six points), from its history.

    A size at ``t`` is the entries minus the exits recorded at or before ``t``:
    ``segment_changes`` is the whole history, so no snapshot is needed.
    """
    points = min(max(report.days // 7, 1), 6)
    span = report.end - report.start
    times = [report.start + span * k / points for k in range(1, points + 1)]
    times = [t - timedelta(microseconds=t.microsecond) for t in times]
    sign = case((segment_changes.c.change == "entered", 1), else_=-1)
    found: list[tuple[str, list[int]]] = []
    for segment_id, key in conn.execute(
        select(segments.c.id, segments.c.key).order_by(segments.c.key)
    ):
        sizes = [
            int(
                conn.execute(
                    select(func.coalesce(func.sum(sign), 0)).where(
                        segment_changes.c.segment_id == segment_id, segment_changes.c.at <= t
                    )
                ).scalar_one()
            )
            for t in times
        ]
        found.append((key, sizes))
    return times, found


def _uplifts(conn: Connection, report: DemoReport) -> list[reports.JourneyFigures]:
    """The journeys with a holdout, over the simulated days, from the journey rollups."""
    found = []
    for workspace_id in conn.execute(select(workspaces.c.id).order_by(workspaces.c.id)).scalars():
        found += [
            j
            for j in reports.journey_summary(
                conn, workspace_id, since=report.start.date(), until=report.end.date()
            )
            if j.holdout_percent or j.holdout_entered
        ]
    return found


def _rules(conn: Connection) -> list[tuple[str, str, str, int]]:
    """Messages the delivery rules skipped or deferred, by rule; the rest went out at once."""
    skipped = conn.execute(
        select(outbox.c.channel, outbox.c.reason, func.count())
        .where(outbox.c.status == "skipped")
        .group_by(outbox.c.channel, outbox.c.reason)
    ).all()
    deferred = conn.execute(
        select(outbox.c.channel, outbox.c.deferred_reason, func.count())
        .where(outbox.c.deferred_reason.is_not(None))
        .group_by(outbox.c.channel, outbox.c.deferred_reason)
    ).all()
    rows = [("skipped", c, r or "", n) for c, r, n in skipped]
    rows += [("deferred", c, r or "", n) for c, r, n in deferred]
    return sorted(rows, key=lambda row: (row[0] != "skipped", -row[3], row[1], row[2]))


def _variants(conn: Connection, names: dict[int, str]) -> list[VariantFigures]:
    """Per split variant: customers assigned, messages sent after it, conversions."""
    assigned = (
        select(
            step_log.c.journey_id,
            step_log.c.step_id,
            step_log.c.detail.label("variant"),
            step_log.c.instance_id,
        )
        .where(step_log.c.action == "variant")
        .subquery()
    )
    sends = (
        select(outbox.c.instance_id, func.count().label("n"))
        .group_by(outbox.c.instance_id)
        .subquery()
    )
    rows = conn.execute(
        select(
            assigned.c.journey_id,
            assigned.c.step_id,
            assigned.c.variant,
            func.count(distinct(assigned.c.instance_id)).label("assigned"),
            func.coalesce(func.sum(sends.c.n), 0).label("messages"),
            func.count(conversions.c.id).label("conversions"),
            func.coalesce(func.sum(conversions.c.value), 0).label("revenue"),
        )
        .select_from(
            assigned.outerjoin(sends, sends.c.instance_id == assigned.c.instance_id).outerjoin(
                conversions, conversions.c.instance_id == assigned.c.instance_id
            )
        )
        .group_by(assigned.c.journey_id, assigned.c.step_id, assigned.c.variant)
        .order_by(assigned.c.journey_id, assigned.c.step_id, assigned.c.variant)
    )
    return [
        VariantFigures(
            journey=names.get(r.journey_id, str(r.journey_id)),
            step=r.step_id,
            variant=r.variant or "",
            assigned=r.assigned,
            messages=int(r.messages),
            conversions=r.conversions,
            revenue=Decimal(r.revenue or 0),
        )
        for r in rows
    ]


# -- rendering ------------------------------------------------------------------------


def rub(value: Decimal | int | float) -> str:
    """``1234567.5`` → ``1 234 568 RUB`` (whole roubles, thin groups)."""
    return f"{value:,.0f} RUB".replace(",", " ")


def percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _uplift_cells(j: reports.JourneyFigures) -> tuple[str, ...]:
    """Goal rates, uplift in points with its interval, extra revenue, and the verdict."""
    rates = (percent(j.converted, j.entered), percent(j.holdout_converted, j.holdout_entered))
    if j.uplift is None:
        return (*rates, "-", "-", "-", j.uplift_note or "-")
    conversion = j.uplift.conversion
    if conversion.interval is None:
        return (*rates, "-", "-", "-", conversion.reason or "-")
    c = conversion.interval
    extra = j.uplift.incremental_revenue
    return (
        *rates,
        f"{c.estimate * 100:+.1f}",
        f"{c.low * 100:+.1f} to {c.high * 100:+.1f}",
        rub(extra.estimate) if extra else "-",
        "yes" if j.significant else "not yet",
    )


def render(report: DemoReport, out: TextIO) -> None:
    """Print ``report`` to ``out``: headed sections, one table each."""
    console = Console(file=out, highlight=False)
    if not console.is_terminal:
        console = Console(file=out, highlight=False, width=FILE_WIDTH, no_color=True)
    frame = box.SIMPLE_HEAD if console.is_terminal else box.ASCII

    def table(*columns: str) -> Table:
        """Text columns are named ``<name`` and set left; numbers go right."""
        t = Table(box=frame, show_edge=not console.is_terminal, pad_edge=False)
        for name in columns:
            text = name.startswith("<")
            t.add_column(name.lstrip("<"), justify="left" if text else "right", no_wrap=text)
        return t

    def heading(title: str, note: str = "") -> None:
        console.print()
        console.print(f"[bold]{title}[/bold]" + (f"  {note}" if note else ""))

    console.print(
        f"[bold]touchline demo[/bold]: {report.customers} customers, {report.days} days "
        f"({report.start:%Y-%m-%d} to {report.end:%Y-%m-%d}), seed {report.seed}"
    )

    heading(SECTIONS[0], "(entries; a customer may enter some journeys more than once)")
    t = table("<journey", "<category", "entered", "customers", "completed", "exited", "inside")
    for j in report.journeys:
        counts = (j.entered, j.customers, j.completed, j.exited, j.active)
        t.add_row(j.key, j.category, *map(str, counts))
    console.print(t)

    heading(SECTIONS[1], f"({report.messages_total} recorded; nothing was delivered)")
    t = table("<journey", "<channel", "<template", "messages")
    for journey, channel, template, n in report.messages:
        t.add_row(journey, channel, template, str(n))
    console.print(t)

    held = sum(n for *_, n in report.rules)
    heading(SECTIONS[2], f"({held} messages skipped or deferred by consent, caps, quiet hours...)")
    if report.rules:
        t = table("<outcome", "<channel", "<rule", "messages")
        for outcome, channel, rule, n in report.rules:
            t.add_row(outcome, channel, rule, str(n))
        console.print(t)
    else:
        console.print("every message went out as soon as it was recorded")

    heading(SECTIONS[3], "(how entries ended; the rest are still inside)")
    t = table("<journey", "<status", "<reason", "entries")
    for journey, status, reason, n in report.exits:
        t.add_row(journey, status, reason, str(n))
    console.print(t)

    heading(SECTIONS[4], "(conversions within each journey's goal window)")
    t = table("<journey", "goal reached", "of entries", "revenue")
    for j in report.journeys:
        if j.conversions or j.category != "transactional":
            revenue = rub(j.revenue) if j.revenue else "-"
            t.add_row(j.key, str(j.conversions), percent(j.conversions, j.entered), revenue)
    total_conv = sum(j.conversions for j in report.journeys)
    total_rev = sum((j.revenue for j in report.journeys), Decimal(0))
    t.add_row("all journeys", str(total_conv), "", rub(total_rev))
    console.print(t)

    heading(SECTIONS[5], "(split steps: who got which variant and what it earned)")
    if report.variants:
        t = table("<journey / step", "<variant", "entries", "messages", "goal reached", "revenue")
        for v in report.variants:
            reached = f"{v.conversions} ({percent(v.conversions, v.assigned)})"
            where = f"{v.journey} / {v.step}"
            t.add_row(where, v.variant, str(v.assigned), str(v.messages), reached, rub(v.revenue))
        console.print(t)
    else:
        console.print("no customer reached a split step")

    answers = f"{report.reactions} of them customers answering messages"
    heading(SECTIONS[6], f"({report.events_total} in all; {answers})")
    t = table("<event", "count")
    for name, n in report.events:
        t.add_row(name, str(n))
    console.print(t)

    heading(SECTIONS[7], "(members at the end of each week, from the recorded entries and exits)")
    if report.segments:
        t = table("<segment", *(f"{at:%d %b}" for at in report.segment_times))
        for key, sizes in report.segments:
            t.add_row(key, *map(str, sizes))
        console.print(t)
    else:
        console.print("the pack defines no segments")

    heading(SECTIONS[8])
    work = report.events_total + report.timers
    rate = work / report.simulate_seconds if report.simulate_seconds else 0.0
    console.print(
        f"generating the shop  {report.generate_seconds:6.1f} s\n"
        f"simulating           {report.simulate_seconds:6.1f} s  ({report.events_total} events and "
        f"{report.timers} timers, {rate:,.0f} a second)\n"
        f"total                {report.total_seconds:6.1f} s"
    )
    if report.failures:
        console.print(f"[red]{report.failures} events or timers failed; see the log[/red]")

    heading(SECTIONS[9], "(per entry, against the journey's holdout; uplift in rate points)")
    if report.uplifts:
        t = table(
            "<journey",
            "entries",
            "held out",
            "goal rate",
            "holdout",
            "uplift",
            "95% CI",
            "extra revenue",
            "<significant",
        )
        for u in report.uplifts:
            t.add_row(u.key, str(u.entered), str(u.holdout_entered), *_uplift_cells(u))
        console.print(t)
    else:
        console.print("no journey has a holdout")
    console.print()
    console.print(f"The demo store is kept for inspection: {report.workdir / 'simulation.db'}")
