"""Statistics of hetq fault-injection campaigns.

* :func:`leveugle_sample_size`: how many trials a BER point needs (Leveugle et al., "Statistical
  fault injection: quantified error and confidence", DATE 2009).
* :func:`mean_ci`: the mean of per-trial measurements with a Student-t confidence interval.
* :func:`bounded_mean_ci`: the same for a quantity with known bounds (an accuracy in [0, 1]),
  the interval clipped to the bounds.

Bad user-supplied parameters raise :class:`~flow.core.errors.ConfigError` naming the config field.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special  # ndtri / stdtrit: the normal and Student-t quantiles, light to import

from flow.core.errors import ConfigError


def _check_open_unit(name: str, value: float) -> float:
    """Return ``value`` as a float if it lies strictly inside (0, 1), else raise ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise ConfigError(f"{name}: {value!r} is not in (0, 1)")
    return float(value)


def normal_quantile(confidence: float) -> float:
    """The standard normal quantile t with P(|Z| <= t) = confidence (1.96 for 0.95)."""
    return float(special.ndtri((1.0 + confidence) / 2.0))


def leveugle_sample_size(margin: float, confidence: float = 0.95, p: float = 0.5,
                         population: int | None = None) -> int:
    """Number of fault-injection trials for an error ``margin`` at a ``confidence`` level.

    With a finite ``population`` N (the number of distinct faults that could be injected)::

        n = N / (1 + e^2 (N - 1) / (t^2 p (1 - p)))

    and with ``population=None`` (infinite; the sampled unit is a whole random fault map)::

        n = t^2 p (1 - p) / e^2

    where e is ``margin``, t the two-sided normal quantile of ``confidence`` and ``p`` the
    a-priori proportion (0.5 is the worst case). The result is rounded up.

    Raises:
        ConfigError: ``margin``, ``confidence`` or ``p`` is not in (0, 1), or ``population`` is
            not an integer >= 1.
    """
    e = _check_open_unit("campaign.margin", margin)
    c = _check_open_unit("campaign.confidence", confidence)
    q = _check_open_unit("campaign.p", p)
    t = normal_quantile(c)
    infinite = t * t * q * (1.0 - q) / (e * e)
    if population is None:
        return math.ceil(infinite)
    if isinstance(population, bool) or not isinstance(population, int) or population < 1:
        raise ConfigError(f"campaign.population: {population!r} is not an integer >= 1")
    n = population / (1.0 + (population - 1) / infinite)
    return min(population, math.ceil(n))


@dataclass(frozen=True)
class Interval:
    """A sample mean with its two-sided confidence interval ``[low, high]``.

    ``half_width`` is the Student-t half-width (``high - mean`` = ``mean - low`` unless
    ``clipped``), ``n`` the sample size and ``confidence`` the coverage level of the interval
    (e.g. 0.95). ``defined`` is False for a single value (no spread estimate: ``low == high ==
    mean`` is a placeholder, not a zero-width interval); ``clipped`` is True when
    :func:`bounded_mean_ci` cut the t-interval at a bound of the quantity.
    """

    mean: float
    low: float
    high: float
    half_width: float
    n: int
    confidence: float
    defined: bool = True
    clipped: bool = False


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean of ``values`` with a Student-t confidence interval.

    half_width = t_{(1+c)/2, n-1} * s / sqrt(n), with s the sample standard deviation (ddof=1).
    A single value has no spread estimate: its interval is degenerate (``half_width`` 0,
    ``low == high == mean``) and ``defined`` is False; callers should treat it as "no
    uncertainty information".

    Raises:
        ValueError: ``values`` is empty, not one-dimensional, or holds a non-finite number.
        ConfigError: ``confidence`` is not in (0, 1).
    """
    c = _check_open_unit("campaign.confidence", confidence)
    x = np.asarray(values, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"mean_ci: expected a flat sequence, got shape {x.shape}")
    if x.size == 0:
        raise ValueError("mean_ci: no values")
    if not np.all(np.isfinite(x)):
        raise ValueError("mean_ci: values contain NaN or infinity")
    n = int(x.size)
    mean = float(x.mean())
    half = 0.0
    if n > 1:
        t = float(special.stdtrit(n - 1, (1.0 + c) / 2.0))
        half = t * float(x.std(ddof=1)) / math.sqrt(n)
    return Interval(mean=mean, low=mean - half, high=mean + half, half_width=half, n=n,
                    confidence=c, defined=n > 1)


def bounded_mean_ci(values: Sequence[float], confidence: float = 0.95, lo: float = 0.0,
                    hi: float = 1.0) -> Interval:
    """Mean of ``values`` that lie in ``[lo, hi]`` (per-trial accuracies: [0, 1]) with the
    Student-t interval of :func:`mean_ci` clipped to ``[lo, hi]``.

    With few trials the t-interval of an accuracy near 0 or 1 reaches past the bound (e.g.
    [-0.219, 1.559] for 2 trials at 0.60 and 0.74). The mean cannot lie outside ``[lo, hi]``, so
    the part of the interval beyond a bound holds no possible value: clipping it off removes no
    value the true mean could take, and the clipped interval covers the true mean exactly when
    the t-interval does (same confidence). It is still the t-interval's approximation (trial
    accuracies roughly normal); a clipped interval says that assumption is strained, because the
    trials are few or pile up at a bound, so ``clipped`` is reported rather than hidden. It is
    no longer symmetric about the mean; ``half_width`` stays the t half-width.

    One value gives ``[mean, mean]`` with ``defined`` False: a single trial says nothing about
    the spread between trials, so no interval is claimed (and none is invented from the number
    of test images, which measures another variability).

    Raises:
        ValueError: as :func:`mean_ci`, or a value lies outside ``[lo, hi]``.
        ConfigError: ``confidence`` is not in (0, 1).
    """
    ci = mean_ci(values, confidence)
    x = np.asarray(values, dtype=float)
    if np.any(x < lo) or np.any(x > hi):
        raise ValueError(f"bounded_mean_ci: values outside [{lo}, {hi}]")
    low, high = max(lo, ci.low), min(hi, ci.high)
    return Interval(mean=ci.mean, low=low, high=high, half_width=ci.half_width, n=ci.n,
                    confidence=ci.confidence, defined=ci.defined,
                    clipped=(low, high) != (ci.low, ci.high))


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n ((0, 1) when n is 0)."""
    if n == 0:
        return 0.0, 1.0
    z = normal_quantile(confidence)
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def median_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Median of ``values`` with a distribution-free confidence interval (order statistics).

    The interval is ``[x_(j), x_(n+1-j)]`` (sorted, 1-based) with the largest ``j`` whose
    binomial(n, 1/2) coverage ``1 - 2 P(B < j)`` is at least ``confidence``; with too few values
    for that coverage it is the whole range. Returns (median, low, high).
    """
    c = _check_open_unit("confidence", confidence)
    x = np.sort(np.asarray(values, dtype=float))
    if x.ndim != 1 or x.size == 0 or not np.all(np.isfinite(x)):
        raise ValueError("median_ci: needs a flat, non-empty sequence of finite values")
    n = int(x.size)
    # coverage of [x_(j), x_(n+1-j)] is 1 - 2 P(B <= j - 1), B ~ binomial(n, 1/2)
    j, cdf = 1, 1 / 2.0 ** n                        # cdf = P(B <= j - 1)
    while j + 1 <= n - j:
        nxt = cdf + math.comb(n, j) / 2.0 ** n      # P(B <= j)
        if 1 - 2 * nxt < c:
            break
        j, cdf = j + 1, nxt
    return float(np.median(x)), float(x[j - 1]), float(x[n - j])
