"""``hetq search``: Algorithm 1 of the paper (base bit-width q, then protect vulnerable layers).

1. Start at q = ``search.start_bits`` (8). Quantize every fixed-point weight layer to q bits and
   fine-tune (QAT from the trained weights); measure the accuracy and the accuracy drop at
   ``search.ber`` (``search.trials`` fault maps). If accuracy > a and drop < r, try q - q/2, else
   q + q/2 (the paper's binary-search rule), until the next q was tried already or leaves 2..16.
2. The base q is the smallest q tried whose accuracy exceeds a: the cheapest accurate network,
   the one most exposed to faults.
3. Rank its layers by the GA (LVF), then protect l = 1, 2, ... most vulnerable layers (n+2-bit
   words, MSB triplicated) until the drop at the BER is <= r (or every layer is protected).

A network hetq cannot retrain (an imported QONNX file) or whose layers are all binary keeps its
bit-widths: only step 3 runs, and ``hetq search`` says so in one line.

Writes ``search/q<q>.pt`` and its QONNX graph ``search/q<q>.onnx`` for every q tried,
``search/result.json`` (every step with its figures) and replaces ``plan.json`` (weight bits,
protection and LVF per layer, the checkpoint it belongs to and its SHA-256).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

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
from flow.reliability.algorithm1 import Measured, base_bits, protect, search_bits
from flow.reliability.campaign import CampaignSpec, run_campaign
from flow.reliability.ga import rank_layers_ga


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
              ) -> tuple[dict, dict, IntNetwork, str]:
    """Steps 1-2: every q tried, the base q's row, its network and checkpoint."""
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
    return rows, rows[q], nets[q], f"search/q{q}.pt"


def _pct(x: float) -> str:
    return f"{100 * x:.2f} %"


@dataclass
class SearchResult(StepResult):
    """Algorithm 1's bit-widths tried, base q (None: kept), ranking and protection steps."""

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

    def summary(self) -> str:
        t = self.thresholds
        lines = [f"Algorithm 1 (a = {t['accuracy']}, r = {t['drop']}, BER {t['ber']:g}, "
                 f"{t['trials']} trials per evaluation)",
                 f"{'q':>3} {'accuracy':>9} {'drop':>8} {'weight bits':>12}"]
        lines += [f"{r['q']:>3} {r['accuracy']:>9.4f} {r['drop']:>8.4f} {r['weight_bits']:>12}"
                  for r in self.tried]
        if self.note:
            lines.append(self.note)
        base = f"base q = {self.q}" if self.q is not None else "bit-widths kept"
        lines.append(f"{base}; ranking {' > '.join(self.ranking)} "
                     f"({self.ga_inferences} GA inferences)")
        for st in self.protection_steps:
            lines.append(f"  protect [{', '.join(st['protected'])}]: drop {st['drop']:.4f} "
                         f"[{st['drop_low']:.4f}, {st['drop_high']:.4f}], "
                         f"{st['weight_bits']} weight bits")
        missed = " (drop threshold NOT met with every layer protected)"
        lines.append("plan.json written" + ("" if self.met_drop_threshold else missed))
        return "\n".join(lines)

    def record(self) -> dict:
        return {"q": self.q, "protected": self.protected}

    def brief(self) -> str:
        q = "kept" if self.q is None else self.q
        return f"search: q = {q}, protected: {', '.join(self.protected) or 'none'}"


def run(ctx: StepContext) -> SearchResult:
    """Run Algorithm 1 on a trained run; its checkpoints go to ``search/``, every campaign trial
    to the run's store, the new plan to plan.json."""
    run, cfg = ctx.run, ctx.cfg
    s = cfg.search
    device = resolve_device(cfg.device)
    data = load_data(cfg)
    store = run.store
    note = protection_only(run)
    if note is None:
        tried, base, net, ckpt = _search_q(ctx, cfg, data, device, store)
        sha, q = base["checkpoint_sha256"], base["q"]
    else:
        print(note, file=sys.stderr, flush=True)
        ckpt = run.manifest()["steps"]["train"]["checkpoint"]
        sha = sha256_file(run / ckpt)
        net = lower_graph(load(qonnx_of(run / ckpt), "checkpoint"),
                          parse_arch(cfg.model.arch).label)
        ev = _drop(net, [], cfg, data, device, store, {"q": None, "checkpoint_sha256": sha})
        tried, base, q = {}, ev, None
    plain = MemoryImage.build(net)
    ga = rank_layers_ga(Executor(net, plain, device), plain, data.test.x, data.test.y,
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
    protected = steps[-1]["protected"]
    result = SearchResult(
        q=q, protected=protected, tried=[tried[k] for k in tried], note=note,
        accuracy=base["accuracy"], ranking=ga.ranking, layers=ga.layers,
        ga_inferences=ga.inferences, protection_steps=steps,
        met_drop_threshold=steps[-1]["drop"] <= s.drop_threshold,
        thresholds={"accuracy": s.accuracy_threshold, "drop": s.drop_threshold, "ber": s.ber,
                    "trials": s.trials})
    write_json(ctx.out / "result.json", result.to_json())
    lvf = {r["layer"]: r["lvf"] for r in ga.layers}
    plan = plan_of_network(net, protected, sha, ckpt, "search")
    for name, entry in plan["layers"].items():
        entry["vulnerability"] = lvf[name]
    save_plan(run.plan_file, plan)
    return result
