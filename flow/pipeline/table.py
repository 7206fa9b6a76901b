"""``hetq table``: the paper's experiment (Tables III-V, Figs. 3-6) on a run's network.

For each base bit-width n of ``table.bits``: fine-tune the trained network at n bits, rank its
layers (``rank.method``), and compare three configurations of the same n-bit network (a
network hetq cannot retrain, an imported QONNX file or an all-binary one, gets the three at its own
bit-widths, n = its width or ``own`` when its layers differ):

- ``hom(n,-)``: every layer n bits, no protection;
- ``hom(-,n+2)``: every layer stored in n+2 bits with the MSB triplicated;
- ``het(n,n+2)``: the ``table.protect_fraction`` most vulnerable layers (at least one) protected.

Each configuration gets a campaign over ``table.bers`` (accuracy vs BER, mean and confidence
interval) and its row: the accuracy drop at ``table.ber``, stored weight bits, execution time
(analytic cycles: the voter is combinational, so all three configurations of an n tie), the
measured software time of the integer executor beside it, RAP (Eq. 2) and P_drop (Eq. 3),
both taking a negative mean drop as 0.
Overheads are relative to hom(n_min,-) as in the paper. Writes ``table/table.csv``,
``table/table.md``, ``table/rows.json``, ``table/curves.json`` (accuracy vs BER per
configuration), ``table/accuracy_vs_ber_n<n>.png`` and ``table/rap.png``.
"""
from __future__ import annotations

import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from flow.core.config import RunConfig
from flow.core.executor import Executor
from flow.core.image import MemoryImage
from flow.core.io import atomic_write, write_json
from flow.core.modelsource import parse_arch
from flow.nn.lower import lower, lower_graph
from flow.nn.qonnx_graph import load
from flow.nn.train import finetune, load_checkpoint
from flow.pipeline.rundir import RunDir
from flow.pipeline.runner import StepContext, StepResult
from flow.pipeline.search import protection_only
from flow.pipeline.session import load_data, qonnx_of, resolve_device
from flow.reliability.campaign import CampaignSpec, run_campaign
from flow.reliability.metrics import PdropConstants, latency, p_drop, rap, weight_bits
from flow.reliability.ranking import rank_layers, ranking_images
from flow.reliability.store import export_csv

COLUMNS = ("config", "n", "protected", "accuracy", "drop_pct", "drop_low_pct", "drop_high_pct",
           "memory_bits", "cycles", "exec_time_pct", "software_time_pct", "rap", "p_drop")


def _software_time(ex: Executor, xq) -> float:
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        ex.predict(xq, quantized=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _groups(bers: tuple[float, ...], t) -> list[tuple[tuple[float, ...], int]]:
    """Campaign groups (BERs, trials): one campaign over every BER at ``table.trials``, or, when
    ``table.curve_trials`` differs, the table's BER at ``table.trials`` and the other points of
    the curves at ``table.curve_trials``."""
    if t.curve_trials is None or t.curve_trials == t.trials:
        return [(bers, t.trials)]
    rest = tuple(b for b in bers if b != t.ber)
    return [((t.ber,), t.trials)] + ([(rest, t.curve_trials)] if rest else [])


def _trials_label(t, unit: str = "trials") -> str:
    """The trials per BER point, in words."""
    if t.curve_trials is None or t.curve_trials == t.trials:
        return f"{t.trials} {unit} per BER point"
    return f"{t.trials} {unit} at BER {t.ber:g}, {t.curve_trials} at the other points"


def _markdown(rows: list[dict], cfg: RunConfig, consts: PdropConstants) -> str:
    t = cfg.table
    head = (f"| Type | Accuracy drop (%) at BER {t.ber:g} [95 % CI] | Memory (bits) | "
            f"Execution time (%) | Software time (%) | RAP | P_drop |")
    lines = [f"# {parse_arch(cfg.model.arch).label} on {cfg.data.name}: hom / het quantization", "",
             f"{_trials_label(t, 'fault maps')}; protected layers of het: the "
             f"{t.protect_fraction:.0%} most vulnerable by LVF. P_drop constants: T = "
             f"{consts.lifetime:g}, t = {consts.test_interval:g}, P_single = {consts.p_single:g}. "
             f"A negative drop (the faulty accuracy above the clean one on average) counts as 0 "
             f"in RAP and P_drop.",
             "", head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['drop_pct']:.2f} [{r['drop_low_pct']:.2f}, "
                     f"{r['drop_high_pct']:.2f}] | {r['memory_bits']:,} | "
                     f"{r['exec_time_pct']:.2f} | {r['software_time_pct']:.2f} | "
                     f"{r['rap']:.3f} | {r['p_drop']:.3g} |")
    return "\n".join(lines) + "\n"


def _networks(run: RunDir, cfg: RunConfig, data, device, progress: bool):
    """(n, network) per base bit-width of ``table.bits``, fine-tuned from the trained weights;
    for a run hetq cannot retrain, its own network once (n its weight bit-width, or None when
    its layers differ)."""
    label = parse_arch(cfg.model.arch).label
    note = protection_only(run)
    if note is None:
        state = load_checkpoint(run / "train" / "model.pt")["state_dict"]
        for n in cfg.table.bits:
            yield n, lower(finetune(cfg, data, device, state, n, progress), data.input_shape,
                           label)
        return
    if progress:
        print(note.replace("search:", "table:", 1).replace("Algorithm 1", "the table"),
              file=sys.stderr, flush=True)
    ckpt = run.manifest()["steps"]["train"]["checkpoint"]
    net = lower_graph(load(qonnx_of(run / ckpt), "checkpoint"), label)
    widths = {net.params[f"{n}.weight"].fmt.bits for n in net.layers()}
    yield (widths.pop() if len(widths) == 1 else None), net


@dataclass
class TableResult(StepResult):
    """The paper's table: one row per configuration, the P_drop constants, the reference."""

    rows: list[dict]
    constants: dict
    reference: str
    table_md: str
    markdown: str

    def summary(self) -> str:
        return self.markdown + f"\nfiles: {Path(self.table_md).parent}"

    def record(self) -> dict:
        return {"reference": self.reference, "table_md": self.table_md}


def run(ctx: StepContext) -> TableResult:
    """Run the experiment on a trained run directory; writes ``table/`` atomically, every
    campaign trial to the run's store."""
    from flow.pipeline.plots import plot_accuracy_vs_ber, plot_bars
    run, cfg, progress = ctx.run, ctx.cfg, ctx.progress
    t = cfg.table
    device = resolve_device(cfg.device)
    data = load_data(cfg)
    x, y = data.test.x, data.test.y
    consts = PdropConstants(t.lifetime, t.test_interval, t.p_single)
    folder = ctx.out
    store = run.store
    bers = tuple(sorted(set(t.bers) | {t.ber}))
    rows, curves = [], {}
    for n, net in _networks(run, cfg, data, device, progress):
        plain = MemoryImage.build(net)
        ga = rank_layers(Executor(net, plain, device), plain,
                            *ranking_images(x, y, cfg.rank.images, cfg.seed), cfg.rank, cfg.seed)
        k = max(1, math.ceil(t.protect_fraction * len(ga.ranking)))
        m = "own" if n is None else str(n)
        p = "own+2" if n is None else str(n + 2)
        configs = {f"hom({m},-)": [], f"hom(-,{p})": list(ga.ranking),
                   f"het({m},{p})": ga.ranking[:k]}
        cycles = latency(net)["latency_cycles"]
        curves[n] = {}
        for name, protected in configs.items():
            image = MemoryImage.build(net, protected)
            ex = Executor(net, image, device)
            summary, campaigns = [], []
            for group, trials in _groups(bers, t):
                spec = CampaignSpec(bers=group, trials=trials, seed=cfg.seed,
                                    extra={"table": name, "n": n, "protected": sorted(protected)})
                res = run_campaign(ex, image, x, y, spec, store, progress=progress,
                                   batch_maps=cfg.campaign.batch_maps)
                summary += res["summary"]
                campaigns.append(res["campaign"])
            summary.sort(key=lambda r: r["ber"])
            at = next(r for r in summary if r["ber"] == t.ber)
            curves[n][name] = summary
            rows.append({"config": name, "n": n, "protected": protected,
                         "accuracy": res["clean_accuracy"], "drop_pct": 100 * at["drop_mean"],
                         "drop_low_pct": 100 * at["drop_low"],
                         "drop_high_pct": 100 * at["drop_high"],
                         "memory_bits": weight_bits(image), "cycles": cycles,
                         "software_seconds": _software_time(ex, ex.quantize_input(x)),
                         "campaign": campaigns[0], "campaigns": campaigns})
            if progress:
                print(f"  {name}: drop {rows[-1]['drop_pct']:.3f} % at BER {t.ber:g}",
                      file=sys.stderr, flush=True)
    ref = rows[0] if len(curves) == 1 else next(
        r for r in rows if r["config"] == f"hom({min(t.bits)},-)")
    for r in rows:
        mem_ovh = r["memory_bits"] / ref["memory_bits"]
        perf_ovh = r["cycles"] / ref["cycles"]
        r["exec_time_pct"] = 100 * perf_ovh
        r["software_time_pct"] = 100 * r["software_seconds"] / ref["software_seconds"]
        drop = max(r["drop_pct"], 0.0)      # a mean gain under faults is no drop (RAP, P_drop >= 0)
        r["rap"] = rap(drop, mem_ovh, perf_ovh)
        r["p_drop"] = p_drop(r["memory_bits"], t.ber, drop / 100, consts)
    export_csv([{c: (";".join(r[c]) if c == "protected" else r[c]) for c in COLUMNS}
                for r in rows], folder / "table.csv")
    atomic_write(folder / "table.md", _markdown(rows, cfg, consts))
    write_json(folder / "rows.json", {"rows": rows, "constants": consts.to_json(),
                                      "reference": ref["config"], "ber": t.ber,
                                      "trials": t.trials})
    write_json(folder / "curves.json", {"trials": t.trials, "curve_trials": t.curve_trials,
                                        "curves": {("own" if n is None else str(n)): series
                                                   for n, series in curves.items()}})
    for n, series in curves.items():
        m = "own" if n is None else n
        plot_accuracy_vs_ber(series, folder / f"accuracy_vs_ber_n{m}.png",
                             title=f"{parse_arch(cfg.model.arch).label}: n = {m} "
                                   f"({_trials_label(t)})")
    plot_bars({r["config"]: r["rap"] for r in rows}, folder / "rap.png",
              title=f"RAP at BER {t.ber:g} (reference {ref['config']})", ylabel="RAP")
    return TableResult(rows, consts.to_json(), ref["config"], str(run / "table" / "table.md"),
                       (folder / "table.md").read_text())
