"""Training artifacts: weights-only checkpoints, the first plan, seeded reproducibility."""
from __future__ import annotations

import json

import pytest
import torch

from flow.core.config import parse_config
from flow.core.errors import ConfigError
from flow.core.io import sha256_file
from flow.core.plan import load_plan
from flow.nn.models import weight_bit_width, weight_layers
from flow.nn.train import logits, model_from_config
from flow.nn.zoo import FACTORIES


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


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_same_seed_same_checkpoint(tmp_path, arch):
    """Reproducibility on one machine: `hetq train` twice with one seed writes byte-identical
    checkpoints (and the same history); another seed does not."""
    from conftest import write_config

    from flow.cli import main
    cfgs = {seed: write_config(tmp_path / f"s{seed}.yaml",
                               {"seed": seed, "model": {"arch": arch, "width": 0.25},
                                "train": {"epochs": 1}}) for seed in (5, 6)}
    # the other seed on the MLP only (the CNN's third training would add nothing)
    names = (("a", 5), ("b", 5), ("c", 6)) if arch == "mlp" else (("a", 5), ("b", 5))
    runs = [(tmp_path / name, cfgs[seed]) for name, seed in names]
    for out, cfg in runs:
        assert main(["train", str(cfg), "--out", str(out), "--json"]) == 0
    a, b, *c = (sha256_file(out / "train" / "model.pt") for out, _ in runs)
    assert a == b and a not in c
    assert json.loads((tmp_path / "a" / "plan.json").read_text())["checkpoint_sha256"] == a
    hist = [(out / "train" / "history.json").read_text() for out, _ in runs[:2]]
    assert hist[0] == hist[1]


def _build(arch: str, shape=(1, 8, 8), **model) -> torch.nn.Module:
    cfg = parse_config({"model": {"arch": arch, **model}})
    return model_from_config(cfg, shape, 10)


@pytest.mark.parametrize("arch", sorted(FACTORIES))
def test_zoo_builds_with_per_layer_bits(arch):
    shape = (3, 32, 32) if arch in ("alexnet", "vgg11", "resnet18") else (1, 8, 8)
    m = _build(arch, shape, width=0.125)
    layers = weight_layers(m)
    assert len(layers) >= 3
    first = next(iter(layers))
    if arch != "bmlp":
        m2 = _build(arch, shape, width=0.125, weight_bits={first: 3})
        assert weight_bit_width(weight_layers(m2)[first]) == 3
        m3 = _build(arch, shape, width=0.125, default_weight_bits=5)
        assert {weight_bit_width(x) for x in weight_layers(m3).values()} == {5}
    else:
        assert {weight_bit_width(x) for x in layers.values()} == {1}
    assert logits(m.eval(), torch.rand(2, *shape)).shape == (2, 10)


def test_paper_layer_counts():
    """AlexNet 8 weight layers and VGG-11 11 as in Table I; ResNet-18 17 conv + 3 shortcuts + fc."""
    def count(arch):
        return len(weight_layers(_build(arch, (3, 32, 32), width=0.125)))
    assert count("alexnet") == 8
    assert count("vgg11") == 11
    assert count("resnet18") == 21


def test_zoo_layer_names_are_module_paths():
    names = list(weight_layers(_build("resnet18", (3, 32, 32), width=0.125)))
    assert names[:4] == ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1"]
    assert "layer2.0.shortcut" in names and names[-1] == "fc"


@pytest.mark.parametrize("kwargs,match", [
    ({"weight_bits": {"fc9": 4}}, "model.weight_bits: unknown layer 'fc9'"),
    ({"default_weight_bits": 1}, "model.default_weight_bits"),
    ({"width": 0}, "model.width"),
])
def test_build_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        _build("mlp", **kwargs)


def test_unknown_arch():
    with pytest.raises(ConfigError, match="model.arch: unknown model 'lenet'"):
        _build("lenet")
