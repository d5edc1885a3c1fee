"""Report tables: one shape for every report, printed for people, as CSV, as JSON.

A :class:`ReportTable` is rows of named columns with facts about them in
``meta``. The reports of :mod:`touchline.measure.reports` build them; this
module only shows them: rates as percentages for people, money to the cent,
spreadsheet-safe CSV, JSON without NaN.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any, Protocol, TextIO

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from touchline.errors import InputError

#: Width of a table printed to a file rather than a terminal.
FILE_WIDTH = 180

# -- the table ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportTable:
    """Rows of named columns, with the period and other facts about them in ``meta``.

    Values are Python values: ``None`` for "not defined", floats for rates
    (fractions of 1), Decimals for money, dates for days. ``shown`` names the
    columns a printed table shows (all when empty); CSV and JSON carry every column.
    A printed table shows the floats of ``percent`` columns as percentages and
    those of ``points`` columns (differences of rates) in percentage points,
    and aligns ``text`` columns left.
    """

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    meta: Mapping[str, Any] = field(default_factory=dict)
    shown: tuple[str, ...] = ()
    percent: frozenset[str] = frozenset()
    points: frozenset[str] = frozenset()
    text: frozenset[str] = frozenset()

    def records(self) -> list[dict[str, Any]]:
        """Each row as a JSON-ready mapping: rates rounded to 4 places, money as numbers."""
        return [
            {c: json_value(v) for c, v in zip(self.columns, row, strict=True)} for row in self.rows
        ]

    def as_dict(self) -> dict[str, Any]:
        return {**{k: json_value(v) for k, v in self.meta.items()}, "rows": self.records()}

    def table(self) -> ReportTable:
        return self

    def to_csv(self) -> str:
        """A header row, then one row per row; empty cells for None.

        Text starting like a spreadsheet formula (journey names are free text) is
        prefixed with ``'`` so opening the file never runs it; numbers are left as
        they are, minus signs included.
        """
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(self.columns)
        for row in self.rows:
            writer.writerow([_csv_cell(v) for v in row])
        return out.getvalue()

    def render(self, out: TextIO) -> None:
        """Print for people: a heading and one table, ASCII when ``out`` is not a terminal."""
        console, frame = console_for(out)
        console.print(f"[bold]{escape(self.title)}[/bold]")
        shown = self.shown or self.columns
        table = Table(box=frame, show_edge=not console.is_terminal, pad_edge=False)
        for name in shown:
            text = name in self.text
            heading = name.replace("_", " ")  # words, so a narrow column wraps its heading
            table.add_column(heading, justify="left" if text else "right", no_wrap=text)
        for row in self.rows:
            table.add_row(*(escape(self._shown(c, row[self.columns.index(c)])) for c in shown))
        console.print(table)

    def _shown(self, column: str, value: Any) -> str:
        """A value as a printed table shows it: rates as percentages, money to the cent."""
        if value is None:
            return "-"
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, float) and column in self.percent:
            return f"{value * 100:.1f}%"
        if isinstance(value, float) and column in self.points:
            return f"{value * 100:+.1f} pts"
        if isinstance(value, float) and column.endswith("p_value"):
            return f"{value:.3g}"
        if isinstance(value, float | Decimal):
            return f"{value:,.2f}"
        if isinstance(value, date):
            return value.isoformat()
        return str(value)


class Report(Protocol):
    """What :func:`write_report` prints: a JSON document, a table, a way to show itself."""

    def as_dict(self) -> dict[str, Any]: ...

    def table(self) -> ReportTable: ...

    def render(self, out: TextIO) -> None: ...


def write_report(found: Report, fmt: str, out: TextIO) -> None:
    """Write ``found`` to ``out`` as ``json``, ``csv`` or a ``table`` for people."""
    if fmt == "json":
        out.write(json.dumps(found.as_dict(), indent=2, ensure_ascii=False) + "\n")
    elif fmt == "csv":
        out.write(found.table().to_csv())
    elif fmt == "table":
        found.render(out)
    else:
        raise InputError(f"unknown format {fmt!r}; use table, json or csv")


# -- values ---------------------------------------------------------------------------------


def json_value(value: Any) -> Any:
    """Floats to 4 places (4 digits when smaller), money to cents as a number, days as ISO."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return None  # JSON has no NaN or infinity
        # Tiny values (p-values) keep 4 significant digits rather than rounding to 0.
        return round(value, 4) if abs(value) >= 1e-4 else float(f"{value:.4g}")
    if isinstance(value, Decimal):
        return float(round(value, 2))
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    return value


_CENT = Decimal("0.01")
# Cells starting with these are formulas to a spreadsheet; CSV text is quoted with '.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: Any) -> str:
    if isinstance(value, Decimal):
        return str(value.quantize(_CENT))
    value = json_value(value)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return "'" + value if value.startswith(_FORMULA_STARTS) else value
    return str(value)


# -- printing ----------------------------------------------------------------------------


def console_for(out: TextIO) -> tuple[Console, box.Box]:
    """A rich console on ``out``: coloured on a terminal, plain ASCII of FILE_WIDTH in a file."""
    console = Console(file=out, highlight=False)
    if not console.is_terminal:
        console = Console(file=out, highlight=False, width=FILE_WIDTH, no_color=True)
    return console, box.SIMPLE_HEAD if console.is_terminal else box.ASCII


__all__ = ["FILE_WIDTH", "Report", "ReportTable", "console_for", "json_value", "write_report"]
