"""Algorithm 1's rules as pure functions (no training): the paper's binary-search step, the base
bit-width, and protection of the most vulnerable layers."""
from __future__ import annotations

import pytest

from flow.reliability.algorithm1 import Measured, base_bits, next_bits, protect, search_bits


@pytest.mark.parametrize("q,acc,drop,nxt", [
    (8, 0.95, 0.001, 4),     # accurate and robust: fewer bits
    (8, 0.95, 0.05, 12),     # not robust: more bits
    (4, 0.80, 0.001, 6),     # not accurate: more bits
    (3, 0.95, 0.0, 2),
    (2, 0.50, 0.0, 3),
    (16, 0.99, 0.0, 8),
])
def test_next_bits(q, acc, drop, nxt):
    assert next_bits(q, Measured(acc, drop), a=0.9, r=0.01) == nxt


def _measure(table):
    calls = []

    def measure(q):
        calls.append(q)
        return Measured(*table(q))
    return measure, calls


def test_search_visits_like_the_digits_run():
    """Accurate from 3 bits, always robust: 8 -> 4 -> 2 (inaccurate) -> 3 -> 2 (tried): base 3."""
    measure, calls = _measure(lambda q: (0.98 if q >= 3 else 0.8, 0.001))
    tried = search_bits(measure, 8, a=0.9, r=0.01)
    assert calls == [8, 4, 2, 3] and list(tried) == calls
    assert base_bits(tried, 0.9) == 3


def test_search_grows_when_nothing_is_robust_and_stops_at_the_range():
    measure, calls = _measure(lambda q: (0.95, 0.5))
    tried = search_bits(measure, 8, a=0.9, r=0.01, hi=16)
    assert calls == [8, 12]            # 12 + 6 = 18 leaves 2..16
    assert base_bits(tried, 0.9) == 8


def test_no_accurate_width_gives_none():
    measure, _ = _measure(lambda q: (0.5, 0.0))
    assert base_bits(search_bits(measure, 8, a=0.9, r=0.01), 0.9) is None


def test_protect_adds_layers_by_rank_until_the_drop_is_met():
    drops = {("a",): 0.03, ("a", "b"): 0.008, ("a", "b", "c"): 0.001}
    steps = protect(["a", "b", "c"], 0.05, lambda p: drops[tuple(p)], r=0.01)
    assert steps == [([], 0.05), (["a"], 0.03), (["a", "b"], 0.008)]


def test_protect_stops_with_every_layer_and_none_when_met():
    assert protect(["a", "b"], 0.05, lambda p: 0.04, r=0.01) == [
        ([], 0.05), (["a"], 0.04), (["a", "b"], 0.04)]
    assert protect(["a", "b"], 0.005, lambda p: 0.0, r=0.01) == [([], 0.005)]
