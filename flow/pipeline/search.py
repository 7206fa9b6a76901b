"""``hetq search``: Algorithm 1 of the paper (base bit-width q, then protect vulnerable layers).

1. Start at q = ``search.start_bits`` (8). Quantize every fixed-point weight layer to q bits and
   fine-tune (QAT from the trained weights); measure the accuracy and the accuracy drop at
   ``search.ber`` (``search.trials`` fault maps). If accuracy > a and drop < r, try q - q/2, else
   q + q/2 (the paper's binary-search rule), until the next q was tried already or leaves 2..16.
2. The base q is the smallest q tried whose accuracy exceeds a: the cheapest accurate network,
   the one most exposed to faults.
3. Rank its layers (``rank.method``, LVF), then protect l = 1, 2, ... most vulnerable layers
   (n+2-bit words, MSB triplicated) until the drop at the BER is <= r (or every layer is protected).

The paper's pick is the last design of step 3. ``search.mode: pareto`` (the default) builds
instead the best design of all the search evaluated (every q unprotected, every protection
step): the fewest weight bits (``search.objective: bits``) or lowest RAP (``rap``) among those
that meet a and r, else the lowest drop x bits; no evaluated accurate design dominates it. Both
picks are reported; ``search.mode: paper`` makes the paper's the plan.

A network hetq cannot retrain (an imported QONNX file) or whose layers are all binary keeps its
bit-widths: only step 3 runs, and ``hetq search`` says so in one line.

Writes ``search/q<q>.pt`` and its QONNX graph ``search/q<q>.onnx`` for every q tried,
``search/result.json`` (every design evaluated with its figures, both picks) and replaces
``plan.json`` (weight bits, protection and LVF per layer, the checkpoint it belongs to and its
SHA-256).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from flow.core.config import RunConfig
from flow.core.errors import RunDirError
from flow.core.executor import Executor
from flow.core.image import MemoryImage
from flow.core.io import sha256_file, write_json
from flow.core.ir import IntNetwork
from flow.core.modelsource import parse_arch
from flow.core.plan import plan_of_network, save_plan
from flow.nn.lower import lower_graph
from flow.nn.qonnx_graph import export_module, load, save
from flow.nn.train import accuracy, finetune, load_checkpoint, save_checkpoint
from flow.pipeline.rundir import RunDir
from flow.pipeline.runner import StepContext, StepResult
from flow.pipeline.session import load_data, qonnx_of, resolve_device
from flow.reliability.algorithm1 import (
    Design,
    Measured,
    base_bits,
    pareto_pick,
    protect,
    rap_of,
    search_bits,
)
from flow.reliability.campaign import CampaignSpec, run_campaign
from flow.reliability.metrics import latency
from flow.reliability.ranking import rank_layers, ranking_images


def _drop(net: IntNetwork, protected: list[str], cfg: RunConfig, data, device, store,
          tag: dict) -> dict:
    image = MemoryImage.build(net, protected)
    ex = Executor(net, image, device)
    s = cfg.search
    spec = CampaignSpec(bers=(s.ber,), trials=s.trials, seed=cfg.seed,
                        extra={**tag, "protected": sorted(protected)})
    res = run_campaign(ex, image, data.test.x, data.test.y, spec, store, progress=False,
                       batch_maps=cfg.campaign.batch_maps)
    row = res["summary"][0]
    return {"accuracy": res["clean_accuracy"], "drop": row["drop_mean"],
            "drop_low": row["drop_low"], "drop_high": row["drop_high"],
            "weight_bits": image.size_bits(("weight",))["total"], "campaign": res["campaign"]}


def protection_only(run: RunDir) -> str | None:
    """Why Algorithm 1 cannot search the bit-width of this run (one line), or None if it can."""
    cfg = run.config()
    src = parse_arch(cfg.model.arch)
    if not src.trainable:
        return (f"search: '{src.label}' is a trained QONNX file that hetq cannot retrain; "
                f"Algorithm 1 keeps its bit-widths and only chooses which layers to protect")
    plan = run.manifest()["steps"]["train"]
    net = lower_graph(load(qonnx_of(run / plan["checkpoint"]), "checkpoint"), src.label)
    if all(net.params[f"{n}.weight"].fmt.bipolar for n in net.layers()):
        return (f"search: every layer of '{src.label}' is binary (1-bit weights); Algorithm 1 "
                f"keeps them and only chooses which layers to protect")
    return None


def _search_q(ctx: StepContext, cfg: RunConfig, data, device, store
              ) -> tuple[dict[int, dict], dict[int, IntNetwork], int]:
    """Steps 1-2: every q tried (row and network, by q) and the base q."""
    s = cfg.search
    run, progress = ctx.run, ctx.progress
    folder = ctx.out
    label = parse_arch(cfg.model.arch).label
    base_state = load_checkpoint(run / "train" / "model.pt")["state_dict"]
    rows: dict[int, dict] = {}
    nets: dict[int, IntNetwork] = {}

    def measure(q: int) -> Measured:
        model = finetune(cfg, data, device, base_state, q, progress)
        save_checkpoint(model, folder / f"q{q}.pt", {"arch": cfg.model.arch, "q": q})
        graph = export_module(model, data.input_shape)
        save(graph, folder / f"q{q}.onnx")
        sha = sha256_file(folder / f"q{q}.pt")
        nets[q] = lower_graph(graph, label)
        ev = _drop(nets[q], [], cfg, data, device, store, {"q": q, "checkpoint_sha256": sha})
        rows[q] = {"q": q, "accuracy": ev["accuracy"], "drop": ev["drop"],
                   "drop_low": ev["drop_low"], "drop_high": ev["drop_high"],
                   "weight_bits": ev["weight_bits"], "checkpoint_sha256": sha,
                   "brevitas_accuracy": accuracy(model, data.test.x, data.test.y)}
        if progress:
            print(f"  q={q}: accuracy {ev['accuracy']:.4f}, drop at BER {s.ber:g} "
                  f"{ev['drop']:.4f}", flush=True, file=sys.stderr)
        return Measured(ev["accuracy"], ev["drop"])

    tried = search_bits(measure, s.start_bits, s.accuracy_threshold, s.drop_threshold)
    q = base_bits(tried, s.accuracy_threshold)
    if q is None:
        raise RunDirError(f"search.accuracy_threshold: no bit-width tried reaches accuracy "
                          f"{s.accuracy_threshold} (tried {sorted(tried)}); lower it or train "
                          f"longer")
    return rows, nets, q


def _pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def _design_row(d: Design, ref: Design, a: float, r: float) -> dict:
    """One evaluated design as ``result.json`` and the report show it."""
    return {"step": d.extra["step"], "q": d.q, "protected": list(d.protected),
            "accuracy": d.accuracy, "drop": d.drop, "drop_low": d.extra["drop_low"],
            "drop_high": d.extra["drop_high"], "weight_bits": d.bits, "cycles": d.cycles,
            "rap_pct": 100.0 * rap_of(d, ref), "meets_a": d.accuracy > a, "meets_r": d.drop <= r}


@dataclass
class SearchResult(StepResult):
    """Algorithm 1's bit-widths tried, base q (None: kept), ranking, protection steps, every
    design evaluated and the two picks (``q``/``protected``: the design the plan builds)."""

    q: int | None
    protected: list[str]
    tried: list[dict]
    note: str | None
    accuracy: float
    ranking: list[str]
    layers: list[dict]
    ga_inferences: int
    protection_steps: list[dict]
    met_drop_threshold: bool
    thresholds: dict
    mode: str = "pareto"
    objective: str = "bits"
    base_q: int | None = None
    designs: list[dict] = field(default_factory=list)
    chosen: int = 0
    paper_choice: int = 0
    choice_reason: str = ""

    def summary(self) -> str:
        t = self.thresholds
        lines = [f"Algorithm 1 (a = {t['accuracy']}, r = {t['drop']}, BER {t['ber']:g}, "
                 f"{t['trials']} trials per evaluation); designs evaluated:",
                 f"   {'step':<9} {'q':>4}  {'protected':<24} {'accuracy':>8} "
                 f"{'drop [95 % CI]':>26} {'weight bits':>11} {'RAP %':>7}"]
        for i, d in enumerate(self.designs):
            mark = ("*" if i == self.chosen else " ") + ("p" if i == self.paper_choice else " ")
            ci = f"{d['drop']:.4f} [{d['drop_low']:.4f}, {d['drop_high']:.4f}]"
            q = "kept" if d["q"] is None else d["q"]
            lines.append(f"{mark} {d['step']:<9} {q:>4}  {', '.join(d['protected']) or '-':<24} "
                         f"{d['accuracy']:>8.4f} {ci:>26} {d['weight_bits']:>11,} "
                         f"{d['rap_pct']:>7.3f}")
        if self.note:
            lines.append(self.note)
        base = f"base q = {self.base_q}" if self.base_q is not None else "bit-widths kept"
        lines.append(f"{base}; ranking {' > '.join(self.ranking)} "
                     f"({self.ga_inferences} ranking inferences)")
        p, c = self.designs[self.paper_choice], self.designs[self.chosen]
        lines.append(f"p paper's pick: {_name(p)}" + ("" if p["meets_r"] else
                     f" > r = {_pct(self.thresholds['drop'])}"))
        lines.append(f"* pareto pick ({self.objective}): {_name(c)}: {self.choice_reason}")
        which = "pareto" if self.mode == "pareto" else "paper's"
        lines.append(f"plan.json written with the {which} pick (search.mode: {self.mode})")
        return "\n".join(lines)

    def record(self) -> dict:
        return {"q": self.q, "protected": self.protected, "mode": self.mode}

    def brief(self) -> str:
        q = "kept" if self.q is None else self.q
        return f"search: q = {q}, protected: {', '.join(self.protected) or 'none'}"


def _name(d: dict) -> str:
    q = "bits kept" if d["q"] is None else f"q = {d['q']}"
    return (f"{q}, protected {', '.join(d['protected']) or 'none'}, "
            f"{d['weight_bits']:,} weight bits, drop {_pct(d['drop'])}")


def _designs(tried: dict[int, dict], base_q: int | None, steps: list[dict], accuracy: float,
             cycles: dict[int | None, int]) -> list[Design]:
    """Every design evaluated: each q tried unprotected, then the base q's protection steps."""
    out = [Design(q, (), r["accuracy"], r["drop"], r["weight_bits"], cycles[q],
                  {"step": "q search", "drop_low": r["drop_low"], "drop_high": r["drop_high"]})
           for q, r in tried.items()]
    for i, st in enumerate(steps):
        if i == 0 and tried:
            continue                        # the base q unprotected: already a q-search row
        out.append(Design(base_q, tuple(st["protected"]), accuracy, st["drop"],
                          st["weight_bits"], cycles[base_q],
                          {"step": "protect", "drop_low": st["drop_low"],
                           "drop_high": st["drop_high"]}))
    return out


def run(ctx: StepContext) -> SearchResult:
    """Run Algorithm 1 on a trained run; its checkpoints go to ``search/``, every campaign trial
    to the run's store, the new plan (the pareto or the paper's pick) to plan.json."""
    run, cfg = ctx.run, ctx.cfg
    s = cfg.search
    device = resolve_device(cfg.device)
    data = load_data(cfg)
    store = run.store
    note = protection_only(run)
    if note is None:
        tried, nets, q = _search_q(ctx, cfg, data, device, store)
        base, net, sha = tried[q], nets[q], tried[q]["checkpoint_sha256"]
    else:
        print(note, file=sys.stderr, flush=True)
        ckpt = run.manifest()["steps"]["train"]["checkpoint"]
        sha = sha256_file(run / ckpt)
        net = lower_graph(load(qonnx_of(run / ckpt), "checkpoint"),
                          parse_arch(cfg.model.arch).label)
        base = _drop(net, [], cfg, data, device, store, {"q": None, "checkpoint_sha256": sha})
        tried, nets, q = {}, {None: net}, None
    plain = MemoryImage.build(net)
    ga = rank_layers(Executor(net, plain, device), plain,
                        *ranking_images(data.test.x, data.test.y, cfg.rank.images, cfg.seed),
                        cfg.rank, cfg.seed)
    evals: dict[tuple[str, ...], dict] = {(): base}

    def drop_with(protected: list[str]) -> float:
        evals[tuple(protected)] = _drop(net, protected, cfg, data, device, store,
                                        {"q": q, "checkpoint_sha256": sha})
        return evals[tuple(protected)]["drop"]

    chosen = protect(ga.ranking, base["drop"], drop_with, s.drop_threshold)
    steps = [{"protected": list(p), "drop": evals[tuple(p)]["drop"],
              "drop_low": evals[tuple(p)]["drop_low"], "drop_high": evals[tuple(p)]["drop_high"],
              "weight_bits": evals[tuple(p)]["weight_bits"]} for p, _ in chosen]
    cycles = {k: latency(n)["latency_cycles"] for k, n in nets.items()}
    designs = _designs(tried, q, steps, base["accuracy"], cycles)
    paper = len(designs) - 1                 # the protection loop's last design
    pick, why = pareto_pick(designs, s.accuracy_threshold, s.drop_threshold, s.objective)
    build = designs[pick if s.mode == "pareto" else paper]
    rows = [_design_row(d, designs[0], s.accuracy_threshold, s.drop_threshold)
            for d in designs]
    if build.q != q:                          # a larger q tried unprotected: its own network
        net = nets[build.q]
        sha = tried[build.q]["checkpoint_sha256"]
        plain = MemoryImage.build(net)
        lvf_ga = rank_layers(Executor(net, plain, device), plain,
                                *ranking_images(data.test.x, data.test.y, cfg.rank.images,
                                                cfg.seed), cfg.rank, cfg.seed)
    else:
        lvf_ga = ga
    if build.q is not None:
        ckpt = f"search/q{build.q}.pt"
    protected = list(build.protected)
    result = SearchResult(
        q=build.q, protected=protected, tried=list(tried.values()), note=note,
        accuracy=build.accuracy, ranking=ga.ranking, layers=ga.layers,
        ga_inferences=ga.inferences, protection_steps=steps,
        met_drop_threshold=build.drop <= s.drop_threshold,
        thresholds={"accuracy": s.accuracy_threshold, "drop": s.drop_threshold, "ber": s.ber,
                    "trials": s.trials},
        mode=s.mode, objective=s.objective, base_q=q, designs=rows, chosen=pick,
        paper_choice=paper, choice_reason=why)
    write_json(ctx.out / "result.json", result.to_json())
    lvf = {r["layer"]: r["lvf"] for r in lvf_ga.layers}
    plan = plan_of_network(net, protected, sha, ckpt, "search")
    for name, entry in plan["layers"].items():
        entry["vulnerability"] = lvf[name]
    save_plan(run.plan_file, plan)
    return result
