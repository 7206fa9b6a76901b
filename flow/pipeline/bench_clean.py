"""``hetq bench clean``: clean inference of the integer executor against the float twin, by size.

For each network of ``bench.sizes`` (zoo architecture and width; the digits CNN and MLP
from about 10k to 1M weights by default), trained ``bench.epochs`` epochs (seeded), lowered
and put in its memory image: the integer executor (exact, from the image) and the float twin
(plain ``Conv2d``/``Linear`` holding the dequantized weights, ReLU, ``MaxPool2d``) classify the
test set in turn, ``bench.clean_repeats`` times each; figures are medians. The result
names each conv and dense layer's kernel: ``int8`` (:mod:`flow.core.intkernels`), ``float32``,
``float32 split`` (a worst-case accumulator past 2**24 whose current weights split the fan-in)
or ``float64`` (:mod:`flow.core.executor`). One thread, as a campaign worker runs.

A second table times one layer alone on random codes, float32 kernel against int8 kernel, over a
grid of dense (fan-in x outputs) and 3x3 conv (channels x outputs, on the data's image size)
shapes with the test set's batch: the evidence for the size rule that decides which layers the
executor runs on int8 (:func:`flow.core.intkernels.gains`).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from flow.core.config import BenchSize, RunConfig
from flow.core.executor import Executor
from flow.core.image import MemoryImage
from flow.core.intkernels import (
    Int8Kernel,
    Int8Layer,
    Int8Weights,
    gains,
    int8_matmul_exact,
)
from flow.core.io import write_json
from flow.core.ir import IntNetwork
from flow.nn.data import Dataset
from flow.nn.lower import lower_graph
from flow.nn.qonnx_graph import export_module
from flow.nn.train import train
from flow.pipeline.bench_peers import FloatTwin, frozen_heap, timed
from flow.pipeline.runner import StepContext, StepResult
from flow.pipeline.session import load_data


def train_size(cfg: RunConfig, size: BenchSize) -> tuple[IntNetwork, Dataset]:
    """The zoo network ``size`` trained ``bench.epochs`` epochs on the run's data (seeded, 8-bit
    weights and activations unless the config says otherwise), lowered; and the data."""
    obj = cfg.model_dump(mode="json")
    obj["model"].update(arch=size.arch, width=size.width, weight_bits={}, protected=[])
    obj["train"]["epochs"] = cfg.bench.epochs
    c = RunConfig.model_validate(obj)
    data = load_data(c)
    model, _ = train(c, data, torch.device("cpu"), progress=False)
    return lower_graph(export_module(model, data.input_shape), size.arch), data


@dataclass
class CleanBenchResult(StepResult):
    """Clean inference seconds of the executor and the float twin per network."""

    data: str
    test_images: int
    repeats: int
    threads: int
    rows: list[dict]
    grid: list[dict]

    def summary(self) -> str:
        lines = [f"clean inference on {self.data} ({self.test_images} test images), median of "
                 f"{self.repeats} runs, {self.threads} thread(s)",
                 f"{'network':<12} {'weights':>9} {'executor ms':>12} {'float twin ms':>14} "
                 f"{'ratio':>6}  kernels"]
        for r in self.rows:
            kernels = ", ".join(f"{k} {v}" for k, v in r["kernels"].items())
            lines.append(f"{r['network']:<12} {r['weights']:>9} {1e3 * r['executor_s']:>12.2f} "
                         f"{1e3 * r['float_twin_s']:>14.2f} {r['ratio']:>6.2f}  {kernels}")
        if self.grid:
            lines += ["", "one layer, float32 kernel time / int8 kernel time (* = the executor "
                      "picks int8)"]
            for op in ("dense", "conv"):
                cells = [g for g in self.grid if g["op"] == op]
                outs = sorted({g["outputs"] for g in cells})
                lines.append(f"{op + ' fan-in':<13}" + "".join(f"{'O=' + str(o):>9}"
                                                              for o in outs))
                for f in sorted({g["fan_in"] for g in cells}):
                    row = {g["outputs"]: g for g in cells if g["fan_in"] == f}
                    lines.append(f"{f:<13}" + "".join(
                        f"{row[o]['speedup']:>8.2f}{'*' if row[o]['int8'] else ' '}"
                        for o in outs))
        return "\n".join(lines)


def kernel_grid(batch: int, hw: tuple[int, int], repeats: int, seed: int) -> list[dict]:
    """Float32 / int8 kernel time of one dense or 3x3 conv layer (random 8-bit codes, unsigned
    inputs, a bias) over a grid of shapes, medians of ``repeats`` runs in turn; [] where this
    CPU has no exact int8 kernel."""
    if not int8_matmul_exact():
        return []
    gen = torch.Generator().manual_seed(seed)
    rows = []
    shapes = ([("dense", k, o) for k in (32, 64, 128, 512, 2048) for o in (16, 64, 256, 1024)]
              + [("conv", c, o) for c in (3, 16, 32, 64, 128) for o in (16, 32, 64, 128)])
    for op, n_in, n_out in shapes:
        xs = (batch, n_in, *hw) if op == "conv" else (batch, n_in)
        ws = (n_out, n_in, 3, 3) if op == "conv" else (n_out, n_in)
        x = torch.randint(0, 256, xs, generator=gen).float()
        w = torch.randint(-127, 128, ws, generator=gen).float()
        b = torch.randint(-1000, 1000, (n_out,), generator=gen).float()
        kern = Int8Kernel(Int8Layer(op, 128, True, *((3, 1, 1) if op == "conv" else ())))
        w8 = Int8Weights(w)
        flt = ((lambda: torch.nn.functional.conv2d(x, w, b, padding=1)) if op == "conv"
               else (lambda: torch.nn.functional.linear(x, w, b)))
        t_f, t_i = [], []
        with torch.no_grad(), frozen_heap():
            flt()
            kern.run(x, w8, b, torch.float32)
            for _ in range(repeats):
                t_f.append(timed(flt))
                t_i.append(timed(lambda: kern.run(x, w8, b, torch.float32)))
        fan_in = n_in * (9 if op == "conv" else 1)
        rows.append({"op": op, "fan_in": fan_in, "outputs": n_out,
                     "float32_s": statistics.median(t_f), "int8_s": statistics.median(t_i),
                     "speedup": statistics.median(t_f) / statistics.median(t_i),
                     "int8": gains(op, fan_in, n_out)})
    return rows


def run(ctx: StepContext) -> CleanBenchResult:
    """Time every network of ``bench.sizes``; ``bench_clean/result.json``."""
    cfg = ctx.cfg
    b = cfg.bench
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = []
        for size in tqdm(b.sizes, desc="bench clean", unit="network",
                         disable=not ctx.progress or None):
            net, data = train_size(cfg, size)
            ex = Executor(net, MemoryImage.build(net), "cpu")
            twin = FloatTwin(net).eval()
            x = data.test.x
            xq = ex.quantize_input(x)
            t_ex, t_twin = [], []
            with torch.no_grad(), frozen_heap():
                ex.run(xq, quantized=True)
                twin(x)
                for _ in range(b.clean_repeats):          # in turn: a slow spell hits both
                    t_ex.append(timed(lambda: ex.run(xq, quantized=True)))
                    t_twin.append(timed(lambda: twin(x)))
            te, tt = statistics.median(t_ex), statistics.median(t_twin)
            rows.append({
                "network": f"{size.arch} x{size.width:g}", "arch": size.arch,
                "width": size.width,
                "weights": int(sum(p.codes.size for p in net.params.values()
                                   if p.kind == "weight")),
                "executor_s": te, "float_twin_s": tt, "ratio": te / tt,
                "kernels": {n.name: ex.kernel(n.name) for n in net.nodes
                            if n.op in ("conv", "dense")}})
        grid = kernel_grid(len(x), tuple(data.input_shape[1:]), b.clean_repeats, cfg.seed)
    finally:
        torch.set_num_threads(threads)
    res = CleanBenchResult(cfg.data.name, len(x), b.clean_repeats, 1, rows, grid)
    write_json(ctx.out / "result.json", res.to_json())
    return res
