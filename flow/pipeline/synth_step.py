"""``hetq synth`` over a run: Yosys for every RTL design of the run and every board.

The designs are the plan's (``rtl/``) and its unprotected baseline (``rtl_base/``); Yosys runs
once per design and FPGA family (:func:`flow.hw.synth.synthesize_cached`), boards of one family
share the counts, and utilization and fit are per board.
"""
from __future__ import annotations

import json
import time

from flow.hw.synth import DESIGNS, fit, synthesize_cached


def synthesize_run(run, cfg, *, boards: list[str] | None = None, progress: bool = True) -> dict:
    """Yosys for each RTL project of ``run`` (the plan's design and its unprotected baseline)
    and each board (default ``report.boards``), ``report.synth_workers`` at a time.

    Writes ``synth/<design>/<board>/`` (``report.json``, ``yosys.log``, ``stat.json``,
    ``netlist.json``) and returns ``{design: {board: report}}``. Each report is written as its
    synthesis finishes and records the SHA-256 of the project's sources; a rerun keeps a report
    whose sources are unchanged instead of running Yosys again.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from flow.core.errors import RunDirError
    from flow.core.io import atomic_write
    from flow.hw.boards import config_board_dirs, get_board
    t0 = time.time()
    extra = config_board_dirs(cfg)
    bs = [get_board(b, extra) for b in (boards or cfg.report.boards)]
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

    def one(job):
        d, fam = job
        first = families[fam][0]
        return d, fam, synthesize_cached(designs[d], first, run / "synth" / d / first.name)

    with ThreadPoolExecutor(max_workers=cfg.report.synth_workers) as pool, \
            tqdm(total=len(jobs), desc="yosys", unit="design", disable=not progress or None) as bar:
        for d, fam, res in pool.map(one, jobs):
            first = families[fam][0]
            for b in families[fam]:
                folder = run / "synth" / d / b.name
                r = {**res, "board": b.name, "design": d, **fit(res["total"], b)}
                if b is not first:
                    r["synthesized_for"] = first.name
                    folder.mkdir(parents=True, exist_ok=True)
                atomic_write(folder / "report.json", json.dumps(r, indent=1))
                out[d][b.name] = r
            bar.update(1)
    seconds = round(time.time() - t0, 3)
    run.record_step("synth", status="done", seconds=seconds,
                    fits={d: {b: r["fits"] for b, r in v.items()} for d, v in out.items()})
    return {"designs": out, "seconds": seconds}
