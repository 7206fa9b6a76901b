"""The designer report of a run: ``report.json``, ``report.md`` and ``report.html``.

One page that says what the accelerator costs (Yosys resources, the analytic estimate beside
them, utilization per board, the cost of protection against the unprotected baseline), how fast
it is (Verilator cycles, the analytic count, microseconds and inferences per second at each
board's clock) and how reliable it is (software and RTL campaigns, LVF per layer, the plan, RAP
and P_drop with their constants).

Every number is a *fact* with a value, a unit and a source (the file or campaign it comes from);
``report.json`` holds the facts and the tables that arrange them, and the Markdown and HTML pages
are rendered from that same object, so a number on the page is the number in the JSON (a test
checks it). Figures are PNG files in ``report/`` and are embedded in the HTML as data URIs, so the
page is one self-contained file.
"""
from __future__ import annotations

import base64
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from flow.core.io import atomic_write, read_json, sha256_file, write_json
from flow.core.modelsource import parse_arch
from flow.core.plan import load_plan
from flow.hw.boards import config_board_dirs, get_board
from flow.hw.estimate import estimate
from flow.hw.synth import DESIGNS
from flow.pipeline.rundir import RunDir
from flow.pipeline.runner import StepContext, StepResult
from flow.reliability.metrics import PdropConstants, p_drop, rap
from flow.reliability.store import TrialStore

REPORT_FORMAT = 1


class Facts:
    """Numbers with unit and source, keyed by a dotted name."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}

    def add(self, key: str, value: Any, unit: str, source: str) -> dict[str, str]:
        """Record a fact; returns the table cell that refers to it."""
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        self.items[key] = {"value": value, "unit": unit, "source": source}
        return {"key": key}


def fmt(fact: dict[str, Any]) -> str:
    """How a fact's value is printed (the page and the tests use this one function)."""
    v = fact["value"]
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if fact["unit"] == "BER":
            return f"{v:g}"
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e6):
            return f"{v:.3e}"
        if fact["unit"] in ("%",):
            return f"{v:.2f}"
        return f"{v:,.4g}" if abs(v) < 1000 else f"{v:,.1f}"
    return str(v)


def _table(tid: str, title: str, columns: list[str], rows: list[list[Any]],
           note: str = "") -> dict:
    return {"id": tid, "title": title, "columns": columns, "rows": rows, "note": note}


def _ber_key(b: float) -> str:
    return f"{b:.0e}"


class _Builder:
    def __init__(self, run: RunDir, folder: Path) -> None:
        self.run, self.folder = run, folder
        self.cfg = run.config()
        self.label = parse_arch(self.cfg.model.arch).label
        self.manifest = run.manifest()
        self.steps = self.manifest.get("steps", {})
        self.facts = Facts()
        self.tables: list[dict] = []
        self.figures: list[dict] = []
        self.notes: list[str] = []
        self.agree: tuple | None = None
        self.plan = load_plan(run / "plan.json")
        extra = config_board_dirs(self.cfg)
        self.boards = [get_board(b, extra) for b in self.cfg.report.boards]
        self.designs = [d for d, f in DESIGNS.items() if (run / f / "manifest.json").is_file()]
        self.rtl = {d: read_json(run / DESIGNS[d] / "manifest.json", "rtl manifest")
                    for d in self.designs}
        # every input is read once: the analytic estimates, the Yosys reports, the sim summary
        self.estimates = {d: estimate(self.rtl[d]) for d in self.designs}
        self.synth: dict[tuple[str, str], dict] = {}
        for d in self.designs:
            for b in self.boards:
                path = run / "synth" / d / b.name / "report.json"
                if path.is_file():
                    self.synth[(d, b.name)] = read_json(path, "synth report")
        cid = self.steps.get("sim", {}).get("campaign")
        summary = run / "sim" / str(cid) / "summary.json"
        self.sim = read_json(summary, "sim summary") if cid and summary.is_file() else None

    # ---- plan and model ----
    def plan_section(self) -> None:
        f, rows = self.facts, []
        src = "plan.json"
        for name, e in self.plan["layers"].items():
            rows.append([name, f.add(f"plan.{name}.weight_bits", e["weight_bits"], "bits", src),
                         f.add(f"plan.{name}.act_bits", e["act_bits"], "bits", src),
                         "yes (n+2-bit words, MSB x3, 2-of-3 voter)" if e["protected"] else "no",
                         f.add(f"plan.{name}.lvf", e.get("vulnerability"), "LVF", src)])
        self.tables.append(_table("plan", "Plan: bits, protection and vulnerability per layer",
                                  ["layer", "weight bits", "activation bits", "protected",
                                   "LVF (Eq. 1)"], rows,
                                  f"checkpoint {self.plan['checkpoint_sha256'][:12]}..., "
                                  f"source {self.plan.get('source')}"))
        lvf = {n: e["vulnerability"] for n, e in self.plan["layers"].items()
               if e.get("vulnerability") is not None}
        if lvf:
            from flow.pipeline.plots import plot_bars
            plot_bars(lvf, self.folder / "lvf.png", title="Layer vulnerability (LVF)",
                      ylabel="LVF = vulnerable bits / tested bits")
            self.figures.append({"id": "lvf", "title": "LVF per layer", "file": "lvf.png"})

    def search_section(self) -> None:
        """Every design Algorithm 1 evaluated, with both picks (when ``hetq search`` ran)."""
        path = self.run / "search" / "result.json"
        if "search" not in self.steps or not path.is_file():
            return
        res, f, rows = read_json(path, "search result"), self.facts, []
        if "designs" not in res:
            return
        src = "search/result.json"
        for i, d in enumerate(res["designs"]):
            picks = [w for w, j in (("pareto", res["chosen"]), ("paper", res["paper_choice"]))
                     if i == j]
            k = f"search.d{i}"
            rows.append([
                d["step"], "kept" if d["q"] is None else str(d["q"]),
                ", ".join(d["protected"]) or "none",
                f.add(f"{k}.accuracy", 100.0 * d["accuracy"], "%", src),
                f.add(f"{k}.drop", 100.0 * d["drop"], "%", src),
                f"[{100 * d['drop_low']:.2f}, {100 * d['drop_high']:.2f}]",
                f.add(f"{k}.weight_bits", d["weight_bits"], "bits", src),
                f.add(f"{k}.rap", d["rap_pct"], "%", src),
                " + ".join(picks) + (" (plan)" if picks and res["mode"] in picks else "")])
        t = res["thresholds"]
        self.tables.append(_table(
            "search", "Algorithm 1: every design evaluated",
            ["step", "q", "protected", "accuracy (%)", "drop (%)", "drop 95 % CI",
             "weight bits", "RAP (%)", "pick"], rows,
            f"a = {t['accuracy']}, r = {t['drop']}, drop at BER {t['ber']:g} over "
            f"{t['trials']} maps; RAP relative to the first design. search.mode = "
            f"{res['mode']}, objective {res['objective']}: {res['choice_reason']}."))

    # ---- resources ----
    def resources_section(self) -> None:
        f = self.facts
        rows, util_rows = [], []
        for d in self.designs:
            est = self.estimates[d]
            src_e = f"analytic: {DESIGNS[d]}/manifest.json ({est['method']})"
            for b in self.boards:
                r = self.synth.get((d, b.name))
                if r is None:
                    self.notes.append(f"no Yosys report for {d} on {b.name} "
                                      f"(synth/{d}/{b.name}/report.json)")
                    continue
                src = f"yosys: synth/{d}/{b.name}/report.json"
                t, k = r["total"], f"res.{d}.{b.name}"
                rows.append([d, b.name, f.add(f"{k}.lut", t["lut"], "LUT", src),
                             f.add(f"{k}.lut_ram", t["lut_ram"], "LUT", src),
                             f.add(f"{k}.ff", t["ff"], "FF", src),
                             f.add(f"{k}.bram18", t["bram18"], "BRAM18", src),
                             f.add(f"{k}.dsp", t["dsp"], "DSP", src),
                             f.add(f"{k}.voter_luts", r.get("voter_luts", 0), "LUT", src)])
                u = r["utilization"]
                util_rows.append([d, b.name] + [
                    f.add(f"util.{d}.{b.name}.{x}", None if u[x] is None else 100.0 * u[x], "%",
                          src) for x in ("lut", "ff", "bram18", "dsp")]
                    + ["yes" if r["fits"] else "NO: over " + ", ".join(r["over_capacity"])])
            t = est["total"]
            rows.append([d, "analytic", f.add(f"est.{d}.lut", t["lut"], "LUT", src_e), "-", "-",
                         f.add(f"est.{d}.bram18", t["bram18"], "BRAM18", src_e),
                         f.add(f"est.{d}.dsp", t["dsp"], "DSP", src_e),
                         f.add(f"est.{d}.voter_luts", t["voter_luts"], "LUT", src_e)])
        self.tables.append(_table(
            "resources", "Resources: Yosys synth_xilinx, and the analytic estimate",
            ["design", "board / method", "LUT", "of which LUT-RAM", "FF", "BRAM18", "DSP",
             "voter LUTs"], rows,
            "Yosys counts are relative to Vivado's: use them to compare designs. The analytic "
            "estimate covers the matrix-vector units only (FINN-R formulas)."))
        self.tables.append(_table("utilization", "Utilization of each board (Yosys)",
                                  ["design", "board", "LUT %", "FF %", "BRAM18 %", "DSP %",
                                   "fits"], util_rows,
                                  "A design that does not fit is flagged, not hidden."))
        self._stages()
        self._protection_cost()

    def _stages(self) -> None:
        f, b = self.facts, self.boards[0]
        d = "protected"
        r = self.synth.get((d, b.name))
        if r is None:
            return
        est = self.estimates[d]["stages"]
        src = f"yosys: synth/{d}/{b.name}/report.json"
        src_e = f"analytic: {DESIGNS[d]}/manifest.json"
        rows = []
        for st in self.rtl[d]["stages"]:
            name = st["name"]
            y = r["stages"].get(name)
            if y is None:
                continue
            k, e = f"stage.{name}", est.get(name)
            rows.append([name, st["module"], st["layer"] or "-",
                         f.add(f"{k}.lut", y["lut"], "LUT", src),
                         f.add(f"{k}.ff", y["ff"], "FF", src),
                         f.add(f"{k}.bram18", y["bram18"], "BRAM18", src),
                         f.add(f"{k}.dsp", y["dsp"], "DSP", src),
                         f.add(f"{k}.est_lut", e["lut"], "LUT", src_e) if e else "-",
                         f.add(f"{k}.est_bram18", e["bram18"], "BRAM18", src_e) if e else "-",
                         f.add(f"{k}.est_dsp", e["dsp"], "DSP", src_e) if e else "-"])
        self.tables.append(_table("stages", f"Per stage, protected design on {b.name}",
                                  ["stage", "module", "layer", "LUT", "FF", "BRAM18", "DSP",
                                   "LUT (analytic)", "BRAM18 (analytic)", "DSP (analytic)"],
                                  rows))

    def _memory_bits(self, d: str) -> int:
        return sum(m["word_bits"] * m["depth"] for m in self.rtl[d]["memories"]
                   if m["kind"] == "weight")

    def _protection_cost(self) -> None:
        f, b, rows = self.facts, self.boards[0], []
        for d in self.designs:
            src_m = f"{DESIGNS[d]}/manifest.json (weight memories: word bits x depth)"
            r = self.synth.get((d, b.name))
            src = f"yosys: synth/{d}/{b.name}/report.json"
            chk = self._sim_check(d)
            src_v = "verilator: " + (self._sim_dir() or "sim")
            rows.append([d, f.add(f"cost.{d}.weight_bits", self._memory_bits(d), "bits", src_m),
                         f.add(f"cost.{d}.voter_luts", r["voter_luts"], "LUT", src) if r else "-",
                         f.add(f"cost.{d}.lut", r["total"]["lut"], "LUT", src) if r else "-",
                         f.add(f"cost.{d}.ff", r["total"]["ff"], "FF", src) if r else "-",
                         f.add(f"cost.{d}.bram18", r["total"]["bram18"], "BRAM18", src)
                         if r else "-",
                         f.add(f"cost.{d}.latency_cycles",
                               chk["measured"]["latency_cycles"] if chk else None, "cycles",
                               src_v),
                         f.add(f"cost.{d}.ii_cycles", chk["measured"]["ii_cycles"] if chk else None,
                               "cycles", src_v)])
        self.tables.append(_table(
            "protection", f"Cost of protection on {b.name}: protected vs unprotected baseline",
            ["design", "weight memory bits", "voter LUTs", "LUT", "FF", "BRAM18",
             "latency (cycles)", "II (cycles)"], rows,
            "The baseline is the same network and folding with no layer protected; the voter is "
            "combinational, so protection adds no cycle."))

    # ---- latency ----
    def _sim_dir(self) -> str | None:
        """The RTL campaign's folder, relative to the run (the run may have been moved)."""
        cid = self.steps.get("sim", {}).get("campaign")
        return f"sim/{cid}" if cid else None

    def _sim_check(self, d: str) -> dict | None:
        s = self.sim
        if s is None:
            return None
        return s["check"] if d == "protected" else s.get("baseline_check")

    def latency_section(self) -> None:
        f, rows = self.facts, []
        src_v = f"verilator: {self._sim_dir()}/summary.json"
        for d in self.designs:
            chk = self._sim_check(d)
            ana = self.rtl[d]["analytic"]
            src_a = f"analytic: {DESIGNS[d]}/manifest.json"
            for b in self.boards:
                k = f"lat.{d}.{b.name}"
                lat = chk["measured"]["latency_cycles"] if chk else None
                ii = chk["measured"]["ii_cycles"] if chk else None
                rows.append([
                    d, b.name,
                    f.add(f"{k}.latency_cycles", lat, "cycles", src_v),
                    f.add(f"{k}.latency_cycles_analytic", ana["latency_cycles"], "cycles", src_a),
                    f.add(f"{k}.ii_cycles", ii, "cycles", src_v),
                    f.add(f"{k}.ii_cycles_analytic", ana["ii_cycles"], "cycles", src_a),
                    f.add(f"{k}.clock_mhz", float(b.clock_mhz), "MHz", f"board: {b.name}"),
                    f.add(f"{k}.latency_us", None if lat is None else lat / b.clock_mhz, "us",
                          f"{src_v} / board clock"),
                    f.add(f"{k}.inferences_per_s",
                          None if ii is None else round(1e6 * b.clock_mhz / ii), "inferences/s",
                          f"{src_v} / board clock")])
        self.tables.append(_table(
            "latency", "Latency and throughput: Verilator measurement and analytic count",
            ["design", "board", "latency (cycles)", "analytic", "II (cycles)", "analytic",
             "clock (MHz)", "latency (us)", "inferences/s"], rows,
            "Cycles are measured on the clean test set in Verilator (first image's latency, mean "
            "interval between results); microseconds and inferences/s assume the board's "
            "default clock is met (Yosys gives no timing)."))

    # ---- reliability ----
    def reliability_section(self) -> None:
        f = self.facts
        inj = self.steps.get("inject", {})
        sim = self.sim
        series, clean, rows = {}, {}, []
        camps = {"software, protected": inj.get("campaign"),
                 "software, baseline": inj.get("baseline_campaign")}
        with TrialStore(self.run / "campaigns.sqlite") as store:
            for label, cid in camps.items():
                if not cid or not (self.run / "inject" / cid / "summary.json").is_file():
                    continue
                s = read_json(self.run / "inject" / cid / "summary.json", "campaign summary")
                series[label], clean[label] = s["summary"], s["clean_accuracy"]
            if sim:
                series["RTL (Verilator), protected"] = sim["summary"]
                clean["RTL (Verilator), protected"] = sim["clean_accuracy"]
                agree = self._agreement(store, inj.get("campaign"), sim)
            else:
                agree = None
        ids = {"software, protected": inj.get("campaign"),
               "software, baseline": inj.get("baseline_campaign"),
               "RTL (Verilator), protected": sim["campaign"] if sim else None}
        for label, summ in series.items():
            tag = {"software, protected": "sw_prot", "software, baseline": "sw_base",
                   "RTL (Verilator), protected": "rtl_prot"}[label]
            src = f"campaign {ids[label]}"
            for r in summ:
                k = f"rel.{tag}.{_ber_key(r['ber'])}"
                rows.append([label, f.add(f"{k}.ber", float(r["ber"]), "BER", src),
                             f.add(f"{k}.trials", int(r["trials"]), "trials", src),
                             f.add(f"{k}.accuracy", 100.0 * r["accuracy_mean"], "%", src),
                             f.add(f"{k}.accuracy_low", 100.0 * r["accuracy_low"], "%", src),
                             f.add(f"{k}.accuracy_high", 100.0 * r["accuracy_high"], "%", src),
                             f.add(f"{k}.drop", 100.0 * r["drop_mean"], "%", src)])
        self.tables.append(_table(
            "reliability", "Accuracy vs bit error rate (mean and 95 % confidence interval)",
            ["campaign", "BER", "trials", "accuracy (%)", "low", "high", "drop (%)"], rows,
            "Every stored weight bit is a fault target; trial t at a BER uses the same fault map "
            "in software and RTL (seeded by seed, BER and t)."
            + ("" if agree is None else
               f" RTL trials that give exactly the software trial's correct count: "
               f"{agree[0]}/{agree[1]}.")))
        self.agree = None if agree is None else (agree, ids["RTL (Verilator), protected"],
                                                 ids["software, protected"])
        if series:
            from flow.pipeline.plots import plot_accuracy_vs_ber
            plot_accuracy_vs_ber(series, self.folder / "accuracy_vs_ber.png",
                                 title=f"{self.label}: accuracy vs BER", clean=clean)
            self.figures.insert(0, {"id": "accuracy", "title": "Accuracy vs BER: software and RTL",
                                    "file": "accuracy_vs_ber.png"})
        self._metrics(series)

    def _agreement(self, store: TrialStore, sw_cid: str | None,
                   sim: dict) -> tuple[int, int] | None:
        """Trials where the RTL's correct count equals the software trial's (same map)."""
        if not sw_cid:
            return None
        rows = store.trials(sw_cid)
        if not rows or sim["check"]["images"] != rows[0]["total"]:
            return None          # the RTL ran on part of the test set: no one-to-one comparison
        sw = {(t["ber"], t["trial"]): t["correct"] for t in rows}
        hits = total = 0
        for t in store.trials(sim["campaign"]):
            key = (t["ber"], t["trial"])
            if key in sw:
                total += 1
                hits += int(sw[key] == t["correct"])
        return hits, total

    def _metrics(self, series: dict) -> None:
        f, c = self.facts, self.cfg.table
        consts = PdropConstants(c.lifetime, c.test_interval, c.p_single)
        prot, base = series.get("software, protected"), series.get("software, baseline")
        if not prot:
            return
        bits = {d: self._memory_bits(d) for d in self.designs}
        cyc = {d: (self._sim_check(d) or {}).get("measured", {}).get("latency_cycles")
               or self.rtl[d]["analytic"]["latency_cycles"] for d in self.designs}
        ref = "baseline" if "baseline" in self.designs and base else "protected"
        rows = []
        src_c = "config: table.lifetime, table.test_interval, table.p_single"
        for d, summ in (("protected", prot), ("baseline", base)):
            if not summ or d not in self.designs:
                continue
            mem_ovh, perf_ovh = bits[d] / bits[ref], cyc[d] / cyc[ref]
            for r in summ:
                if r["ber"] <= 0:
                    continue
                k = f"metric.{d}.{_ber_key(r['ber'])}"
                src = f"Eq. 2 / Eq. 3 from the software campaign, {DESIGNS[d]}/manifest.json"
                rows.append([d, f.add(f"{k}.ber", float(r["ber"]), "BER", src),
                             f.add(f"{k}.drop", 100.0 * r["drop_mean"], "%", src),
                             f.add(f"{k}.mem_ovh", mem_ovh, "x", src),
                             f.add(f"{k}.perf_ovh", perf_ovh, "x", src),
                             f.add(f"{k}.rap", rap(100.0 * r["drop_mean"], mem_ovh, perf_ovh),
                                   "% x", src),
                             f.add(f"{k}.p_drop", p_drop(bits[d], r["ber"], r["drop_mean"],
                                                         consts), "probability", src)])
        self.tables.append(_table("constants", "Constants of P_drop (Eq. 3)",
                                  ["constant", "value", "unit"], [
            ["T, device lifetime", f.add("const.lifetime", consts.lifetime, "h", src_c), "h"],
            ["t, test interval", f.add("const.test_interval", consts.test_interval, "h", src_c),
             "h"],
            ["P_single, one given bit flips during t",
             f.add("const.p_single", consts.p_single, "probability", src_c), "-"]]))
        self.tables.append(_table(
            "metrics", "RAP (Eq. 2) and P_drop (Eq. 3)",
            ["design", "BER", "accuracy drop (%)", "mem_ovh", "perf_ovh", "RAP", "P_drop"], rows,
            f"Overheads relative to the {ref} design (weight memory bits; measured latency "
            f"cycles). P_drop = (N W)^2 x T/t x P_single x BER x drop with T = "
            f"{consts.lifetime:g} h, t = {consts.test_interval:g} h, P_single = "
            f"{consts.p_single:g}."))

    # ---- headline ----
    def summary_section(self) -> None:
        """The first table: the few numbers a designer reads first (keys of the other tables)."""
        f, b = self.facts.items, self.boards[0]
        inj = self.steps.get("inject", {})
        rows = []
        cid = inj.get("campaign")
        if cid and (self.run / "inject" / cid / "summary.json").is_file():
            s = read_json(self.run / "inject" / cid / "summary.json", "campaign summary")
            rows.append(["clean test accuracy (integer network)",
                         self.facts.add("summary.clean_accuracy", 100.0 * s["clean_accuracy"],
                                        "%", f"campaign {cid}"), "%"])
        ber = _ber_key(self.cfg.search.ber)
        for d, tag in (("protected", "sw_prot"), ("baseline", "sw_base")):
            k = f"rel.{tag}.{ber}.accuracy"
            if k in f:
                rows.append([f"accuracy at BER {self.cfg.search.ber:g}, {d}", {"key": k}, "%"])
        for x, unit in (("lut", "LUT"), ("ff", "FF"), ("bram18", "BRAM18"), ("dsp", "DSP")):
            for d in self.designs:
                k = f"res.{d}.{b.name}.{x}"
                if k in f:
                    rows.append([f"{unit}, {d}, {b.name} (Yosys)", {"key": k}, unit])
        for x, what in (("latency_us", "latency"), ("inferences_per_s", "throughput")):
            k = f"lat.protected.{b.name}.{x}"
            if k in f:
                rows.append([f"{what} at {b.clock_mhz:g} MHz (Verilator cycles)", {"key": k},
                             f[k]["unit"]])
        self.tables.insert(0, _table("summary", "Summary", ["what", "value", "unit"], rows,
                                     "Details and sources below; hover a number on the page."))

    # ---- checks and provenance ----
    def hls_section(self) -> None:
        """The reuse factor hls4ml used per weight layer (hls/summary.json), and where the
        weights live: a memory read over that many cycles, or logic when fully parallel."""
        path = self.run / "hls" / "summary.json"
        if not path.is_file():
            return
        h, f, rows = read_json(path, "hls summary"), self.facts, []
        src = "hls/summary.json (hls4ml's layer attributes; firmware/parameters.h)"
        for layer, v in h.get("reuse_factors", {}).items():
            rows.append([layer, f.add(f"hls.{layer}.rf_target", v["target"], "", src),
                         f.add(f"hls.{layer}.rf_used", v["used"], "", src),
                         f"{v['n_in']} x {v['n_out']}",
                         "logic (fully parallel)" if v["fully_parallel"] else
                         "memory, read over the reuse factor's cycles"])
        if rows:
            self.tables.append(_table(
                "hls_reuse", "hls4ml reuse factor per weight layer",
                ["layer", "target (hls.reuse_factor)", "used", "products (n_in x n_out)",
                 "weights in"], rows,
                "hetq takes the smallest factor in hls4ml's valid list that reaches the target, "
                "so that the weights stay in memories; only a layer whose valid list holds no "
                "such factor but 1 is fully parallel."))

    def checks_section(self) -> None:
        f, rows = self.facts, []
        hls_sum = self.run / "hls" / "summary.json"
        if hls_sum.is_file():
            h = read_json(hls_sum, "hls summary")
            src = "hls4ml C-sim: hls/summary.json"
            rows.append(["hls4ml C-sim vs integer executor",
                         f.add("check.hls.images", h["csim"]["images"], "images", src),
                         f.add("check.hls.bit_exact", h["csim"]["bit_exact"], "", src),
                         f.add("check.hls.replay_equal", h["replay"]["equal"], "maps", src),
                         f.add("check.hls.replay_maps", h["replay"]["maps"], "maps", src)])
        for d in self.designs:
            chk = self._sim_check(d)
            if chk:
                src = f"verilator: {self._sim_dir()}/summary.json"
                rows.append([f"RTL ({d}) vs integer executor",
                             f.add(f"check.rtl.{d}.images", chk["images"], "images", src),
                             f.add(f"check.rtl.{d}.bit_exact", chk["bit_exact"], "", src),
                             "-", "-"])
        if self.agree:
            (hits, total), rtl_id, sw_id = self.agree
            src = f"campaigns.sqlite: campaign {rtl_id} vs {sw_id}"
            rows.append(["RTL fault trials vs software trials (same fault maps)",
                         "-", "-", f.add("rel.rtl_agreement", hits, "trials", src),
                         f.add("rel.rtl_compared", total, "trials", src)])
        self.tables.append(_table("checks", "Cross-level checks",
                                  ["check", "images", "bit-exact", "fault maps / trials equal",
                                   "fault maps / trials"], rows,
                                  "Bit-exactness on the clean test set; fault maps replayed in "
                                  "hls4ml C-sim, and RTL trials whose correct count equals the "
                                  "software trial with the same map."))

    def steps_section(self) -> None:
        f, rows = self.facts, []
        for name, st in self.steps.items():
            if name == "report":
                continue
            rows.append([name, st.get("status", "?"),
                         f.add(f"step.{name}.seconds", st.get("seconds"), "s", "manifest.json")])
        self.tables.append(_table("steps", "Steps (manifest.json)", ["step", "status", "time (s)"],
                                  rows))

    def build(self) -> dict:
        self.plan_section()
        self.search_section()
        self.resources_section()
        self.latency_section()
        self.reliability_section()
        self.hls_section()
        self.checks_section()
        self.steps_section()
        self.summary_section()
        m = self.manifest
        return {"format": REPORT_FORMAT, "title": f"hetq report: {self.label} on "
                f"{self.cfg.data.name}", "run_dir": str(self.run.path),
                "created": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                "versions": m.get("versions", {}), "seed": m.get("seed"),
                "config_sha256": m.get("config_sha256"),
                "data_sha256": self.steps.get("train", {}).get("data_sha256"),
                "checkpoint_sha256": self.plan["checkpoint_sha256"],
                "plan_sha256": sha256_file(self.run / "plan.json"),
                "boards": [b.to_json() for b in self.boards], "designs": self.designs,
                "facts": self.facts.items, "tables": self.tables, "figures": self.figures,
                "notes": self.notes}


def _cell_text(cell: Any, facts: dict) -> str:
    if isinstance(cell, dict):
        return fmt(facts[cell["key"]])
    return str(cell)


def _env(html: bool) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("flow", "templates"),
                             undefined=jinja2.StrictUndefined, autoescape=html,
                             keep_trailing_newline=True)
    env.globals.update(fmt=fmt, cell_text=_cell_text)
    return env


def render_markdown(rep: dict) -> str:
    """report.md from the report object."""
    return _env(False).get_template("report.md.j2").render(r=rep)


def render_html(rep: dict, folder: Path) -> str:
    """report.html from the report object, with the figures of ``folder`` embedded."""
    images = {fig["file"]: "data:image/png;base64," + base64.b64encode(
        (folder / fig["file"]).read_bytes()).decode() for fig in rep["figures"]}
    return _env(True).get_template("report.html.j2").render(r=rep, images=images)


@dataclass
class ReportResult(StepResult):
    """Where the report was written and how many facts it holds."""

    report: str
    json: str
    markdown: str
    facts: int

    def summary(self) -> str:
        return f"report: {self.report}"

    def record(self) -> dict:
        return {"report": self.report}


def run(ctx: StepContext) -> ReportResult:
    """Build the report of the run and write ``report/report.{json,md,html}`` (atomically,
    with its figures)."""
    folder = ctx.out
    rep = _Builder(ctx.run, folder).build()
    write_json(folder / "report.json", rep)
    atomic_write(folder / "report.md", render_markdown(rep))
    atomic_write(folder / "report.html", render_html(rep, folder))
    final = ctx.run / "report"
    return ReportResult(str(final / "report.html"), str(final / "report.json"),
                        str(final / "report.md"), len(rep["facts"]))


def load_report(path: Path) -> dict:
    """Read a report.json (used by tests and tools)."""
    return json.loads(Path(path).read_text())
