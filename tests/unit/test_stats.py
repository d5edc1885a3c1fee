"""Unit tests for the experiment statistics (touchline.measure.stats and .experiments).

Literal values come from the published examples (Newcombe 1998, both papers), the
Student t table, and the Welch example computed independently; each was checked
against a second implementation when this file was written.
"""

from __future__ import annotations

import math
import random
import statistics
from statistics import NormalDist

import pytest
from hypothesis import given
from hypothesis import strategies as st

from touchline.errors import InputError
from touchline.measure.experiments import (
    GroupFigures,
    VariantFigures,
    adjust_p_values,
    declare_winner,
    required_sample,
    uplift,
)
from touchline.measure.stats import (
    FISHER_TEST,
    WELCH_TEST,
    Z_TEST,
    Interval,
    Summary,
    difference_of_means,
    difference_of_proportions,
    proportion_interval,
    student_t_quantile,
    student_t_two_sided_p,
)

# Two samples whose Welch test gives t = -2.4554, df = 24.9885, p = 0.021378.
FIRST = [27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7, 21.4]
SECOND = [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5, 24.4]

counts = st.integers(min_value=0, max_value=100_000).flatmap(
    lambda n: st.tuples(st.integers(min_value=0, max_value=n), st.just(n))
)
confidences = st.floats(min_value=0.5, max_value=0.999)


def _close(interval: Interval | None, low: float, high: float, *, places: int = 4) -> bool:
    assert interval is not None
    return round(interval.low, places) == low and round(interval.high, places) == high


# -- one rate: the Wilson interval ------------------------------------------------------


@pytest.mark.parametrize(
    ("successes", "trials", "low", "high"),
    [
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_interval_matches_newcombe_1998(
    successes: int, trials: int, low: float, high: float
) -> None:
    """The Wilson interval reproduces the published single-proportion examples."""
    interval = proportion_interval(successes, trials)
    assert _close(interval, low, high)
    assert interval.estimate == successes / trials


def test_wilson_interval_is_exact_at_zero_and_all_successes() -> None:
    """0 successes start the interval at exactly 0, all successes end it at exactly 1."""
    assert proportion_interval(0, 50).low == 0.0
    assert proportion_interval(50, 50).high == 1.0
    assert round(proportion_interval(29, 29).low, 4) == 0.8830


def test_wilson_interval_with_no_trials_is_all_of_zero_to_one() -> None:
    """With no trials nothing is known: [0, 1], estimate reported as 0."""
    assert proportion_interval(0, 0) == Interval(0.0, 1.0, 0.0)


def test_wilson_interval_widens_with_confidence() -> None:
    """A 99% interval contains the 95% one, which contains the 80% one."""
    i80, i95, i99 = (proportion_interval(30, 120, confidence=c) for c in (0.8, 0.95, 0.99))
    assert i99.low < i95.low < i80.low < i80.high < i95.high < i99.high


@pytest.mark.parametrize(("successes", "trials"), [(-1, 5), (6, 5), (0, -1)])
def test_impossible_counts_are_refused(successes: int, trials: int) -> None:
    """Negative counts or more successes than trials raise InputError."""
    with pytest.raises(InputError):
        proportion_interval(successes, trials)


@pytest.mark.parametrize("confidence", [0.0, 1.0, 95.0, -0.5])
def test_confidence_outside_zero_one_is_refused(confidence: float) -> None:
    """Confidence is a fraction strictly between 0 and 1 (95 is a mistake, not 95%)."""
    with pytest.raises(InputError):
        proportion_interval(5, 10, confidence=confidence)


def test_wilson_coverage_is_close_to_nominal() -> None:
    """Over 2,000 simulated samples of 200 at rate 0.3, about 95% of intervals hold 0.3."""
    rng = random.Random(20260302)
    hits = 0
    for _ in range(2000):
        successes = sum(rng.random() < 0.3 for _ in range(200))
        hits += proportion_interval(successes, 200).contains(0.3)
    assert 0.93 <= hits / 2000 <= 0.965


@given(counts, confidences)
def test_wilson_interval_holds_the_estimate_inside_zero_one(
    count: tuple[int, int], confidence: float
) -> None:
    """Any Wilson interval lies in [0, 1] and contains its estimate."""
    interval = proportion_interval(*count, confidence=confidence)
    assert 0.0 <= interval.low <= interval.estimate <= interval.high <= 1.0


# -- two rates: Newcombe's interval and the z-test ---------------------------------------


@pytest.mark.parametrize(
    ("b", "a", "low", "high"),
    [
        ((56, 70), (48, 80), 0.0524, 0.3339),
        ((9, 10), (3, 10), 0.1705, 0.8090),
        ((6, 7), (2, 7), 0.0582, 0.8062),
        ((5, 56), (0, 29), -0.0381, 0.1926),
        ((0, 10), (0, 20), -0.1611, 0.2775),
        ((0, 10), (0, 10), -0.2775, 0.2775),
        ((10, 10), (0, 20), 0.6791, 1.0),
        ((10, 10), (0, 10), 0.6075, 1.0),
    ],
)
def test_difference_interval_matches_newcombe_1998_method_10(
    b: tuple[int, int], a: tuple[int, int], low: float, high: float
) -> None:
    """The hybrid score interval reproduces all eight published examples."""
    comparison = difference_of_proportions(*a, *b)
    assert _close(comparison.interval, low, high)
    assert comparison.difference == pytest.approx(b[0] / b[1] - a[0] / a[1])


def test_difference_of_proportions_reports_lift_and_pooled_z_test() -> None:
    """56/70 against 48/80: lift one third, pooled z = 2.6502, two-sided p = 0.00805."""
    comparison = difference_of_proportions(48, 80, 56, 70)
    assert comparison.a == 0.6 and comparison.b == 0.8
    assert comparison.relative_lift == pytest.approx(1 / 3)
    assert comparison.p_value == pytest.approx(2 * NormalDist().cdf(-2.650172), rel=1e-5)
    assert comparison.p_value == pytest.approx(0.00805, abs=5e-6)
    assert comparison.test == Z_TEST
    assert comparison.significant and comparison.reason is None
    # Katz: exp(log(4 / 3) +- 1.96 * sqrt(1/56 - 1/70 + 1/48 - 1/80)) - 1
    assert _close(comparison.relative_interval, 0.0766, 0.6512)


def test_equal_groups_are_not_significant() -> None:
    """Identical rates give difference 0, p = 1 and an interval around 0."""
    comparison = difference_of_proportions(30, 300, 30, 300)
    assert comparison.difference == 0.0
    assert comparison.p_value == pytest.approx(1.0)
    assert comparison.interval is not None and comparison.interval.contains(0.0)
    assert not comparison.significant


def test_all_or_nothing_in_both_groups_has_p_value_one() -> None:
    """0/n against 0/m (no variation at all) tests as p = 1, not a division by zero."""
    comparison = difference_of_proportions(0, 40, 0, 60)
    assert comparison.p_value == 1.0
    assert comparison.relative_lift is None and comparison.relative_interval is None
    assert not comparison.significant


def test_an_empty_group_gives_no_test_and_says_why() -> None:
    """With no trials in a group there is no interval, no p-value, and a reason."""
    comparison = difference_of_proportions(0, 0, 5, 10)
    assert comparison.interval is None and comparison.p_value is None
    assert not comparison.significant
    assert comparison.reason == "group a has no trials"


def test_tiny_samples_use_the_exact_test() -> None:
    """2/2 against 0/2: the z-test would say p = 0.046; Fisher's exact test says 1/3."""
    comparison = difference_of_proportions(0, 2, 2, 2)
    assert comparison.difference == 1.0
    assert comparison.test == FISHER_TEST
    assert comparison.p_value == pytest.approx(1 / 3)
    assert not comparison.significant


def test_fisher_exact_p_value_for_small_expected_counts() -> None:
    """3/10 against 9/10 has an expected count of 4, so Fisher: p = 0.019767."""
    comparison = difference_of_proportions(3, 10, 9, 10)
    assert comparison.test == FISHER_TEST
    assert comparison.p_value == pytest.approx(0.0197666, abs=1e-7)
    assert comparison.significant


@given(counts, counts, confidences)
def test_swapping_groups_negates_the_difference(
    a: tuple[int, int], b: tuple[int, int], confidence: float
) -> None:
    """b against a mirrors a against b: difference and interval negate, p stays."""
    forward = difference_of_proportions(*a, *b, confidence=confidence)
    backward = difference_of_proportions(*b, *a, confidence=confidence)
    assert forward.difference == -backward.difference
    assert forward.p_value == backward.p_value
    assert forward.significant == backward.significant
    if forward.interval is not None and backward.interval is not None:
        assert forward.interval.low == pytest.approx(-backward.interval.high, abs=1e-12)
        assert forward.interval.high == pytest.approx(-backward.interval.low, abs=1e-12)


@given(counts, counts, confidences)
def test_difference_interval_holds_the_difference_inside_minus_one_one(
    a: tuple[int, int], b: tuple[int, int], confidence: float
) -> None:
    """The interval of a difference of rates contains it and lies in [-1, 1]."""
    comparison = difference_of_proportions(*a, *b, confidence=confidence)
    if comparison.interval is not None:
        interval = comparison.interval
        assert -1 - 1e-12 <= interval.low <= comparison.difference <= interval.high <= 1 + 1e-12
    if comparison.p_value is not None:
        assert 0.0 <= comparison.p_value <= 1.0
    if comparison.relative_interval is not None:
        assert comparison.relative_lift is not None
        assert comparison.relative_interval.contains(comparison.relative_lift)


# -- two means: Welch's t ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("confidence", "df", "critical"),
    [
        (0.95, 1, 12.7062),
        (0.95, 2, 4.3027),
        (0.95, 10, 2.2281),
        (0.95, 30, 2.0423),
        (0.99, 5, 4.0321),
    ],
)
def test_t_quantile_matches_the_table(confidence: float, df: float, critical: float) -> None:
    """The two-sided t critical values agree with the printed table to 4 decimals."""
    assert round(student_t_quantile(confidence, df), 4) == critical


@pytest.mark.parametrize("t", [0.3, 1.0, 2.5, 40.0])
def test_t_p_value_matches_closed_forms(t: float) -> None:
    """df = 1 is Cauchy, df = 2 has a closed form; fractional df sits between them."""
    cauchy = 1 - 2 * math.atan(t) / math.pi
    two = 1 - t / math.sqrt(2 + t * t)
    assert student_t_two_sided_p(t, 1) == pytest.approx(cauchy, rel=1e-10)
    assert student_t_two_sided_p(t, 2) == pytest.approx(two, rel=1e-10)
    assert two < student_t_two_sided_p(t, 1.5) < cauchy


def test_t_approaches_the_normal_with_many_degrees_of_freedom() -> None:
    """With millions of degrees of freedom t is the normal: 1.95996 and p(1.96) = 0.05."""
    assert student_t_quantile(0.95, 5_000_000) == pytest.approx(1.959964, abs=1e-6)
    assert student_t_two_sided_p(1.959964, 5_000_000) == pytest.approx(0.05, abs=1e-6)


def test_welch_matches_the_worked_example() -> None:
    """The two samples give difference -2.1667, p = 0.021378, interval (-3.9841, -0.3492)."""
    comparison = difference_of_means(Summary.of(SECOND), Summary.of(FIRST))
    assert comparison.difference == pytest.approx(-2.166667, abs=1e-6)
    assert comparison.p_value == pytest.approx(0.021378, abs=1e-6)
    assert _close(comparison.interval, -3.9841, -0.3492)
    assert comparison.significant and comparison.test == WELCH_TEST
    # The lift's interval: the delta method on log(mean b / mean a).
    log_se = math.hypot(
        statistics.stdev(FIRST) / math.sqrt(15) / statistics.mean(FIRST),
        statistics.stdev(SECOND) / math.sqrt(15) / statistics.mean(SECOND),
    )
    log_ratio = math.log(statistics.mean(FIRST) / statistics.mean(SECOND))
    assert comparison.relative_interval is not None
    assert comparison.relative_interval.low == pytest.approx(
        math.exp(log_ratio - 1.959964 * log_se) - 1
    )
    assert comparison.relative_lift == pytest.approx(-0.094258, abs=1e-6)


def test_running_sums_add_up_like_the_values() -> None:
    """Summaries of two halves add to the summary of the whole."""
    whole = Summary.of(FIRST + SECOND)
    parts = Summary.of(FIRST) + Summary.of(SECOND)
    assert parts.n == whole.n == 30
    assert parts.total == pytest.approx(whole.total)
    assert parts.variance == pytest.approx(whole.variance)
    assert Summary.of([2.0, 4.0, 9.0]).variance == pytest.approx(13.0)


def test_inconsistent_sums_are_refused() -> None:
    """A total too large for its sum of squares cannot come from real values."""
    with pytest.raises(InputError):
        Summary(n=2, total=10.0, total_of_squares=20.0)
    with pytest.raises(InputError):
        Summary(n=0, total=1.0, total_of_squares=1.0)


def test_means_need_two_values_per_group() -> None:
    """One customer in a group gives no variance, so no test, and says so."""
    comparison = difference_of_means(Summary.of([5.0]), Summary.of([1.0, 2.0, 3.0]))
    assert comparison.p_value is None and comparison.interval is None
    assert comparison.reason == "each group needs at least two values"


def test_groups_without_variation_give_no_test() -> None:
    """Everyone spent nothing in both groups: no variance to test with."""
    nothing = Summary(n=100, total=0.0, total_of_squares=0.0)
    comparison = difference_of_means(nothing, nothing)
    assert comparison.difference == 0.0 and not comparison.significant
    assert comparison.reason == "no variation within either group"


@given(
    st.lists(st.floats(min_value=0, max_value=1e4), min_size=2, max_size=40),
    st.lists(st.floats(min_value=0, max_value=1e4), min_size=2, max_size=40),
)
def test_swapping_means_negates_the_difference(a: list[float], b: list[float]) -> None:
    """Welch's comparison is symmetric: the difference negates and p stays."""
    forward = difference_of_means(Summary.of(a), Summary.of(b))
    backward = difference_of_means(Summary.of(b), Summary.of(a))
    assert forward.difference == -backward.difference
    assert forward.p_value == backward.p_value
    if forward.interval is not None:
        assert forward.interval.contains(forward.difference)


# -- uplift over a holdout ---------------------------------------------------------------


def test_uplift_measures_the_journey_against_its_holdout() -> None:
    """Treated 56/70 against holdout 48/80: +20 points, 14 extra conversions (3.7 to 23.4)."""
    treated = GroupFigures(70, 56, Summary(70, 56 * 50.0, 56 * 50.0**2))
    holdout = GroupFigures(80, 48, Summary(80, 48 * 50.0, 48 * 50.0**2))
    result = uplift(treated, holdout)
    assert result.conversion.difference == pytest.approx(0.2)
    assert _close(result.conversion.interval, 0.0524, 0.3339)
    assert result.incremental_conversions is not None
    assert result.incremental_conversions.estimate == pytest.approx(14.0)
    assert _close(result.incremental_conversions, 3.6702, 23.3711)
    # Every buyer spent 50, so revenue per customer is 40 against 30: +700 in all.
    assert result.revenue_per_customer.difference == pytest.approx(10.0)
    assert result.incremental_revenue is not None
    assert result.incremental_revenue.estimate == pytest.approx(700.0)
    assert result.incremental_revenue.low > 0


def test_uplift_with_an_empty_holdout_has_no_incremental_figures() -> None:
    """A journey without a holdout yet reports why nothing can be concluded."""
    treated = GroupFigures(10, 4, Summary.of([10.0] * 4 + [0.0] * 6))
    result = uplift(treated, GroupFigures(0, 0, Summary(0, 0.0, 0.0)))
    assert result.incremental_conversions is None and result.incremental_revenue is None
    assert result.conversion.reason == "group a has no trials"


def test_group_revenue_must_cover_every_customer() -> None:
    """Revenue summarised over buyers only (n = converted) is refused."""
    with pytest.raises(InputError):
        GroupFigures(100, 10, Summary.of([20.0] * 10))


# -- winners among variants --------------------------------------------------------------


def _variants(**converted: tuple[int, int]) -> dict[str, VariantFigures]:
    return {name: VariantFigures(n, converted=x) for name, (x, n) in converted.items()}


def test_a_clear_leader_wins_after_correction() -> None:
    """B converts 14% against 10% and 9.8% of 1,000 each: B wins, Holm-adjusted."""
    verdict = declare_winner(
        _variants(A=(100, 1000), B=(140, 1000), C=(98, 1000)), metric="conversion", min_sample=500
    )
    assert verdict.winner == "B"
    assert set(verdict.comparisons) == {"A", "C"}
    # Holm: the smaller raw p (against C) doubles; A's adjusted p may not fall below it.
    raw_c = verdict.comparisons["C"].p_value
    assert raw_c is not None
    assert verdict.adjusted_p_values["A"] == pytest.approx(2 * raw_c)
    assert verdict.reason.startswith("B beats A, C on conversion at 95% confidence")


def test_no_winner_before_every_variant_reaches_the_minimum_sample() -> None:
    """Even a large lead waits until every variant has min_sample customers."""
    verdict = declare_winner(
        _variants(A=(10, 100), B=(60, 120)), metric="conversion", min_sample=200
    )
    assert verdict.winner is None and verdict.leader == "B"
    assert verdict.reason == (
        "not enough data yet: A has 100, B has 120 of the 200 customers needed"
    )


def test_correction_can_withhold_a_win_one_test_alone_would_give() -> None:
    """Raw p = 0.036 against one rival wins; the same lead over two rivals does not."""
    pair = _variants(A=(100, 1000), B=(130, 1000))
    verdict = declare_winner(pair, metric="conversion", min_sample=100)
    assert verdict.winner == "B"
    assert 0.03 < verdict.adjusted_p_values["A"] < 0.05
    three = {**pair, "C": VariantFigures(1000, converted=100)}
    verdict = declare_winner(three, metric="conversion", min_sample=100)
    assert verdict.winner is None
    assert verdict.reason.startswith("no significant difference: B leads but not clearly over A")


def test_a_tie_at_the_top_never_wins_and_the_leader_is_chosen_by_name() -> None:
    """Equal rates (10% as 100/1000 and 50/500) are level; the leader is the first name."""
    verdict = declare_winner(
        _variants(Zed=(100, 1000), Ann=(50, 500), Bob=(10, 1000)),
        metric="conversion",
        min_sample=10,
    )
    assert verdict.winner is None and verdict.leader == "Ann"
    assert verdict.reason == "no significant difference: Ann and Zed are level"


def test_the_verdict_does_not_depend_on_the_order_of_variants() -> None:
    """Listing the same variants in another order gives the same verdict."""
    variants = _variants(A=(100, 1000), B=(150, 1000), C=(120, 1000))
    reordered = dict(reversed(list(variants.items())))
    first = declare_winner(variants, metric="conversion", min_sample=1)
    assert first == declare_winner(reordered, metric="conversion", min_sample=1)


def test_click_and_revenue_metrics_read_their_own_figures() -> None:
    """The click metric counts clicks; the revenue metric compares means by Welch's t."""
    variants = {
        "A": VariantFigures(500, clicked=50, revenue=Summary.of([1.0, 3.0] * 250)),
        "B": VariantFigures(500, clicked=90, revenue=Summary.of([1.0, 2.0] * 250)),
    }
    assert declare_winner(variants, metric="click", min_sample=100).winner == "B"
    by_revenue = declare_winner(variants, metric="revenue", min_sample=100)
    assert by_revenue.winner == "A"
    assert by_revenue.comparisons["B"].difference == pytest.approx(0.5)


def test_a_single_variant_or_an_unknown_metric() -> None:
    """One variant cannot win; an unknown metric or missing revenue is an input error."""
    assert declare_winner(_variants(A=(5, 10)), metric="conversion", min_sample=1).reason == (
        "a winner needs at least two variants to compare"
    )
    empty = declare_winner(_variants(A=(5, 10), B=(0, 0)), metric="conversion", min_sample=0)
    assert empty.winner is None
    assert empty.reason == "not enough data yet: B has 0 of the 1 customers needed"
    with pytest.raises(InputError):
        declare_winner(_variants(A=(5, 10), B=(5, 10)), metric="bounce", min_sample=1)  # type: ignore[arg-type]
    with pytest.raises(InputError):
        declare_winner(_variants(A=(5, 10), B=(5, 10)), metric="revenue", min_sample=1)


def test_holm_and_bonferroni_adjustments() -> None:
    """Holm: 0.01, 0.03, 0.04 -> 0.03, 0.06, 0.06; Bonferroni -> 0.03, 0.09, 0.12."""
    p_values = {"a": 0.01, "b": 0.04, "c": 0.03}
    assert adjust_p_values(p_values) == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06})
    assert adjust_p_values(p_values, method="bonferroni") == pytest.approx(
        {"a": 0.03, "b": 0.12, "c": 0.09}
    )
    assert adjust_p_values({"a": 0.6, "b": 0.7}) == {"a": 1.0, "b": 1.0}


@given(st.dictionaries(st.text(min_size=1, max_size=3), st.floats(0, 1), max_size=8))
def test_holm_never_lowers_a_p_value_nor_exceeds_bonferroni(p_values: dict[str, float]) -> None:
    """Holm-adjusted p-values lie between the raw ones and Bonferroni's."""
    holm = adjust_p_values(p_values)
    bonferroni = adjust_p_values(p_values, method="bonferroni")
    for name, p in p_values.items():
        assert p <= holm[name] <= bonferroni[name] <= 1.0


# -- sample size -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("baseline", "effect", "expected"),
    [(0.10, 0.05, 686), (0.10, 0.02, 3841), (0.50, 0.10, 388), (0.20, -0.05, 906)],
)
def test_required_sample_per_group(baseline: float, effect: float, expected: int) -> None:
    """The two-proportion formula: 10% -> 15% at alpha 0.05 and power 0.8 needs 686 a group."""
    assert required_sample(baseline, effect) == expected


def _power(baseline: float, effect: float, n: int) -> float:
    """Power of the two-sided pooled z-test at alpha 0.05 with n per group."""
    norm = NormalDist()
    target = baseline + effect
    mean = (baseline + target) / 2
    spread = math.sqrt(baseline * (1 - baseline) + target * (1 - target))
    pooled = norm.inv_cdf(0.975) * math.sqrt(2 * mean * (1 - mean))
    return norm.cdf((abs(effect) * math.sqrt(n) - pooled) / spread)


@given(st.floats(0.01, 0.9), st.floats(0.005, 0.09))
def test_required_sample_is_the_smallest_with_enough_power(baseline: float, effect: float) -> None:
    """n reaches 80% power and n - 1 falls short."""
    n = required_sample(baseline, effect)
    assert _power(baseline, effect, n) >= 0.8 - 1e-9
    assert n == 1 or _power(baseline, effect, n - 1) < 0.8 + 1e-9


@pytest.mark.parametrize(("baseline", "effect"), [(0.0, 0.1), (0.1, 0.0), (0.95, 0.1), (1.2, 0.1)])
def test_required_sample_refuses_impossible_rates(baseline: float, effect: float) -> None:
    """Rates must stay strictly between 0 and 1 and the effect must be non-zero."""
    with pytest.raises(InputError):
        required_sample(baseline, effect)
