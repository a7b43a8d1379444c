"""Paired comparisons over RNG seeds: mean, sd and a confidence interval of a difference.

Two recipes trained with the same RNG seeds give paired results ``a[i]``, ``b[i]``; the
question "does B beat A?" is answered by the differences ``d[i] = b[i] - a[i]``:

    >>> diff = paired_difference([50.1, 50.9, 49.8, 50.5, 50.2], [50.6, 51.0, 50.9, 50.7, 51.1])
    >>> diff.verdict            # "differs", "no difference detected" or "too few seeds"
    'differs'

Two intervals are computed for the mean difference (docs/compare.md explains both):

- a **t-interval** ``mean(d) +- t_{(1+level)/2, n-1} * sd(d) / sqrt(n)``, the textbook
  interval for a paired mean difference; it decides the verdict;
- a **paired bootstrap** percentile interval: resample the seeds (each pair stays together)
  with replacement, ``resamples`` times, from ``numpy.random.default_rng(rng_seed)``; the
  fixed RNG seed makes the interval reproducible.

Fewer than :data:`MIN_SEEDS` pairs give no interval: with one pair there is no spread at
all, and with two the t-interval has one degree of freedom (``t = 12.7`` at 95 %) and the
bootstrap only three distinct resample means. :func:`paired_difference` then says so in
``statement`` instead of printing a number that looks like an interval.

Pure numpy and the standard library (the t quantile is computed here, no SciPy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = [
    "MIN_SEEDS",
    "Interval",
    "PairedDifference",
    "Summary",
    "bootstrap_interval",
    "paired_difference",
    "summarize",
    "t_interval",
    "t_quantile",
]

MIN_SEEDS = 3
"""The fewest pairs for which an interval is computed."""

Verdict = Literal["differs", "no difference detected", "too few seeds"]


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation of some values.

    Attributes:
        n: How many values.
        mean: Their mean.
        sd: Sample standard deviation (``ddof=1``); ``None`` when ``n < 2``.
    """

    n: int
    mean: float
    sd: float | None

    def text(self, digits: int = 2) -> str:
        """``"50.68 ± 0.61"``, or the mean alone when there is no sd."""
        if self.sd is None:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.sd:.{digits}f}"


@dataclass(frozen=True)
class Interval:
    """A confidence interval for a mean.

    Attributes:
        low, high: The bounds.
        level: The confidence level, e.g. ``0.95``.
        method: ``"t"`` or ``"paired bootstrap"``.
    """

    low: float
    high: float
    level: float
    method: str

    def excludes_zero(self) -> bool:
        """True when 0 lies outside ``[low, high]``."""
        return self.low > 0 or self.high < 0

    def text(self, digits: int = 2) -> str:
        """``"[-0.41, +0.93]"``."""
        return f"[{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


@dataclass(frozen=True)
class PairedDifference:
    """The paired difference ``b - a`` over seeds, its spread and its intervals.

    Attributes:
        n: Number of pairs.
        mean: Mean of the differences.
        sd: Sample sd of the differences (``None`` when ``n < 2``).
        t: The t-interval (``None`` when ``n < MIN_SEEDS``).
        bootstrap: The paired-bootstrap interval (``None`` when ``n < MIN_SEEDS``).
        verdict: ``"differs"`` when the t-interval excludes 0, ``"no difference
            detected"`` when it contains 0, ``"too few seeds"`` when there is no interval.
        statement: One sentence saying what the data supports.
    """

    n: int
    mean: float
    sd: float | None
    t: Interval | None
    bootstrap: Interval | None
    verdict: Verdict
    statement: str


def _values(values: Sequence[float], name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(
            f"{name} must be a non-empty 1-D sequence of numbers, got shape {array.shape}"
        )
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite, got {array.tolist()!r}")
    return array


def _check_level(level: float) -> None:
    if not (isinstance(level, (int, float)) and 0 < level < 1):
        raise ValueError(f"level must be in (0, 1), got {level!r}")


def _check_enough(array: np.ndarray, name: str) -> None:
    if array.size < MIN_SEEDS:
        raise ValueError(f"{name}: an interval needs at least {MIN_SEEDS} values, got {array.size}")


def summarize(values: Sequence[float]) -> Summary:
    """Mean and sample sd of ``values``.

    Args:
        values: Finite numbers, at least one.

    Returns:
        A :class:`Summary` (``sd`` is ``None`` for a single value).

    Raises:
        ValueError: ``values`` is empty or holds a non-finite number.
    """
    array = _values(values, "values")
    sd = float(np.std(array, ddof=1)) if array.size >= 2 else None
    return Summary(n=int(array.size), mean=float(np.mean(array)), sd=sd)


def _t_two_sided_mass(t: float, df: int) -> float:
    """``P(|T| <= t)`` for Student's t with integer ``df`` (Abramowitz & Stegun 26.7.3-4)."""
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2 == 1:  # odd: (2/pi) (theta + sin cos (1 + 2/3 c2 + 2*4/(3*5) c2^2 + ...))
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= (2 * k) / (2 * k + 1) * c2
            total += term
        return 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * total)
    term, total = 1.0, 1.0  # even: sin (1 + 1/2 c2 + 1*3/(2*4) c2^2 + ...)
    for k in range(1, df // 2):
        term *= (2 * k - 1) / (2 * k) * c2
        total += term
    return math.sin(theta) * total


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t distribution with ``df`` degrees of freedom.

    Args:
        p: Probability in (0, 1).
        df: Degrees of freedom, an integer >= 1.

    Returns:
        ``t`` with ``P(T <= t) = p`` (to about 1e-12).

    Raises:
        ValueError: ``p`` outside (0, 1) or ``df`` not an integer >= 1.
    """
    if not (isinstance(p, (int, float)) and 0 < p < 1):
        raise ValueError(f"p must be in (0, 1), got {p!r}")
    if isinstance(df, bool) or not isinstance(df, (int, np.integer)) or df < 1:
        raise ValueError(f"df must be an integer >= 1, got {df!r}")
    if p == 0.5:
        return 0.0
    mass = abs(2 * p - 1)  # P(|T| <= t) for the upper quantile
    low, high = 0.0, 1.0
    while _t_two_sided_mass(high, int(df)) < mass:
        high *= 2
    for _ in range(200):  # bisection; the mass is increasing in t
        mid = (low + high) / 2
        if _t_two_sided_mass(mid, int(df)) < mass:
            low = mid
        else:
            high = mid
        if high - low <= 1e-13 * max(1.0, high):
            break
    t = (low + high) / 2
    return t if p > 0.5 else -t


def t_interval(differences: Sequence[float], level: float = 0.95) -> Interval:
    """The t-interval for the mean of ``differences``.

    Args:
        differences: Paired differences, one per seed, at least :data:`MIN_SEEDS`.
        level: Confidence level in (0, 1).

    Returns:
        ``mean +- t_{(1+level)/2, n-1} * sd / sqrt(n)`` as an :class:`Interval`.

    Raises:
        ValueError: fewer than :data:`MIN_SEEDS` values, a non-finite value or a bad ``level``.
    """
    array = _values(differences, "differences")
    _check_enough(array, "differences")
    _check_level(level)
    n = array.size
    mean = float(np.mean(array))
    half = t_quantile((1 + level) / 2, n - 1) * float(np.std(array, ddof=1)) / math.sqrt(n)
    return Interval(mean - half, mean + half, float(level), "t")


def bootstrap_interval(
    differences: Sequence[float], level: float = 0.95, *, resamples: int = 10_000, rng_seed: int = 0
) -> Interval:
    """The paired-bootstrap percentile interval for the mean of ``differences``.

    Each resample draws ``n`` seeds with replacement (a seed's pair stays together, so
    resampling the differences is resampling the pairs) and takes the mean difference.

    Args:
        differences: Paired differences, one per seed, at least :data:`MIN_SEEDS`.
        level: Confidence level in (0, 1).
        resamples: Number of bootstrap resamples, >= 100.
        rng_seed: Seed of ``numpy.random.default_rng``: the same seed gives the same interval.

    Returns:
        The ``(1-level)/2`` and ``(1+level)/2`` percentiles of the resample means.

    Raises:
        ValueError: fewer than :data:`MIN_SEEDS` values, a non-finite value, a bad
            ``level`` or ``resamples``.
    """
    array = _values(differences, "differences")
    _check_enough(array, "differences")
    _check_level(level)
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 100:
        raise ValueError(f"resamples must be an integer >= 100, got {resamples!r}")
    rng = np.random.default_rng(rng_seed)
    picks = rng.integers(0, array.size, size=(resamples, array.size))
    means = array[picks].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(low), float(high), float(level), "paired bootstrap")


def paired_difference(
    a: Sequence[float],
    b: Sequence[float],
    level: float = 0.95,
    *,
    resamples: int = 10_000,
    rng_seed: int = 0,
) -> PairedDifference:
    """Compare paired results ``b`` against ``a`` (``a[i]`` and ``b[i]`` share an RNG seed).

    Args:
        a: The reference results, one per seed.
        b: The other results, in the same seed order.
        level: Confidence level in (0, 1).
        resamples, rng_seed: Passed to :func:`bootstrap_interval`.

    Returns:
        A :class:`PairedDifference` of ``b - a``; with fewer than :data:`MIN_SEEDS` pairs
        its intervals are ``None`` and ``statement`` says why.

    Raises:
        ValueError: ``a`` and ``b`` differ in length, are empty, hold a non-finite value,
            or ``level`` is outside (0, 1).
    """
    first, second = _values(a, "a"), _values(b, "b")
    if first.size != second.size:
        raise ValueError(
            f"a and b must pair up one to one, got {first.size} and {second.size} values"
        )
    _check_level(level)
    d = second - first
    n = int(d.size)
    mean = float(np.mean(d))
    sd = float(np.std(d, ddof=1)) if n >= 2 else None
    percent = f"{100 * level:g}%"
    if n < MIN_SEEDS:
        why = (
            "one seed gives one difference and no spread"
            if n == 1
            else "two seeds give a t-interval on one degree of freedom and three distinct bootstrap means"
        )
        statement = (
            f"N = {n}: no confidence interval ({why}); the difference {mean:+.2f} is an anecdote, "
            f"not evidence. Run at least {MIN_SEEDS} seeds."
        )
        return PairedDifference(n, mean, sd, None, None, "too few seeds", statement)
    t = t_interval(d, level)
    boot = bootstrap_interval(d, level, resamples=resamples, rng_seed=rng_seed)
    if t.excludes_zero():
        verdict: Verdict = "differs"
        statement = f"differs at N = {n}: {mean:+.2f}, {percent} t-interval {t.text()} excludes 0"
    else:
        verdict = "no difference detected"
        statement = f"no difference detected at N = {n}: {mean:+.2f}, {percent} t-interval {t.text()} contains 0"
    if boot.excludes_zero() != t.excludes_zero():
        statement += f" (the paired bootstrap {boot.text()} {'excludes' if boot.excludes_zero() else 'contains'} 0)"
    return PairedDifference(n, mean, sd, t, boot, verdict, statement)


# ------------------------------------------------------------------ families of comparisons
# Added for trainkit.sweep's reports: a p-value per comparison, Holm's adjustment over the
# family a report tests, and the smallest effect its seeds could detect.
__all__ += ["detectable_effect", "holm", "paired_t_p_value"]


def paired_t_p_value(differences: Sequence[float]) -> float:
    """The two-sided p-value of the paired t-test that the mean difference is 0.

    Args:
        differences: Paired differences, one per seed, at least :data:`MIN_SEEDS`.

    Returns:
        ``P(|T| >= |t|)`` for ``t = mean / (sd / sqrt(n))`` on ``n - 1`` degrees of freedom;
        NaN when every difference is the same (zero variance: the test is undefined).

    Raises:
        ValueError: fewer than :data:`MIN_SEEDS` values or a non-finite value.
    """
    array = _values(differences, "differences")
    _check_enough(array, "differences")
    sd = float(np.std(array, ddof=1))
    if sd == 0.0:
        return math.nan
    t = abs(float(np.mean(array))) / (sd / math.sqrt(array.size))
    return min(1.0, max(0.0, 1.0 - _t_two_sided_mass(t, int(array.size) - 1)))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (controls the family-wise error).

    With the ``m`` p-values sorted ascending, the ``i``-th (from 1) is multiplied by
    ``m - i + 1``, capped at 1, and made non-decreasing along the order. A comparison
    "differs" at level ``alpha`` when its adjusted p-value is below ``alpha``.

    Args:
        p_values: One p-value per comparison of the family, each in [0, 1]; NaN for a
            comparison that was asked but has no p-value (it still counts in ``m``, which
            is the conservative choice, and stays NaN).

    Returns:
        The adjusted p-values, in the order given.

    Raises:
        ValueError: ``p_values`` is empty or holds a value outside [0, 1].
    """
    values = [float(p) for p in p_values]
    if not values:
        raise ValueError("p_values must hold at least one p-value, got an empty sequence")
    for p in values:
        if not math.isnan(p) and not 0.0 <= p <= 1.0:
            raise ValueError(f"p_values must be in [0, 1] (or NaN), got {p!r}")
    m = len(values)
    order = sorted((i for i in range(m) if not math.isnan(values[i])), key=lambda i: values[i])
    adjusted = [math.nan] * m
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * values[index]))
        adjusted[index] = running
    return adjusted


def detectable_effect(
    sd: float, n: int, level: float = 0.95, power: float = 0.8, comparisons: int = 1
) -> float:
    """The smallest true mean difference a paired t-test would detect with probability ``power``.

    ``(t_{1 - alpha/(2 m), n-1} + t_{power, n-1}) * sd / sqrt(n)`` with ``alpha = 1 - level``
    and ``m = comparisons`` (Bonferroni's threshold, the strictest step of Holm's): the usual
    approximation, taking the observed ``sd`` of the paired differences as the true one.

    Args:
        sd: Standard deviation of the paired differences (>= 0).
        n: Number of pairs (>= 2).
        level: Confidence level in (0, 1).
        power: Probability of detecting an effect of the returned size, in (0, 1).
        comparisons: How many comparisons the family tests (>= 1).

    Returns:
        The effect size, in the units of the differences.

    Raises:
        ValueError: a bad ``sd``, ``n``, ``level``, ``power`` or ``comparisons``.
    """
    if isinstance(sd, bool) or not isinstance(sd, (int, float)) or not math.isfinite(sd) or sd < 0:
        raise ValueError(f"sd must be a finite number >= 0, got {sd!r}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    _check_level(level)
    if not (isinstance(power, (int, float)) and 0 < power < 1):
        raise ValueError(f"power must be in (0, 1), got {power!r}")
    if isinstance(comparisons, bool) or not isinstance(comparisons, int) or comparisons < 1:
        raise ValueError(f"comparisons must be an integer >= 1, got {comparisons!r}")
    alpha = (1 - level) / comparisons
    df = int(n) - 1
    factor = t_quantile(1 - alpha / 2, df) + t_quantile(power, df)
    return factor * float(sd) / math.sqrt(int(n))
