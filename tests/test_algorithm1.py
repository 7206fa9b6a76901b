"""Algorithm 1's rules as pure functions (no training): the paper's binary-search step, the base
bit-width, protection of the most vulnerable layers, and the pareto pick among the designs."""
from __future__ import annotations

import numpy as np
import pytest

from flow.reliability.algorithm1 import (
    Design,
    Measured,
    base_bits,
    dominates,
    next_bits,
    pareto_pick,
    protect,
    rap_of,
    search_bits,
)


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


# ---- pareto mode: the pick among every design the search evaluated ----

def _digits_run() -> list[Design]:
    """The default digits run of 2026-12-02: q tried 8, 4, 2, 3 unprotected, then q = 2 with
    conv1, fc1, conv2 protected one more at a time (the paper's pick: drop 1.85 % > r)."""
    return [Design(8, (), 0.9833, 0.0001, 78_976), Design(4, (), 0.9822, 0.0012, 39_488),
            Design(2, (), 0.9506, 0.0466, 19_744), Design(3, (), 0.9805, 0.0025, 29_616),
            Design(2, ("conv1",), 0.9506, 0.0508, 21_104),
            Design(2, ("conv1", "fc1"), 0.9506, 0.0290, 35_232),
            Design(2, ("conv1", "fc1", "conv2"), 0.9506, 0.0185, 39_488)]


def test_pareto_pick_returns_the_undominated_design_the_paper_misses():
    designs = _digits_run()
    paper = designs[-1]
    assert any(dominates(d, paper) for d in designs)     # q = 3 unprotected: fewer bits, less drop
    i, why = pareto_pick(designs, a=0.9, r=0.01)
    assert designs[i] == Design(3, (), 0.9805, 0.0025, 29_616)
    assert "fewest weight bits of the 3 designs that meet a and r" in why
    assert not any(dominates(d, designs[i]) for d in designs)


def test_pareto_rap_objective_and_ties():
    designs = _digits_run()
    ref = designs[0]
    i, why = pareto_pick(designs, a=0.9, r=0.01, objective="rap")
    assert "lowest RAP" in why
    meets = [d for d in designs if d.accuracy > 0.9 and d.drop <= 0.01]
    assert rap_of(designs[i], ref) == min(rap_of(d, ref) for d in meets)
    assert designs[i].q == 8                          # the near-zero drop outweighs 2.7x the bits
    # equal bits: the lower drop wins; a negative drop counts as 0 in RAP, then bits decide
    tie = [Design(4, (), 0.95, 0.004, 100), Design(4, ("a",), 0.95, 0.002, 100),
           Design(5, (), 0.95, -0.001, 120), Design(6, (), 0.95, -0.003, 130)]
    assert pareto_pick(tie, 0.9, 0.01)[0] == 1
    assert pareto_pick(tie, 0.9, 0.01, "rap")[0] == 2


def test_pareto_when_no_design_meets_r_or_a():
    designs = [Design(2, (), 0.95, 0.050, 100), Design(2, ("l1",), 0.95, 0.030, 150),
               Design(2, ("l1", "l2"), 0.95, 0.028, 200), Design(3, (), 0.80, 0.001, 90)]
    i, why = pareto_pick(designs, a=0.9, r=0.01)
    # 5.0 x 100 = 500, 3.0 x 150 = 450, 2.8 x 200 = 560: the inaccurate q = 3 does not compete
    assert i == 1 and why.startswith("no design meets r = 0.01")
    i, why = pareto_pick([Design(2, (), 0.5, 0.2, 10), Design(3, (), 0.6, 0.1, 30)], 0.9, 0.01)
    assert i == 0 and "no design reaches accuracy" in why
    with pytest.raises(ValueError):
        pareto_pick([], 0.9, 0.01)


@pytest.mark.parametrize("objective", ["bits", "rap"])
def test_pareto_pick_is_never_dominated(objective):
    """Random design sets (seeded): no accurate evaluated design dominates the pick."""
    rng = np.random.default_rng(7)
    for _ in range(2000):
        n = int(rng.integers(1, 9))
        designs = [Design(int(rng.integers(2, 9)), (), float(rng.uniform(0.85, 1.0)),
                          float(rng.choice([rng.uniform(-0.01, 0.05), 0.0, 0.01])),
                          int(rng.integers(1, 6)) * 100) for _ in range(n)]
        i, _ = pareto_pick(designs, a=0.9, r=0.01, objective=objective)
        pool = [d for d in designs if d.accuracy > 0.9] or designs
        assert designs[i] in pool
        assert not any(dominates(d, designs[i]) for d in pool)
