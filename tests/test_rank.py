"""GA layer-vulnerability ranking: the fragile-layer test, reproducibility, the rank command."""
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
        res = rank_layers_ga(ex, image, x, y, RankConfig(), seed)
        assert res.ranking[0] == "fc3", res.layers
        lvf = {r["layer"]: r["lvf"] for r in res.layers}
        assert lvf["fc1"] < lvf["fc3"] / 2, res.layers


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
    assert (run / "rank" / "ga.json").is_file() and (run / "rank" / "ground_truth.json").is_file()
    capsys.readouterr()
    assert main(["info", str(run), "--json"]) == 0  # the plan still matches its checkpoint
    rank = json.loads(capsys.readouterr().out)["steps"]["rank"]
    assert rank["status"] == "done" and rank["ranking"] == out["ranking"]  # the runner recorded it
