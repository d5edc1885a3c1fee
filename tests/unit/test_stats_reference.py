"""touchline's statistics against scipy's reference implementations, on fixed data.

scipy is a test dependency only: touchline computes its intervals and tests
itself (see ``docs/design/experiments.md``); these tests hold it to the
reference on a spread of realistic report figures.
"""

from __future__ import annotations

import math
import random

import pytest
from scipy import stats as sp

from touchline.measure.experiments import GroupFigures, uplift
from touchline.measure.stats import (
    Summary,
    difference_of_means,
    difference_of_proportions,
    proportion_interval,
    student_t_quantile,
)

#: (successes, trials) pairs like a report's: rare, common, tiny and large groups.
RATES = [(0, 20), (3, 40), (81, 263), (56, 70), (480, 12_000), (1_250, 25_000), (19, 20)]


@pytest.mark.parametrize(("successes", "trials"), RATES)
def test_wilson_interval_matches_scipy(successes: int, trials: int) -> None:
    """The Wilson score interval equals scipy's binomtest(...).proportion_ci(method='wilson')."""
    ours = proportion_interval(successes, trials, confidence=0.95)
    ref = sp.binomtest(successes, trials).proportion_ci(confidence_level=0.95, method="wilson")
    assert ours.low == pytest.approx(ref.low, abs=1e-9)
    assert ours.high == pytest.approx(ref.high, abs=1e-9)


@pytest.mark.parametrize(
    ("a", "b"),
    [((480, 12_000), (560, 12_000)), ((81, 263), (56, 70)), ((1_250, 25_000), (1_180, 25_000))],
)
def test_two_proportion_z_test_matches_scipy(a: tuple[int, int], b: tuple[int, int]) -> None:
    """With every expected cell >= 5 the pooled z-test p-value equals the reference computation."""
    ours = difference_of_proportions(*a, *b, confidence=0.95)
    pooled = (a[0] + b[0]) / (a[1] + b[1])
    se = math.sqrt(pooled * (1 - pooled) * (1 / a[1] + 1 / b[1]))
    z = (b[0] / b[1] - a[0] / a[1]) / se
    assert ours.p_value == pytest.approx(2 * sp.norm.sf(abs(z)), rel=1e-9)


@pytest.mark.parametrize(("a", "b"), [((2, 10), (7, 10)), ((0, 6), (4, 8)), ((1, 30), (6, 25))])
def test_small_samples_use_fisher_exact_as_scipy_computes_it(
    a: tuple[int, int], b: tuple[int, int]
) -> None:
    """Small tables get Fisher's exact two-sided p-value, equal to scipy.stats.fisher_exact."""
    ours = difference_of_proportions(*a, *b, confidence=0.95)
    table = [[a[0], a[1] - a[0]], [b[0], b[1] - b[0]]]
    assert ours.p_value == pytest.approx(sp.fisher_exact(table).pvalue, rel=1e-9)


def _revenues(rng: random.Random, n: int, buy: float, mean: float) -> list[float]:
    return [round(rng.expovariate(1 / mean), 2) if rng.random() < buy else 0.0 for _ in range(n)]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_welch_test_and_interval_match_scipy(seed: int) -> None:
    """Welch's p-value and the interval of the mean difference equal scipy's on revenue data."""
    rng = random.Random(seed)
    a = _revenues(rng, 400, 0.05, 3_000)
    b = _revenues(rng, 3_600, 0.07, 3_000)
    ours = difference_of_means(Summary.of(a), Summary.of(b), confidence=0.95)
    ref = sp.ttest_ind(b, a, equal_var=False)
    assert ours.p_value == pytest.approx(ref.pvalue, rel=1e-6)
    ci = ref.confidence_interval(confidence_level=0.95)
    assert ours.interval is not None
    assert ours.interval.low == pytest.approx(ci.low, rel=1e-6)
    assert ours.interval.high == pytest.approx(ci.high, rel=1e-6)


@pytest.mark.parametrize("df", [1, 2, 5, 17.5, 120, 10_000])
def test_student_t_quantile_matches_scipy(df: float) -> None:
    """The t quantile behind Welch's interval equals scipy.stats.t.ppf."""
    assert student_t_quantile(0.95, df) == pytest.approx(sp.t.ppf(0.975, df), rel=1e-8)


def test_holdout_uplift_matches_a_reference_computation() -> None:
    """Uplift of a journey over its holdout: the same figures scipy gives for both metrics."""
    rng = random.Random(7)
    treated_values = _revenues(rng, 9_000, 0.065, 2_500)
    holdout_values = _revenues(rng, 1_000, 0.05, 2_500)
    treated = GroupFigures(
        len(treated_values), sum(v > 0 for v in treated_values), Summary.of(treated_values)
    )
    holdout = GroupFigures(
        len(holdout_values), sum(v > 0 for v in holdout_values), Summary.of(holdout_values)
    )
    # when
    result = uplift(treated, holdout, confidence=0.95)
    # then: conversion is the z-test of the two rates, revenue Welch's test
    assert result.conversion.difference == pytest.approx(
        treated.converted / treated.customers - holdout.converted / holdout.customers
    )
    welch = sp.ttest_ind(treated_values, holdout_values, equal_var=False)
    ci = welch.confidence_interval(confidence_level=0.95)
    assert result.revenue_per_customer.p_value == pytest.approx(welch.pvalue, rel=1e-6)
    assert result.incremental_revenue is not None
    assert result.incremental_revenue.low == pytest.approx(ci.low * treated.customers, rel=1e-6)
    assert result.incremental_revenue.high == pytest.approx(ci.high * treated.customers, rel=1e-6)
