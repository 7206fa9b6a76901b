"""``hetq zobnn``: the ZOBNN study (paper 003): Table I, Figs. 3-4, the robustness ratio, Table II.

For each binary network of ``zobnn.archs`` (trained on the config's data, with its float twin):

- **Table I**: fault-free test accuracy of ZOBNN at each bit-width of ``zobnn.bits`` and the
  stored bits of the whole network (weight-memory image: binary weights 1 bit, float32 32 bits,
  ZOBNN integers ``bits`` bits), with the reduction against the float-parameter BNN;
- **Fig. 3 / Fig. 4**: accuracy vs fault rate of the float twin, the BNN and ZOBNN at
  ``zobnn.study_bits``: every stored bit of each network is a fault target (float32 words,
  binary weights, integer codes), ``zobnn.trials`` seeded maps per fault rate, means with 95 %
  confidence intervals and per-trial box plots; the robustness ratios at ``zobnn.ber``;
- **Table II**: inference time of the float-parameter BNN, of conventional quantization (the same
  integers with explicit Q/D layers) and of ZOBNN on the same executor (PyTorch on the CPU, one
  thread, the test set as one batch), median of ``zobnn.timing_repeats`` interleaved runs, and
  the median of the paired per-run time ratios against the BNN with its 95 % confidence interval;
- **hardware** (``zobnn.hardware``, on by default; :mod:`flow.zobnn.hardware`): the ZOBNN network
  as an integer network and weight-memory image (``bdorefa`` and ``breact``), its fault campaign
  over every memory kind, its RTL in Verilator and its hls4ml C-sim: bit-exactness, cycles and
  SEU maps against the integer executor (the binary ResNet has no hls4ml form yet, which
  ``study.md`` says).

Campaign trials go to ``RUN_DIR/campaigns.sqlite`` as they finish (a rerun resumes); the trained
networks to ``RUN_DIR/zobnn/<arch>.pt``. Writes ``RUN_DIR/zobnn/`` tables (Markdown, CSV, JSON)
and figures (PNG).
"""
from __future__ import annotations

import hashlib
import statistics
import time
from dataclasses import dataclass

import torch

from flow.core.config import RunConfig
from flow.core.io import atomic_write, write_json
from flow.nn.train import accuracy
from flow.pipeline.rundir import RunDir
from flow.pipeline.runner import StepContext, StepResult
from flow.pipeline.session import load_data
from flow.reliability.campaign import CampaignSpec, run_campaign
from flow.reliability.stats import median_ci
from flow.reliability.store import TrialStore, export_csv
from flow.zobnn.bnn import build_bnn, train_bnn
from flow.zobnn.floatimage import FloatImage, TorchExecutor
from flow.zobnn.hardware import hardware, markdown
from flow.zobnn.quant import conventional, zobnn


def _state_sha(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _trained(run: RunDir, arch: str, cfg: RunConfig, data, progress: bool):
    """The trained network ``arch`` (from ``.cache/zobnn/<arch>.pt`` when a previous run saved
    it: a crash of the study loses no training)."""
    z = cfg.zobnn
    m = build_bnn(arch, data.input_shape, data.num_classes, z.width, seed=cfg.seed)
    path = run.cache / "zobnn" / f"{arch}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        m.load_state_dict(torch.load(path, weights_only=True))
        m.freeze()
        return m.eval()
    train_bnn(m, data, epochs=z.epochs, lr=z.lr, seed=cfg.seed, progress=progress)
    tmp = path.with_suffix(".pt.tmp")
    torch.save(m.state_dict(), tmp)
    tmp.replace(path)
    return m


def _bits(model) -> int:
    img = FloatImage.from_model(model)
    return img.size_bits(img.KINDS)["total"]


def _campaign(run: RunDir, model, arch: str, net: str, cfg: RunConfig, data,
              progress: bool) -> tuple[dict, dict[float, list[float]]]:
    z = cfg.zobnn
    image = FloatImage.from_model(model)
    spec = CampaignSpec(bers=tuple(z.bers), trials=z.trials, seed=cfg.seed, kinds=image.KINDS,
                        extra={"study": "zobnn", "arch": arch, "net": net,
                               "model_sha256": _state_sha(model)})
    res = run_campaign(TorchExecutor(model, image), image, data.test.x, data.test.y, spec,
                       run.store, progress=progress)
    per: dict[float, list[float]] = {}
    with TrialStore(run.store) as store:
        for t in store.trials(res["campaign"]):
            per.setdefault(t["ber"], []).append(t["correct"] / t["total"])
    return res, per


def _timing(models: dict, x: torch.Tensor, repeats: int) -> tuple[dict, dict]:
    """Seconds per test-set inference of each model, runs interleaved.

    Returns the median time of each model and, for each model, the median of its per-repeat
    time ratio against the first model (paired: the runs of one repeat are back to back) with
    the 95 % confidence interval of that median, as (median, low, high).
    """
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.no_grad():
        for m in models.values():                 # warm-up
            m(x)
        for _ in range(repeats):
            for k, m in models.items():
                t0 = time.perf_counter()
                m(x)
                times[k].append(time.perf_counter() - t0)
    base = next(iter(times.values()))
    ratios = {k: median_ci([a / b for a, b in zip(v, base)]) for k, v in times.items()}
    return {k: statistics.median(v) for k, v in times.items()}, ratios


def _md_table(head: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


@dataclass
class ZobnnResult(StepResult):
    """The ZOBNN study: its config, per network its tables, campaigns and hardware."""

    config: dict
    archs: dict
    markdown: str

    def summary(self) -> str:
        return self.markdown + "\nfiles: (RUN_DIR)/zobnn"

    def to_json(self) -> dict:
        out = super().to_json()
        out.pop("markdown")
        return out

    def record(self) -> dict:
        return {"archs": list(self.archs)}


def run(ctx: StepContext) -> ZobnnResult:
    """The whole study into ``RUN_DIR/zobnn/`` (written atomically; trained networks and
    campaign trials are kept outside it, so a crash loses neither)."""
    from flow.pipeline.plots import plot_accuracy_vs_ber, plot_boxes
    run, cfg, progress = ctx.run, ctx.cfg, ctx.progress
    z = cfg.zobnn
    data = load_data(cfg)
    out = ctx.out
    threads = torch.get_num_threads()
    result: dict = {"config": z.model_dump(mode="json"), "archs": {}}
    md = [f"# ZOBNN study on {cfg.data.name}", ""]
    try:
        torch.set_num_threads(1)              # one thread: times comparable, runs repeatable
        for arch in z.archs:
            bnn = _trained(run, arch, cfg, data, progress)
            flt = _trained(run, f"{arch}_float", cfg, data, progress)
            acc_bnn = accuracy(bnn, data.test.x, data.test.y)
            bits_bnn = _bits(bnn)
            t1 = [{"network": "BNN (float32 parameters)", "bits": 32, "accuracy": acc_bnn,
                   "stored_bits": bits_bnn, "reduction": 0.0}]
            for b in z.bits:
                q, _ = zobnn(bnn, b)
                sb = _bits(q)
                t1.append({"network": f"ZOBNN {b}-bit", "bits": b,
                           "accuracy": accuracy(q, data.test.x, data.test.y),
                           "stored_bits": sb, "reduction": 1 - sb / bits_bnn})
            zq, info = zobnn(bnn, z.study_bits)
            nets = {"float": flt, "bnn": bnn, "zobnn": zq}
            faults, boxes, clean = {}, {}, {}
            for name, m in nets.items():
                res, per = _campaign(run, m, arch, name, cfg, data, progress)
                faults[name] = res
                boxes[name] = per
                clean[name] = res["clean_accuracy"]
            at = {n: next((r for r in faults[n]["summary"] if r["ber"] == z.ber), None)
                  for n in nets}
            ratio = {}
            if all(at.values()):
                ratio = {"zobnn_over_float": at["zobnn"]["accuracy_mean"]
                         / at["float"]["accuracy_mean"],
                         "zobnn_over_bnn": at["zobnn"]["accuracy_mean"]
                         / at["bnn"]["accuracy_mean"]}
            hw = hardware(out / f"hw_{arch}", run.store, arch, zq,
                          z.study_bits, cfg, data, progress) if z.hardware \
                else None
            t, tr = _timing({"bnn": bnn, "conventional": conventional(zq, info), "zobnn": zq},
                            data.test.x, z.timing_repeats)
            labels = {"float": f"float twin ({arch}_float)", "bnn": f"BNN ({arch})",
                      "zobnn": f"ZOBNN {z.study_bits}-bit"}
            curves = {n: faults[n] for n in nets}
            if hw and hw["lowered"]:            # the integer network, every memory a target
                curves["zobnn_integer"] = hw["campaign"]
                labels["zobnn_integer"] = f"ZOBNN {z.study_bits}-bit integer hardware"
            plot_accuracy_vs_ber({labels[n]: c["summary"] for n, c in curves.items()},
                                 out / f"fig3_{arch}.png",
                                 title=f"{arch}: accuracy vs fault rate ({z.trials} maps/point)",
                                 clean={labels[n]: c["clean_accuracy"]
                                        for n, c in curves.items()})
            plot_boxes({labels[n]: boxes[n] for n in nets}, out / f"fig4_{arch}.png",
                       title=f"{arch}: accuracy distribution over {z.trials} fault maps")
            rows = [{"arch": arch, "network": n, "campaign": c["campaign"],
                     "stored_bits": c["bits"], **r}
                    for n, c in curves.items() for r in c["summary"]]
            export_csv(rows, out / f"faults_{arch}.csv")
            export_csv([{"arch": arch, **r} for r in t1], out / f"table1_{arch}.csv")
            result["archs"][arch] = {
                "table1": t1, "zobnn": info.to_json(), "faults": rows, "ratio_at_ber": ratio,
                "timing_s": t, "timing_ratio": {"conventional_over_bnn": tr["conventional"][0],
                                                "zobnn_over_bnn": tr["zobnn"][0]},
                "timing_ratio_ci": {"conventional_over_bnn": list(tr["conventional"][1:]),
                                    "zobnn_over_bnn": list(tr["zobnn"][1:])}}
            md += [f"## {arch}", "",
                   f"Table I: fault-free accuracy and stored bits ({len(data.test.y)} test "
                   f"images; delta at {z.study_bits} bits = {info.delta:.3e})", "",
                   _md_table(["network", "test accuracy (%)", "stored bits", "reduction (%)"],
                             [[r["network"], f"{100 * r['accuracy']:.2f}",
                               f"{r['stored_bits']:,}", f"{100 * r['reduction']:.1f}"]
                              for r in t1]), "",
                   f"Fig. 3: accuracy (%) vs fault rate, mean [95 % CI] over {z.trials} maps",
                   "", _md_table(["fault rate"] + [labels[n] for n in nets],
                                 [[f"{b:g}"] + [
                                     "{:.2f} [{:.2f}, {:.2f}]".format(
                                         *(100 * r[k] for k in ("accuracy_mean", "accuracy_low",
                                                                "accuracy_high")))
                                     for n in nets
                                     for r in faults[n]["summary"] if r["ber"] == b]
                                  for b in z.bers]), ""]
            if ratio:
                md += [f"Robustness at fault rate {z.ber:g}: ZOBNN / float twin "
                       f"{ratio['zobnn_over_float']:.2f}x, ZOBNN / BNN "
                       f"{ratio['zobnn_over_bnn']:.2f}x.", ""]
            if hw is not None:
                result["archs"][arch]["hardware"] = hw
                md += markdown(arch, hw, z.bers)
            md += [f"Table II: inference time of the test set (one thread), median of "
                   f"{z.timing_repeats} interleaved runs; time ratio to the BNN: median of the "
                   f"paired per-run ratios [95 % CI]", "",
                   _md_table(["network", "ms", "vs BNN"],
                             [[k, f"{1e3 * v:.2f}", "{:.3f}x [{:.3f}, {:.3f}]".format(*tr[k])]
                              for k, v in t.items()]), ""]
    finally:
        torch.set_num_threads(threads)
    atomic_write(out / "study.md", "\n".join(md) + "\n")
    write_json(out / "result.json", result)
    return ZobnnResult(result["config"], result["archs"], "\n".join(md))
