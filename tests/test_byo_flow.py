"""Bring your own network, whole flow, from the CLI, on networks written in tests/user_nets.py:

(a) a dense network 64-37-23-10, weight bits 3/5/7, the middle layer protected;
(b) a CNN with a 5x5 conv, a stride-2 conv, padding 0 and 1, 12/20/15 channels, two max-pools;
(c) a binary MLP with batch-norm + sign (through ``hetq run``, report included);
(d) a residual network with a global average pool: lowers bit-exactly and takes campaigns;
and a QONNX file exported with Brevitas from a network hetq never built, imported with an .npz.

The dense network runs train -> inject -> rank -> hls (C-sim bit-exact, fault replay) -> rtl -> sim
(bit-exact, latency within 1 % of the analytic count) -> search; the CNN train -> rtl (its
shapes reach the RTL) here, and the whole flow with Verilator, C-sim and Yosys as the imported
QONNX file; the binary MLP the whole `hetq run`. Real Brevitas, hls4ml C-sim, Verilator and
Yosys throughout.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import hls_reuse_factors, write_config

from flow.cli import main

pytestmark = pytest.mark.slow

NETS = Path(__file__).with_name("user_nets.py")
QUICK = {"seed": 0, "train": {"epochs": 4},
         "campaign": {"bers": [1e-2], "trials": 5},
         "search": {"trials": 10, "finetune_epochs": 1, "accuracy_threshold": 0.5},
         "hls": {"replay_maps": 5, "replay_images": 40},
         # plain Verilator builds, but for the Brevitas export below: the profiled one (sim.pgo,
         # the default) costs a second build; also checked on the digits default
         # (test_flow_run.py) and the MLP of test_rtl.py
         "sim": {"bers": [1e-2], "trials": 3, "images": 40, "workers": 1, "pgo": False},
         "report": {"boards": ["pynq-z2"], "baseline": False},
         # few MAC lanes: small designs, so Yosys takes about half the time
         "rtl": {"target_cycles": 4096}}


def cli(capsys, *args) -> dict:
    """One hetq command in this process with --json; it must succeed."""
    code = main([str(a) for a in args] + ["--json"])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    return json.loads(out)


def flow(capsys, tmp_path: Path, model: dict, steps: tuple[str, ...], **sections
         ) -> tuple[Path, dict]:
    cfg = write_config(tmp_path / "cfg.yaml", {**QUICK, **sections, "model": model})
    run = tmp_path / "run"
    res = {"train": cli(capsys, "train", cfg, "--out", run)}
    for step in steps:
        res[step] = cli(capsys, step, run)
    return run, res


def check_hardware(res: dict, protected: list[str], board: str = "pynq-z2") -> None:
    """Whichever of C-sim, RTL and Yosys ran: bit-exact with the executor, faults replayed,
    reuse factors as in the generated parameters.h, cycles within 1 % of the analytic count,
    the design fits."""
    t = res["train"]["checks"]
    assert t["qonnx"]["exact"] and t["brevitas"]["exact"]
    if "hls" in res:
        rf = res["hls"]["reuse_factors"]
        assert hls_reuse_factors(Path(res["hls"]["project"])) == [v["used"] for v in rf.values()]
        assert res["hls"]["csim"]["bit_exact"]
        assert res["hls"]["replay"]["equal"] == res["hls"]["replay"]["maps"] == 5
        assert res["hls"]["protected"] == protected
    sim = res["sim"]["check"]
    assert sim["bit_exact"]
    assert abs(sim["latency_ratio"] - 1) <= 0.01, sim
    assert res["sim"]["summary"][0]["trials"] == 3
    if "synth" in res:
        total = res["synth"]["designs"]["protected"][board]["total"]
        assert total["lut"] > 0 and res["synth"]["designs"]["protected"][board]["fits"]
    prot = {m["memory"]: m["protected"] for m in res["rtl"]["memories"]}
    for layer in protected:
        assert prot[f"{layer}.weight"]


def test_dense_64_37_23_10(tmp_path, capsys):
    layers = ["classifier.fc1", "classifier.fc2", "classifier.fc3"]
    run, res = flow(capsys, tmp_path, {"arch": f"{NETS}:dense_64_37_23_10",
                                       "weight_bits": dict(zip(layers, (3, 5, 7))),
                                       "protected": ["classifier.fc2"]},
                    ("inject", "rank", "hls", "rtl", "sim"))
    assert res["train"]["layers"] == layers
    mems = {m["memory"]: m for m in res["rtl"]["memories"]}
    # 3/5/7-bit words, the middle layer with its MSB triplicated (5 + 2 bits per lane)
    widths = [next(st["params"]["WBITS"] for st in res["rtl"]["stages"]
                   if st["module"] == "mvu" and st["layer"] == x) for x in layers]
    assert widths == [3, 5, 7]
    assert [mems[f"{x}.weight"]["protected"] for x in layers] == [False, True, False]
    assert set(res["rank"]["ranking"]) == set(layers)
    check_hardware(res, ["classifier.fc2"])
    # hls4ml's valid reuse factors for 64x37, 37x23 and 23x10 products: its closest-to-4 rule
    # takes 4, 1 and 1 (fully parallel, weights in logic); hetq the smallest valid one >= 4
    rf = res["hls"]["reuse_factors"]
    assert [rf[x]["used"] for x in layers] == [4, 37, 23]
    assert not any(v["fully_parallel"] for v in rf.values())
    assert hls_reuse_factors(run / "hls" / "prj") == [rf[x]["used"] for x in layers]
    # a fault map written here, over the 3-, 5+2- and 7-bit memories: the same scores in RTL
    # and C-sim as in the executor, the predictions of `hetq inject --map`
    faults = ([{"memory": "classifier.fc1.weight", "word": w, "bit": 2} for w in range(0, 40, 4)]
              + [{"memory": "classifier.fc2.weight", "word": w, "bit": 6} for w in range(0, 50, 5)]
              + [{"memory": "classifier.fc3.weight", "word": w, "bit": 6} for w in (1, 3, 8)])
    fmap = tmp_path / "hand.json"
    fmap.write_text(json.dumps({"version": 1, "faults": faults}))
    sw = cli(capsys, "inject", run, "--map", fmap)
    for cmd in ("sim", "hls"):
        got = cli(capsys, cmd, run, "--map", fmap)
        assert got["scores_equal"] == got["images"] > 0
        assert got["predictions"] == sw["predictions"][:got["images"]]
    # the standalone cocotb project of this network passes its own tests
    rtl = tmp_path / "rtl_copy"
    shutil.copytree(run / "rtl", rtl, ignore=shutil.ignore_patterns("sim_build*", "work"))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                       cwd=rtl, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "TESTS=4 PASS=4 FAIL=0" in (rtl / "sim_build_tests" / "sim.log").read_text()
    res["search"] = cli(capsys, "search", run)
    s = res["search"]
    assert s["q"] in [r["q"] for r in s["tried"]] and s["note"] is None
    plan = json.loads((run / "plan.json").read_text())
    assert {e["weight_bits"] for e in plan["layers"].values()} == {s["q"]}


def test_odd_cnn(tmp_path, capsys):
    run, res = flow(capsys, tmp_path, {"arch": f"{NETS}:odd_cnn", "protected": ["mix"]},
                    ("rtl",))
    assert res["train"]["layers"] == ["features.0", "features.3", "mix", "head"]
    mvus = {s["layer"]: s["params"] for s in res["rtl"]["stages"] if s["module"] == "mvu"}
    assert (mvus["features.0"]["K"], mvus["features.0"]["PAD"]) == (5, 1)
    assert (mvus["features.3"]["STRIDE"], mvus["features.3"]["OH"]) == (2, 2)
    assert (mvus["mix"]["K"], mvus["mix"]["PAD"], mvus["mix"]["OUT"]) == (1, 0, 15)
    assert sum(s["module"] == "pool2d" for s in res["rtl"]["stages"]) == 2
    t = res["train"]["checks"]
    assert t["qonnx"]["exact"] and t["brevitas"]["exact"]
    assert {m["memory"]: m["protected"] for m in res["rtl"]["memories"]}["mix.weight"]
    # the same network in Verilator, C-sim and Yosys: test_import_brevitas_export


def test_binary_mlp_whole_run(tmp_path, capsys):
    """`hetq run` on a binary network: search keeps the 1-bit weights and chooses protection."""
    # synthesized for UltraScale+ (zcu104); 7-series is the other whole runs' family
    cfg = write_config(tmp_path / "cfg.yaml", {**QUICK, "model": {"arch": f"{NETS}:binary_mlp"},
                                               "search": {**QUICK["search"], "ber": 1e-2,
                                                          "drop_threshold": 0.001},
                                               "report": {"boards": ["zcu104"],
                                                          "baseline": False}})
    res = cli(capsys, "run", cfg, "--out", tmp_path / "run")["steps"]
    assert res["train"]["layers"] == ["hidden.0", "hidden.1", "out"]
    assert res["search"]["q"] is None and "binary" in res["search"]["note"]
    assert res["search"]["protected"]                    # the drop asked for protection
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert {e["weight_bits"] for e in plan["layers"].values()} == {1}
    check_hardware(res, sorted(res["search"]["protected"]), board="zcu104")
    z = res["synth"]["designs"]["protected"]["zcu104"]
    assert z["family"] == "xcup" and z["fits"] and z["total"]["lut"] > 0
    assert (tmp_path / "run" / "report" / "report.html").is_file()


def test_residual_gap_through_every_level(tmp_path, capsys):
    """(d), a residual block and nn.AdaptiveAvgPool2d(1): campaigns over weights and biases, the
    ranking, then C-sim and RTL bit-exact with fault replay and cycles within 1 %."""
    cfg = write_config(tmp_path / "cfg.yaml", {**QUICK, "model": {"arch": f"{NETS}:residual_gap",
                                                                 "protected": ["conv_b"]},
                                               "train": {"epochs": 2},
                                               "campaign": {"bers": [1e-3, 1e-2], "trials": 5,
                                                            "kinds": ["weight", "bias"]}})
    run = tmp_path / "run"
    res = {"train": cli(capsys, "train", cfg, "--out", run)}
    assert res["train"]["checks"]["brevitas"]["images"] == 359
    inj = cli(capsys, "inject", run)
    assert [r["trials"] for r in inj["summary"]] == [5, 5]
    assert inj["summary"][-1]["mean_faults"] > 1
    assert set(cli(capsys, "rank", run)["ranking"]) == {"stem", "conv_a", "conv_b", "fc"}
    for step in ("hls", "rtl", "sim"):
        res[step] = cli(capsys, step, run)
    check_hardware(res, ["conv_b"])
    assert {s["module"] for s in res["rtl"]["stages"]} >= {"stream_fork", "frame_fifo",
                                                           "residual_add", "sum_pool"}
    # what a Ray actor off the driver's node receives (hetq sim --executor ray) is the whole
    # project: written out, the same sources, manifest and memory files
    from flow.hw.rtl_ray import project_files, write_files
    from flow.hw.rtlgen import RtlManifest, project_hash
    copy = tmp_path / "actor_copy"
    write_files(project_files(run / "rtl"), copy)
    assert project_hash(copy) == project_hash(run / "rtl")
    assert RtlManifest.load(copy).obj == RtlManifest.load(run / "rtl").obj
    mems = sorted(p.name for p in (run / "rtl" / "mem").iterdir())
    assert mems and mems == sorted(p.name for p in (copy / "mem").iterdir())


def _digits_npz(path: Path) -> tuple[Path, object]:
    """The digits split of seed 0 as an .npz of float NCHW images (what a user would save)."""
    from flow.nn.data import load_dataset
    ds = load_dataset("digits", seed=0)
    np.savez(path, x_train=ds.train.x.numpy(), y_train=ds.train.y.numpy(),
             x_val=ds.val.x.numpy(), y_val=ds.val.y.numpy(), x_test=ds.test.x.numpy(),
             y_test=ds.test.y.numpy())
    return path, ds


def test_import_brevitas_export(tmp_path, capsys):
    """A network hetq never built, trained by a plain PyTorch loop and exported by Brevitas the
    way its users do (QuantTensor output, TorchScript exporter), imported with an .npz."""
    import importlib.util

    from brevitas.export import export_qonnx
    spec = importlib.util.spec_from_file_location("user_nets_import", NETS)
    nets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nets)
    data, ds = _digits_npz(tmp_path / "digits.npz")
    torch.manual_seed(0)
    model = nets.odd_cnn(10)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for _ in range(3):
        for i in range(0, len(ds.train.y), 64):
            loss = torch.nn.functional.cross_entropy(model(ds.train.x[i:i + 64]).value,
                                                     ds.train.y[i:i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    export_qonnx(model, torch.zeros(1, 1, 8, 8), str(tmp_path / "user.onnx"), dynamo=False)
    run = tmp_path / "run"
    # this network's Verilator model is built profile-guided (sim.pgo, hetq's default)
    cfg = write_config(tmp_path / "cfg.yaml", {**QUICK, "model": {"protected": ["features.3"]},
                                               "sim": {**QUICK["sim"], "pgo": True},
                                               "table": {"ber": 1e-2, "bers": [1e-2],
                                                         "trials": 3}})
    t = cli(capsys, "import", tmp_path / "user.onnx", "--data", data, "--out", run,
            "--config", cfg)
    assert t["source"] == "import" and t["checks"]["qonnx"]["exact"]
    assert t["test_accuracy_integer"] > 0.5
    # the imported network gives the Brevitas model's predictions
    ref = model(ds.test.x).value.argmax(1)
    info = cli(capsys, "info", run)
    assert info["test_accuracy"] == pytest.approx(float((ref == ds.test.y).float().mean()))
    assert [x["protected"] for x in info["layers"]] == [False, True, False, False]
    # the rest of the flow on the run's own config: rank, search (protection only), inject,
    # hls, rtl, sim, synth, report
    res = cli(capsys, "run", "--out", run)["steps"]
    assert list(res) == ["rank", "search", "inject", "hls", "rtl", "sim", "synth", "report"]
    assert res["search"]["q"] is None and "cannot retrain" in res["search"]["note"]
    assert res["inject"]["summary"][0]["trials"] == 5
    res["train"] = {"checks": {**t["checks"], "brevitas": {"exact": True}}}
    check_hardware(res, sorted(res["search"]["protected"]))
    assert "-fprofile-use" in (run / "rtl" / "sim_build" / "hetq_build.json").read_text()
    assert (run / "report" / "report.html").is_file()
    table = cli(capsys, "table", "--out", run)
    assert [r["config"] for r in table["rows"]] == ["hom(own,-)", "hom(-,own+2)",
                                                    "het(own,own+2)"]
