"""Bit-exactness: every layer's quantized output codes of the integer executor equal Brevitas'.

Each zoo model is trained briefly (real Brevitas QAT) and compared on the whole test set; the
CIFAR-form networks use a width multiplier of 1/8 and a subset of the digits32 test set.
"""
from __future__ import annotations

import pytest
import torch

from flow.config import RunConfig
from flow.executor import Executor
from flow.image import MemoryImage
from flow.lower import lower
from flow.session import load_data
from flow.train import train
from flow.zoo import ZooNet

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


def brevitas_codes(model: ZooNet, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Output codes (value / scale) of the input quantizer and of every named block."""
    outs: dict[str, object] = {}
    hooks = [model.input.register_forward_hook(lambda m, i, o: outs.__setitem__("input", o))]
    for mod in model.modules():
        if hasattr(mod, "name") and mod is not model:
            hooks.append(mod.register_forward_hook(
                lambda m, i, o, k=mod.name: outs.__setitem__(k, o)))
    with torch.no_grad():
        model.forward_quant(x)
    for h in hooks:
        h.remove()
    return {k: torch.round(o.value / o.scale) for k, o in outs.items()}


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
    net = lower(model)
    ex = Executor(net, MemoryImage.build(net), "cpu")
    x = ds.test.x
    ref = brevitas_codes(model, x)
    got = ex.run(x, trace=True)
    assert len(ref) >= len(net.layers()) + 1
    for name, codes in ref.items():
        assert name in got, f"executor has no node '{name}'"
        mismatch = int((codes.double() != got[name].double().cpu()).sum())
        assert mismatch == 0, f"{arch}: layer {name}: {mismatch} of {codes.numel()} codes differ"
    acc = float((got[net.output].argmax(1).cpu() == ds.test.y).float().mean())
    assert acc >= min_acc, f"{arch} did not train (accuracy {acc:.3f})"
    # Every layer's output is not constant (a dead layer would make the test vacuous).
    for name in net.layers():
        assert got[name].float().std() > 0, f"{arch}: layer {name} output is constant"
