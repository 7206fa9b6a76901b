"""The rank step: layer vulnerability (``rank.method``: a uniform single-flip sample or the GA),
optionally against the per-layer ground truth.

Writes ``RUN_DIR/rank/ranking.json`` (method, ranking, LVF per layer, generations, inferences),
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
from flow.reliability.rank_check import misorders, spearman, spearman_bootstrap
from flow.reliability.ranking import rank_layers, ranking_images
from flow.reliability.vulnerability import LayerTruth, layer_ground_truth

__all__ = ["RankResult", "compare", "run", "spearman"]

SAME_COST_STREAM = (2,)   # the equal-cost rival's random stream (the truth's is (), uniform's (1,))


@dataclass
class RankResult(StepResult):
    """The ranking (most vulnerable first) and LVF per layer, and the ground truth if
    measured."""

    ranking: list[str]
    layers: list[dict]
    generations: int
    inferences: int
    seed: int
    test_images: int
    method: str = "uniform"
    ground_truth: dict | None = None

    def summary(self) -> str:
        lines = [f"ranking (most vulnerable first): {' > '.join(self.ranking)}",
                 (f"GA: {self.generations} generations, {self.inferences} inferences"
                  if self.method == "ga" else f"uniform sample: {self.inferences} single flips "
                  f"({max(r['tested'] for r in self.layers)} per layer at most)"),
                 f"{'layer':<22} {'bits':>8} {'tested':>7} {'critical':>8} {'LVF':>8}"]
        lines += [f"{r['layer']:<22} {r['bits']:>8} {r['tested']:>7} {r['critical']:>8} "
                  f"{r['lvf']:>8.4f}" for r in self.layers]
        gt = self.ground_truth
        who = "GA" if self.method == "ga" else "ranking"
        if gt:
            lo, hi = gt["spearman_ci"]
            lines.append(f"ground truth: {' > '.join(gt['ranking'])} ({gt['inferences']} "
                         f"inferences); Spearman {gt['spearman']:.3f} [{lo:.3f}, {hi:.3f}]; "
                         f"{who} used {100 * gt['ga_inference_ratio']:.1f} % of its inferences")
            wrong = gt["misordered"]
            if wrong:
                lines.append(f"{who} misorders {len(wrong)} pair(s) of layers; by the truth's gap:")
            for m in wrong[:5]:
                note = ", within the CIs" if m["truth_cis_overlap"] else ""
                lines.append(f"  {who} orders {m['ranked_higher']} (LVF {m['est_higher']:.4f}) "
                             f"above "
                             f"{m['ranked_lower']} ({m['est_lower']:.4f}); truth "
                             f"{m['truth_higher']:.4f} < {m['truth_lower']:.4f} (gap "
                             f"{m['truth_gap']:.4f}{note})")
            if len(wrong) > 5:
                lines.append(f"  ... {len(wrong) - 5} more in rank/ground_truth.json")
            u = gt.get("uniform_same_cost")
            if u:
                lo, hi = u["spearman_ci"]
                lines.append(f"independent uniform sample at the {who}'s cost "
                             f"({u['trials_per_layer']} "
                             f"flips per layer, {u['inferences']} inferences): Spearman "
                             f"{u['spearman']:.3f} [{lo:.3f}, {hi:.3f}]")
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
    x, y = ranking_images(s.data.test.x, s.data.test.y, r.images, ctx.cfg.seed)

    bar = tqdm(total=r.max_generations, desc="GA", unit="generation",
               disable=not ctx.progress or r.method != "ga" or None, leave=False)

    def report(gen: int, ranking: list[str], inferences: int) -> None:
        bar.update(1)
        bar.set_postfix_str(f"{' > '.join(ranking)}, {inferences} inferences")
        if ctx.verbose:
            ctx.say(f"  generation {gen}: {' > '.join(ranking)} ({inferences} inferences)")

    p = ctx.cfg.parallel
    pool = make_pool(p.executor, s.executor, s.image, x, y, address=p.address,
                     workers=p.workers) if r.method == "ga" else None    # only the GA pools
    try:
        res = rank_layers(s.executor, s.image, x, y, r, seed, report, pool=pool,
                          progress=ctx.progress)
    finally:
        bar.close()
        if pool is not None:
            pool.close()
    out = RankResult(res.ranking, res.layers, res.generations, res.inferences, seed, len(y),
                     r.method)
    write_json(ctx.out / "ranking.json", {**out.to_json(), "history": res.history})
    if r.ground_truth:
        gt = layer_ground_truth(s.executor, s.image, x, y, seed=seed, margin=r.truth_margin,
                                confidence=r.truth_confidence, progress=ctx.progress)
        # The rival at equal cost: a uniform sample of single flips per layer at the ranking's
        # inference count, drawn independently of the ground truth and of the ranking.
        per_layer = max(1, res.inferences // len(gt))
        same = layer_ground_truth(s.executor, s.image, x, y, seed=seed, trials=per_layer,
                                  progress=ctx.progress, stream=SAME_COST_STREAM)
        out.ground_truth = compare(res.layers, res.inferences, gt, same, seed=seed,
                                   confidence=r.truth_confidence)
        write_json(ctx.out / "ground_truth.json", out.ground_truth)
    lvf = {row["layer"]: row["lvf"] for row in res.layers}
    plan = dict(s.plan)
    plan["layers"] = {name: {**entry, "vulnerability": lvf[name]}
                      for name, entry in s.plan["layers"].items()}
    save_plan(ctx.run.plan_file, plan)
    return out


def compare(ga_layers: list[dict], ga_inferences: int, truth: list[LayerTruth],
            same_cost: list[LayerTruth] | None = None, *, seed: int = 0,
            confidence: float = 0.95) -> dict:
    """A ranking's per-layer LVF (``ga_layers``: the GA's or the uniform sample's rows) against
    the ground truth: Spearman with its bootstrap interval, the ranking's share of the truth's
    inferences, the pairs it misorders, and (``same_cost``) an independent uniform per-layer
    sample at the ranking's cost judged the same way."""
    names = [row["layer"] for row in ga_layers]
    t = {x.layer: x for x in truth}
    frac = {n: t[n].critical_fraction for n in names}
    tn, tk = [t[n].trials for n in names], [t[n].critical for n in names]
    truth_ci = {n: (t[n].critical_low, t[n].critical_high) for n in names}
    gt_inferences = sum(x.trials for x in truth)

    def judge(n: list[int], k: list[int], est: dict[str, float]) -> tuple[float, tuple, list]:
        """Spearman, its bootstrap interval and the misordered pairs of one estimate."""
        return (spearman([frac[x] for x in names], [est[x] for x in names]),
                spearman_bootstrap(n, k, tn, tk, confidence=confidence, seed=seed),
                misorders(names, est, frac, truth_ci))

    rho, ci, wrong = judge([row["tested"] for row in ga_layers],
                           [row["critical"] for row in ga_layers],
                           {row["layer"]: row["lvf"] for row in ga_layers})
    out = {"layers": [x.to_json() for x in truth],
           "ranking": sorted(frac, key=lambda n: -frac[n]),
           "inferences": gt_inferences, "spearman": rho, "spearman_ci": ci,
           "ga_inference_ratio": ga_inferences / gt_inferences,
           "misordered": [m.to_json() for m in wrong]}
    if same_cost is not None:
        u = {x.layer: x for x in same_cost}
        rho, ci, wrong = judge([u[n].trials for n in names], [u[n].critical for n in names],
                               {n: u[n].critical_fraction for n in names})
        out["uniform_same_cost"] = {
            "trials_per_layer": max((x.trials for x in same_cost), default=0),
            "inferences": sum(x.trials for x in same_cost),
            "spearman": rho, "spearman_ci": ci, "misordered": len(wrong)}
    return out
