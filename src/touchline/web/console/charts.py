"""Charts as inline SVG, drawn on the server: no chart library, no script.

Two kinds cover the overview: :func:`line_chart` (rates, money, counts over
days) and :func:`stacked_bars` (messages per day split by channel). Colours
come from the stylesheet through the classes ``s1`` … ``s6``, so the SVG
carries no style attributes (the console's CSP allows no inline style).
Every text drawn is escaped here; the result is safe to insert as markup.

Pure functions: numbers in, a string of SVG out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import escape

WIDTH = 640
HEIGHT = 220
#: Room for the y-axis labels on the left and the x-axis labels below.
LEFT, RIGHT, TOP, BOTTOM = 64, 14, 14, 30
#: Colour classes in the stylesheet; series beyond these reuse them in turn.
PALETTE = 6
#: Most x-axis labels drawn; the rest are left out so they never overlap.
MAX_X_LABELS = 5


@dataclass(frozen=True)
class Series:
    """One named row of values, one per label; ``None`` is "no value" (a gap)."""

    name: str
    values: Sequence[float | None]


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 × 10^k at or above ``value`` (at least 1 for 0)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * power >= value - 1e-12:
            return step * power
    return 10 * power


def format_value(value: float, *, unit: str = "") -> str:
    """Axis and tooltip text: percentages with one decimal, money and counts grouped."""
    if unit == "%":
        return f"{value * 100:.1f}%".replace(".0%", "%")
    if abs(value) >= 1_000_000:
        return f"{value / 1_000_000:.1f}M".replace(".0M", "M")
    if abs(value) >= 10_000:
        return f"{value / 1000:.0f}k"
    if value == int(value):
        return f"{int(value):,}"
    return f"{value:,.2f}"


def _frame(labels: Sequence[str], top: float, unit: str, title: str) -> list[str]:
    """The opening tag, the horizontal grid with y labels, and the x labels."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    for i in range(5):
        y = TOP + plot_h - plot_h * i / 4
        parts.append(
            f'<line class="{"axis" if i == 0 else "grid"}" x1="{LEFT}" x2="{WIDTH - RIGHT}" '
            f'y1="{y:.1f}" y2="{y:.1f}"/>'
        )
        parts.append(
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{escape(format_value(top * i / 4, unit=unit))}</text>"
        )
    n = len(labels)
    every = max(1, math.ceil(n / MAX_X_LABELS))
    for i, label in enumerate(labels):
        if i % every and i != n - 1:
            continue
        x = _x(i, n, plot_w)
        anchor = "end" if i == n - 1 and n > 1 else "middle"  # the last one stays inside
        parts.append(
            f'<text x="{x:.1f}" y="{HEIGHT - 8}" text-anchor="{anchor}">{escape(label)}</text>'
        )
    return parts


def _x(i: int, n: int, plot_w: float) -> float:
    if n <= 1:
        return LEFT + plot_w / 2
    return LEFT + plot_w * i / (n - 1)


def _empty(title: str) -> str:
    return (
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT // 2}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(title)}</title>"
        f'<text class="empty" x="{WIDTH / 2}" y="{HEIGHT / 4}" text-anchor="middle">'
        "No data in this period</text></svg>"
    )


def line_chart(
    labels: Sequence[str], series: Sequence[Series], *, title: str, unit: str = ""
) -> str:
    """Lines over ``labels`` (days), one per series; ``unit`` ``"%"`` for fractions of 1."""
    values = [v for s in series for v in s.values if v is not None]
    if not labels or not values:
        return _empty(title)
    top = nice_ceiling(max(values))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    parts = _frame(labels, top, unit, title)
    n = len(labels)
    for index, s in enumerate(series):
        css = f"s{index % PALETTE + 1}"
        points: list[tuple[float, float, float]] = []
        runs: list[list[tuple[float, float, float]]] = [points]
        for i, v in enumerate(s.values):
            if v is None:
                points = []
                runs.append(points)
                continue
            points.append((_x(i, n, plot_w), TOP + plot_h - plot_h * v / top, v))
        for run in runs:
            if len(run) > 1:
                path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _ in run)
                parts.append(f'<polyline class="line {css}" points="{path}"/>')
            for x, y, v in run:
                tip = f"{s.name}: {format_value(v, unit=unit)}"
                parts.append(
                    f'<circle class="dot {css}" cx="{x:.1f}" cy="{y:.1f}" r="2.6">'
                    f"<title>{escape(tip)}</title></circle>"
                )
    parts.append("</svg>")
    return "".join(parts)


def stacked_bars(
    labels: Sequence[str], series: Sequence[Series], *, title: str, unit: str = ""
) -> str:
    """One bar per label, the series stacked in it (messages per day by channel)."""
    totals = [sum(s.values[i] or 0 for s in series) for i in range(len(labels))]
    if not labels or not any(totals):
        return _empty(title)
    top = nice_ceiling(max(totals))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    n = len(labels)
    slot = plot_w / n
    bar = max(1.0, slot * 0.7)
    parts = _frame(labels, top, unit, title)
    # Bars sit in slots, so label positions shift to each slot's middle.
    parts = [p for p in parts if 'y="' + str(HEIGHT - 8) + '"' not in p]
    every = max(1, math.ceil(n / MAX_X_LABELS))
    for i, label in enumerate(labels):
        if i % every == 0 or i == n - 1:
            x = LEFT + slot * (i + 0.5)
            parts.append(
                f'<text x="{x:.1f}" y="{HEIGHT - 8}" text-anchor="middle">{escape(label)}</text>'
            )
    for i in range(n):
        base: float = TOP + plot_h
        x = LEFT + slot * i + (slot - bar) / 2
        for index, s in enumerate(series):
            v = s.values[i] or 0
            if v <= 0:
                continue
            h = plot_h * v / top
            base -= h
            tip = f"{labels[i]} {s.name}: {format_value(v, unit=unit)}"
            parts.append(
                f'<rect class="s{index % PALETTE + 1}" x="{x:.1f}" y="{base:.1f}" '
                f'width="{bar:.1f}" height="{h:.1f}"><title>{escape(tip)}</title></rect>'
            )
    parts.append("</svg>")
    return "".join(parts)


def legend(series: Sequence[Series]) -> list[tuple[str, str]]:
    """``(css class, name)`` per series, for the list under a chart."""
    return [(f"s{i % PALETTE + 1}", s.name) for i, s in enumerate(series)]
