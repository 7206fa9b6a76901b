"""The synth step: Yosys for every RTL design of the run and every board.

The designs are the plan's (``rtl/``) and its unprotected baseline (``rtl_base/``); Yosys runs
once per design and FPGA family (:func:`flow.hw.synth.synthesize_cached`, cached under
``RUN_DIR/.cache/yosys/`` by the SHA-256 of the sources, so a rerun or a crash loses no Yosys
run), boards of one family share the counts, and utilization and fit are per board. Each
``synth/<design>/<board>/`` is written atomically.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tqdm import tqdm

from flow.core.errors import RunDirError
from flow.core.io import write_json
from flow.hw.boards import config_board_dirs, get_board
from flow.hw.synth import DESIGNS, fit, synthesize_cached
from flow.pipeline.runner import StepContext, StepResult


def board_text(res: dict) -> str:
    """One design on one board, as ``hetq synth`` prints it."""
    t, u = res["total"], res["utilization"]
    lines = [f"Yosys synth_xilinx -family {res['family']} for {res['board']}: "
             f"{t['lut']} LUT ({t['lut_ram']} as RAM), {t['ff']} FF, {t['bram18']} BRAM18, "
             f"{t['dsp']} DSP",
             "utilization: " + ", ".join(f"{k} {100 * v:.1f} %" for k, v in u.items()
                                         if v is not None),
             "fits the board" if res["fits"] else
             f"DOES NOT FIT: {', '.join(res['over_capacity'])} over capacity",
             f"{'stage':<16} {'LUT':>7} {'FF':>7} {'BRAM18':>7} {'DSP':>5}"]
    lines += [f"{n:<16} {st['lut']:>7} {st['ff']:>7} {st['bram18']:>7} {st['dsp']:>5}"
              for n, st in res["stages"].items()]
    return "\n".join(lines)


@dataclass
class SynthResult(StepResult):
    """Yosys reports by design (protected, baseline) and board."""

    designs: dict[str, dict[str, dict]]

    def summary(self) -> str:
        return "\n\n".join(f"[{d}]\n" + board_text(r) for d, v in self.designs.items()
                           for r in v.values())

    def brief(self) -> str:
        lines = []
        for d, v in self.designs.items():
            for b, r in v.items():
                t = r["total"]
                lines.append(f"synth {d} on {b}: {t['lut']} LUT, {t['ff']} FF, "
                             f"{t['bram18']} BRAM18, {t['dsp']} DSP, "
                             + ("fits" if r["fits"] else
                                f"DOES NOT FIT ({', '.join(r['over_capacity'])})"))
        return "\n".join(lines)

    def record(self) -> dict:
        return {"fits": {d: {b: r["fits"] for b, r in v.items()}
                         for d, v in self.designs.items()}}


def run(ctx: StepContext) -> SynthResult:
    """Yosys for each RTL project of the run and each board of ``report.boards``,
    ``report.synth_workers`` at a time."""
    run, cfg = ctx.run, ctx.cfg
    extra = config_board_dirs(cfg)
    bs = [get_board(b, extra, "report.boards") for b in cfg.report.boards]
    designs = {d: run / f for d, f in DESIGNS.items() if (run / f / "manifest.json").is_file()}
    if "protected" not in designs:
        raise RunDirError(f"run_dir: '{run.path}' has no RTL project (run 'hetq rtl' first)")
    # Yosys' result depends on the design and the family only: one synthesis per family, whose
    # counts every board of that family shares (utilization and fit are per board)
    families: dict[str, list] = {}
    for b in bs:
        families.setdefault(b.family, []).append(b)
    jobs = [(d, fam) for d in designs for fam in families]
    out: dict[str, dict[str, dict]] = {d: {} for d in designs}
    cache = run.cache / "yosys"

    def one(job):
        d, fam = job
        first = families[fam][0]
        with ctx.atomic(f"synth/{d}/{first.name}") as folder:
            res = synthesize_cached(designs[d], first, folder, cache)
            write_json(folder / "report.json", {**res, "board": first.name, "design": d,
                                                **fit(res["total"], first)})
        return d, fam, res

    with ThreadPoolExecutor(max_workers=cfg.report.synth_workers) as pool, \
            tqdm(total=len(jobs), desc="yosys", unit="design",
                 disable=not ctx.progress or None) as bar:
        for d, fam, res in pool.map(one, jobs):
            first = families[fam][0]
            for b in families[fam]:
                r = {**res, "board": b.name, "design": d, **fit(res["total"], b)}
                if b is not first:
                    r["synthesized_for"] = first.name
                    with ctx.atomic(f"synth/{d}/{b.name}") as folder:
                        write_json(folder / "report.json", r)
                out[d][b.name] = r
            bar.update(1)
    return SynthResult(out)
