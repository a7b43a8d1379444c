"""trainkit.stats: paired differences over seeds, their t and paired-bootstrap intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from trainkit import stats

# Accuracies in percent, as the comparison report feeds them.
values = st.floats(min_value=0.0, max_value=100.0, allow_nan=False, allow_infinity=False)
pairs = st.integers(min_value=stats.MIN_SEEDS, max_value=12).flatmap(
    lambda n: st.tuples(
        st.lists(values, min_size=n, max_size=n), st.lists(values, min_size=n, max_size=n)
    )
)
FAST = settings(max_examples=60, deadline=None)


def tolerance(values: np.ndarray) -> float:
    """Rounding slack for bounds computed from ``values`` (a few ulps of their magnitude)."""
    return 1e-9 * max(1.0, float(np.max(np.abs(values))))


# Student's t 0.975 quantiles from the standard tables (e.g. NIST/SEMATECH e-Handbook, table 1.3.6.7.2).
T_TABLE = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    9: 2.262,
    10: 2.228,
    30: 2.042,
    100: 1.984,
}


@pytest.mark.parametrize("df, expected", sorted(T_TABLE.items()))
def test_t_quantile_matches_the_tables(df: int, expected: float) -> None:
    assert stats.t_quantile(0.975, df) == pytest.approx(expected, abs=5e-4)
    assert stats.t_quantile(0.025, df) == pytest.approx(-expected, abs=5e-4)


def test_t_quantile_approaches_the_normal_quantile() -> None:
    assert stats.t_quantile(0.975, 100_000) == pytest.approx(1.959964, abs=1e-4)
    assert stats.t_quantile(0.5, 7) == 0.0


@given(pairs)
@FAST
def test_both_intervals_contain_the_sample_mean_difference(
    pair: tuple[list[float], list[float]],
) -> None:
    a, b = pair
    diff = stats.paired_difference(a, b)
    d = np.asarray(b) - np.asarray(a)
    slack = tolerance(d)
    assert diff.mean == pytest.approx(float(np.mean(d)))
    for interval in (diff.t, diff.bootstrap):
        assert interval is not None and interval.level == 0.95
        if interval.degenerate:  # every difference equal: no interval, no verdict
            assert diff.verdict == "no spread" and not interval.excludes_zero()
            continue
        assert interval.low - slack <= diff.mean <= interval.high + slack, interval


@given(pairs, st.floats(min_value=1.01, max_value=20.0))
@FAST
def test_intervals_widen_as_the_spread_grows(
    pair: tuple[list[float], list[float]], factor: float
) -> None:
    a, b = (np.asarray(x) for x in pair)
    d = b - a
    assume(np.ptp(d) > 1e-9 * max(1.0, float(np.max(np.abs(d)))))  # some spread to widen
    wider = d.mean() + factor * (d - d.mean())  # same mean difference, `factor` times the spread
    narrow_t, wide_t = stats.t_interval(d), stats.t_interval(wider)
    narrow_b, wide_b = (
        stats.bootstrap_interval(d, rng_seed=3),
        stats.bootstrap_interval(wider, rng_seed=3),
    )
    slack = tolerance(wider)
    assert wide_t.high - wide_t.low >= narrow_t.high - narrow_t.low - slack
    assert wide_b.high - wide_b.low >= narrow_b.high - narrow_b.low - slack
    if np.std(d) > 1e-6:
        assert wide_t.high - wide_t.low > narrow_t.high - narrow_t.low


@given(pairs, st.integers(min_value=0, max_value=2**32 - 1))
@FAST
def test_bootstrap_is_deterministic_for_a_fixed_rng_seed(
    pair: tuple[list[float], list[float]], rng_seed: int
) -> None:
    a, b = pair
    first = stats.paired_difference(a, b, rng_seed=rng_seed, resamples=500)
    second = stats.paired_difference(a, b, rng_seed=rng_seed, resamples=500)
    assert first == second


def test_bootstrap_depends_on_its_rng_seed() -> None:
    d = [0.3, -1.2, 0.8, 2.1, -0.4, 0.9, 1.5]
    intervals = {stats.bootstrap_interval(d, rng_seed=seed, resamples=200) for seed in range(5)}
    assert len(intervals) > 1


def test_t_interval_by_hand() -> None:
    d = [1.0, 2.0, 3.0, 4.0]  # mean 2.5, sd sqrt(5/3), t(0.975, 3) = 3.18245
    interval = stats.t_interval(d)
    half = 3.182446305 * math.sqrt(5 / 3) / 2
    assert (interval.low, interval.high) == pytest.approx((2.5 - half, 2.5 + half))
    assert interval.method == "t"


@pytest.mark.parametrize("n", [1, 2])
def test_one_or_two_seeds_give_a_statement_not_an_interval(n: int) -> None:
    a, b = [50.0, 51.0][:n], [50.5, 52.0][:n]
    diff = stats.paired_difference(a, b)
    assert diff.t is None and diff.bootstrap is None
    assert diff.verdict == "too few seeds"
    assert diff.statement.startswith(f"N = {n}: no confidence interval")
    assert "[" not in diff.statement  # nothing that reads like an interval
    assert diff.mean == pytest.approx(np.mean(np.subtract(b, a)))
    assert (diff.sd is None) == (n == 1)
    with pytest.raises(ValueError, match=f"at least {stats.MIN_SEEDS} values, got {n}"):
        stats.t_interval(np.subtract(b, a))
    with pytest.raises(ValueError, match=f"at least {stats.MIN_SEEDS} values, got {n}"):
        stats.bootstrap_interval(np.subtract(b, a))


def test_verdicts() -> None:
    clear = stats.paired_difference([50.1, 50.9, 49.8, 50.5, 50.2], [50.6, 51.0, 50.9, 50.7, 51.1])
    assert clear.verdict == "differs" and clear.t is not None and clear.t.excludes_zero()
    assert clear.statement.startswith("differs at N = 5: +0.56")
    noisy = stats.paired_difference([50.0, 51.0, 49.0, 50.5, 50.0], [50.5, 50.0, 50.0, 50.0, 51.0])
    assert noisy.verdict == "no difference detected"
    assert noisy.statement.startswith("no difference detected at N = 5")


@given(st.lists(values, min_size=1, max_size=10))
@FAST
def test_summary_is_mean_and_sample_sd(xs: list[float]) -> None:
    summary = stats.summarize(xs)
    assert summary.n == len(xs)
    assert summary.mean == pytest.approx(np.mean(xs))
    if len(xs) == 1:
        assert summary.sd is None and summary.text() == f"{xs[0]:.2f}"
    else:
        assert summary.sd == pytest.approx(np.std(xs, ddof=1))
        assert " ± " in summary.text()


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: stats.paired_difference([1.0, 2.0, 3.0], [1.0, 2.0]),
            "a and b must pair up one to one, got 3 and 2",
        ),
        (lambda: stats.paired_difference([], []), "a must be a non-empty"),
        (lambda: stats.summarize([1.0, math.nan]), "values must be finite"),
        (
            lambda: stats.t_interval([1.0, 2.0, 3.0], level=1.5),
            "level must be a finite number in \\(0, 1\\), got 1.5",
        ),
        (
            lambda: stats.bootstrap_interval([1.0, 2.0, 3.0], resamples=10),
            "resamples must be an int >= 100, got 10",
        ),
        (lambda: stats.t_quantile(0.975, 0), "df must be an int in \\[1, 1000000\\], got 0"),
        (
            lambda: stats.t_quantile(0.975, stats.T_MAX_DF + 1),
            "df must be an int in \\[1, 1000000\\], got 1000001",
        ),
        (lambda: stats.t_quantile(5e-324, 1), "p=5e-324: the t quantile for df=1 exceeds"),
        (lambda: stats.t_quantile(True, 3), "p must be a finite number in \\(0, 1\\), got True"),
        (
            lambda: stats.summarize([1.7e308, -1.7e308]),
            "values: the sample standard deviation overflows float64",
        ),
        (
            lambda: stats.paired_difference([-1.7e308] * 3, [1.7e308] * 3),
            "a and b: a difference b - a overflows float64",
        ),
        (
            lambda: stats.t_interval([1.7e308, 1.0e308, 1.5e308]),
            "differences: the interval's upper bound overflows float64",
        ),
        (lambda: stats.t_quantile(1.0, 3), "p must be a finite number in \\(0, 1\\), got 1.0"),
    ],
)
def test_bad_input_names_the_argument(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize(
    "a, b",
    [
        ([1.0, 2.0, 3.0], [2.0, 3.0, 4.0]),  # every seed: +1 exactly
        ([42.0, 42.0, 42.0], [22.0, 22.0, 22.0]),  # one pair repeated (a seed list [42, 42, 42])
        ([50.1, 50.9, 49.8, 50.5], [50.6, 51.4, 50.3, 51.0]),  # +0.5 up to rounding
        ([0.0, 0.0, 0.0], [0.0, 0.0, 0.0]),
    ],
)
def test_differences_without_spread_give_no_interval_and_no_verdict(
    a: list[float], b: list[float]
) -> None:
    """The old code gave a zero-width t-interval that "excludes 0" and the verdict "differs"."""
    diff = stats.paired_difference(a, b)
    assert diff.verdict == "no spread"
    assert diff.statement.startswith(f"no spread at N = {len(a)}: every difference is")
    for interval in (diff.t, diff.bootstrap):
        assert interval is not None and interval.degenerate
        assert math.isnan(interval.low) and math.isnan(interval.high)
        assert not interval.excludes_zero()
        assert interval.text() == "undefined (no spread)"
    direct = stats.t_interval(np.subtract(b, a))
    assert direct.degenerate and not direct.excludes_zero()


def test_a_tiny_real_spread_is_still_an_interval() -> None:
    diff = stats.paired_difference([0.0, 0.0, 0.0], [1.0, 1.0, 1.0 + 1e-6])
    assert diff.t is not None and not diff.t.degenerate
    assert diff.verdict == "differs" and diff.t.low < 1.0 < diff.t.high


# ------------------------------------------------------------------- finite in, finite out


def test_huge_finite_values_give_a_finite_mean_and_sd() -> None:
    values = [1.7e308, 1.7e308, -1e308]  # the plain sum overflows: np.mean gives inf
    summary = stats.summarize(values)
    scaled = np.asarray(values) / 1e300
    assert summary.mean == pytest.approx(float(np.mean(scaled)) * 1e300, rel=1e-12)
    assert summary.sd is not None
    assert summary.sd == pytest.approx(float(np.std(scaled, ddof=1)) * 1e300, rel=1e-12)
    interval = stats.bootstrap_interval([1.7e308, 1.6e308, 1.5e308], resamples=200)
    assert 1.5e308 <= interval.low <= interval.high <= 1.7e308


@given(st.lists(values, min_size=2, max_size=10))
@FAST
def test_scaling_leaves_ordinary_values_bit_identical(xs: list[float]) -> None:
    summary = stats.summarize(xs)
    assert summary.mean == float(np.mean(xs))
    assert summary.sd == float(np.std(xs, ddof=1))


# ------------------------------------------------------------------------ t quantile tails


def mpmath_t_quantile(p: float, df: int) -> float:
    """The t quantile to 40 digits: bisection on log t over mpmath's incomplete beta."""
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(40):
        degrees = mpmath.mpf(df)
        tail = min(mpmath.mpf(p), 1 - mpmath.mpf(p))
        low, high = mpmath.mpf(-60), mpmath.mpf(800)  # log t
        for _ in range(160):
            middle = (low + high) / 2
            x = degrees / (degrees + mpmath.e ** (2 * middle))
            if mpmath.betainc(degrees / 2, 0.5, 0, x, regularized=True) / 2 > tail:
                low = middle
            else:
                high = middle
        t = float(mpmath.e ** ((low + high) / 2))
    return t if p > 0.5 else -t


@pytest.mark.parametrize("df", [1, 2, 3, 5, 30, 1000, 100_000])
@pytest.mark.parametrize("p", [1e-300, 1e-15, 1e-6, 0.025, 0.3, 0.49999, 0.975, 1 - 1e-15])
def test_t_quantile_matches_mpmath_to_1e_12(p: float, df: int) -> None:
    assert stats.t_quantile(p, df) == pytest.approx(mpmath_t_quantile(p, df), rel=1e-12, abs=0)


def test_t_quantile_far_tail_of_the_issue() -> None:
    # p = 1e-15, df = 3: about -103,311 (the old bisection on P(|T| <= t) gave -101,828)
    assert stats.t_quantile(1e-15, 3) == pytest.approx(-103_311.08, abs=0.01)
    assert stats.t_quantile(1 - 1e-15, 3) == pytest.approx(103_311.08, rel=0.01)
    # df = 1 is the Cauchy distribution: t = tan(pi (p - 1/2)), -1 / (pi p) in the far tail
    assert stats.t_quantile(1e-300, 1) == pytest.approx(-1 / (math.pi * 1e-300), rel=1e-12)
    assert stats.t_quantile(0.1, 1) == pytest.approx(math.tan(math.pi * (0.1 - 0.5)), rel=1e-13)


@pytest.mark.parametrize("p", [1e-15, 0.001, 0.975])
def test_t_quantile_at_the_largest_df_matches_mpmath_to_5e_12(p: float) -> None:
    expected = mpmath_t_quantile(p, stats.T_MAX_DF)
    assert stats.t_quantile(p, stats.T_MAX_DF) == pytest.approx(expected, rel=5e-12, abs=0)
