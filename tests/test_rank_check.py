"""The ranking-vs-truth comparison: Spearman's bootstrap interval and the misordered pairs."""
from __future__ import annotations

import math

from flow.pipeline.rank import compare
from flow.reliability.rank_check import misorders, spearman, spearman_bootstrap
from flow.reliability.vulnerability import LayerTruth


def _truth(layer: str, n: int, k: int, lo: float, hi: float) -> LayerTruth:
    return LayerTruth(layer, 1000, n, k, k / n, lo, hi, 0.0, 0.0, 0.0)


def test_bootstrap_interval_is_tight_for_well_separated_layers_and_wide_for_close_ones():
    n = [400, 400, 400, 400]
    far = spearman_bootstrap(n, [20, 100, 200, 300], n, [22, 95, 210, 290], seed=1)
    assert far == (1.0, 1.0)                     # every replicate keeps the order
    close = spearman_bootstrap(n, [100, 102, 104, 106], n, [101, 103, 105, 107], seed=1)
    assert close[0] < 0 < 0.9 < close[1] <= 1.0  # the samples cannot order these layers
    assert spearman_bootstrap(n, [100, 102, 104, 106], n, [101, 103, 105, 107], seed=1) == close


def test_misorders_lists_each_inverted_pair_with_the_truths_gap():
    est = {"a": 0.3, "b": 0.2, "c": 0.1}
    truth = {"a": 0.10, "b": 0.25, "c": 0.05}
    ci = {"a": (0.08, 0.12), "b": (0.20, 0.30), "c": (0.03, 0.07)}
    (m,) = misorders(["a", "b", "c"], est, truth, ci)
    assert (m.ranked_higher, m.ranked_lower) == ("a", "b")
    assert math.isclose(m.truth_gap, 0.15) and not m.truth_cis_overlap
    assert misorders(["a", "b", "c"], truth, truth, ci) == []
    assert math.isnan(spearman([1.0, 1.0], [0.0, 1.0]))


def test_compare_reports_the_ga_and_its_equal_cost_rival():
    ga = [{"layer": "a", "tested": 50, "critical": 5, "lvf": 0.1},
          {"layer": "b", "tested": 50, "critical": 20, "lvf": 0.4},
          {"layer": "c", "tested": 50, "critical": 10, "lvf": 0.2}]
    truth = [_truth("a", 384, 30, 0.06, 0.1), _truth("b", 384, 150, 0.34, 0.44),
             _truth("c", 384, 20, 0.03, 0.08)]
    same = [_truth("a", 50, 4, 0.0, 0.2), _truth("b", 50, 21, 0.3, 0.5),
            _truth("c", 50, 2, 0.0, 0.2)]
    out = compare(ga, 150, truth, same, seed=0)
    assert out["ranking"] == ["b", "a", "c"]
    assert out["spearman"] == 0.5 and out["ga_inference_ratio"] == 150 / 1152
    assert [(m["ranked_higher"], m["ranked_lower"]) for m in out["misordered"]] == [("c", "a")]
    assert out["misordered"][0]["truth_cis_overlap"]
    lo, hi = out["spearman_ci"]
    assert -1.0 <= lo <= 0.5 <= hi <= 1.0
    u = out["uniform_same_cost"]
    assert u["inferences"] == 150 and u["trials_per_layer"] == 50
    assert u["spearman"] == 1.0 and u["misordered"] == 0


def test_ranking_images_is_a_seeded_subset_in_test_order():
    import torch

    from flow.reliability.ranking import ranking_images
    x = torch.arange(100.0).reshape(100, 1)
    y = torch.arange(100) % 10
    assert ranking_images(x, y, None, 0)[0] is x and ranking_images(x, y, 100, 0)[0] is x
    sx, sy = ranking_images(x, y, 30, 5)
    idx = sx[:, 0].long()
    assert len(idx) == 30 and torch.equal(idx, idx.sort().values) and len(set(idx.tolist())) == 30
    assert torch.equal(sy, y[idx]) and torch.equal(ranking_images(x, y, 30, 5)[0], sx)
    assert not torch.equal(ranking_images(x, y, 30, 6)[0], sx)
