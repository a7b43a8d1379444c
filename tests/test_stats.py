"""trainkit.stats: paired differences over seeds, their t and paired-bootstrap intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
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
        assert interval.low - slack <= diff.mean <= interval.high + slack, interval


@given(pairs, st.floats(min_value=1.01, max_value=20.0))
@FAST
def test_intervals_widen_as_the_spread_grows(
    pair: tuple[list[float], list[float]], factor: float
) -> None:
    a, b = (np.asarray(x) for x in pair)
    d = b - a
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
            "level must be in \\(0, 1\\), got 1.5",
        ),
        (
            lambda: stats.bootstrap_interval([1.0, 2.0, 3.0], resamples=10),
            "resamples must be an integer >= 100, got 10",
        ),
        (lambda: stats.t_quantile(0.975, 0), "df must be an integer >= 1, got 0"),
        (lambda: stats.t_quantile(1.0, 3), "p must be in \\(0, 1\\), got 1.0"),
    ],
)
def test_bad_input_names_the_argument(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_identical_differences_give_a_zero_width_interval() -> None:
    diff = stats.paired_difference([1.0, 2.0, 3.0], [2.0, 3.0, 4.0])  # every seed: +1 exactly
    assert diff.t is not None and (diff.t.low, diff.t.high) == (1.0, 1.0)
    assert diff.verdict == "differs"
