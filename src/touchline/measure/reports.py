"""Reports read from the daily rollups: message figures, journey uplift, split tests.

Everything here sums rows of ``daily_stats`` (see :mod:`touchline.measure.rollups`)
with SQL ``GROUP BY``; no report reads the outbox, events or conversions, so a
report costs the same for a thousand messages as for a hundred million.

* :func:`report` — message counters grouped by any of journey, step, variant,
  channel and day, with delivery, open, click, unsubscribe, bounce and
  conversion rates;
* :func:`journey_summary` — per journey: entries, goal conversions and revenue
  for the treated customers and for the holdout, and the journey's uplift
  over its holdout with 95% intervals (:func:`touchline.measure.experiments.uplift`);
* :func:`variant_report` — the variants of a split compared on one metric,
  with a winner only when :func:`~touchline.measure.experiments.declare_winner`
  names one.

Periods are whole UTC days, ``since`` and ``until`` both included. Every fact
counts on the UTC day it happened, so a message sent on Monday and opened on
Tuesday is sent on Monday and opened on Tuesday. ``docs/how-to/reports.md``
defines every figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Any, TextIO, get_args

from rich.markup import escape
from sqlalchemy import Connection, func, select

from touchline.errors import InputError, NotFound
from touchline.journeys.spec import JourneySpec
from touchline.measure.experiments import (
    GroupFigures,
    Metric,
    Uplift,
    VariantFigures,
    Verdict,
    declare_winner,
    uplift,
)
from touchline.measure.report_table import (
    Report,
    ReportTable,
    console_for,
    json_value,
    write_report,
)
from touchline.measure.stats import Comparison, Interval, Summary, proportion_interval
from touchline.store.tables import daily_stats, journey_versions, journeys

__all__ = [
    "CART_EVENTS",
    "CONFIDENCE",
    "DEFAULT_DAYS",
    "GROUPINGS",
    "JOURNEY_COLUMNS",
    "OPEN_CHANNELS",
    "VARIANT_MIN_SAMPLE",
    "JourneyFigures",
    "JourneyReport",
    "Report",
    "ReportTable",
    "VariantReport",
    "VariantRow",
    "journey_summary",
    "parse_by",
    "report",
    "resolve_days",
    "variant_report",
    "write_report",
]

#: What a message report may be grouped by, in the order columns are shown.
GROUPINGS = ("journey", "step", "variant", "channel", "day")
#: Channels that carry an open pixel; opens exist only there (SMS has no opens).
OPEN_CHANNELS = frozenset({"email"})
#: Trigger events of a cart (Segment's e-commerce names): a journey started by one
#: recovers carts, so its goal rate is also shown as the cart-recovery rate.
CART_EVENTS = frozenset({"Product Added", "Cart Viewed", "Checkout Started", "Cart Abandoned"})
#: Confidence of every interval and test in these reports.
CONFIDENCE = 0.95
#: Period when none is given: the 30 UTC days up to and including today.
DEFAULT_DAYS = 30
#: Entries at a split (messages, for click and open) each variant needs before a winner
#: is named, when the split sets no ``winner: min_sample``: about what it takes to see a
#: rate move from 20% to 25% at 95% and 80% power (required_sample gives 1,094);
#: smaller effects need more, so callers may ask for more.
VARIANT_MIN_SAMPLE = 1000
#: Width of tables written to a file or pipe (a terminal uses its own width).


def _names(text: str) -> tuple[str, ...]:
    """Column names from one line of text, so long lists of names stay short to read."""
    return tuple(text.split())


# Counters of a message row, summed per group; ``attributed_revenue`` is shown as revenue.
_MESSAGE_COUNTERS = _names(
    "sent delivered undelivered bounced complained failed skipped opened clicked machine_opened"
    " machine_clicked unsubscribed attributed attributed_revenue sms_parts sms_cost"
)
_RECEIPTS = ("delivered", "undelivered", "bounced", "complained")
# Counters of money; the others are whole numbers.
_MONEY = frozenset(
    _names("attributed_revenue sms_cost revenue revenue_sq holdout_revenue holdout_revenue_sq")
)
_JOURNEY_COUNTERS = _names(
    "entered holdout_entered converted revenue revenue_sq"
    " holdout_converted holdout_revenue holdout_revenue_sq"
)
_MESSAGE_RATES = _names(
    "delivery_rate open_rate open_rate_base ctr click_to_open unsubscribe_rate bounce_rate"
    " conversion_rate"
)
_MESSAGE_COLUMNS = (
    *(c for c in _MESSAGE_COUNTERS if c != "attributed_revenue"),
    "revenue",
    *_MESSAGE_RATES,
)
_MESSAGE_SHOWN = _names(
    "sent skipped delivery_rate open_rate ctr click_to_open unsubscribe_rate bounce_rate"
    " attributed conversion_rate revenue sms_cost"
)
# Columns whose floats are fractions of 1, printed as percentages...
_PERCENT_COLUMNS = frozenset(
    {*_MESSAGE_RATES, "goal_rate", "holdout_goal_rate", "cart_recovery_rate"}
    | {"uplift_relative", "uplift_relative_low", "uplift_relative_high"}
)
# ...and those holding a difference of two rates, printed in percentage points.
_POINT_COLUMNS = frozenset({"uplift", "uplift_low", "uplift_high"})
# Columns of text, set left in a printed table (numbers go right).
_TEXT_COLUMNS = frozenset({*GROUPINGS, "name", "trigger", "note", "open_rate_base"})


def _table(**fields: Any) -> ReportTable:
    """A ReportTable that knows which of the reports' columns are rates, points and text."""
    return ReportTable(
        **{"percent": _PERCENT_COLUMNS, "points": _POINT_COLUMNS, "text": _TEXT_COLUMNS, **fields}
    )


# -- periods and groupings ---------------------------------------------------------------


def resolve_days(since: date | None, until: date | None, *, today: date) -> tuple[date, date]:
    """The UTC days ``[since, until]``, both included: ``until`` defaults to ``today``,
    ``since`` to DEFAULT_DAYS days up to ``until``. InputError when ``since`` is later."""
    end = until or today
    if since is None and end < date.min + timedelta(days=DEFAULT_DAYS - 1):
        raise InputError(f"until must be {DEFAULT_DAYS} days or more after {date.min}")
    start = since or end - timedelta(days=DEFAULT_DAYS - 1)
    if start > end:
        raise InputError("since must not be later than until")
    return start, end


def parse_by(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """Groupings from ``"journey,channel"`` (or a sequence); InputError names an unknown one.

    ``step`` and ``variant`` mean nothing without their journey, so they bring
    ``journey`` along. The result is in :data:`GROUPINGS` order, without repeats.
    """
    if text is None:
        return ()
    names = [n.strip() for n in text.split(",")] if isinstance(text, str) else list(text)
    names = [n for n in names if n]
    unknown = [n for n in names if n not in GROUPINGS]
    if unknown:
        raise InputError(f"by: unknown grouping {unknown[0]!r}; use {', '.join(GROUPINGS)}")
    if {"step", "variant"} & set(names):
        names.append("journey")
    return tuple(g for g in GROUPINGS if g in names)


# -- messages ----------------------------------------------------------------------------


@dataclass
class _Group:
    """One group's sums, with the parts of the rates that depend on the channel."""

    counts: dict[str, Any] = field(default_factory=dict)
    receipt_sent: int = 0  # sent on channels that reported delivery
    open_base: int = 0  # delivered (or sent, without receipts) on channels with opens
    open_bases: set[str] = field(default_factory=set)
    open_clicked: int = 0  # clicks on channels with opens, for click-to-open

    def add(self, row: Mapping[str, Any]) -> None:
        """Add one channel's sums; they report delivery when any receipt came for them."""
        reports_delivery = any(row[name] for name in _RECEIPTS)
        for name in _MESSAGE_COUNTERS:
            self.counts[name] = self.counts.get(name, 0) + row[name]
        if reports_delivery:
            self.receipt_sent += row["sent"]
        if row["channel"] in OPEN_CHANNELS:
            base = "delivered" if reports_delivery else "sent"
            self.open_base += row[base]
            self.open_bases.add(base)
            self.open_clicked += row["clicked"]

    def figures(self) -> tuple[Any, ...]:
        c = self.counts
        sent = c["sent"]
        rates = {
            "delivery_rate": _rate(c["delivered"], self.receipt_sent),
            "open_rate": _rate(c["opened"], self.open_base),
            "open_rate_base": "+".join(sorted(self.open_bases)) or None,
            "ctr": _rate(c["clicked"], sent),
            "click_to_open": _rate(self.open_clicked, c["opened"]),
            "unsubscribe_rate": _rate(c["unsubscribed"], sent),
            "bounce_rate": _rate(c["bounced"], self.receipt_sent),
            "conversion_rate": _rate(c["attributed"], sent),
        }
        values = {**c, "revenue": c["attributed_revenue"], **rates}
        return tuple(values[name] for name in _MESSAGE_COLUMNS)


def report(
    conn: Connection, workspace_id: str, *, since: date, until: date, by: Sequence[str]
) -> ReportTable:
    """Message figures of the UTC days ``[since, until]``, one row per group of ``by``.

    ``by`` is a subset of :data:`GROUPINGS` (see :func:`parse_by`); with none,
    one row holds the whole workspace. Counters are summed by SQL; rates are
    worked out per group (see ``docs/how-to/reports.md``):

    * delivery and bounce rate: delivered or bounced out of sent, over the
      channels that reported any delivery for the group (None without any);
    * open rate: opened out of delivered, or out of sent on a channel that
      reported no delivery for the group — ``open_rate_base`` says which — over
      the channels with opens (:data:`OPEN_CHANNELS`); machine opens excluded;
    * CTR, unsubscribe and conversion rate: clicked, unsubscribed or
      attributed orders out of sent; click-to-open: clicks on channels with
      opens out of opened.
    """
    by = parse_by(by)
    keys = {
        "journey": daily_stats.c.journey_id,
        "step": daily_stats.c.step_id,
        "variant": daily_stats.c.variant,
        "day": daily_stats.c.day,
    }
    # The channel is always a group key in SQL: rates depend on it, and it is folded away here.
    group_columns = [keys[g].label(g) for g in by if g != "channel"] + [daily_stats.c.channel]
    found = conn.execute(
        select(*group_columns, *_sums(_MESSAGE_COUNTERS))
        .where(
            daily_stats.c.workspace_id == workspace_id,
            daily_stats.c.day >= since,
            daily_stats.c.day <= until,
            daily_stats.c.channel != "",
        )
        .group_by(*group_columns)
    )
    rows = [_counts(r, _MESSAGE_COUNTERS) for r in found]
    names = _journey_keys(conn, workspace_id) if "journey" in by else {}
    groups: dict[tuple[Any, ...], _Group] = {}
    for r in rows:
        key = tuple(_group_value(g, r, names) for g in by)
        groups.setdefault(key, _Group()).add(r)
    ordered = sorted(groups.items(), key=lambda item: tuple(_sort_key(v) for v in item[0]))
    return _table(
        title=f"Messages {since.isoformat()} to {until.isoformat()}",
        columns=(*by, *_MESSAGE_COLUMNS),
        rows=tuple((*key, *group.figures()) for key, group in ordered),
        meta={"since": since, "until": until, "by": list(by)},
        shown=(*by, *_MESSAGE_SHOWN),
    )


def _group_value(grouping: str, row: Mapping[str, Any], names: Mapping[int, str]) -> Any:
    value = row[grouping]
    if grouping == "journey":
        return names.get(value, str(value)) if value else None
    if grouping == "day":
        return value
    return value or None


# -- journeys and their holdout ----------------------------------------------------------


@dataclass(frozen=True)
class JourneyFigures:
    """One journey over a period, from its journey-level rollups.

    ``entered``/``converted``/``revenue`` are the treated entries (those who
    got the messages), ``holdout_*`` the journey's control group. A conversion
    is the goal reached within its window, counted on the day it happened,
    once per entry; revenue is the goal's value. ``uplift`` compares the two
    per entry (None when it cannot be worked out; ``uplift_note`` says why).
    """

    key: str
    name: str
    category: str
    trigger: str
    holdout_percent: float
    entered: int
    holdout_entered: int
    converted: int
    holdout_converted: int
    revenue: Decimal
    holdout_revenue: Decimal
    uplift: Uplift | None
    uplift_note: str | None

    @property
    def goal_rate(self) -> float | None:
        """Goal conversions per treated entry."""
        return _rate(self.converted, self.entered)

    @property
    def holdout_goal_rate(self) -> float | None:
        return _rate(self.holdout_converted, self.holdout_entered)

    @property
    def cart_recovery_rate(self) -> float | None:
        """The goal rate of a journey a cart event starts; None for other journeys."""
        return self.goal_rate if self.trigger in CART_EVENTS else None

    @property
    def revenue_per_entry(self) -> float | None:
        return float(self.revenue) / self.entered if self.entered else None

    @property
    def holdout_revenue_per_entry(self) -> float | None:
        return float(self.holdout_revenue) / self.holdout_entered if self.holdout_entered else None

    @property
    def significant(self) -> bool:
        """Whether the goal rate's uplift over the holdout is significant at CONFIDENCE."""
        return self.uplift is not None and self.uplift.conversion.significant

    def as_dict(self) -> dict[str, Any]:
        found = self.uplift
        return {
            "journey": self.key,
            "name": self.name,
            "category": self.category,
            "trigger": self.trigger,
            "holdout_percent": self.holdout_percent,
            "treated": _side(self.entered, self.converted, self.revenue),
            "holdout": _side(self.holdout_entered, self.holdout_converted, self.holdout_revenue),
            "cart_recovery_rate": json_value(self.cart_recovery_rate),
            "uplift": None
            if found is None
            else {
                "conversion": _comparison(found.conversion),
                "revenue_per_entry": _comparison(found.revenue_per_customer),
                "incremental_conversions": _interval(found.incremental_conversions),
                "incremental_revenue": _interval(found.incremental_revenue),
                "significant": self.significant,
            },
            "uplift_note": self.uplift_note,
        }

    def row(self) -> tuple[Any, ...]:
        """The values of :data:`JOURNEY_COLUMNS`, flat, for CSV and printed tables."""
        found = self.uplift
        conversion = found.conversion if found else None
        revenue = found.revenue_per_customer if found else None
        return (
            self.key,
            self.name,
            self.trigger,
            self.holdout_percent,
            self.entered,
            self.holdout_entered,
            self.converted,
            self.holdout_converted,
            self.goal_rate,
            self.holdout_goal_rate,
            self.cart_recovery_rate,
            self.revenue,
            self.holdout_revenue,
            self.revenue_per_entry,
            self.holdout_revenue_per_entry,
            *_flat(conversion, relative=True),
            *_flat(revenue, relative=False),
            *_bounds(found.incremental_conversions if found else None),
            *_bounds(found.incremental_revenue if found else None),
            self.significant if found else None,
            self.uplift_note,
        )


JOURNEY_COLUMNS = _names(
    "journey name trigger holdout_percent entered holdout_entered converted holdout_converted"
    " goal_rate holdout_goal_rate cart_recovery_rate revenue holdout_revenue revenue_per_entry"
    " holdout_revenue_per_entry uplift uplift_low uplift_high uplift_relative uplift_relative_low"
    " uplift_relative_high uplift_p_value revenue_per_entry_uplift revenue_per_entry_uplift_low"
    " revenue_per_entry_uplift_high revenue_per_entry_uplift_p_value incremental_conversions"
    " incremental_conversions_low incremental_conversions_high incremental_revenue"
    " incremental_revenue_low incremental_revenue_high significant note"
)
"""The columns of the journeys table (CSV): see :meth:`JourneyFigures.row`."""
_JOURNEY_SHOWN = _names(
    "journey entered holdout_entered goal_rate holdout_goal_rate uplift uplift_low uplift_high"
    " incremental_revenue significant note"
)


def journey_summary(
    conn: Connection, workspace_id: str, *, since: date, until: date
) -> list[JourneyFigures]:
    """Every journey of the workspace over the UTC days ``[since, until]``, by key.

    The uplift is per entry: the treated side is ``GroupFigures(entered,
    converted, Summary(entered, revenue, revenue_sq))``, the holdout alike, passed
    to :func:`~touchline.measure.experiments.uplift`. It is left out (with a
    note) when either side has no entries, or when a side has more conversions
    than entries in the period — conversions of entries made before ``since``,
    which the period must then be widened to include.
    """
    sums = {
        r.journey_id: _counts(r, _JOURNEY_COUNTERS)
        for r in conn.execute(
            select(daily_stats.c.journey_id, *_sums(_JOURNEY_COUNTERS))
            .where(
                daily_stats.c.workspace_id == workspace_id,
                daily_stats.c.day >= since,
                daily_stats.c.day <= until,
                daily_stats.c.journey_id != 0,
                daily_stats.c.step_id == "",
                daily_stats.c.channel == "",
            )
            .group_by(daily_stats.c.journey_id)
        )
    }
    found = []
    for j in conn.execute(
        select(journeys, journey_versions.c.spec)
        .outerjoin(journey_versions, journey_versions.c.id == journeys.c.current_version_id)
        .where(journeys.c.workspace_id == workspace_id)
        .order_by(journeys.c.key)
    ):
        counts = sums.get(j.id) or _counts(None, _JOURNEY_COUNTERS)
        treated, holdout, note = _groups(counts)
        found.append(
            JourneyFigures(
                key=j.key,
                name=j.name,
                category=j.category,
                trigger=j.trigger_event,
                holdout_percent=float((j.spec or {}).get("holdout", 0)),
                entered=counts["entered"],
                holdout_entered=counts["holdout_entered"],
                converted=counts["converted"],
                holdout_converted=counts["holdout_converted"],
                revenue=counts["revenue"],
                holdout_revenue=counts["holdout_revenue"],
                uplift=uplift(treated, holdout, confidence=CONFIDENCE)
                if treated and holdout
                else None,
                uplift_note=note,
            )
        )
    return found


def _groups(c: Mapping[str, Any]) -> tuple[GroupFigures | None, GroupFigures | None, str | None]:
    """The two sides of the uplift from a journey's sums, or None and why not."""
    if not c["holdout_entered"]:
        return None, None, "no holdout entries in the period"
    if not c["entered"]:
        return None, None, "no treated entries in the period"
    if c["converted"] > c["entered"] or c["holdout_converted"] > c["holdout_entered"]:
        return None, None, "more conversions than entries: widen the period to the goal window"
    return (
        _group(c["entered"], c["converted"], c["revenue"], c["revenue_sq"]),
        _group(
            c["holdout_entered"],
            c["holdout_converted"],
            c["holdout_revenue"],
            c["holdout_revenue_sq"],
        ),
        None,
    )


def _group(entries: int, converted: int, revenue: Any, squares: Any) -> GroupFigures:
    total = float(revenue)
    # Squares are stored to the cent, so their sum can round below total**2 / n,
    # which no real values allow; that floor is the exact value then.
    floor = total * total / entries
    return GroupFigures(
        int(entries), int(converted), Summary(int(entries), total, max(float(squares), floor))
    )


@dataclass(frozen=True)
class JourneyReport:
    """:func:`journey_summary` over a period, as JSON, a table and printed for people."""

    since: date
    until: date
    journeys: Sequence[JourneyFigures]

    def as_dict(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "confidence": CONFIDENCE,
            "journeys": [j.as_dict() for j in self.journeys],
        }

    def table(self) -> ReportTable:
        return _table(
            title=f"Journeys {self.since.isoformat()} to {self.until.isoformat()}",
            columns=JOURNEY_COLUMNS,
            rows=tuple(j.row() for j in self.journeys),
            meta={"since": self.since, "until": self.until},
            shown=_JOURNEY_SHOWN,
        )

    def render(self, out: TextIO) -> None:
        self.table().render(out)


# -- split tests -------------------------------------------------------------------------


@dataclass(frozen=True)
class VariantRow:
    """One variant of a split: its entries and goal conversions at the split, the messages
    sent after it, and its figure on the metric with an interval (Wilson for rates, none
    for revenue per entry)."""

    variant: str
    entries: int
    converted: int
    revenue: Decimal
    sent: int
    opened: int
    clicked: int
    value: float | None
    low: float | None
    high: float | None


@dataclass(frozen=True)
class VariantReport:
    """The variants of one split compared on ``metric``, and the verdict."""

    journey: str
    step: str
    metric: Metric
    min_sample: int
    confidence: float
    since: date
    until: date
    variants: tuple[VariantRow, ...]
    verdict: Verdict

    @property
    def unit(self) -> str:
        return "messages sent" if self.metric in _MESSAGE_METRICS else "entries at the split"

    def as_dict(self) -> dict[str, Any]:
        v = self.verdict
        return {
            "journey": self.journey,
            "step": self.step,
            "metric": self.metric,
            "unit": self.unit,
            "min_sample": self.min_sample,
            "confidence": self.confidence,
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "variants": [
                {c: json_value(x) for c, x in zip(_VARIANT_COLUMNS, r, strict=True)}
                for r in self.rows()
            ],
            "verdict": {
                "winner": v.winner,
                "leader": v.leader,
                "reason": v.reason,
                "comparisons": {
                    name: {
                        **_comparison(c, a="rival", b="leader"),
                        "adjusted_p_value": json_value(v.adjusted_p_values.get(name)),
                    }
                    for name, c in v.comparisons.items()
                },
            },
        }

    def rows(self) -> list[tuple[Any, ...]]:
        """The values of each variant for :data:`_VARIANT_COLUMNS`."""
        v = self.verdict
        found = []
        for r in self.variants:
            c = v.comparisons.get(r.variant)
            found.append(
                (
                    r.variant,
                    r.entries,
                    r.converted,
                    r.revenue,
                    r.sent,
                    r.opened,
                    r.clicked,
                    r.value,
                    r.low,
                    r.high,
                    None if c is None else c.difference,
                    None if c is None else c.p_value,
                    v.adjusted_p_values.get(r.variant),
                    r.variant == v.leader,
                    r.variant == v.winner,
                )
            )
        return found

    def table(self) -> ReportTable:
        money = self.metric == "revenue"
        return _table(
            title=f"{self.journey} / {self.step}: {self.metric} ({self.unit})",
            columns=_VARIANT_COLUMNS,
            rows=tuple(self.rows()),
            meta={"journey": self.journey, "step": self.step, "metric": self.metric},
            percent=frozenset()
            if money
            else frozenset({"metric_value", "metric_low", "metric_high"}),
            points=frozenset() if money else frozenset({"behind_leader"}),
        )

    def render(self, out: TextIO) -> None:
        self.table().render(out)
        console, _ = console_for(out)
        console.print(f"Verdict: {escape(self.verdict.reason)}")


_VARIANT_COLUMNS = _names(
    "variant entries converted revenue sent opened clicked metric_value metric_low metric_high"
    " behind_leader p_value adjusted_p_value leader winner"
)
# Metrics counted per message sent after the split; the others per entry at the split.
_MESSAGE_METRICS = ("click", "open")
_SPLIT_COUNTERS = ("entered", "converted", "revenue", "revenue_sq")
_SENT_COUNTERS = ("sent", "opened", "clicked")


def variant_report(
    conn: Connection,
    workspace_id: str,
    journey_key: str,
    step_id: str,
    *,
    metric: Metric,
    since: date,
    until: date,
    min_sample: int | None = None,
) -> VariantReport:
    """Compare the variants of split ``step_id`` of journey ``journey_key`` on ``metric``.

    Units are those of automatic winners (:mod:`touchline.measure.winners`):
    ``conversion`` and ``revenue`` count per entry at the split (the split
    step's rollup row per variant: entries, goal conversions, revenue and its
    squares); ``click`` and ``open`` per message of the journey sent on that
    variant (unique human clicks and opens). Counts are capped at their whole:
    a period may hold conversions of entries made before it. ``min_sample``
    defaults to the split's ``winner: min_sample``, else VARIANT_MIN_SAMPLE;
    the confidence is the split's ``winner: confidence``, else CONFIDENCE.
    NotFound for an unknown journey or step; InputError for a step that is not
    a split.
    """
    if metric not in get_args(Metric):
        raise InputError(f"unknown metric {metric!r}; use one of {', '.join(get_args(Metric))}")
    row = conn.execute(
        select(journeys.c.id, journey_versions.c.spec)
        .join(journey_versions, journey_versions.c.id == journeys.c.current_version_id)
        .where(journeys.c.workspace_id == workspace_id, journeys.c.key == journey_key)
    ).first()
    if row is None:
        raise NotFound(f"no journey {journey_key!r} in this workspace")
    spec = JourneySpec.model_validate(row.spec)
    try:
        step = spec.step(step_id)
    except KeyError:
        raise NotFound(f"journey {journey_key!r} has no step {step_id!r}") from None
    if not step.split:
        raise InputError(f"step {step_id!r} is a {step.kind} step, not a split")
    rule = step.winner
    sample = min_sample or (rule.min_sample if rule else VARIANT_MIN_SAMPLE)
    if sample < 1:
        raise InputError("min_sample must be at least 1")
    confidence = rule.confidence if rule else CONFIDENCE
    names = [v.name for v in step.split]
    period = [
        daily_stats.c.workspace_id == workspace_id,
        daily_stats.c.day >= since,
        daily_stats.c.day <= until,
        daily_stats.c.journey_id == row.id,
        daily_stats.c.variant.in_(names),
    ]
    at_split = _sums_by_variant(
        conn,
        [*period, daily_stats.c.step_id == step_id, daily_stats.c.channel == ""],
        _SPLIT_COUNTERS,
    )
    messages = _sums_by_variant(conn, [*period, daily_stats.c.channel != ""], _SENT_COUNTERS)
    rows, figures = [], {}
    for name in names:
        s = at_split.get(name) or _counts(None, _SPLIT_COUNTERS)
        m = messages.get(name) or _counts(None, _SENT_COUNTERS)
        entries, sent, revenue = s["entered"], m["sent"], s["revenue"]
        converted = min(s["converted"], entries)
        opened, clicked = min(m["opened"], sent), min(m["clicked"], sent)
        if metric in _MESSAGE_METRICS:
            figures[name] = VariantFigures(customers=sent, clicked=clicked, opened=opened)
        else:
            summary = (
                _group(entries, converted, revenue, s["revenue_sq"]).revenue
                if entries
                else Summary(0, 0.0, 0.0)
            )
            figures[name] = VariantFigures(customers=entries, converted=converted, revenue=summary)
        value, low, high = _variant_figure(figures[name], metric, confidence=confidence)
        rows.append(
            VariantRow(
                variant=name,
                entries=entries,
                converted=s["converted"],
                revenue=revenue,
                sent=sent,
                opened=m["opened"],
                clicked=m["clicked"],
                value=value,
                low=low,
                high=high,
            )
        )
    verdict = declare_winner(figures, metric=metric, min_sample=sample, confidence=confidence)
    return VariantReport(
        journey=journey_key,
        step=step_id,
        metric=metric,
        min_sample=sample,
        confidence=confidence,
        since=since,
        until=until,
        variants=tuple(rows),
        verdict=verdict,
    )


def _sums_by_variant(
    conn: Connection, where: list[Any], counters: Sequence[str]
) -> dict[str, dict[str, Any]]:
    query = select(daily_stats.c.variant, *_sums(counters)).where(*where)
    return {
        r.variant: _counts(r, counters) for r in conn.execute(query.group_by(daily_stats.c.variant))
    }


def _variant_figure(
    figures: VariantFigures, metric: Metric, *, confidence: float
) -> tuple[float | None, float | None, float | None]:
    """The variant's figure on ``metric`` and its interval (none for revenue per entry)."""
    if not figures.customers:
        return None, None, None
    if metric == "revenue":
        assert figures.revenue is not None
        return figures.revenue.mean, None, None
    successes = {"conversion": figures.converted, "click": figures.clicked, "open": figures.opened}
    found = proportion_interval(successes[metric], figures.customers, confidence=confidence)
    return found.estimate, found.low, found.high


# -- helpers -----------------------------------------------------------------------------


def _journey_keys(conn: Connection, workspace_id: str) -> dict[int, str]:
    query = select(journeys.c.id, journeys.c.key).where(journeys.c.workspace_id == workspace_id)
    return {r.id: r.key for r in conn.execute(query)}


def _sums(counters: Sequence[str]) -> list[Any]:
    """``SUM(counter) AS counter`` for each counter, for a grouped select of daily_stats."""
    return [func.sum(daily_stats.c[name]).label(name) for name in counters]


def _counts(row: Any, counters: Sequence[str]) -> dict[str, Any]:
    """A row's sums as Python numbers: ints for counts, Decimals for money, 0 for none.

    PostgreSQL sums bigints as numeric, SQLite as integers; reports want one kind.
    ``row`` None gives zeros; a row's other columns (the group keys) are kept.
    """
    found: dict[str, Any] = dict(row._mapping) if row is not None else {}
    for name in counters:
        value = found.get(name) or 0
        found[name] = Decimal(value) if name in _MONEY else int(value)
    return found


def _rate(part: int | float, whole: int | float) -> float | None:
    return part / whole if whole else None


def _sort_key(value: Any) -> tuple[bool, Any]:
    return (value is not None, value if value is not None else "")


def _side(entries: int, converted: int, revenue: Decimal) -> dict[str, Any]:
    return {
        "entries": entries,
        "converted": converted,
        "goal_rate": json_value(_rate(converted, entries)),
        "revenue": json_value(revenue),
        "revenue_per_entry": json_value(_rate(float(revenue), entries)),
    }


def _comparison(c: Comparison, *, a: str = "holdout", b: str = "treated") -> dict[str, Any]:
    """A comparison as JSON, its two groups named ``a`` and ``b``; the difference is b - a."""
    return {
        a: json_value(c.a),
        b: json_value(c.b),
        "difference": json_value(c.difference),
        "low": json_value(c.interval.low if c.interval else None),
        "high": json_value(c.interval.high if c.interval else None),
        "relative": json_value(c.relative_lift),
        "relative_low": json_value(c.relative_interval.low if c.relative_interval else None),
        "relative_high": json_value(c.relative_interval.high if c.relative_interval else None),
        "p_value": json_value(c.p_value),
        "test": c.test,
        "significant": c.significant,
        "reason": c.reason,
    }


def _interval(i: Interval | None) -> dict[str, Any] | None:
    if i is None:
        return None
    return {
        "estimate": json_value(i.estimate),
        "low": json_value(i.low),
        "high": json_value(i.high),
    }


def _flat(c: Comparison | None, *, relative: bool) -> tuple[Any, ...]:
    """Difference, its interval, (relative lift and its interval,) p-value."""
    if c is None:
        return (None,) * (7 if relative else 4)
    bounds = (c.interval.low, c.interval.high) if c.interval else (None, None)
    if not relative:
        return (c.difference, *bounds, c.p_value)
    lift = c.relative_interval
    lift_bounds = (lift.low, lift.high) if lift else (None, None)
    return (c.difference, *bounds, c.relative_lift, *lift_bounds, c.p_value)


def _bounds(i: Interval | None) -> tuple[float | None, float | None, float | None]:
    return (None, None, None) if i is None else (i.estimate, i.low, i.high)
