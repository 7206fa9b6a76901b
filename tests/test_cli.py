"""Tests of the ``hetq`` command line, run in this process (``hetq_inproc``); the contract tests
marked ``subprocess=True`` start ``python -m flow.cli`` as a user would.

The contract: every user mistake ends with exactly one line ``hetq: error: ...`` on stderr that
names the field and the value, exit status 2, no traceback, and nothing half-written (the ``--out``
run directory does not exist afterwards, or an existing run directory is unchanged).
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess as sp
import sys
from pathlib import Path

import pytest
from conftest import QUICK_MLP, assert_user_error, hetq_inproc, snapshot, write_config

REPO = Path(__file__).resolve().parents[1]
CONFIG = "cfg.yaml"  # relative to cwd=tmp_path, so messages hold no temporary path
OUT = "out"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
        "PYTHONWARNINGS": "ignore"}


def hetq(cwd: Path, *args: str, timeout: float = 300, subprocess: bool = False
         ) -> sp.CompletedProcess:
    """Run ``hetq ARGS`` in ``cwd`` (in this process, or with ``subprocess=True`` as
    ``python -m flow.cli``); exit status, stdout and stderr captured as text."""
    if not subprocess:
        return hetq_inproc(cwd, *args)
    return sp.run([sys.executable, "-m", "flow.cli", *map(str, args)], cwd=cwd,
                          env=_env(), capture_output=True, text=True, timeout=timeout)


def hetq_parallel(cwd: Path, *arglists: list[str], timeout: float = 300
                  ) -> list[sp.CompletedProcess]:
    """Like :func:`hetq` for several independent command lines, run at the same time."""
    cmds = [[sys.executable, "-m", "flow.cli", *map(str, a)] for a in arglists]
    procs = [sp.Popen(c, cwd=cwd, env=_env(), stdout=sp.PIPE,
                              stderr=sp.PIPE, text=True) for c in cmds]
    out = []
    try:
        for cmd, p in zip(cmds, procs):
            stdout, stderr = p.communicate(timeout=timeout)
            out.append(sp.CompletedProcess(cmd, p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return out


def merged(**sections: dict) -> dict:
    """QUICK_MLP with the given top-level sections updated key by key (not replaced)."""
    cfg = copy.deepcopy(QUICK_MLP)
    for key, val in sections.items():
        if isinstance(val, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **val}
        else:
            cfg[key] = val
    return cfg


@pytest.fixture
def run_copy(mlp_run: Path, tmp_path: Path) -> Path:
    """A writable copy of the trained MLP run."""
    dst = tmp_path / "run"
    shutil.copytree(mlp_run, dst)
    return dst


# ---------------------------------------------------------------------------------------------
# Config mistakes on `hetq train CONFIG --out OUT`: nothing is created.

CONFIG_ERRORS = [
    pytest.param(merged(model={"arch": "resnet99"}), "model.arch", ["resnet99"], id="unknown-arch"),
    pytest.param(merged(model={"weight_bits": {"fc9": 4}}), "model.weight_bits", ["fc9"],
                 id="weight_bits-unknown-layer"),
    pytest.param(merged(model={"protected": ["fc9"]}), "model.protected", ["fc9"],
                 id="protected-unknown-layer"),
    pytest.param(merged(model={"default_weight_bits": 17}), "model.default_weight_bits", ["17"],
                 id="default_weight_bits-17"),
    pytest.param(merged(model={"default_weight_bits": 1}), "model.default_weight_bits", ["1"],
                 id="default_weight_bits-1"),
    pytest.param(merged(model={"weight_bits": {"fc1": 17}}), "model.weight_bits", ["17", "fc1"],
                 id="weight_bits-17"),
    pytest.param(merged(model={"weight_bits": {"fc2": 1}}), "model.weight_bits", ["1", "fc2"],
                 id="weight_bits-1"),
    pytest.param(merged(campaign={"bers": [1.5]}), "campaign.bers", ["1.5"], id="ber-1.5"),
    pytest.param(merged(campaign={"layers": ["fc9"]}), "campaign.layers", ["fc9"],
                 id="campaign-layers-unknown"),
    pytest.param(merged(data={"name": "cifar10", "root": "/nonexistent/x"}), "data.root",
                 ["/nonexistent/x"], id="missing-data-folder"),
]


@pytest.mark.parametrize("cfg, field, values", CONFIG_ERRORS)
def test_train_config_error(tmp_path: Path, cfg: dict, field: str, values: list[str]) -> None:
    write_config(tmp_path / CONFIG, cfg)
    res = hetq(tmp_path, "train", CONFIG, "--out", OUT)
    assert_user_error(res, field, *values)
    assert not (tmp_path / OUT).exists()


@pytest.mark.parametrize("cfg, key, hint", [
    pytest.param({**QUICK_MLP, "modle": {"arch": "mlp"}}, "modle", "model", id="top-level"),
    pytest.param(merged(train={"epoch": 3}), "train.epoch", "epochs", id="nested"),
])
def test_train_unknown_key(tmp_path: Path, cfg: dict, key: str, hint: str) -> None:
    write_config(tmp_path / CONFIG, cfg)
    res = hetq(tmp_path, "train", CONFIG, "--out", OUT)
    msg = assert_user_error(res, key)
    assert CONFIG in msg
    assert f"did you mean '{hint}'" in msg, msg
    assert not (tmp_path / OUT).exists()


def test_train_malformed_yaml(tmp_path: Path) -> None:
    (tmp_path / CONFIG).write_text("seed: 0\nmodel: [arch: mlp\n")
    res = hetq(tmp_path, "train", CONFIG, "--out", OUT, subprocess=True)
    msg = assert_user_error(res, "malformed YAML", f"'{CONFIG}'")
    assert "line" in msg
    assert not (tmp_path / OUT).exists()


def test_train_missing_config_file(tmp_path: Path) -> None:
    res = hetq(tmp_path, "train", "nope.yaml", "--out", OUT)
    assert_user_error(res, "config", "'nope.yaml'")
    assert not (tmp_path / OUT).exists()



def test_run_config_error(tmp_path: Path) -> None:
    """`hetq run` validates the same way before it creates anything."""
    write_config(tmp_path / CONFIG, merged(model={"arch": "resnet99"}))
    res = hetq(tmp_path, "run", CONFIG, "--out", OUT)
    assert_user_error(res, "model.arch", "resnet99")
    assert not (tmp_path / OUT).exists()


def test_train_into_run_with_other_config_leaves_it_unchanged(tmp_path: Path,
                                                              run_copy: Path) -> None:
    before = snapshot(run_copy)
    write_config(tmp_path / CONFIG, merged(train={"epochs": 1}))
    res = hetq(tmp_path, "train", CONFIG, "--out", run_copy.name)
    assert_user_error(res, "run_dir", f"'{run_copy.name}'")
    assert "another config" in res.stderr
    assert snapshot(run_copy) == before


def test_run_made_before_a_new_config_key_resumes(tmp_path: Path, run_copy: Path) -> None:
    """A run whose config.yaml lacks a key a later hetq added (here `zobnn.csim`, at its default)
    is the same run: `hetq train` with the same config gets past the config check (and stops at
    the finished train step, as on any run). The key at another value is another run."""
    import yaml
    cfg_file = run_copy / "config.yaml"
    old = yaml.safe_load(cfg_file.read_text())
    del old["zobnn"]["csim"]                      # as a run written before that key existed
    cfg_file.write_text(yaml.safe_dump(old, sort_keys=False))
    before = snapshot(run_copy)
    same = merged(model={**QUICK_MLP["model"], "protected": ["fc2"]})     # mlp_run's config
    write_config(tmp_path / CONFIG, same)
    res = hetq(tmp_path, "train", CONFIG, "--out", run_copy.name)
    assert "already holds a finished train step" in res.stderr, res.stderr
    assert cfg_file.read_text() == before[str(cfg_file.relative_to(run_copy))].decode()
    write_config(tmp_path / CONFIG, {**same, "zobnn": {"csim": False}})
    res = hetq(tmp_path, "train", CONFIG, "--out", run_copy.name)
    assert_user_error(res, "run_dir", f"'{run_copy.name}'")
    assert "another config" in res.stderr


# ---------------------------------------------------------------------------------------------
# Mistakes on existing runs: the run directory is unchanged.

def test_inject_ber_out_of_range(tmp_path: Path, run_copy: Path) -> None:
    before = snapshot(run_copy)
    res = hetq(tmp_path, "inject", run_copy.name, "--ber", "2", "--trials", "1", subprocess=True)
    assert_user_error(res, "ber", "2")
    assert snapshot(run_copy) == before
    assert not (run_copy / "campaigns.sqlite").exists()


def test_inject_zero_trials(tmp_path: Path, run_copy: Path) -> None:
    before = snapshot(run_copy)
    res = hetq(tmp_path, "inject", run_copy.name, "--trials", "0")
    assert_user_error(res, "--trials", "0")
    assert snapshot(run_copy) == before



def test_info_other_run_format(tmp_path: Path, run_copy: Path) -> None:
    manifest = json.loads((run_copy / "manifest.json").read_text())
    manifest["format"] = 999
    (run_copy / "manifest.json").write_text(json.dumps(manifest))
    before = snapshot(run_copy)
    res = hetq(tmp_path, "info", run_copy.name)
    msg = assert_user_error(res, "run_dir", f"'{run_copy.name}'")
    assert re.search(r"format 999\b", msg), msg
    assert snapshot(run_copy) == before


def test_info_missing_run_dir(tmp_path: Path) -> None:
    res = hetq(tmp_path, "info", "/nonexistent")
    assert_user_error(res, "run_dir", "'/nonexistent'")


def test_info_plan_of_another_checkpoint(tmp_path: Path, run_copy: Path) -> None:
    plan = json.loads((run_copy / "plan.json").read_text())
    plan["checkpoint_sha256"] = "0" * 64
    (run_copy / "plan.json").write_text(json.dumps(plan))
    before = snapshot(run_copy)
    res = hetq(tmp_path, "info", run_copy.name)
    msg = assert_user_error(res, "checkpoint")
    assert "plan" in msg and "000000000000" in msg, msg
    assert snapshot(run_copy) == before


def test_inject_map_names_unknown_memory(tmp_path: Path, mlp_run: Path) -> None:
    (tmp_path / "bad.json").write_text(json.dumps(
        {"version": 1, "faults": [{"memory": "fc9.weight", "word": 0, "bit": 0}]}))
    res = hetq(tmp_path, "inject", mlp_run, "--map", "bad.json")
    assert_user_error(res, "memory", "fc9.weight")


# ---------------------------------------------------------------------------------------------
# Bad command lines (argparse): fast, no torch import.

@pytest.mark.parametrize("args, values", [
    pytest.param(["frobnicate"], ["frobnicate"], id="unknown-command"),
    pytest.param(["inject", "RUN", "--trials", "abc"], ["--trials", "abc"], id="trials-not-int"),
    pytest.param(["inject", "RUN", "--fault", "melt"], ["--fault", "melt"], id="bad-choice"),
    pytest.param(["inject", "RUN", "--frob"], ["--frob"], id="unknown-option"),
    pytest.param(["inject"], ["run_dir"], id="missing-argument"),
    pytest.param(["train", "cfg.yaml"], ["--out"], id="missing-out"),
])
def test_bad_command_line(tmp_path: Path, args: list[str], values: list[str]) -> None:
    res = hetq(tmp_path, *args, subprocess=True)
    assert_user_error(res, "hetq", *values)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Positive paths.

def test_help_exits_0(tmp_path: Path) -> None:
    for args in (["--help"], ["inject", "--help"], ["train", "--help"]):
        res = hetq(tmp_path, *args, subprocess=True)
        assert res.returncode == 0, res.stderr
        assert res.stdout.startswith("usage: hetq"), res.stdout
        assert res.stderr == ""
    assert "--ber" in hetq(tmp_path, "inject", "--help").stdout


def test_info_json(tmp_path: Path, mlp_run: Path) -> None:
    before = snapshot(mlp_run)
    res = hetq(tmp_path, "info", mlp_run, "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)  # exactly one JSON document
    assert {"layers", "memory_bits", "test_accuracy", "arch", "checkpoint_sha256"} <= set(info)
    assert info["arch"] == "mlp"
    assert [x["layer"] for x in info["layers"]] == ["fc1", "fc2", "fc3"]
    assert {x["layer"]: x["protected"] for x in info["layers"]} == {
        "fc1": False, "fc2": True, "fc3": False}
    assert all(x["weight_bits"] == 4 for x in info["layers"])
    # the last layer's accumulator is the output: it has no activation quantizer
    assert [x["act_bits"] for x in info["layers"]] == [4, 4, None]
    assert 0.0 <= info["test_accuracy"] <= 1.0
    assert info["test_accuracy"] > 0.5  # a trained digits MLP
    train = json.loads((mlp_run / "manifest.json").read_text())["steps"]["train"]
    assert info["test_accuracy"] == train["test_accuracy_integer"]
    assert info["memory_bits"] == train["memory_bits"]
    assert info["checkpoint_sha256"] == train["checkpoint_sha256"]
    assert snapshot(mlp_run) == before


def test_faultmap_and_replay(tmp_path: Path, mlp_run: Path, run_copy: Path) -> None:
    before = snapshot(mlp_run)
    res = hetq(tmp_path, "faultmap", mlp_run, "--ber", "1e-2", "--seed", "3", "--out", "F.json",
               "--json")
    assert res.returncode == 0, res.stderr
    made = json.loads(res.stdout)
    fmap = json.loads((tmp_path / "F.json").read_text())
    assert fmap["version"] == 1
    assert made["faults"] == len(fmap["faults"]) > 0
    assert {f["memory"] for f in fmap["faults"]} <= {"fc1.weight", "fc2.weight", "fc3.weight"}

    # two replays of the map, and trial 0 of a campaign with the same seed and BER (faultmap
    # draws from "the same stream as inject"), run side by side
    replay = ["inject", mlp_run, "--map", "F.json", "--json"]
    *replays, camp = hetq_parallel(tmp_path, replay, replay, [
        "inject", run_copy.name, "--ber", "1e-2", "--trials", "1", "--seed", "3", "--json"])
    for res in (*replays, camp):
        assert res.returncode == 0, res.stderr
    first, second = (json.loads(r.stdout) for r in replays)
    assert first["faults"] == len(fmap["faults"])
    assert 0.0 <= first["accuracy"] <= 1.0
    assert first["predictions"] == second["predictions"]
    assert first["accuracy"] == second["accuracy"]
    assert snapshot(mlp_run) == before  # replay writes nothing into the run

    (row,) = json.loads(camp.stdout)["summary"]
    n = len(first["predictions"])
    assert row["mean_faults"] == len(fmap["faults"])
    assert round(row["accuracy_mean"] * n) == round(first["accuracy"] * n)


# ---------------------------------------------------------------------------------------------
# User mistakes that once ended in a traceback or passed silently.

def test_train_zero_epochs(tmp_path: Path) -> None:
    write_config(tmp_path / CONFIG, merged(train={"epochs": 0}))
    res = hetq(tmp_path, "train", CONFIG, "--out", OUT, "--json")
    assert_user_error(res, "train.epochs", "0")
    assert not (tmp_path / OUT).exists()


def test_train_negative_epochs_option(tmp_path: Path) -> None:
    write_config(tmp_path / CONFIG, QUICK_MLP)
    res = hetq(tmp_path, "train", CONFIG, "--out", OUT, "--epochs", "-1")
    assert_user_error(res, "epochs", "-1")
    assert not (tmp_path / OUT).exists()


def test_train_negative_seed(tmp_path: Path) -> None:
    write_config(tmp_path / CONFIG, {**QUICK_MLP, "seed": -1})
    res = hetq(tmp_path, "train", CONFIG, "--out", OUT)
    assert_user_error(res, "seed", "-1")
    assert not (tmp_path / OUT).exists()


def test_inject_negative_seed(tmp_path: Path, run_copy: Path) -> None:
    before = snapshot(run_copy)
    res = hetq(tmp_path, "inject", run_copy.name, "--ber", "1e-3", "--trials", "1", "--seed", "-1")
    assert_user_error(res, "seed", "-1")
    assert snapshot(run_copy) == before


def test_train_out_is_a_file(tmp_path: Path) -> None:
    write_config(tmp_path / CONFIG, QUICK_MLP)
    (tmp_path / OUT).write_text("keep me")
    res = hetq(tmp_path, "train", CONFIG, "--out", OUT)
    assert_user_error(res, "out")
    assert (tmp_path / OUT).read_text() == "keep me"


def test_faultmap_out_is_a_directory(tmp_path: Path, mlp_run: Path) -> None:
    (tmp_path / "maps").mkdir()
    res = hetq(tmp_path, "faultmap", mlp_run, "--ber", "1e-2", "--out", "maps")
    assert_user_error(res, "out", "maps")
    assert list((tmp_path / "maps").iterdir()) == []


def test_inject_margin_out_of_range(tmp_path: Path, run_copy: Path) -> None:
    res = hetq(tmp_path, "inject", run_copy.name, "--ber", "1e-3", "--margin", "2")
    assert_user_error(res, "margin", "2")


def test_reader_that_stops_early_gets_no_traceback(tmp_path):
    """`hetq boards | head`: a reader that closed the pipe (here `true`, which reads nothing and
    exits before hetq has started) ends hetq quietly with 141, as SIGPIPE would."""
    r = sp.run(f"'{sys.executable}' -m flow.cli boards | true; echo ${{PIPESTATUS[0]}}",
               shell=True, executable="/bin/bash", capture_output=True, text=True, cwd=tmp_path)
    assert r.stderr == "", r.stderr
    assert r.stdout.strip() == "141"
