"""Layer-vulnerability ranking (uniform sample and GA): the fragile-layer test, reproducibility,
the rank command."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from flow.cli import main
from flow.core.config import RankConfig, RunConfig
from flow.core.executor import Executor
from flow.core.image import MemoryImage
from flow.nn.lower import lower
from flow.nn.train import train
from flow.pipeline.session import load_data
from flow.reliability.ga import rank_layers_ga
from flow.reliability.ranking import rank_layers
from flow.reliability.vulnerability import layer_ground_truth


@pytest.mark.slow
def test_small_fragile_layer_rises_large_robust_layer_does_not():
    """fc3 is small (640 weights) and fragile (2-bit weights: every flip is a big step), fc1 is
    large (4,096 weights) and robust (8-bit weights with the MSB protected). A ranking that only
    mirrored layer size, like the public GA's, would put fc1 or fc2 first."""
    cfg = RunConfig.model_validate({
        "seed": 0, "model": {"arch": "mlp", "weight_bits": {"fc1": 8, "fc2": 4, "fc3": 2}},
        "train": {"epochs": 6}})
    data = load_data(cfg)
    model, _ = train(cfg, data, torch.device("cpu"), progress=False)
    net = lower(model, data.input_shape)
    image = MemoryImage.build(net, ["fc1"])
    ex = Executor(net, image, "cpu")
    x, y = data.test.x, data.test.y
    truth = layer_ground_truth(ex, image, x, y, seed=0, trials=150, progress=False)
    frac = {r.layer: r.critical_fraction for r in truth}
    assert max(frac, key=frac.get) == "fc3" and min(frac, key=frac.get) == "fc1"
    sizes = {m.layer: m.bits for m in image.targets()}
    assert sizes["fc3"] < sizes["fc2"] and sizes["fc3"] < sizes["fc1"]
    for seed in (0, 1):
        for method in ("ga", "uniform"):
            res = rank_layers(ex, image, x, y, RankConfig(method=method), seed)
            assert res.ranking[0] == "fc3", (method, res.layers)
            lvf = {r["layer"]: r["lvf"] for r in res.layers}
            assert lvf["fc1"] < lvf["fc3"] / 2, (method, res.layers)


def test_uniform_ranking_is_its_own_sample_of_single_flips(mlp_run):
    """rank.method uniform: rank.flips single flips per layer, each judged alone, drawn from a
    stream of the seed that the ground truth does not use; same seed, same result."""
    from flow.pipeline.session import open_session
    from flow.reliability.ranking import rank_layers_uniform
    s = open_session(mlp_run, "cpu")
    x, y = s.data.test.x, s.data.test.y
    res = rank_layers(s.executor, s.image, x, y, RankConfig(flips=40), 3)
    assert res.generations == 0 and res.inferences == 3 * 40
    assert [r["tested"] for r in res.layers] == [40, 40, 40]
    lvf = [r["lvf"] for r in res.layers]
    assert [r["lvf"] for r in sorted(res.layers, key=lambda r: res.ranking.index(r["layer"]))] \
        == sorted(lvf, reverse=True)
    truth = layer_ground_truth(s.executor, s.image, x, y, seed=3, trials=40, progress=False)
    assert [r["critical"] for r in res.layers] == [
        r["critical"] for r in rank_layers_uniform(s.executor, s.image, x, y, 40, 3).layers]
    own = {r["layer"]: (r["critical"], r["lvf"]) for r in res.layers}
    assert own != {t.layer: (t.critical, t.critical_fraction) for t in truth} or all(
        t.critical in (0, 40) for t in truth)   # a different sample (unless all-or-nothing)


def test_same_seed_same_ranking(mlp_run):
    from flow.pipeline.session import open_session
    s = open_session(mlp_run, "cpu")
    cfg = RankConfig(min_tested=20, patience=2)
    a = rank_layers_ga(s.executor, s.image, s.data.test.x, s.data.test.y, cfg, 5)
    b = rank_layers_ga(s.executor, s.image, s.data.test.x, s.data.test.y, cfg, 5)
    assert a.layers == b.layers and a.inferences == b.inferences and a.history == b.history
    assert a.verdicts == b.verdicts
    for row in a.layers:
        assert row["tested"] >= 20
        assert row["lvf"] == pytest.approx(row["n_vulnerable"] / row["bits"])
    # The image is left as it was.
    assert s.executor.correct(s.data.test.x, s.data.test.y) == round(
        s.run.manifest()["steps"]["train"]["test_accuracy_integer"] * len(s.data.test.y))


def test_rank_command_writes_results_and_plan(mlp_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(mlp_run, run)
    assert main(["rank", str(run), "--json", "--ground-truth", "--set", "rank.images=120"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["test_images"] == 120
    assert sorted(out["ranking"]) == ["fc1", "fc2", "fc3"]
    gt = out["ground_truth"]
    assert -1.0 <= gt["spearman"] <= 1.0 or gt["spearman"] != gt["spearman"]
    assert gt["ga_inference_ratio"] == pytest.approx(out["inferences"] / gt["inferences"])
    lo, hi = gt["spearman_ci"]
    assert lo <= hi or lo != lo
    same = gt["uniform_same_cost"]        # the rival at the GA's cost, from its own draws
    assert same["inferences"] <= out["inferences"] and same["trials_per_layer"] >= 1
    plan = json.loads((run / "plan.json").read_text())
    lvf = {r["layer"]: r["lvf"] for r in out["layers"]}
    assert {n: e["vulnerability"] for n, e in plan["layers"].items()} == lvf
    assert (run / "rank" / "ranking.json").is_file()
    assert (run / "rank" / "ground_truth.json").is_file()
    capsys.readouterr()
    assert main(["info", str(run), "--json"]) == 0  # the plan still matches its checkpoint
    rank = json.loads(capsys.readouterr().out)["steps"]["rank"]
    assert rank["status"] == "done" and rank["ranking"] == out["ranking"]  # the runner recorded it
