"""``hetq bench clean``: clean inference of the integer executor against the float twin, by size.

For each network of ``bench.sizes`` (zoo architecture and width; the digits CNN and MLP
from about 10k to 1M weights by default), trained ``bench.epochs`` epochs (seeded), lowered
and put in its memory image: the integer executor (exact, from the image) and the float twin
(plain ``Conv2d``/``Linear`` holding the dequantized weights, ReLU, ``MaxPool2d``) classify the
test set in turn, ``bench.clean_repeats`` times each; figures are medians. The result
names the layers whose worst-case accumulator reaches 2**24 and whether their current weights
split the fan-in (:mod:`flow.core.executor`). One thread, as a campaign worker runs.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from flow.core.config import BenchSize, RunConfig
from flow.core.executor import Executor
from flow.core.image import MemoryImage
from flow.core.io import write_json
from flow.core.ir import IntNetwork
from flow.nn.data import Dataset
from flow.nn.lower import lower_graph
from flow.nn.qonnx_graph import export_module
from flow.nn.train import train
from flow.pipeline.bench_peers import FloatTwin, timed
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

    def summary(self) -> str:
        lines = [f"clean inference on {self.data} ({self.test_images} test images), median of "
                 f"{self.repeats} runs, {self.threads} thread(s)",
                 f"{'network':<12} {'weights':>9} {'executor ms':>12} {'float twin ms':>14} "
                 f"{'ratio':>6}  layers past 2**24"]
        for r in self.rows:
            wide = ", ".join(f"{k} ({v})" for k, v in r["wide_layers"].items()) or "-"
            lines.append(f"{r['network']:<12} {r['weights']:>9} {1e3 * r['executor_s']:>12.2f} "
                         f"{1e3 * r['float_twin_s']:>14.2f} {r['ratio']:>6.2f}  {wide}")
        return "\n".join(lines)


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
            with torch.no_grad():
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
                "wide_layers": {n: ("split" if ex.split(n) else "one kernel")
                                for n in ex.wide_layers()}})
    finally:
        torch.set_num_threads(threads)
    res = CleanBenchResult(cfg.data.name, len(x), b.clean_repeats, 1, rows)
    write_json(ctx.out / "result.json", res.to_json())
    return res
