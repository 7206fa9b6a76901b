"""``hetq bench fi``: fault-injection throughput, measured side by side in one run.

On the digits CNN (trained here for a few epochs, seeded) and its test set:

(a) campaign throughput of the integer executor (sample an SEU map, apply it in place, classify
    the whole test set, undo) as a ratio against clean inference of the same executor;
(b) the same throughput against PyTorchFI 0.6.0 weight injection (``declare_weight_fi``) on the
    float twin of the network (plain Conv2d/Linear holding the dequantized weights), with the same
    corrupted weights per trial (PyTorchFI only hooks leaf modules, so it cannot see the layers
    inside Brevitas modules). PyTorchFI's fault lists are prepared outside its timed region;
    our sampling is inside ours;
(c) clean inference time of the integer executor against the Brevitas model's forward.

Every time is the median over ``repeats`` x ``trials`` measurements, taken in turn.
"""
from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from flow.core.executor import Executor
from flow.core.image import MemoryImage, decode
from flow.core.io import write_json
from flow.core.ir import IntNetwork
from flow.nn.train import load_checkpoint, logits, model_from_config
from flow.pipeline.runner import StepContext, StepResult
from flow.pipeline.session import open_session
from flow.reliability.faults import FaultMap, Injector, SeuSampler, trial_rng

BERS = (1e-5, 1e-4, 1e-3, 1e-2)


class _Twin(nn.Module):
    """Float twin of a fixed-point integer network: dequantized weights, ReLU, max-pool."""

    def __init__(self, net: IntNetwork) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        self.param_layers: list[str] = []
        for node in net.nodes[1:]:
            a = node.attrs
            if node.op in ("conv", "dense"):
                p = net.params[a["weight"]]
                w = torch.tensor(p.codes * 2.0 ** -p.fmt.frac, dtype=torch.float32)
                if node.op == "conv":
                    m = nn.Conv2d(w.shape[1], w.shape[0], a["k"], stride=a["stride"],
                                  padding=a["pad"], bias=a["bias"] is not None)
                else:
                    m = nn.Linear(w.shape[1], w.shape[0], bias=a["bias"] is not None)
                m.weight.data.copy_(w)
                if a["bias"]:
                    b = net.params[a["bias"]]
                    m.bias.data.copy_(torch.tensor(b.codes * 2.0 ** -b.fmt.frac))
                mods.append(m)
                self.param_layers.append(p.name)
            elif node.op == "requant":
                mods.append(nn.ReLU())
            elif node.op == "maxpool":
                mods.append(nn.MaxPool2d(a["k"]))
            elif node.op == "flatten":
                mods.append(nn.Flatten())
            else:
                raise ValueError(f"float twin: op {node.op} not supported")
        self.seq = nn.Sequential(*mods)

    def forward(self, x):
        return self.seq(x)


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _timed(fn, *args) -> float:
    """Seconds one call takes, with the garbage collector off during the call (as ``timeit``).

    Without this, collections triggered by PyTorchFI's per-trial deep copies land in whichever
    call comes next.
    """
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        fn(*args)
        return time.perf_counter() - t0
    finally:
        gc.enable()


def _pfi_args(fmap: FaultMap, image: MemoryImage, twin: _Twin) -> dict:
    """PyTorchFI declare_weight_fi arguments that set the same corrupted weights as ``fmap``."""
    layer_num, k, d1, d2, d3, value = [], [], [], [], [], []
    for name in dict.fromkeys(fmap.memory.tolist()):
        mem = image.memories[name]
        sel = fmap.memory == name
        words = mem.words.copy()
        np.bitwise_xor.at(words, fmap.word[sel], np.left_shift(1, fmap.bit[sel]))
        for wi in np.unique(fmap.word[sel]):
            idx = np.unravel_index(int(wi), mem.shape)
            code = int(decode(words[wi:wi + 1], mem.fmt, mem.protected)[0])
            layer_num.append(twin.param_layers.index(name))
            k.append(int(idx[0]))
            d1.append(int(idx[1]))
            d2.append(int(idx[2]) if len(idx) > 2 else None)
            d3.append(int(idx[3]) if len(idx) > 3 else None)
            value.append(code * 2.0 ** -mem.fmt.frac)
    return {"layer_num": layer_num, "k": k, "dim1": d1, "dim2": d2, "dim3": d3, "value": value}


@dataclass
class BenchResult(StepResult):
    """Every figure of the fault-injection benchmark (seconds, rates, ratios)."""

    model: str
    data: str
    test_images: int
    repeats: int
    trials_per_repeat: int
    threads: int
    weight_bits: int
    clean_inference_seconds: dict
    executor_vs_brevitas: float
    bers: list[dict]

    def summary(self) -> str:
        return bench_text(self.to_json())


def run(ctx: StepContext) -> BenchResult:
    """The benchmark on the run's trained network; ``bench/result.json``."""
    from pytorchfi.core import fault_injection

    cfg = ctx.cfg
    repeats, trials = cfg.bench.repeats, cfg.bench.trials
    seed = cfg.seed if cfg.campaign.seed is None else cfg.campaign.seed
    s = open_session(ctx.run.path, "cpu")
    data, net = s.data, s.net
    dev = torch.device("cpu")
    model = model_from_config(cfg, data.input_shape, data.num_classes)
    model.load_state_dict(load_checkpoint(ctx.run / "train" / "model.pt")["state_dict"])
    model.eval()
    image = MemoryImage.build(net)
    ex = Executor(net, image, dev)
    inj = Injector(image, ex)
    sampler = SeuSampler(image)
    x = data.test.x
    twin = _Twin(net).eval()
    layer_types = [nn.Conv2d, nn.Linear]
    pfi = fault_injection(twin, len(x), input_shape=list(x.shape[1:]), layer_types=layer_types)

    xq = ex.quantize_input(x)
    with torch.no_grad():
        clean_brevitas = _median_time(lambda: logits(model, x).argmax(1), repeats)
        clean_twin = _median_time(lambda: twin(x).argmax(1), repeats)
    clean_exec = _median_time(lambda: ex.predict(xq, quantized=True), repeats)
    rows = []
    for ber in BERS:
        maps = [sampler.sample(ber, trial_rng(seed, ber, t)) for t in range(trials)]
        pfi_args = [_pfi_args(m, image, twin) for m in maps]

        def clean(t: int) -> None:
            ex.predict(xq, quantized=True)

        def ours(t: int) -> None:
            fmap = sampler.sample(ber, trial_rng(seed, ber, t))
            with inj.injected(fmap):
                ex.predict(xq, quantized=True)

        def theirs(t: int) -> None:
            args = pfi_args[t]
            corrupted = pfi.declare_weight_fi(**args) if args["layer_num"] else twin
            with torch.no_grad():
                corrupted(x).argmax(1)

        # Clean inference, our trial and PyTorchFI's trial are timed in turn, trial by trial,
        # so a slow spell of the machine hits all three alike; figures are medians.
        t_clean, t_ours, t_pfi = [], [], []
        for _ in range(repeats):
            for t in range(trials):
                for fn, acc in ((clean, t_clean), (ours, t_ours), (theirs, t_pfi)):
                    acc.append(_timed(fn, t))
        med = statistics.median
        rows.append({"ber": ber, "mean_faults": float(np.mean([len(m) for m in maps])),
                     "clean_seconds": med(t_clean), "trial_seconds": med(t_ours),
                     "trials_per_second": 1 / med(t_ours),
                     "pytorchfi_trial_seconds": med(t_pfi),
                     "pytorchfi_trials_per_second": 1 / med(t_pfi),
                     "vs_clean_inference": med(t_clean) / med(t_ours),
                     "vs_pytorchfi": med(t_pfi) / med(t_ours)})
    res = BenchResult(
        model=net.arch, data=cfg.data.name, test_images=len(x), repeats=repeats,
        trials_per_repeat=trials, threads=torch.get_num_threads(),
        weight_bits=image.size_bits(("weight",))["total"],
        clean_inference_seconds={"executor": clean_exec, "brevitas": clean_brevitas,
                                 "float_twin": clean_twin},
        executor_vs_brevitas=clean_brevitas / clean_exec, bers=rows)
    write_json(ctx.out / "result.json", res.to_json())
    return res


def bench_text(res: dict) -> str:
    """Human-readable table of :func:`bench_fi` results."""
    c = res["clean_inference_seconds"]
    lines = [f"{res['model']} on {res['data']}, {res['test_images']} test images, "
             f"{res['weight_bits']} weight bits, "
             f"median of {res['repeats']} repeats x {res['trials_per_repeat']} trials, "
             f"{res['threads']} threads",
             f"clean inference: executor {1e3 * c['executor']:.2f} ms, Brevitas "
             f"{1e3 * c['brevitas']:.2f} ms (executor {res['executor_vs_brevitas']:.2f}x faster), "
             f"float twin {1e3 * c['float_twin']:.2f} ms",
             f"{'BER':>8} {'flips':>7} {'trials/s':>9} {'PyTorchFI/s':>11} "
             f"{'vs clean':>9} {'vs PyTorchFI':>12}"]
    for r in res["bers"]:
        lines.append(f"{r['ber']:>8.0e} {r['mean_faults']:>7.1f} {r['trials_per_second']:>9.1f} "
                     f"{r['pytorchfi_trials_per_second']:>11.1f} {r['vs_clean_inference']:>8.2f}x "
                     f"{r['vs_pytorchfi']:>11.2f}x")
    return "\n".join(lines)
