"""Tests of flow.reliability.stats: Leveugle sample sizes and Student-t mean confidence
intervals."""
from __future__ import annotations

import math

import numpy as np
import pytest

from flow.core.errors import ConfigError
from flow.reliability.stats import Interval, leveugle_sample_size, mean_ci

T95 = 1.959963984540054  # scipy.stats.norm.ppf(0.975)


# ---------------------------------------------------------------- leveugle_sample_size


def test_leveugle_infinite_population() -> None:
    # 1.96^2 * 0.25 / 0.05^2 = 384.16; with the exact quantile 384.146 -> 385
    assert leveugle_sample_size(0.05) == 385
    assert leveugle_sample_size(0.05, 0.95, 0.5, None) == 385
    assert leveugle_sample_size(0.01) == math.ceil(T95 ** 2 * 0.25 / 0.01 ** 2) == 9604


def test_leveugle_confidence_99_needs_more() -> None:
    t99 = 2.5758293035489004
    assert leveugle_sample_size(0.05, 0.99) == math.ceil(t99 ** 2 * 0.25 / 0.05 ** 2) == 664


def test_leveugle_finite_population() -> None:
    n_pop, e = 1000, 0.05
    expect = math.ceil(n_pop / (1 + e ** 2 * (n_pop - 1) / (T95 ** 2 * 0.25)))
    assert expect == 278
    assert leveugle_sample_size(e, population=n_pop) == expect
    assert leveugle_sample_size(e, population=1) == 1
    assert leveugle_sample_size(e, population=10) <= 10


def test_leveugle_p_away_from_half_needs_fewer() -> None:
    assert leveugle_sample_size(0.05, p=0.1) == math.ceil(T95 ** 2 * 0.09 / 0.05 ** 2)
    assert leveugle_sample_size(0.05, p=0.1) < leveugle_sample_size(0.05)


@pytest.mark.parametrize("margin", [0.0, 1.0, 1.5, -0.1, float("nan")])
def test_leveugle_bad_margin(margin: float) -> None:
    with pytest.raises(ConfigError, match=r"campaign\.margin: .* is not in \(0, 1\)"):
        leveugle_sample_size(margin)


def test_leveugle_bad_other_parameters() -> None:
    with pytest.raises(ConfigError, match="campaign.confidence"):
        leveugle_sample_size(0.05, confidence=1.0)
    with pytest.raises(ConfigError, match="campaign.p"):
        leveugle_sample_size(0.05, p=0.0)
    with pytest.raises(ConfigError, match="campaign.population"):
        leveugle_sample_size(0.05, population=0)
    with pytest.raises(ConfigError, match="campaign.population"):
        leveugle_sample_size(0.05, population=2.5)  # type: ignore[arg-type]


# ---------------------------------------------------------------- mean_ci


def test_mean_ci_known_values() -> None:
    ci = mean_ci([1, 2, 3, 4, 5])
    half = 2.7764451051977934 * math.sqrt(2.5) / math.sqrt(5)
    assert isinstance(ci, Interval)
    assert ci.mean == pytest.approx(3.0)
    assert ci.half_width == pytest.approx(half, rel=1e-12)
    assert (ci.low, ci.high) == (pytest.approx(3 - half), pytest.approx(3 + half))
    assert ci.n == 5 and ci.confidence == 0.95


def test_mean_ci_wider_at_higher_confidence() -> None:
    assert mean_ci([1, 2, 3, 4, 5], 0.99).half_width > mean_ci([1, 2, 3, 4, 5]).half_width


def test_mean_ci_single_value_is_degenerate() -> None:
    ci = mean_ci([0.7])
    assert (ci.mean, ci.low, ci.high, ci.half_width, ci.n) == (0.7, 0.7, 0.7, 0.0, 1)


def test_mean_ci_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="no values"):
        mean_ci([])
    with pytest.raises(ValueError, match="NaN"):
        mean_ci([1.0, float("nan")])
    with pytest.raises(ConfigError, match="confidence"):
        mean_ci([1.0, 2.0], confidence=95)


def test_mean_ci_coverage_is_nominal() -> None:
    rng = np.random.default_rng(20240611)
    samples = rng.normal(loc=0.8, scale=0.05, size=(2000, 20))
    hits = 0
    for sample in samples:
        ci = mean_ci(sample.tolist())
        hits += ci.low <= 0.8 <= ci.high
    assert 0.93 < hits / len(samples) < 0.97


@pytest.mark.parametrize("n", [6, 20, 50, 51])
def test_median_ci_is_the_tightest_order_statistic_interval_with_the_coverage(n):
    from scipy.stats import binom

    from flow.reliability.stats import median_ci
    x = np.random.default_rng(n).normal(size=n)
    med, lo, hi = median_ci(x, 0.95)
    s = np.sort(x)
    j = int(np.flatnonzero(s == lo)[0]) + 1
    assert med == np.median(x) and hi == s[n - j]
    assert 1 - 2 * binom.cdf(j - 1, n, 0.5) >= 0.95          # covers
    if j + 1 <= n - j:                                         # and is the tightest that does
        assert 1 - 2 * binom.cdf(j, n, 0.5) < 0.95
