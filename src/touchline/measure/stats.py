"""Statistics for comparing two groups: rates, means, their differences and intervals.

Pure functions over counts and running sums, so reports never load raw values:
a conversion rate is ``successes`` out of ``trials``; revenue per customer is a
:class:`Summary` of ``n`` customers, the ``total`` of their revenue and the
``total_of_squares`` of each customer's revenue. Every comparison is ``b`` against
``a`` (difference ``b - a``): pass the control or the current champion as ``a``.

Methods, and why (``docs/design/experiments.md`` has the longer story):

* one rate: the Wilson score interval (:func:`proportion_interval`);
* two rates: Newcombe's hybrid score interval for the difference, the pooled
  two-proportion z-test for the p-value (Fisher's exact test when an expected
  count is below 5), Katz's log interval for the relative lift
  (:func:`difference_of_proportions`);
* two means: Welch's t with Welch-Satterthwaite degrees of freedom, the Student
  t distribution computed here from the regularized incomplete beta function,
  and the delta method on the log ratio for the relative lift
  (:func:`difference_of_means`).

``significant`` means the test rejected at ``1 - confidence`` *and* the interval
for the difference excludes zero, so a report never shows a "significant"
result next to an interval straddling zero (the score interval and the z-test
can disagree by a hair at the boundary).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from statistics import NormalDist

from touchline.errors import InputError

__all__ = [
    "FISHER_TEST",
    "MIN_EXPECTED_COUNT",
    "WELCH_TEST",
    "Z_TEST",
    "Comparison",
    "Interval",
    "Summary",
    "check_confidence",
    "difference_of_means",
    "difference_of_proportions",
    "proportion_interval",
    "student_t_quantile",
    "student_t_two_sided_p",
]

_NORMAL = NormalDist()
# Continued fraction of the incomplete beta: stop when a step changes the value by
# less than this (near double precision), or after this many steps (ample even for
# millions of degrees of freedom, where it converges in about sqrt(df) steps).
_BETA_TOLERANCE = 1e-15
_BETA_MAX_STEPS = 100_000
# Below this a Lentz denominator is treated as zero (avoids dividing by zero).
_TINY = 1e-300
# Bisection of the t quantile stops at this relative width; quantiles feed
# intervals shown to four decimals, so this is far beyond what is needed.
_QUANTILE_TOLERANCE = 1e-12
# Running sums may disagree with Cauchy-Schwarz by rounding; refuse only beyond this.
_SUMS_SLACK = 1e-9
# Cochran's rule: the z-test's normal approximation needs every expected cell count of
# the 2x2 table at 5 or more; below that the exact test is used.
MIN_EXPECTED_COUNT = 5
# Fisher's test sums the tables no likelier than the observed one; this much relative
# slack keeps tables of equal probability from being split by rounding.
_FISHER_SLACK = 1e-7

Z_TEST = "pooled z"
FISHER_TEST = "Fisher exact"
WELCH_TEST = "Welch t"


@dataclass(frozen=True)
class Interval:
    """A confidence interval ``[low, high]`` around a point ``estimate``."""

    low: float
    high: float
    estimate: float

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies inside the interval, ends included."""
        return self.low <= value <= self.high

    def scaled(self, factor: float) -> Interval:
        """The interval of ``factor`` times the quantity (``factor`` >= 0)."""
        return Interval(self.low * factor, self.high * factor, self.estimate * factor)


@dataclass(frozen=True)
class Summary:
    """Running sums of one value per member of a group (e.g. revenue per customer).

    ``total_of_squares`` is the sum of each member's value squared: for revenue per
    customer, square each customer's revenue (zero for non-buyers), not each order.
    Sums can be added together (``a + b``), so reports can keep them per day.
    """

    n: int
    total: float
    total_of_squares: float

    def __post_init__(self) -> None:
        if self.n < 0 or self.total_of_squares < 0:
            raise InputError("a summary needs n >= 0 and total_of_squares >= 0")
        if self.n == 0 and (self.total or self.total_of_squares):
            raise InputError("an empty summary must have zero sums")
        # Cauchy-Schwarz: total**2 <= n * total_of_squares for any real values.
        if self.total**2 > self.n * self.total_of_squares * (1 + _SUMS_SLACK) + _SUMS_SLACK:
            raise InputError("inconsistent summary: total**2 exceeds n * total_of_squares")

    @classmethod
    def of(cls, values: Iterable[float]) -> Summary:
        """The summary of some values."""
        n, total, squares = 0, 0.0, 0.0
        for value in values:
            n += 1
            total += value
            squares += value * value
        return cls(n, total, squares)

    def __add__(self, other: Summary) -> Summary:
        return Summary(
            self.n + other.n,
            self.total + other.total,
            self.total_of_squares + other.total_of_squares,
        )

    @property
    def mean(self) -> float:
        """The mean value; 0.0 for an empty group, as reports show it."""
        return self.total / self.n if self.n else 0.0

    @property
    def variance(self) -> float:
        """The sample variance (divisor n - 1); 0.0 below two values, where it is undefined.

        From running sums this loses precision when the mean is huge next to the
        spread; money amounts per customer are far from that regime.
        """
        if self.n < 2:
            return 0.0
        return max(0.0, (self.total_of_squares - self.total**2 / self.n) / (self.n - 1))


@dataclass(frozen=True)
class Comparison:
    """Group ``b`` against group ``a``: estimates, difference ``b - a``, test and intervals.

    ``interval`` is the interval of the difference; ``relative_lift`` is
    ``(b - a) / a`` and ``relative_interval`` its interval. Each is None where it
    is undefined (an empty group, a zero baseline). ``p_value`` is two-sided.
    ``test`` names the test behind the p-value (:data:`Z_TEST`,
    :data:`FISHER_TEST`, :data:`WELCH_TEST`); ``reason`` says why no test could be
    run, and is None when one was.
    """

    a: float
    b: float
    difference: float
    interval: Interval | None
    relative_lift: float | None
    relative_interval: Interval | None
    p_value: float | None
    significant: bool
    confidence: float
    reason: str | None = None
    test: str | None = None


def check_confidence(confidence: float) -> None:
    """Refuse a confidence level outside (0, 1)."""
    if not 0 < confidence < 1:
        raise InputError(f"confidence must be between 0 and 1, got {confidence}")


def _z(confidence: float) -> float:
    """The two-sided normal critical value, e.g. 1.96 for 0.95."""
    return _NORMAL.inv_cdf(0.5 + confidence / 2)


def _check_counts(successes: int, trials: int) -> None:
    if trials < 0 or not 0 <= successes <= trials:
        raise InputError(f"need 0 <= successes <= trials, got {successes} of {trials}")


def proportion_interval(successes: int, trials: int, *, confidence: float = 0.95) -> Interval:
    """The Wilson score interval of a rate ``successes / trials``.

    Wilson rather than Wald (``p +- z * sqrt(p(1 - p) / n)``): Wald's coverage is
    far below nominal for small samples and rates near 0 or 1, which is where
    conversion rates live, and it collapses to a zero-width interval at 0 or n
    successes. Wilson inverts the score test, stays inside [0, 1] and keeps close to
    nominal coverage there. With no trials nothing is known: the interval is all
    of [0, 1] and the estimate is reported as 0.
    """
    _check_counts(successes, trials)
    check_confidence(confidence)
    if trials == 0:
        return Interval(0.0, 1.0, 0.0)
    z = _z(confidence)
    rate = successes / trials
    centre = (successes + z * z / 2) / (trials + z * z)
    half = z * math.sqrt(successes * (trials - successes) / trials + z * z / 4) / (trials + z * z)
    # The exact limits at 0 and n successes are 0 and 1; pin them against rounding.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return Interval(min(low, rate), max(high, rate), rate)


def difference_of_proportions(
    a_successes: int,
    a_trials: int,
    b_successes: int,
    b_trials: int,
    *,
    confidence: float = 0.95,
) -> Comparison:
    """Compare rate ``b`` with rate ``a``.

    The interval of ``b - a`` is Newcombe's hybrid score interval (method 10 of
    Newcombe 1998), built from each rate's Wilson interval: it inherits Wilson's
    good coverage at small counts and extreme rates, where the Wald difference
    interval is too narrow. The p-value is the pooled two-proportion z-test (the
    textbook test of "the two rates are equal"), except when an expected count of
    the 2x2 table is below :data:`MIN_EXPECTED_COUNT`: there the normal
    approximation is badly off (2/2 against 0/2 gives z-test p = 0.046) and
    Fisher's exact test is used instead (p = 1/3). The relative lift's interval
    is Katz's log interval of the rate ratio, undefined when either group has no
    successes.
    """
    _check_counts(a_successes, a_trials)
    _check_counts(b_successes, b_trials)
    check_confidence(confidence)
    wa = proportion_interval(a_successes, a_trials, confidence=confidence)
    wb = proportion_interval(b_successes, b_trials, confidence=confidence)
    pa, pb = wa.estimate, wb.estimate
    difference = pb - pa
    relative = difference / pa if pa > 0 else None
    if a_trials == 0 or b_trials == 0:
        empty = "a" if a_trials == 0 else "b"
        reason = f"group {empty} has no trials"
        return Comparison(pa, pb, difference, None, relative, None, None, False, confidence, reason)

    low = difference - math.hypot(pb - wb.low, wa.high - pa)
    high = difference + math.hypot(wb.high - pb, pa - wa.low)
    interval = Interval(low, high, difference)

    test, p_value = _two_proportion_p(a_successes, a_trials, b_successes, b_trials)

    relative_interval = None
    if relative is not None and b_successes > 0:
        log_se = math.sqrt(1 / b_successes - 1 / b_trials + 1 / a_successes - 1 / a_trials)
        relative_interval = _lift_interval(
            math.log(pb) - math.log(pa), log_se, relative, confidence=confidence
        )
    significant = p_value <= 1 - confidence and not interval.contains(0.0)
    return Comparison(
        pa,
        pb,
        difference,
        interval,
        relative,
        relative_interval,
        p_value,
        significant,
        confidence,
        test=test,
    )


def _two_proportion_p(
    a_successes: int, a_trials: int, b_successes: int, b_trials: int
) -> tuple[str, float]:
    """The test used and its two-sided p-value for "rate a equals rate b" (trials > 0)."""
    trials = a_trials + b_trials
    successes = a_successes + b_successes
    smallest_expected = min(a_trials, b_trials) * min(successes, trials - successes) / trials
    if smallest_expected >= MIN_EXPECTED_COUNT:
        pooled = successes / trials
        se = math.sqrt(pooled * (1 - pooled) * (1 / a_trials + 1 / b_trials))
        return Z_TEST, 2 * _NORMAL.cdf(-abs(b_successes / b_trials - a_successes / a_trials) / se)
    # Order the groups canonically so that swapping them gives the very same float.
    (x, n), (_, m) = sorted([(a_successes, a_trials), (b_successes, b_trials)])
    return FISHER_TEST, _fisher_p(x, n, m, successes)


def _fisher_p(x: int, n: int, m: int, successes: int) -> float:
    """Fisher's two-sided p: x of n successes in one group, ``successes`` in n + m.

    Sums the hypergeometric probabilities of every table with these margins that
    is no likelier than the observed one.
    """

    def log_choose(total: int, k: int) -> float:
        return math.lgamma(total + 1) - math.lgamma(k + 1) - math.lgamma(total - k + 1)

    def log_probability(k: int) -> float:
        return log_choose(n, k) + log_choose(m, successes - k) - log_choose(n + m, successes)

    observed = log_probability(x)
    threshold = observed + math.log1p(_FISHER_SLACK)
    tables = range(max(0, successes - m), min(n, successes) + 1)
    total = math.fsum(math.exp(lp) for k in tables if (lp := log_probability(k)) <= threshold)
    return min(1.0, total)


def difference_of_means(a: Summary, b: Summary, *, confidence: float = 0.95) -> Comparison:
    """Compare mean ``b`` with mean ``a`` (e.g. revenue per customer) by Welch's t.

    Welch rather than Student's pooled t because the groups' variances differ
    (messages change who buys, not only how many), and Welch's test keeps its
    level when they do. The degrees of freedom are Welch-Satterthwaite's, and the
    t distribution is exact (not the normal approximation), so small groups get
    honest, wider intervals. Revenue is skewed: with a few dozen customers the t
    interval is still approximate, which the minimum-sample rule of
    :func:`touchline.measure.experiments.declare_winner` guards against.

    Needs two values per group for a variance; a group with fewer, or two groups
    without any variation, gives no test (``reason`` says why).
    """
    check_confidence(confidence)
    ma, mb = a.mean, b.mean
    difference = mb - ma
    relative = difference / ma if ma > 0 and math.isfinite(difference / ma) else None

    def untested(reason: str) -> Comparison:
        return Comparison(ma, mb, difference, None, relative, None, None, False, confidence, reason)

    if a.n < 2 or b.n < 2:
        return untested("each group needs at least two values")
    va, vb = a.variance / a.n, b.variance / b.n  # squared standard errors of the means
    se = math.sqrt(va + vb)
    if se == 0:
        return untested("no variation within either group")
    # Welch-Satterthwaite, written with shares of the variance so tiny values cannot underflow.
    share_a, share_b = va / (va + vb), vb / (va + vb)
    df = 1 / (share_a**2 / (a.n - 1) + share_b**2 / (b.n - 1))
    t_crit = student_t_quantile(confidence, df)
    interval = Interval(difference - t_crit * se, difference + t_crit * se, difference)
    p_value = student_t_two_sided_p(difference / se, df)

    relative_interval = None
    if relative is not None and mb > 0:
        log_se = math.hypot(math.sqrt(va) / ma, math.sqrt(vb) / mb)  # the delta method
        relative_interval = _lift_interval(
            math.log(mb) - math.log(ma), log_se, relative, confidence=confidence
        )
    significant = p_value <= 1 - confidence and not interval.contains(0.0)
    return Comparison(
        ma,
        mb,
        difference,
        interval,
        relative,
        relative_interval,
        p_value,
        significant,
        confidence,
        test=WELCH_TEST,
    )


def _lift_interval(
    log_ratio: float, log_se: float, lift: float, *, confidence: float
) -> Interval | None:
    """The interval of a relative lift from a normal interval of the log of the ratio b / a.

    None when a bound is beyond floating point (a baseline next to zero).
    """
    z = _z(confidence)
    try:
        return Interval(
            math.expm1(log_ratio - z * log_se), math.expm1(log_ratio + z * log_se), lift
        )
    except OverflowError:
        return None


# -- the Student t distribution ---------------------------------------------------------


def student_t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` > 0 degrees of freedom (df need not be whole)."""
    if df <= 0:
        raise InputError(f"degrees of freedom must be positive, got {df}")
    if t == 0:
        return 1.0
    # P(|T| >= t) = I_x(df / 2, 1 / 2) with x = df / (df + t^2); 1 - x is passed
    # separately because computing it by subtraction loses the digits that matter.
    square = t * t
    return _regularized_beta(df / (df + square), square / (df + square), df / 2, 0.5)


def student_t_quantile(confidence: float, df: float) -> float:
    """The two-sided critical value: the t with P(|T| <= t) = ``confidence``.

    Found by bisection on :func:`student_t_two_sided_p`, which is strictly
    decreasing in t; slow next to a closed form but exact to ~1e-12 and simple.
    """
    check_confidence(confidence)
    target = 1 - confidence
    low, high = 0.0, 1.0
    while student_t_two_sided_p(high, df) > target:
        low, high = high, high * 2
    while high - low > _QUANTILE_TOLERANCE * high:
        middle = (low + high) / 2
        if student_t_two_sided_p(middle, df) > target:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def _regularized_beta(x: float, y: float, a: float, b: float) -> float:
    """I_x(a, b), the regularized incomplete beta function, for 0 <= x <= 1 and y = 1 - x."""
    if x <= 0:
        return 0.0
    if y <= 0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(y)
    )
    # The continued fraction converges fast below the mean (a + 1) / (a + b + 2);
    # above it use the symmetry I_x(a, b) = 1 - I_y(b, a).
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_fraction(x, a, b) / a
    return 1 - math.exp(log_front) * _beta_fraction(y, b, a) / b


def _beta_fraction(x: float, a: float, b: float) -> float:
    """The continued fraction of I_x(a, b), evaluated by the modified Lentz method."""

    def nonzero(value: float) -> float:
        return value if abs(value) > _TINY else _TINY

    c = 1.0
    d = 1 / nonzero(1 - (a + b) * x / (a + 1))
    result = d
    for m in range(1, _BETA_MAX_STEPS):
        # Even term d_2m, then odd term d_2m+1, of the fraction 1 / (1 + d1 / (1 + d2 / ...)).
        even = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1 / nonzero(1 + even * d)
        c = nonzero(1 + even / c)
        result *= d * c
        odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1 / nonzero(1 + odd * d)
        c = nonzero(1 + odd / c)
        step = d * c
        result *= step
        if abs(step - 1) < _BETA_TOLERANCE:
            break
    return result
