"""``hetq bench fi``: fault-injection throughput of hetq, PyTorchFI 0.6.0 and MRFI 2.1.0.

For each network of ``bench.sizes`` (the digits CNN and MLP, about 10k, 100k and 1M weights by
default), trained ``bench.epochs`` epochs (seeded) and lowered, at each BER of ``bench.bers``,
one trial of each tool classifies the test set (or its first ``bench.images``) under a new
fault map:

- **hetq**: sample an SEU map of the weight-memory image, apply it in place, run the integer
  executor, undo;
- **PyTorchFI**: draw the fault count for the BER over the same stored bits, locations from its
  own sampler, ``declare_weight_fi`` with a fixed-point bit-flip function, run the corrupted
  float twin (:mod:`flow.pipeline.bench_peers`);
- **MRFI int**: MRFI's weight injection, BER-rate selector, its symmetric quantization at the
  layer's bit-width and power-of-two range, its integer random bit flip;
- **MRFI float32**: the same selector at 32 bits per weight, its float32 bit flip.

Each tool's clean inference is timed too (hetq's executor, the float twin PyTorchFI runs, MRFI's
golden run), so that injection cost (trial minus the tool's own clean inference) and inference
speed are reported apart. hetq's campaign trial is timed as well: the same maps through a
campaign's worker (:class:`~flow.reliability.parallel.FaultWorker`), which remembers the test
set's clean activations and recomputes from the first faulty layer; it is reported as a multiple
of hetq's clean inference, and so is the batched campaign trial: ``bench.batch_maps`` maps
classified in one forward pass (:meth:`FaultWorker.trials`; a multilayer perceptron's maps one
at a time, on the compiled dense chain of :mod:`flow.core.chain`), its time per map. Every call is
timed in turn, trial by trial, ``bench.repeats`` x ``bench.trials`` times, the batched call once
per repeat, on one thread, after one untimed call of the campaign forms on maps of their own
(numba loads a compiled kernel on its first call in a process); the objects alive before the
timing are left out of the garbage collection before each call
(:func:`~flow.pipeline.bench_peers.frozen_heap`). Figures are medians.
"""
from __future__ import annotations

import logging
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from flow.core.config import BenchSize, RunConfig
from flow.core.errors import ConfigError
from flow.core.executor import Executor
from flow.core.image import WEIGHT_KINDS, MemoryImage
from flow.core.io import write_json
from flow.pipeline.bench_clean import train_size
from flow.pipeline.bench_peers import (
    FloatTwin,
    frozen_heap,
    mrfi_model,
    pytorchfi_trial,
    seed_peers,
    timed,
)
from flow.pipeline.runner import StepContext, StepResult
from flow.reliability.faults import Injector, SeuSampler, trial_rng
from flow.reliability.parallel import FaultWorker

TOOLS = ("hetq", "pytorchfi", "mrfi_int", "mrfi_float32")
CLEAN = ("hetq", "float_twin", "mrfi_int", "mrfi_float32")
NAMES = {"hetq": "hetq", "pytorchfi": "PyTorchFI", "mrfi_int": "MRFI int",
         "mrfi_float32": "MRFI f32", "float_twin": "float twin"}


def _require_peers() -> None:
    """One line naming the missing peer and how to install it."""
    for mod, how in (("pytorchfi", "pip install pytorchfi==0.6.0 (the bench extra)"),
                     ("mrfi", "pip install --no-deps mrfi==2.1.0 (make setup does it)")):
        try:
            __import__(mod)
        except ImportError as e:
            raise ConfigError(f"bench fi: {mod} is not installed ({e.msg}); {how}") from None


def _network(cfg: RunConfig, size: BenchSize, images: int | None) -> dict:
    """Every timed call of one network: trials by BER and trial, clean inferences."""
    net, data = train_size(cfg, size)
    x = data.test.x if images is None else data.test.x[:images]
    y = data.test.y[:len(x)]
    image = MemoryImage.build(net)
    ex = Executor(net, image, "cpu")
    inj, sampler = Injector(image, ex), SeuSampler(image)
    xq = ex.quantize_input(x)
    twin = FloatTwin(net).eval()
    pfi = pytorchfi_trial(net, twin, len(x), list(x.shape[1:]))
    bits = sampler.total_bits
    seed = cfg.seed if cfg.campaign.seed is None else cfg.campaign.seed
    own = MemoryImage.build(net)                  # the campaign worker's own image
    worker = FaultWorker(Executor(net, own, "cpu"), own, x, y)
    return {"net": net, "x": x, "ex": ex, "twin": twin, "pfi": pfi, "bits": bits,
            "worker": worker,
            "sampler": sampler, "inj": inj, "xq": xq, "seed": seed,
            "weights": int(sum(p.codes.size for p in net.params.values() if p.kind == "weight"))}


def _time_ber(n: dict, ber: float, repeats: int, trials: int, batch: int) -> dict:
    """Median seconds of every tool's trial and clean inference at ``ber``, timed in turn, and
    of hetq's batched campaign trial per map (``batch`` maps a pass; 1: not timed)."""
    x, ex, xq, twin = n["x"], n["ex"], n["xq"], n["twin"]
    mrfi_i = mrfi_model(n["net"], twin, ber, integer=True)
    mrfi_f = mrfi_model(n["net"], twin, ber, integer=False)
    flips: list[int] = []

    def hetq(t: int) -> None:
        fmap = n["sampler"].sample(ber, trial_rng(n["seed"], ber, t))
        flips.append(len(fmap))
        with n["inj"].injected(fmap):
            ex.predict(xq, quantized=True)

    def golden(m) -> Callable[[int], None]:
        def run(t: int) -> None:
            with m.golden_run():
                m(x).argmax(1)
        return run

    calls = {
        ("trial", "hetq"): hetq,
        ("campaign", "hetq"): lambda t: n["worker"].trial(n["seed"], ber, t, WEIGHT_KINDS,
                                                          None, None, "flip"),
        ("trial", "pytorchfi"): lambda t: n["pfi"](ber, n["bits"])(x).argmax(1),
        ("trial", "mrfi_int"): lambda t: mrfi_i(x).argmax(1),
        ("trial", "mrfi_float32"): lambda t: mrfi_f(x).argmax(1),
        ("clean", "hetq"): lambda t: ex.predict(xq, quantized=True),
        ("clean", "float_twin"): lambda t: twin(x).argmax(1),
        ("clean", "mrfi_int"): golden(mrfi_i),
        ("clean", "mrfi_float32"): golden(mrfi_f),
    }
    times: dict[tuple[str, str], list[float]] = {k: [] for k in calls}
    batched: list[float] = []
    with torch.no_grad(), frozen_heap():
        # hetq's campaign forms once untimed, on maps of their own (trial indices after every
        # timed one): numba loads a kernel's compiled code on its first call in a process, and
        # a batched call timed only once per repeat would count it (digits mlp x4 at 1e-5 read
        # 0.04x in one run)
        spare = repeats * trials + repeats * max(batch, 1)
        n["worker"].trials([(n["seed"], ber, spare + j, WEIGHT_KINDS, None, None, "flip")
                            for j in range(max(batch, 1))])
        for rep in range(repeats):
            for t in range(trials):        # in turn: a slow spell of the machine hits all alike
                for k, fn in calls.items():
                    times[k].append(timed(fn, t))
            if batch > 1:                  # maps of their own: trial indices after the others
                first = repeats * trials + rep * batch
                tasks = [(n["seed"], ber, first + j, WEIGHT_KINDS, None, None, "flip")
                         for j in range(batch)]
                batched.append(timed(n["worker"].trials, tasks) / batch)
    med = {k: statistics.median(v) for k, v in times.items()}
    per_map = statistics.median(batched) if batched else None
    trial = {tool: med[("trial", tool)] for tool in TOOLS}
    clean = {tool: med[("clean", tool)] for tool in CLEAN}
    own = {"hetq": clean["hetq"], "pytorchfi": clean["float_twin"],
           "mrfi_int": clean["mrfi_int"], "mrfi_float32": clean["mrfi_float32"]}
    return {"ber": ber,
            "flips": {"hetq": sum(flips) / len(flips), "pytorchfi": ber * n["bits"],
                      "mrfi_int": ber * n["bits"], "mrfi_float32": ber * 32 * n["weights"]},
            "trial_seconds": trial, "clean_seconds": clean,
            "injection_seconds": {k: trial[k] - own[k] for k in TOOLS},
            "hetq_speedup": {k: trial[k] / trial["hetq"] for k in TOOLS if k != "hetq"},
            "campaign_seconds": med[("campaign", "hetq")],
            "campaign_vs_clean": clean["hetq"] / med[("campaign", "hetq")],
            "batched_seconds": per_map,
            "batched_vs_clean": clean["hetq"] / per_map if per_map else None}


@dataclass
class BenchResult(StepResult):
    """Every figure of the fault-injection benchmark, by network and BER (seconds, ratios)."""

    data: str
    test_images: int
    repeats: int
    trials_per_repeat: int
    batch_maps: int
    threads: int
    networks: list[dict]

    def summary(self) -> str:
        return bench_text(self.to_json())


def run(ctx: StepContext) -> BenchResult:
    """The benchmark over ``bench.sizes`` x ``bench.bers``; ``bench/result.json``."""
    _require_peers()
    cfg, b = ctx.cfg, ctx.cfg.bench
    seed_peers(cfg.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    logging.disable(logging.WARNING)       # MRFI warns on rates above 0.1 (float32 at 1e-2)
    nets, images = [], 0
    try:
        bar = tqdm(total=len(b.sizes) * len(b.bers), desc="bench fi", unit="point",
                   disable=not ctx.progress or None)
        for size in b.sizes:
            n = _network(cfg, size, b.images)
            images = len(n["x"])
            rows = []
            for ber in b.bers:
                rows.append(_time_ber(n, ber, b.repeats, b.trials, b.batch_maps))
                bar.update(1)
            nets.append({"network": f"{size.arch} x{size.width:g}", "arch": size.arch,
                         "width": size.width, "weights": n["weights"],
                         "weight_bits": n["bits"], "bers": rows,
                         "batched_one_at_a_time": n["worker"].chained})
        bar.close()
    finally:
        logging.disable(logging.NOTSET)
        torch.set_num_threads(threads)
    res = BenchResult(data=cfg.data.name, test_images=images, repeats=b.repeats,
                      trials_per_repeat=b.trials, batch_maps=b.batch_maps, threads=1,
                      networks=nets)
    write_json(ctx.out / "result.json", res.to_json())
    return res


def bench_text(res: dict) -> str:
    """Human-readable tables of :func:`run`'s result: one per network."""
    lines = [f"fault-injection trials on {res['data']} ({res['test_images']} test images each), "
             f"median of {res['repeats']} repeats x {res['trials_per_repeat']} trials, "
             f"{res['threads']} thread; ms per trial (injection = trial - the tool's clean "
             f"inference), hetq's speed-up"]
    for n in res["networks"]:
        c = {k: statistics.median(r["clean_seconds"][k] for r in n["bers"]) for k in CLEAN}
        clean = ", ".join(f"{NAMES[k]} {1e3 * c[k]:.2f}" for k in CLEAN)
        lines.append(f"\n{n['network']}: {n['weights']:,} weights, {n['weight_bits']:,} stored "
                     f"bits; clean ms (median over BERs): {clean}")
        lines.append(f"{'BER':>7} {'flips':>8} " + " ".join(f"{NAMES[k]:>17}" for k in TOOLS)
                     + "  " + " ".join(f"{'vs ' + NAMES[k]:>12}" for k in TOOLS[1:]))
        for r in n["bers"]:
            ms, inj = r["trial_seconds"], r["injection_seconds"]
            cells = [f"{1e3 * ms[k]:>8.2f} ({1e3 * inj[k]:>6.2f})" for k in TOOLS]
            lines.append(f"{r['ber']:>7.0e} {r['flips']['hetq']:>8.1f} " + " ".join(
                f"{c:>17}" for c in cells) + "  " + " ".join(
                f"{r['hetq_speedup'][k]:>11.2f}x" for k in TOOLS[1:]))
        lines.append("  hetq's campaign trial (clean activations remembered), trials per second "
                     "as a multiple of its clean inferences: " + ", ".join(
                         f"{r['ber']:.0e} {r['campaign_vs_clean']:.2f}x" for r in n["bers"]))
        if res.get("batch_maps", 1) > 1:
            how = ("one at a time, compiled dense chain" if n.get("batched_one_at_a_time")
                   else "per forward pass")
            lines.append(f"  the same, {res['batch_maps']} maps a call ({how}): " + ", ".join(
                f"{r['ber']:.0e} {r['batched_vs_clean']:.2f}x" for r in n["bers"]))
    return "\n".join(lines)
