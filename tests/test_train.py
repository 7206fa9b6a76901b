"""Training artifacts: weights-only checkpoints, the first plan, seeded reproducibility."""
from __future__ import annotations

import json

import pytest
import torch

from flow.config import RunConfig
from flow.plan import load_plan
from flow.rundir import sha256_file
from flow.session import load_data
from flow.train import train
from flow.zoo import ARCHS, build_model
from flow.errors import ConfigError


def test_checkpoint_loads_weights_only_and_plan_matches(mlp_run):
    ckpt = torch.load(mlp_run / "train" / "model.pt", weights_only=True)
    assert set(ckpt) == {"state_dict", "meta"}
    assert ckpt["meta"]["arch"] == "mlp"
    plan = load_plan(mlp_run / "plan.json", sha256_file(mlp_run / "train" / "model.pt"))
    assert plan["source"] == "config"
    assert list(plan["layers"]) == ["fc1", "fc2", "fc3"]
    assert plan["layers"]["fc2"]["protected"] is True
    assert plan["layers"]["fc1"]["weight_bits"] == 4
    manifest = json.loads((mlp_run / "manifest.json").read_text())
    assert manifest["steps"]["train"]["status"] == "done"
    assert manifest["steps"]["train"]["test_accuracy_brevitas"] == pytest.approx(
        manifest["steps"]["train"]["test_accuracy_integer"])
    assert (mlp_run / "train" / "history.json").is_file()
    assert not (mlp_run / "train.partial").exists()


def test_same_seed_same_weights():
    cfg = RunConfig.model_validate({"seed": 5, "model": {"arch": "mlp", "width": 0.25},
                                    "train": {"epochs": 1}})
    data = load_data(cfg)
    a, ha = train(cfg, data, torch.device("cpu"), progress=False)
    b, hb = train(cfg, data, torch.device("cpu"), progress=False)
    assert ha == hb
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_zoo_builds_with_per_layer_bits(arch):
    shape = (3, 32, 32) if arch in ("alexnet", "vgg11", "resnet18") else (1, 8, 8)
    m = build_model(arch, input_shape=shape, num_classes=10, width=0.125)
    names = m.layer_names()
    assert len(names) == len(set(names))
    if not ARCHS[arch].binary:
        first = names[0]
        m2 = build_model(arch, input_shape=shape, num_classes=10, width=0.125,
                         weight_bits={first: 3})
        assert m2.weight_layers()[0].wbits == 3
    assert m(torch.rand(2, *shape)).shape == (2, 10)


def test_paper_layer_counts():
    """AlexNet 8 weight layers and VGG-11 11 as in Table I; ResNet-18 17 conv + 3 shortcuts + fc."""
    def count(arch):
        return len(build_model(arch, input_shape=(3, 32, 32), num_classes=10,
                               width=0.125).layer_names())
    assert count("alexnet") == 8
    assert count("vgg11") == 11
    assert count("resnet18") == 21


@pytest.mark.parametrize("kwargs,match", [
    ({"weight_bits": {"fc9": 4}}, "unknown layer 'fc9'"),
    ({"weight_bits": {"fc1": 17}}, "model.weight_bits.fc1: bit-width 17 is outside 2..16"),
    ({"default_weight_bits": 1}, "model.default_weight_bits: bit-width 1 is outside 2..16"),
    ({"width": 0}, "model.width"),
])
def test_build_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        build_model("mlp", input_shape=(1, 8, 8), num_classes=10, **kwargs)


def test_unknown_arch():
    with pytest.raises(ConfigError, match="model.arch: unknown model 'lenet'"):
        build_model("lenet", input_shape=(1, 8, 8), num_classes=10)
