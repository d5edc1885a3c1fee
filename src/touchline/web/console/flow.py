"""A journey drawn as a flow diagram: SVG boxes and arrows with live counts.

The layout follows the file: the trigger on top, then one box per step in
the order written, and the exit at the bottom. A step's way on to the step
right below it is a straight arrow down the middle; every other way (a
branch case, a ``wait_for`` timeout, a split variant, a ``next:`` jumping
ahead or back) leaves the box on the right and runs in a lane of its own
to the target's right side, dashed, labelled where it starts. A way out of
the journey from a box other than the last ends in a small "exit" mark.

Each box shows the step's counts: customers waiting there now, how many
passed through it, how many left the journey there, and goal conversions
counted at it. Pure: a spec and counts in, SVG text out (every text escaped).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from markupsafe import escape

from touchline.journeys.durations import format_duration
from touchline.journeys.spec import EXIT, JourneySpec, Step

BOX_W, BOX_H = 320, 78
GAP = 34  # vertical room between boxes, where the straight arrows run
MARGIN = 16
LANE = 16  # horizontal distance between the lanes of jumps
LABEL_ROOM = 150  # room on the right for the last lane's labels
#: Characters of a detail line before it is cut with an ellipsis.
MAX_DETAIL = 42
MAX_LABEL = 22


@dataclass(frozen=True)
class Edge:
    """A way from one step to a target (a step id or ``exit``), with what takes it."""

    source: str
    target: str
    label: str


def _cut(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe(step: Step) -> str:
    """One line saying what a step does, for its box."""
    if step.send:
        return f"{step.send.channel} · {step.send.template}"
    if step.wait is not None:
        return f"wait {format_duration(step.wait)}"
    if step.wait_until:
        days = ",".join(step.wait_until.weekdays or [])
        return f"until {step.wait_until.time.strftime('%H:%M')}" + (f" {days}" if days else "")
    if step.wait_for:
        return f"{step.wait_for.event}, up to {format_duration(step.wait_for.timeout)}"
    if step.branch:
        n = len(step.branch.cases)
        return f"{n} case{'s' if n != 1 else ''}" + (", otherwise" if step.branch.otherwise else "")
    if step.split:
        return " / ".join(f"{v.name} {v.percent:g}%" for v in step.split)
    if step.update_profile:
        names = [*step.update_profile.set, *step.update_profile.compute, *step.update_profile.unset]
        return "profile: " + ", ".join(names)
    if step.exit is not None:
        return "end" if step.exit is True else f"end: {step.exit}"
    return step.kind


def trigger_title(spec: JourneySpec) -> str:
    """What starts the journey: an event, a date of the profile, a schedule or a segment."""
    trigger = spec.trigger
    if trigger.event:
        return trigger.event
    date = getattr(trigger, "date", None)
    if date is not None:
        return f"{date.trait} {date.offset} at {date.at.strftime('%H:%M')}".replace(" 0d", "")
    schedule = getattr(trigger, "schedule", None)
    if schedule is not None:
        return f"{schedule.cron} · {schedule.audience}"
    segment = getattr(trigger, "segment", None)
    if segment:
        return f"{getattr(trigger, 'on', None) or 'enter'} segment {segment}"
    return "trigger"


def edges(spec: JourneySpec) -> list[Edge]:
    """Every way out of every step, in file order."""
    found: list[Edge] = []
    for step in spec.steps:
        after = spec.next_after(step.id)
        if step.exit is not None:
            found.append(Edge(step.id, EXIT, ""))
        elif step.wait_for:
            found.append(Edge(step.id, step.wait_for.on_event or after, "on event"))
            found.append(Edge(step.id, step.wait_for.on_timeout or after, "on timeout"))
        elif step.branch:
            for case in step.branch.cases:
                found.append(Edge(step.id, case.goto, case.when))
            found.append(Edge(step.id, step.branch.otherwise or after, "otherwise"))
        elif step.split:
            for variant in step.split:
                found.append(Edge(step.id, variant.goto or after, variant.name))
        else:
            found.append(Edge(step.id, after, ""))
    return found


def draw(
    spec: JourneySpec,
    counts: Mapping[str, Mapping[str, int]],
    *,
    entered: int,
) -> str:
    """The SVG of ``spec`` with per-step ``counts`` (waiting, entered, exited, converted)."""
    order = {step.id: i for i, step in enumerate(spec.steps)}
    n = len(spec.steps)

    def top_of(index: int) -> float:  # index -1 is the trigger, n is the exit
        return MARGIN + (index + 1) * (BOX_H + GAP)

    all_edges = edges(spec)
    jumps: list[Edge] = []
    straight: dict[str, list[str]] = {}
    exits: dict[str, list[str]] = {}
    for edge in all_edges:
        index = order[edge.source]
        if edge.target == EXIT:
            if index == n - 1:
                straight.setdefault(edge.source, []).append(edge.label)
            else:
                exits.setdefault(edge.source, []).append(edge.label)
        elif order[edge.target] == index + 1:
            straight.setdefault(edge.source, []).append(edge.label)
        else:
            jumps.append(edge)
    lanes = len(jumps)
    # Jumps run right of the "→ exit" marks, so the two never cross.
    lane_base = 100 if exits else 24
    width = MARGIN + BOX_W + lane_base + lanes * LANE + LABEL_ROOM + MARGIN
    height = top_of(n) + BOX_H // 2 + MARGIN
    x0 = MARGIN
    mid = x0 + BOX_W / 2
    right = x0 + BOX_W
    parts = [
        f'<svg class="flow" viewBox="0 0 {width} {height:.0f}" role="img" '
        f'aria-label="{escape("Flow of journey " + spec.journey)}" xmlns="http://www.w3.org/2000/svg">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" '
        'markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
        '<path class="arrowhead" d="M0,0 L10,5 L0,10 z"/></marker></defs>',
    ]
    # The trigger.
    top = top_of(-1)
    parts.append(
        _box(x0, top, "start", "trigger", trigger_title(spec), spec.trigger.where or "", None)
    )
    parts.append(
        f'<text class="counts" x="{x0 + 12}" y="{top + BOX_H - 10}">entered {entered:,}</text>'
    )
    parts.append(_arrow(mid, top + BOX_H, mid, top_of(0), ""))
    # The steps.
    for i, step in enumerate(spec.steps):
        top = top_of(i)
        parts.append(
            _box(
                x0,
                top,
                step.kind,
                step.kind.replace("_", " "),
                step.id,
                describe(step),
                counts.get(step.id),
            )
        )
        labels = [label for label in straight.get(step.id, []) if label]
        if step.id in straight:
            target_top = top_of(n) if i == n - 1 else top_of(i + 1)
            parts.append(_arrow(mid, top + BOX_H, mid, target_top, " / ".join(labels)))
        for k, label in enumerate(exits.get(step.id, [])):
            y = top + BOX_H * (k + 1) / (len(exits[step.id]) + 1)
            parts.append(_exit_mark(right, y, label))
    # The exit.
    top = top_of(n)
    parts.append(
        f'<rect class="terminal" x="{mid - 50}" y="{top}" width="100" height="{BOX_H // 2}" rx="18"/>'
        f'<text class="title" x="{mid}" y="{top + BOX_H / 4 + 5}" text-anchor="middle">exit</text>'
    )
    # The jumps, each in its own lane right of the boxes.
    leaving: dict[str, int] = {}
    arriving: dict[str, int] = {}
    out_total = {s: sum(1 for e in jumps if e.source == s) for s in order}
    in_total = {s: sum(1 for e in jumps if e.target == s) for s in order}
    for lane, edge in enumerate(jumps):
        k = leaving[edge.source] = leaving.get(edge.source, 0) + 1
        y1 = top_of(order[edge.source]) + BOX_H * k / (out_total[edge.source] + 1)
        j = arriving[edge.target] = arriving.get(edge.target, 0) + 1
        y2 = top_of(order[edge.target]) + BOX_H * j / (in_total[edge.target] + 1)
        x = right + lane_base + lane * LANE
        parts.append(
            f'<path class="edge jump" d="M{right},{y1:.1f} H{x} V{y2:.1f} H{right + 2}" '
            'marker-end="url(#arrow)"/>'
        )
        if edge.label:
            parts.append(
                f'<text class="edge-label" x="{x + 6}" y="{y1 - 3:.1f}">'
                f"{escape(_cut(edge.label, MAX_LABEL))} → {escape(edge.target)}</text>"
            )
    parts.append("</svg>")
    return "".join(parts)


def _box(
    x: float,
    y: float,
    css: str,
    kind: str,
    title: str,
    detail: str,
    counts: Mapping[str, int] | None,
) -> str:
    out = [
        f'<g class="step" data-step="{escape(title)}">',
        f'<rect class="box {escape(css)}" x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="8"/>',
        f'<text class="kind" x="{x + 12}" y="{y + 16}">{escape(kind)}</text>',
        f'<text class="title" x="{x + 12}" y="{y + 33}">{escape(_cut(title, MAX_DETAIL))}</text>',
        f'<text class="detail" x="{x + 12}" y="{y + 50}">{escape(_cut(detail, MAX_DETAIL))}</text>',
    ]
    if counts is not None:
        c = counts
        out.append(
            f'<text class="counts" x="{x + 12}" y="{y + BOX_H - 10}">'
            f'<tspan class="waiting">{c.get("waiting", 0):,} now</tspan>'
            f" · {c.get('entered', 0):,} passed · {c.get('exited', 0):,} exited · "
            f'<tspan class="converted">{c.get("converted", 0):,} converted</tspan></text>'
        )
    elif css != "start":
        out.append(
            f'<text class="counts" x="{x + 12}" y="{y + BOX_H - 10}">'
            '<tspan class="waiting">0 now</tspan> · 0 passed · 0 exited · '
            '<tspan class="converted">0 converted</tspan></text>'
        )
    out.append("</g>")
    return "".join(out)


def _arrow(x1: float, y1: float, x2: float, y2: float, label: str) -> str:
    out = f'<path class="edge" d="M{x1},{y1} V{y2 - 1}" marker-end="url(#arrow)"/>'
    if label:
        out += (
            f'<text class="edge-label" x="{x1 + 8}" y="{(y1 + y2) / 2 + 4:.1f}">'
            f"{escape(_cut(label, MAX_DETAIL))}</text>"
        )
    return out


def _exit_mark(x: float, y: float, label: str) -> str:
    text = (_cut(label, MAX_LABEL) + " → " if label else "→ ") + "exit"
    return (
        f'<path class="edge" d="M{x},{y:.1f} H{x + 18}" marker-end="url(#arrow)"/>'
        f'<text class="edge-label" x="{x + 22}" y="{y + 4:.1f}">{escape(text)}</text>'
    )
