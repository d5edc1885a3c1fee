"""Experiments: a journey's uplift over its holdout, and winners among A/B variants.

Built on :mod:`touchline.measure.stats`. :func:`uplift` answers "does this journey
pay?" by comparing the customers it messaged with its control group;
:func:`declare_winner` answers "which variant of this split or broadcast is best?"
and names one only when the data say so; :func:`required_sample` tells a marketer
how many customers per group that takes. ``docs/design/experiments.md`` explains
the methods, the holdout design and the caveats.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from statistics import NormalDist
from typing import Literal, get_args

from touchline.errors import InputError
from touchline.measure.stats import (
    Comparison,
    Interval,
    Summary,
    check_confidence,
    difference_of_means,
    difference_of_proportions,
)

__all__ = [
    "Correction",
    "GroupFigures",
    "Metric",
    "Uplift",
    "VariantFigures",
    "Verdict",
    "adjust_p_values",
    "declare_winner",
    "required_sample",
    "uplift",
]

Metric = Literal["conversion", "click", "open", "revenue"]
Correction = Literal["holm", "bonferroni"]

_NORMAL = NormalDist()
# required_sample rounds up; a float landing a hair above a whole number must not
# add a customer, so this much is forgiven before rounding.
_ROUNDING_SLACK = 1e-9


@dataclass(frozen=True)
class GroupFigures:
    """One side of a journey's comparison: its customers, how many converted, their revenue.

    ``revenue`` summarises revenue per customer over all ``customers`` (zero for
    those who bought nothing), so ``revenue.n`` must equal ``customers``.
    """

    customers: int
    converted: int
    revenue: Summary

    def __post_init__(self) -> None:
        if not 0 <= self.converted <= self.customers:
            raise InputError(
                f"need 0 <= converted <= customers, got {self.converted} of {self.customers}"
            )
        if self.revenue.n != self.customers:
            raise InputError(
                f"revenue must summarise every customer: n is {self.revenue.n}, "
                f"customers {self.customers}"
            )


@dataclass(frozen=True)
class Uplift:
    """What a journey adds over its holdout (treated is ``b``, holdout is ``a``).

    ``incremental_conversions`` and ``incremental_revenue`` estimate what the
    journey added among the treated customers: the difference per customer times
    the treated group's size, with the difference's interval scaled alike. They
    are None when the difference has no interval (an empty group, too few values).
    """

    conversion: Comparison
    revenue_per_customer: Comparison
    incremental_conversions: Interval | None
    incremental_revenue: Interval | None


def uplift(treated: GroupFigures, holdout: GroupFigures, *, confidence: float = 0.95) -> Uplift:
    """Compare the customers a journey messaged with its control group."""
    conversion = difference_of_proportions(
        holdout.converted,
        holdout.customers,
        treated.converted,
        treated.customers,
        confidence=confidence,
    )
    revenue = difference_of_means(holdout.revenue, treated.revenue, confidence=confidence)
    size = treated.customers
    return Uplift(
        conversion=conversion,
        revenue_per_customer=revenue,
        incremental_conversions=conversion.interval.scaled(size) if conversion.interval else None,
        incremental_revenue=revenue.interval.scaled(size) if revenue.interval else None,
    )


@dataclass(frozen=True)
class VariantFigures:
    """One variant of a split or broadcast: customers who got it, and what they did.

    Counts are of customers, not events (a customer who clicks twice clicked);
    ``revenue`` (per customer, over all ``customers``) is needed only for the
    ``revenue`` metric.
    """

    customers: int
    converted: int = 0
    clicked: int = 0
    opened: int = 0
    revenue: Summary | None = None

    def __post_init__(self) -> None:
        for name in ("converted", "clicked", "opened"):
            count = getattr(self, name)
            if not 0 <= count <= self.customers:
                raise InputError(f"need 0 <= {name} <= customers, got {count} of {self.customers}")
        if self.revenue is not None and self.revenue.n != self.customers:
            raise InputError("revenue must summarise every customer of the variant")


@dataclass(frozen=True)
class Verdict:
    """The outcome of :func:`declare_winner`; ``reason`` always says why, in words.

    ``leader`` is the variant ahead on the metric (ties to the first name), and
    ``comparisons`` hold the leader (``b``) against each other variant (``a``),
    keyed by the other's name, with ``adjusted_p_values`` after the correction
    (over the comparisons that could be tested).
    """

    winner: str | None
    reason: str
    leader: str | None = None
    comparisons: Mapping[str, Comparison] = field(default_factory=dict)
    adjusted_p_values: Mapping[str, float] = field(default_factory=dict)


def declare_winner(
    variants: Mapping[str, VariantFigures],
    *,
    metric: Metric,
    min_sample: int,
    confidence: float = 0.95,
    correction: Correction = "holm",
) -> Verdict:
    """Name the variant that beats every other on ``metric``, or say why there is none.

    A winner needs every variant to have reached ``min_sample`` customers (decided
    before the test starts: it is what keeps early, noisy looks from being
    believed), and the leader to beat each other variant significantly after
    correcting the p-values of those comparisons for their number (Holm-Bonferroni
    by default). Rates use the two-proportion test, revenue Welch's t. The leader
    is the highest estimate, ties broken by name, so the answer does not depend on
    the mapping's order; a tie at the top never wins.
    """
    if metric not in get_args(Metric):
        raise InputError(f"unknown metric {metric!r}; use one of {', '.join(get_args(Metric))}")
    if min_sample < 0:
        raise InputError("min_sample must not be negative")
    check_confidence(confidence)
    if len(variants) < 2:
        return Verdict(None, "a winner needs at least two variants to compare")

    estimates = {name: _estimate(figures, metric) for name, figures in variants.items()}
    ranking = sorted(estimates, key=lambda name: (-estimates[name], name))
    leader = ranking[0]
    comparisons = {
        name: _compare(variants[name], variants[leader], metric, confidence) for name in ranking[1:]
    }
    tested = {name: c.p_value for name, c in comparisons.items() if c.p_value is not None}
    adjusted = adjust_p_values(tested, method=correction)

    def verdict(reason: str, winner: str | None = None) -> Verdict:
        return Verdict(winner, reason, leader, comparisons, adjusted)

    # Whatever min_sample says, a rate needs one customer and a variance two.
    needed = max(min_sample, 2 if metric == "revenue" else 1)
    short = [name for name in sorted(variants) if variants[name].customers < needed]
    if short:
        counts = ", ".join(f"{name} has {variants[name].customers}" for name in short)
        return verdict(f"not enough data yet: {counts} of the {needed} customers needed")
    untested = [(name, c.reason) for name, c in comparisons.items() if c.p_value is None]
    if untested:
        name, why = untested[0]
        return verdict(f"cannot compare {leader} with {name}: {why}")
    level = [name for name in ranking[1:] if estimates[name] == estimates[leader]]
    if level:
        return verdict(f"no significant difference: {leader} and {', '.join(level)} are level")
    alpha = 1 - confidence
    behind = [
        name for name in ranking[1:] if adjusted[name] > alpha or not comparisons[name].significant
    ]
    if behind:
        details = ", ".join(f"{name} (adjusted p = {adjusted[name]:.3g})" for name in behind)
        return verdict(f"no significant difference: {leader} leads but not clearly over {details}")
    return verdict(
        f"{leader} beats {', '.join(ranking[1:])} on {metric} at {confidence * 100:g}% confidence "
        f"({correction.capitalize()}-adjusted p <= {max(adjusted.values()):.3g})",
        leader,
    )


def _estimate(figures: VariantFigures, metric: Metric) -> Fraction | float:
    """The variant's figure on the metric; rates as exact fractions so ties are exact."""
    if metric == "revenue":
        if figures.revenue is None:
            raise InputError("the revenue metric needs revenue figures for every variant")
        return figures.revenue.mean
    return Fraction(_successes(figures, metric), figures.customers) if figures.customers else 0


def _successes(figures: VariantFigures, metric: Metric) -> int:
    return {"conversion": figures.converted, "click": figures.clicked, "open": figures.opened}[
        metric
    ]


def _compare(
    other: VariantFigures, leader: VariantFigures, metric: Metric, confidence: float
) -> Comparison:
    if metric == "revenue":
        assert other.revenue is not None and leader.revenue is not None  # checked by _estimate
        return difference_of_means(other.revenue, leader.revenue, confidence=confidence)
    return difference_of_proportions(
        _successes(other, metric),
        other.customers,
        _successes(leader, metric),
        leader.customers,
        confidence=confidence,
    )


def adjust_p_values(
    p_values: Mapping[str, float], *, method: Correction = "holm"
) -> dict[str, float]:
    """P-values adjusted for testing several hypotheses at once.

    Compare each adjusted value with alpha directly. Bonferroni multiplies each by
    the number of tests. Holm (step-down) multiplies the k-th smallest by
    ``m - k + 1`` and keeps the sequence non-decreasing: the same guarantee (the
    chance of any false "significant" stays at most alpha) with more power, which
    is why it is the default. Equal p-values are ordered by name, for
    reproducible output.
    """
    if method not in get_args(Correction):
        raise InputError(f"unknown correction {method!r}; use holm or bonferroni")
    m = len(p_values)
    if method == "bonferroni":
        return {name: min(1.0, p * m) for name, p in p_values.items()}
    adjusted: dict[str, float] = {}
    running = 0.0
    for rank, name in enumerate(sorted(p_values, key=lambda n: (p_values[n], n))):
        running = max(running, min(1.0, (m - rank) * p_values[name]))
        adjusted[name] = running
    return adjusted


def required_sample(
    baseline_rate: float,
    minimum_detectable_effect: float,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
) -> int:
    """Customers needed per group to detect a change in a rate, by the usual formula.

    ``minimum_detectable_effect`` is absolute (0.02 means 10% -> 12%; for a
    relative lift pass ``baseline_rate * lift``). The formula is the normal
    approximation for a two-sided two-proportion test with equal groups:
    ``n = (z_(1-alpha/2) * sqrt(2 p (1 - p)) + z_power * sqrt(p1 q1 + p2 q2))^2 / d^2``
    with ``p`` the mean of the two rates; no continuity correction, matching the
    z-test used to judge the result.
    """
    target = baseline_rate + minimum_detectable_effect
    if not 0 < baseline_rate < 1 or not 0 < target < 1 or minimum_detectable_effect == 0:
        raise InputError(
            "need 0 < baseline_rate < 1, a non-zero effect and a target rate in (0, 1)"
        )
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise InputError("alpha and power must be between 0 and 1")
    mean = (baseline_rate + target) / 2
    spread = _NORMAL.inv_cdf(1 - alpha / 2) * math.sqrt(2 * mean * (1 - mean)) + _NORMAL.inv_cdf(
        power
    ) * math.sqrt(baseline_rate * (1 - baseline_rate) + target * (1 - target))
    return math.ceil(spread**2 / minimum_detectable_effect**2 - _ROUNDING_SLACK)
