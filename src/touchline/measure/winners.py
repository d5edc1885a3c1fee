"""Automatic winners of split tests: decide once, then send every new customer to the winner.

A split step may carry ``winner: {metric, min_sample, confidence}``. Three parts
make it work, and the journey engine knows none of them:

* :func:`evaluate_experiments` (run by the worker every
  :data:`~touchline.worker.loop.EVALUATE_EVERY`, and by ``touchline experiments
  evaluate``) sums the report rollups of each undecided split per variant, asks
  :func:`~touchline.measure.experiments.declare_winner` for a verdict and records
  a winner in ``experiment_winners``. **A recorded winner is final**: it is never
  re-evaluated or replaced, whatever the figures do afterwards, because customers
  have been sent to it and a test that may flip back was never decided.
* :class:`WinnerCache` gives the runtime, per journey, the winners recorded,
  each list trusted for :data:`WINNER_CACHE_TTL` seconds.
* :func:`route_to_winners` turns a spec into a copy whose decided splits keep
  only their winning variant, at 100%. The engine runs that copy as it runs any
  spec: every customer who reaches the split from then on gets the winner, and
  the step log and rollups record the assignment as usual. Customers already
  past the split keep the variant they got.

Units: for ``conversion`` and ``revenue`` a variant's customers are the entries
at the split (its ``daily_stats`` row), its successes the goal conversions and
revenue of those entries; for ``click`` they are the messages of the journey
sent on that variant, and their unique human clicks.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Text, cast, func, select

from touchline.journeys.loader import spec_to_data
from touchline.journeys.spec import JourneySpec, Winner
from touchline.measure.experiments import Correction, VariantFigures, Verdict, declare_winner
from touchline.measure.stats import Comparison, Summary
from touchline.store.db import insert_ignore
from touchline.store.tables import (
    daily_stats,
    experiment_winners,
    journey_versions,
    journeys,
)

__all__ = [
    "CORRECTION",
    "WINNER_CACHE_TTL",
    "DeclaredWinner",
    "Decision",
    "Experiment",
    "WinnerCache",
    "assess",
    "assess_experiments",
    "declared_winners",
    "evaluate_experiments",
    "find_experiments",
    "route_to_winners",
    "variant_figures",
]

WINNER_CACHE_TTL = 5.0
"""Seconds a worker trusts its list of a journey's winners: a winner recorded by another
process routes that worker's customers within this; its own decisions route at once."""

CORRECTION: Correction = "holm"
"""Multiple-comparison correction of automatic verdicts: Holm keeps Bonferroni's guarantee
with more power (see docs/design/experiments.md)."""

# Matches the key in a stored spec's JSON text (SQLite's and PostgreSQL's rendering
# alike): a cheap filter in SQL; the parsed spec decides.
_WINNER_KEY = '%"winner"%'


@dataclass(frozen=True)
class Experiment:
    """A split step with ``winner:`` in the current version of an active journey."""

    workspace_id: str
    journey_id: int
    journey: str
    step_id: str
    variants: tuple[str, ...]
    rule: Winner


@dataclass(frozen=True)
class Decision:
    """An experiment's verdict on the figures of the moment; ``recorded`` when this call
    recorded its winner (a winner already recorded is never judged again)."""

    experiment: Experiment
    figures: Mapping[str, VariantFigures]
    verdict: Verdict
    recorded: bool = False

    @property
    def winner(self) -> str | None:
        return self.verdict.winner

    def as_dict(self) -> dict[str, Any]:
        """The verdict and the figures it rests on, JSON-safe (kept as a winner's detail)."""
        e, v = self.experiment, self.verdict
        unit = "messages sent" if e.rule.metric == "click" else "entries at the split"
        return {
            "journey": e.journey,
            "step": e.step_id,
            "metric": e.rule.metric,
            "min_sample": e.rule.min_sample,
            "confidence": e.rule.confidence,
            "unit": unit,
            "winner": v.winner,
            "leader": v.leader,
            "reason": v.reason,
            "variants": [_variant_dict(name, self.figures[name], e.rule) for name in e.variants],
            "comparisons": {
                name: _comparison_dict(c, v.adjusted_p_values.get(name))
                for name, c in v.comparisons.items()
            },
        }


@dataclass(frozen=True)
class DeclaredWinner:
    """A recorded winner: which variant, on what metric, when, and the verdict's figures."""

    workspace_id: str
    journey_id: int
    journey: str
    step_id: str
    winner: str
    metric: str
    decided_at: datetime
    detail: Mapping[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "journey": self.journey,
            "step": self.step_id,
            "winner": self.winner,
            "metric": self.metric,
            "decided_at": self.decided_at.isoformat(),
            "detail": dict(self.detail),
        }


# -- finding and judging ---------------------------------------------------------------


def find_experiments(
    conn: Connection, *, workspace_id: str | None = None, undecided: bool = True
) -> list[Experiment]:
    """Split steps with ``winner:`` in active journeys' current versions (of one workspace,
    or all); with ``undecided``, only those without a recorded winner.

    One query when no journey configures a winner: the stored spec text is
    filtered in SQL and only the journeys that pass are parsed.
    """
    query = (
        select(journeys.c.workspace_id, journeys.c.id, journeys.c.key, journey_versions.c.spec)
        .join(journey_versions, journey_versions.c.id == journeys.c.current_version_id)
        .where(
            journeys.c.status == "active",
            cast(journey_versions.c.spec, Text).like(_WINNER_KEY),
        )
        .order_by(journeys.c.workspace_id, journeys.c.key)
    )
    if workspace_id is not None:
        query = query.where(journeys.c.workspace_id == workspace_id)
    found: list[Experiment] = []
    for row in conn.execute(query):
        spec = JourneySpec.model_validate(row.spec)
        for step in spec.steps:
            if step.split and step.winner:
                found.append(
                    Experiment(
                        workspace_id=row.workspace_id,
                        journey_id=row.id,
                        journey=row.key,
                        step_id=step.id,
                        variants=tuple(v.name for v in step.split),
                        rule=step.winner,
                    )
                )
    if not undecided or not found:
        return found
    decided = {
        (row.journey_id, row.step_id)
        for row in conn.execute(
            select(experiment_winners.c.journey_id, experiment_winners.c.step_id).where(
                experiment_winners.c.journey_id.in_(sorted({e.journey_id for e in found}))
            )
        )
    }
    return [e for e in found if (e.journey_id, e.step_id) not in decided]


def variant_figures(conn: Connection, experiment: Experiment) -> dict[str, VariantFigures]:
    """Each variant's figures on the experiment's metric, summed over every day's rollups.

    Counts are clamped to their whole (a conversion counted on a day whose entry
    fell outside the rollups cannot make a rate above one).
    """
    ds = daily_stats.c
    where = [
        ds.workspace_id == experiment.workspace_id,
        ds.journey_id == experiment.journey_id,
        ds.variant.in_(experiment.variants),
    ]
    counters: tuple[str, ...]
    if experiment.rule.metric == "click":
        counters = ("sent", "clicked")
        where.append(ds.channel != "")
    else:
        counters = ("entered", "converted", "revenue", "revenue_sq")
        where += [ds.step_id == experiment.step_id, ds.channel == ""]
    sums: dict[str, Mapping[str, Any]] = {
        row.variant: dict(row._mapping)
        for row in conn.execute(
            select(ds.variant, *(func.sum(ds[name]).label(name) for name in counters))
            .where(*where)
            .group_by(ds.variant)
        )
    }
    figures: dict[str, VariantFigures] = {}
    for name in experiment.variants:
        found = sums.get(name, {})
        if experiment.rule.metric == "click":
            sent = int(found.get("sent") or 0)
            clicked = min(int(found.get("clicked") or 0), sent)
            figures[name] = VariantFigures(customers=sent, clicked=clicked)
            continue
        entered = int(found.get("entered") or 0)
        converted = min(int(found.get("converted") or 0), entered)
        revenue = _summary(entered, found.get("revenue"), found.get("revenue_sq"))
        figures[name] = VariantFigures(customers=entered, converted=converted, revenue=revenue)
    return figures


def _summary(n: int, total: Decimal | None, squares: Decimal | None) -> Summary:
    """Revenue per entry as running sums; squares are kept to the cent, so their sum may
    round below ``total**2 / n``, which no real values allow: that floor is exact then."""
    if n == 0:
        return Summary(0, 0.0, 0.0)
    value = float(total or 0)
    return Summary(n, value, max(float(squares or 0), value * value / n))


def assess(conn: Connection, experiment: Experiment) -> Decision:
    """The experiment's verdict on today's figures; nothing is written."""
    figures = variant_figures(conn, experiment)
    rule = experiment.rule
    verdict = declare_winner(
        figures,
        metric=rule.metric,
        min_sample=rule.min_sample,
        confidence=rule.confidence,
        correction=CORRECTION,
    )
    return Decision(experiment, figures, verdict)


def assess_experiments(conn: Connection, *, workspace_id: str | None = None) -> list[Decision]:
    """Live verdicts of every undecided experiment (of one workspace, or all); read only."""
    return [assess(conn, e) for e in find_experiments(conn, workspace_id=workspace_id)]


def evaluate_experiments(conn: Connection, *, now: datetime) -> list[Decision]:
    """Judge every undecided experiment of the store and record each winner found.

    Returns one decision per experiment judged, ``recorded`` for the winners this
    call wrote. A winner is written once: the row is unique per (journey, split
    step) and an existing one is never replaced, so two workers deciding at once
    leave the first decision, and later figures never change it.
    """
    decisions = []
    for decision in assess_experiments(conn):
        if decision.winner is not None:
            e = decision.experiment
            added = insert_ignore(
                conn,
                experiment_winners,
                {
                    "workspace_id": e.workspace_id,
                    "journey_id": e.journey_id,
                    "step_id": e.step_id,
                    "winner": decision.winner,
                    "metric": e.rule.metric,
                    "decided_at": now,
                    "detail": decision.as_dict(),
                },
                key=["journey_id", "step_id"],
            )
            decision = Decision(e, decision.figures, decision.verdict, recorded=added > 0)
        decisions.append(decision)
    return decisions


def declared_winners(
    conn: Connection, *, workspace_id: str | None = None, journey_id: int | None = None
) -> list[DeclaredWinner]:
    """Recorded winners (of one workspace or journey, or all), oldest decision first."""
    query = (
        select(experiment_winners, journeys.c.key)
        .join(journeys, journeys.c.id == experiment_winners.c.journey_id)
        .order_by(experiment_winners.c.decided_at, experiment_winners.c.id)
    )
    if workspace_id is not None:
        query = query.where(experiment_winners.c.workspace_id == workspace_id)
    if journey_id is not None:
        query = query.where(experiment_winners.c.journey_id == journey_id)
    return [
        DeclaredWinner(
            workspace_id=row.workspace_id,
            journey_id=row.journey_id,
            journey=row.key,
            step_id=row.step_id,
            winner=row.winner,
            metric=row.metric,
            decided_at=row.decided_at,
            detail=row.detail or {},
        )
        for row in conn.execute(query)
    ]


# -- routing ---------------------------------------------------------------------------


def route_to_winners(spec: JourneySpec, winners: Mapping[str, str]) -> JourneySpec:
    """``spec`` with each decided split sending everyone to its winner.

    ``winners`` maps split step ids to winning variant names. A split is changed
    only if it carries ``winner:`` and the winner is one of its variants (a later
    version may have renamed them, or dropped ``winner:`` to stop the routing);
    it then keeps that variant alone, with its ``goto``, at 100%. The copy is a
    valid spec built from :func:`spec_to_data`, so its step index is its own;
    ``spec`` itself is returned when nothing changes.
    """
    data = spec_to_data(spec)
    changed = False
    for step, step_data in zip(spec.steps, data["steps"], strict=True):
        name = winners.get(step.id)
        if name is None or not step.split or step.winner is None:
            continue
        chosen = [v for v in step_data["split"] if v["name"] == name]
        if chosen:
            step_data["split"] = [{**chosen[0], "percent": 100}]
            changed = True
    return JourneySpec.model_validate(data) if changed else spec


class WinnerCache:
    """Recorded winners per journey for the runtime, and the routed specs built from them.

    A journey's winners are read once per ``ttl`` seconds (``monotonic`` time);
    specs without ``winner:`` never cause a read. Thread-safe.
    """

    def __init__(
        self, *, ttl: float = WINNER_CACHE_TTL, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl = ttl
        self._monotonic = monotonic
        self._winners: dict[int, tuple[dict[str, str], float]] = {}
        self._routed: dict[tuple[int, tuple[tuple[str, str], ...]], JourneySpec] = {}
        self._lock = threading.Lock()

    def winners(self, conn: Connection, journey_id: int) -> dict[str, str]:
        """Winning variant by split step id, as recorded for ``journey_id``."""
        with self._lock:
            cached = self._winners.get(journey_id)
            if cached is not None and cached[1] > self._monotonic():
                return cached[0]
        found = {
            row.step_id: row.winner
            for row in conn.execute(
                select(experiment_winners.c.step_id, experiment_winners.c.winner).where(
                    experiment_winners.c.journey_id == journey_id
                )
            )
        }
        with self._lock:
            self._winners[journey_id] = (found, self._monotonic() + self._ttl)
        return found

    def route(
        self, conn: Connection, spec: JourneySpec, *, journey_id: int, version_id: int
    ) -> JourneySpec:
        """The spec to run for version ``version_id``: routed to the journey's winners, if any."""
        if not any(step.winner is not None for step in spec.steps):
            return spec
        winners = self.winners(conn, journey_id)
        if not winners:
            return spec
        key = (version_id, tuple(sorted(winners.items())))
        with self._lock:
            routed = self._routed.get(key)
        if routed is None:
            routed = route_to_winners(spec, winners)
            with self._lock:
                self._routed[key] = routed
        return routed

    def forget(self) -> None:
        """Drop every cached list of winners, e.g. after this process recorded one."""
        with self._lock:
            self._winners.clear()


# -- JSON ------------------------------------------------------------------------------


def _variant_dict(name: str, figures: VariantFigures, rule: Winner) -> dict[str, Any]:
    out: dict[str, Any] = {"variant": name, "customers": figures.customers}
    if rule.metric == "click":
        out["clicked"] = figures.clicked
        out["rate"] = _number(figures.clicked / figures.customers if figures.customers else None)
    else:
        out["converted"] = figures.converted
        out["rate"] = _number(figures.converted / figures.customers if figures.customers else None)
        if figures.revenue is not None:
            out["revenue"] = _number(round(figures.revenue.total, 2))
            out["revenue_per_customer"] = _number(
                figures.revenue.mean if figures.customers else None
            )
    return out


def _comparison_dict(c: Comparison, adjusted: float | None) -> dict[str, Any]:
    """The leader against one rival: ``difference`` is leader minus rival."""
    return {
        "difference": _number(c.difference),
        "low": _number(c.interval.low if c.interval else None),
        "high": _number(c.interval.high if c.interval else None),
        "p_value": _number(c.p_value),
        "adjusted_p_value": _number(adjusted),
        "significant": c.significant,
        "test": c.test,
        "reason": c.reason,
    }


def _number(value: float | None) -> float | None:
    """JSON has no NaN or infinity; such a figure is reported as none."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)
