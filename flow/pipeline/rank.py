"""``hetq rank``: layer vulnerability by the GA, optionally against the per-layer ground truth.

Writes ``RUN_DIR/rank/ga.json`` (ranking, LVF per layer, generations, inferences),
``RUN_DIR/rank/ground_truth.json`` when asked, and the LVF of each layer into plan.json's
``vulnerability`` field (same checkpoint, so the plan keeps its hash).
"""
from __future__ import annotations

import sys
import time

from flow.core.io import write_json
from flow.core.plan import save_plan
from flow.pipeline.rundir import RunDir
from flow.pipeline.session import open_session
from flow.reliability.ga import rank_layers_ga
from flow.reliability.vulnerability import layer_ground_truth


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties); nan if either side is constant."""
    from scipy.stats import spearmanr
    return float(spearmanr(a, b).statistic)


def rank(run: RunDir, *, ground_truth: bool = False, seed: int | None = None,
         progress: bool = True, device: str | None = None, executor: str = "local",
         address: str | None = None, workers: int | None = None) -> dict:
    """Rank the run's layers; returns what ``hetq rank --json`` prints.

    The GA's pool tests run on ``executor`` (``local`` or ``ray``, see
    :mod:`flow.reliability.parallel`).
    """
    from flow.reliability.parallel import make_pool
    t0 = time.time()
    s = open_session(run.path, device)
    seed = s.cfg.seed if seed is None else seed
    x, y = s.data.test.x, s.data.test.y

    def report(gen: int, ranking: list[str], inferences: int) -> None:
        if progress:
            print(f"  generation {gen}: {' > '.join(ranking)} ({inferences} inferences)",
                  flush=True, file=sys.stderr)

    pool = make_pool(executor, s.executor, s.image, x, y, address=address, workers=workers)
    try:
        res = rank_layers_ga(s.executor, s.image, x, y, s.cfg.rank, seed, report,
                             pool=pool)
    finally:
        pool.close()
    out = {"ranking": res.ranking, "layers": res.layers, "generations": res.generations,
           "inferences": res.inferences, "seed": seed, "test_images": len(y)}
    folder = run / "rank"
    folder.mkdir(exist_ok=True)
    write_json(folder / "ga.json", {**out, "history": res.history})
    if ground_truth:
        gt = layer_ground_truth(s.executor, s.image, x, y, seed=seed,
                                margin=s.cfg.rank.truth_margin,
                                confidence=s.cfg.rank.truth_confidence, progress=progress)
        truth = {r.layer: r.critical_fraction for r in gt}
        gt_inferences = sum(r.trials for r in gt)
        out["ground_truth"] = {
            "layers": [r.to_json() for r in gt],
            "ranking": sorted(truth, key=lambda n: -truth[n]),
            "inferences": gt_inferences,
            "spearman": spearman([truth[r["layer"]] for r in res.layers],
                                 [r["lvf"] for r in res.layers]),
            "ga_inference_ratio": res.inferences / gt_inferences}
        write_json(folder / "ground_truth.json", out["ground_truth"])
    plan = dict(s.plan)
    plan["layers"] = {name: {**entry, "vulnerability": next(
        r["lvf"] for r in res.layers if r["layer"] == name)}
        for name, entry in s.plan["layers"].items()}
    save_plan(run / "plan.json", plan)
    out["seconds"] = round(time.time() - t0, 3)
    return out
