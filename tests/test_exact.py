"""Bit-exactness of the front end on the zoo: every zoo network goes through the same path as a
user's (factory -> Brevitas -> QONNX -> integer network), and the integer executor reproduces

- qonnx's executor, tensor by tensor (every node that stands for an ONNX tensor), and
- the Brevitas forward: every quantizer's and weight layer's output codes, on the whole test set.

Each network is trained briefly (real Brevitas QAT); the CIFAR-form networks use a width
multiplier of 1/8 and a subset of the digits32 test set.
"""
from __future__ import annotations

import brevitas.nn as qnn
import pytest
import torch
from brevitas.nn.quant_layer import QuantWeightBiasInputOutputLayer
from torch import nn

from flow.core.config import RunConfig
from flow.core.executor import EXACT_F32, Executor
from flow.core.image import MemoryImage
from flow.nn.lower import lower_graph
from flow.nn.oracle import compare_brevitas, compare_qonnx
from flow.nn.qonnx_graph import export_module
from flow.nn.train import train
from flow.pipeline.session import load_data

# (arch, data, width, limit per split, bits, minimum test accuracy after 2 epochs).
# The CIFAR-form networks train on a 160-image subset only: bit-exactness does not depend on
# accuracy, but every layer's output must vary (checked below) for the comparison to mean much.
CASES = [
    ("mlp", "digits", 1.0, None, {"default_weight_bits": 4, "act_bits": 4}, 0.5),
    ("mlp", "digits", 1.0, None, {"weight_bits": {"fc1": 2, "fc2": 16, "fc3": 7}}, 0.5),
    ("cnn", "digits", 1.0, None, {"default_weight_bits": 3, "act_bits": 6}, 0.5),
    ("bmlp", "digits", 0.5, None, {}, 0.5),
    ("alexnet", "digits32", 0.125, 160, {"default_weight_bits": 5, "act_bits": 8}, 0.0),
    ("vgg11", "digits32", 0.125, 160, {"default_weight_bits": 4, "act_bits": 8}, 0.0),
    ("resnet18", "digits32", 0.125, 160, {"default_weight_bits": 4, "act_bits": 8}, 0.0),
]
LEAVES = (QuantWeightBiasInputOutputLayer, qnn.QuantReLU, qnn.QuantIdentity, nn.MaxPool2d,
          nn.Flatten)


def module_codes(model: nn.Module, net, x: torch.Tensor) -> dict[str, tuple[torch.Tensor, str]]:
    """Output codes of every quantizer / weight layer / pool the integer network names by module
    path: (Brevitas value x 2**frac of the node, node name). Accumulators that can reach 2**24
    are left out: Brevitas computes them in float32, which is not exact there (the executor is)."""
    nodes = {n.attrs.get("module"): n for n in net.nodes
             if n.attrs.get("module") and max(abs(n.lo), abs(n.hi)) < EXACT_F32}
    outs: dict[str, torch.Tensor] = {}
    hooks = []
    for name, mod in model.named_modules():
        if name in nodes and isinstance(mod, LEAVES):
            hooks.append(mod.register_forward_hook(
                lambda m, i, o, k=name: outs.__setitem__(k, o.value if hasattr(o, "value") else o)))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return {k: (v.double() * 2.0 ** nodes[k].frac, nodes[k].name) for k, v in outs.items()}


@pytest.mark.slow
@pytest.mark.parametrize("arch,data,width,limit,bits,min_acc", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_every_layer_bit_exact(arch, data, width, limit, bits, min_acc):
    cfg = RunConfig.model_validate({
        "seed": 1, "data": {"name": data, "limit": limit},
        "model": {"arch": arch, "width": width, **bits},
        "train": {"epochs": 2, "lr": 0.01}})
    ds = load_data(cfg)
    model, _ = train(cfg, ds, torch.device("cpu"), progress=False)
    graph = export_module(model, ds.input_shape)
    net = lower_graph(graph, arch)
    ex = Executor(net, MemoryImage.build(net), "cpu")
    x = ds.test.x
    # qonnx's executor, tensor by tensor
    q = compare_qonnx(ex, graph, x[:64])
    assert q["exact"], f"{arch}: differs from qonnx's executor at {q['differing_nodes']}"
    assert q["nodes_compared"] >= len(net.layers()) + 1
    # the Brevitas forward: class scores and every named module's output
    assert compare_brevitas(ex, model, x)["exact"]
    got = ex.run(x, trace=True)
    ref = module_codes(model, net, x)
    assert len(ref) >= len(net.layers()) + 1
    for module, (codes, node) in ref.items():
        mismatch = int((codes != got[node].double().reshape(codes.shape)).sum())
        assert mismatch == 0, f"{arch}: module {module} ({node}): {mismatch} codes differ"
    acc = float((got[net.output].argmax(1).cpu() == ds.test.y).float().mean())
    assert acc >= min_acc, f"{arch} did not train (accuracy {acc:.3f})"
    # Every layer's output is not constant (a dead layer would make the test vacuous).
    for name in net.layers():
        assert got[name].float().std() > 0, f"{arch}: layer {name} output is constant"
