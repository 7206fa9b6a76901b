"""The rank step: layer vulnerability by the GA, optionally against the per-layer ground truth.

Writes ``RUN_DIR/rank/ga.json`` (ranking, LVF per layer, generations, inferences),
``RUN_DIR/rank/ground_truth.json`` when ``rank.ground_truth`` is on, and the LVF of each layer
into plan.json's ``vulnerability`` field (same checkpoint, so the plan keeps its hash).
"""
from __future__ import annotations

from dataclasses import dataclass

from tqdm.auto import tqdm

from flow.core.io import write_json
from flow.core.plan import save_plan
from flow.pipeline.runner import StepContext, StepResult
from flow.pipeline.session import open_session
from flow.reliability.ga import rank_layers_ga
from flow.reliability.vulnerability import layer_ground_truth


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties); nan if either side is constant."""
    from scipy.stats import spearmanr
    return float(spearmanr(a, b).statistic)


@dataclass
class RankResult(StepResult):
    """The GA's ranking (most vulnerable first) and LVF per layer, and the ground truth if
    measured."""

    ranking: list[str]
    layers: list[dict]
    generations: int
    inferences: int
    seed: int
    test_images: int
    ground_truth: dict | None = None

    def summary(self) -> str:
        lines = [f"ranking (most vulnerable first): {' > '.join(self.ranking)}",
                 f"GA: {self.generations} generations, {self.inferences} inferences",
                 f"{'layer':<22} {'bits':>8} {'tested':>7} {'critical':>8} {'LVF':>8}"]
        lines += [f"{r['layer']:<22} {r['bits']:>8} {r['tested']:>7} {r['critical']:>8} "
                  f"{r['lvf']:>8.4f}" for r in self.layers]
        gt = self.ground_truth
        if gt:
            lines.append(f"ground truth: {' > '.join(gt['ranking'])} ({gt['inferences']} "
                         f"inferences); Spearman {gt['spearman']:.3f}; GA used "
                         f"{100 * gt['ga_inference_ratio']:.1f} % of its inferences")
        return "\n".join(lines)

    def record(self) -> dict:
        return {"ranking": self.ranking, "inferences": self.inferences}

    def brief(self) -> str:
        return f"rank: {' > '.join(self.ranking)} ({self.inferences} inferences)"


def run(ctx: StepContext) -> RankResult:
    """Rank the run's layers (pool tests where ``parallel`` says; the numbers are the same)."""
    from flow.reliability.parallel import make_pool
    s = open_session(ctx.run.path, ctx.cfg.device)
    r = ctx.cfg.rank
    seed = ctx.cfg.seed if r.seed is None else r.seed
    x, y = s.data.test.x, s.data.test.y

    bar = tqdm(total=r.max_generations, desc="GA", unit="generation",
               disable=not ctx.progress or None, leave=False)

    def report(gen: int, ranking: list[str], inferences: int) -> None:
        bar.update(1)
        bar.set_postfix_str(f"{' > '.join(ranking)}, {inferences} inferences")
        if ctx.verbose:
            ctx.say(f"  generation {gen}: {' > '.join(ranking)} ({inferences} inferences)")

    p = ctx.cfg.parallel
    pool = make_pool(p.executor, s.executor, s.image, x, y, address=p.address,
                     workers=p.workers)
    try:
        res = rank_layers_ga(s.executor, s.image, x, y, r, seed, report, pool=pool)
    finally:
        bar.close()
        pool.close()
    out = RankResult(res.ranking, res.layers, res.generations, res.inferences, seed, len(y))
    write_json(ctx.out / "ga.json", {**out.to_json(), "history": res.history})
    if r.ground_truth:
        gt = layer_ground_truth(s.executor, s.image, x, y, seed=seed, margin=r.truth_margin,
                                confidence=r.truth_confidence, progress=ctx.progress)
        truth = {t.layer: t.critical_fraction for t in gt}
        gt_inferences = sum(t.trials for t in gt)
        out.ground_truth = {
            "layers": [t.to_json() for t in gt],
            "ranking": sorted(truth, key=lambda n: -truth[n]),
            "inferences": gt_inferences,
            "spearman": spearman([truth[row["layer"]] for row in res.layers],
                                 [row["lvf"] for row in res.layers]),
            "ga_inference_ratio": res.inferences / gt_inferences}
        write_json(ctx.out / "ground_truth.json", out.ground_truth)
    lvf = {row["layer"]: row["lvf"] for row in res.layers}
    plan = dict(s.plan)
    plan["layers"] = {name: {**entry, "vulnerability": lvf[name]}
                      for name, entry in s.plan["layers"].items()}
    save_plan(ctx.run.plan_file, plan)
    return out
