"""The inject step: a software fault campaign on the plan's design (and its unprotected
baseline), stored trial by trial; ``hetq inject`` runs the same campaign with its options."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from flow.core.config import RunConfig
from flow.core.executor import Executor
from flow.core.image import MemoryImage
from flow.pipeline.runner import StepContext, StepResult
from flow.pipeline.session import open_session
from flow.pipeline.train_step import CAMPAIGN_FIELDS
from flow.reliability.campaign import CampaignSpec, default_trials, run_campaign
from flow.reliability.faults import check_targets
from flow.reliability.store import export_csv, export_json


def _pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def campaign_text(res: dict) -> str:
    """A campaign's table as the commands print it (software or RTL)."""
    lines = [f"campaign {res['campaign']}: clean accuracy {_pct(res['clean_accuracy'])}, "
             f"{res['bits']} target bits, {res['trials']} trials per BER",
             f"{'BER':>10} {'trials':>6} {'flips':>8} {'accuracy (95% CI)':>28} {'drop':>9}"]
    clipped = False
    for r in res["summary"]:
        if not r.get("ci_defined", True):
            ci = f"{_pct(r['accuracy_mean'])} (no CI: 1 trial)"
        else:
            mark = "*" if r.get("ci_clipped") else ""
            clipped = clipped or bool(mark)
            ci = (f"{_pct(r['accuracy_mean'])} [{_pct(r['accuracy_low'])}, "
                  f"{_pct(r['accuracy_high'])}]{mark}")
        lines.append(f"{r['ber']:>10.1e} {r['trials']:>6} {r['mean_faults']:>8.1f} {ci:>28} "
                     f"{_pct(r['drop_mean']):>9}")
    if clipped:
        lines.append("* interval clipped to [0, 1] (a t-interval over few trials leaves it)")
    if res.get("out_dir"):
        lines.append(f"results: {res['out_dir']}")
    return "\n".join(lines)


@dataclass
class CampaignResult(StepResult):
    """One campaign's summary per BER, where its files are, and the protection it ran with."""

    campaign: str
    clean_accuracy: float
    bits: int
    trials: int
    summary_rows: list[dict]
    spec: dict
    out_dir: str
    protected: list[str]
    baseline: CampaignResult | None = None

    def summary(self) -> str:
        text = campaign_text({**self.to_json(), "summary": self.summary_rows})
        if self.baseline is not None:
            text += "\nunprotected baseline:\n" + self.baseline.summary()
        return text

    def to_json(self) -> dict:
        out = super().to_json()
        out["summary"] = out.pop("summary_rows")
        return out

    def record(self) -> dict:
        return {"campaign": self.campaign, "out_dir": self.out_dir,
                "baseline_campaign": None if self.baseline is None else self.baseline.campaign}


def campaign_spec(cfg: RunConfig) -> CampaignSpec:
    """The campaign the config asks for (``campaign.seed``, else the run's seed)."""
    c = cfg.campaign
    return CampaignSpec(bers=tuple(c.bers), trials=default_trials(c.trials, c.margin, c.confidence),
                        seed=cfg.seed if c.seed is None else c.seed, fault=c.fault.value,
                        kinds=tuple(k.value for k in c.kinds),
                        layers=None if c.layers is None else tuple(c.layers),
                        bits=None if c.bits is None else tuple(c.bits))


def inject(ctx: StepContext, protected: list[str] | None = None,
           fields: dict[str, str] | None = None) -> CampaignResult:
    """The config's campaign on a trained run; writes ``inject/<campaign id>/`` (CSV, JSON,
    PNG) atomically, every trial to the run's store as it finishes.

    Trials run where ``parallel`` says (this process, or Ray actors; the numbers are the same).
    ``protected`` replaces the plan's protected layers (``[]``: the unprotected baseline). The
    fault targets are checked first (:func:`flow.reliability.faults.check_targets`; ``fields``
    names the options in messages).
    """
    from flow.reliability.parallel import make_pool
    run, cfg = ctx.run, ctx.cfg
    spec = campaign_spec(cfg)
    s = open_session(run.path, cfg.device)
    image, ex = s.image, s.executor
    if protected is None:
        prot = sorted(n for n, e in s.plan["layers"].items() if e["protected"])
    else:
        prot = sorted(protected)
        image = MemoryImage.build(s.net, prot)
        ex = Executor(s.net, image, s.executor.device)
    check_targets(image, kinds=spec.kinds, layers=spec.layers, bits=spec.bits,
                  fields=fields or CAMPAIGN_FIELDS)
    # The campaign id covers what the trials depend on: the checkpoint and the protection.
    spec = dataclasses.replace(spec, extra={**spec.extra, "checkpoint_sha256": s.checkpoint_sha256,
                                            "protected": prot})
    p = cfg.parallel
    pool = make_pool(p.executor, ex, image, s.data.test.x, s.data.test.y,
                     address=p.address, workers=p.workers)
    try:
        res = run_campaign(ex, image, s.data.test.x, s.data.test.y, spec, run.store,
                           progress=ctx.progress, pool=pool,
                           batch_maps=cfg.campaign.batch_maps)
    finally:
        pool.close()
    rel = f"inject/{res['campaign']}"
    with ctx.atomic(rel) as out:
        export_csv(res["summary"], out / "summary.csv")
        export_json({**res, "spec": spec.to_json()}, out / "summary.json")
        from flow.pipeline.plots import plot_accuracy_vs_ber  # matplotlib only for a plot
        arch = s.net.arch
        plot_accuracy_vs_ber({arch: res["summary"]}, out / "accuracy_vs_ber.png",
                             title=f"{arch}: accuracy vs BER ({spec.trials} trials/point)",
                             clean={arch: res["clean_accuracy"]})
    return CampaignResult(res["campaign"], res["clean_accuracy"], res["bits"], res["trials"],
                          res["summary"], spec.to_json(), str(run / rel), prot)


def run(ctx: StepContext) -> CampaignResult:
    """The config's campaign on the plan, and (``report.baseline``) on the unprotected
    baseline."""
    res = inject(ctx)
    if ctx.cfg.report.baseline and res.protected:
        res.baseline = inject(ctx, protected=[])
    return res
