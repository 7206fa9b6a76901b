"""Bring your own network: ``model.arch`` forms, factories, and per-layer bit-widths set through
Brevitas's API. Fast: no training."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from flow.core.config import load_config, parse_config
from flow.core.errors import ConfigError
from flow.core.modelsource import ModelSource, parse_arch
from flow.nn.models import (
    call_factory,
    load_factory,
    set_weight_bits,
    weight_bit_width,
    weight_layers,
)
from flow.nn.train import model_from_config

NETS = Path(__file__).with_name("user_nets.py")


def test_arch_forms(tmp_path):
    assert parse_arch("cnn") == ModelSource("factory", "cnn", "flow.nn.zoo", "cnn")
    src = parse_arch("nets/my.py:build", tmp_path)
    assert src.kind == "factory" and src.module == str(tmp_path / "nets" / "my.py")
    assert src.factory == "build" and src.label == "my.py:build" and src.trainable
    assert parse_arch("/abs/x.py:f", tmp_path).module == "/abs/x.py"
    assert parse_arch("pkg.sub:make").module == "pkg.sub"
    onnx = parse_arch("m/model.onnx", tmp_path)
    assert onnx.kind == "qonnx" and onnx.path == tmp_path / "m" / "model.onnx"
    assert not onnx.trainable and onnx.label == "model.onnx"


@pytest.mark.parametrize("arch", ["", "a b", "x.py:", "x.py:1f", "pkg-x:f", "x.py:f-g"])
def test_bad_arch_is_a_one_line_config_error(arch):
    with pytest.raises(ConfigError, match="model.arch") as e:
        parse_config({"model": {"arch": arch}}, "cfg.yaml")
    assert "\n" not in str(e.value)


def test_relative_paths_follow_the_config_file(tmp_path):
    (tmp_path / "sub").mkdir()
    cfg_path = tmp_path / "sub" / "run.yaml"
    cfg_path.write_text("model: {arch: ../nets.py:net}\ndata: {name: npz, path: d.npz}\n")
    cfg = load_config(cfg_path)
    assert cfg.model.arch == f"{tmp_path / 'nets.py'}:net"
    assert cfg.data.path == str(tmp_path / "sub" / "d.npz")
    # the resolved config (as stored in a run) reads back unchanged from anywhere
    assert parse_config(cfg.model_dump(mode="json")).model.arch == cfg.model.arch


def _cfg(arch: str, **model):
    return parse_config({"model": {"arch": arch, **model}})


def test_file_factory_gets_kwargs_shape_and_classes():
    net = model_from_config(_cfg(f"{NETS}:dense_64_37_23_10",
                                 kwargs={"hidden": [30, 20]}), (1, 8, 8), 7)
    layers = weight_layers(net)
    assert list(layers) == ["classifier.fc1", "classifier.fc2", "classifier.fc3"]
    assert [x.out_features for x in layers.values()] == [30, 20, 7]


def test_package_module_factory(tmp_path, monkeypatch):
    pkg = tmp_path / "mynets"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "tiny.py").write_text(NETS.read_text())
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        net = model_from_config(_cfg("mynets.tiny:odd_cnn"), (1, 8, 8), 10)
        assert list(weight_layers(net)) == ["features.0", "features.3", "mix", "head"]
    finally:
        for name in [m for m in sys.modules if m.startswith("mynets")]:
            del sys.modules[name]


def test_config_bits_reach_the_layers_through_brevitas():
    net = model_from_config(_cfg(f"{NETS}:dense_64_37_23_10", weight_bits={
        "classifier.fc1": 3, "classifier.fc2": 5, "classifier.fc3": 7}), (1, 8, 8), 10)
    layers = weight_layers(net)
    assert [weight_bit_width(x) for x in layers.values()] == [3, 5, 7]
    # the quantizer really quantizes to 3 bits: narrow codes in -3..3
    codes = layers["classifier.fc1"].quant_weight().int()
    assert int(codes.max()) == 3 and int(codes.min()) == -3
    # default_weight_bits covers the layers weight_bits does not name
    net = model_from_config(_cfg(f"{NETS}:dense_64_37_23_10", default_weight_bits=4,
                                 weight_bits={"classifier.fc3": 6}), (1, 8, 8), 10)
    assert [weight_bit_width(x) for x in weight_layers(net).values()] == [4, 4, 6]


def test_bits_survive_a_state_dict_round_trip():
    a = model_from_config(_cfg(f"{NETS}:odd_cnn", default_weight_bits=3), (1, 8, 8), 10)
    b = model_from_config(_cfg(f"{NETS}:odd_cnn", default_weight_bits=3), (1, 8, 8), 10)
    x = torch.rand(4, 1, 8, 8)
    a.train()(x)                                   # activation scales are set on a forward
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.eval()(x).value, b.eval()(x).value)


def test_binary_layers_keep_one_bit_and_refuse_others():
    cfg = _cfg(f"{NETS}:binary_mlp", default_weight_bits=4)   # binary layers are skipped
    net = model_from_config(cfg, (1, 8, 8), 10)
    assert {weight_bit_width(x) for x in weight_layers(net).values()} == {1}
    with pytest.raises(ConfigError, match=r"model.weight_bits.hidden.0: layer 'hidden.0' has a "
                                          r"weight quantizer \(\w+\) that keeps 1 bits"):
        model_from_config(_cfg(f"{NETS}:binary_mlp", weight_bits={"hidden.0": 4}), (1, 8, 8), 10)


def test_learned_bit_width_is_refused_by_name():
    with pytest.raises(ConfigError, match="model.weight_bits.fc: layer 'fc' .* cannot take 4"):
        model_from_config(_cfg(f"{NETS}:learned_bits", weight_bits={"fc": 4}), (1, 8, 8), 10)


def test_unknown_layer_lists_the_module_paths():
    with pytest.raises(ConfigError, match=r"model.weight_bits: unknown layer 'fc1' \(layers: "
                                          r"classifier.fc1, classifier.fc2, classifier.fc3\)"):
        model_from_config(_cfg(f"{NETS}:dense_64_37_23_10", weight_bits={"fc1": 4}),
                          (1, 8, 8), 10)


@pytest.mark.parametrize("arch,extra,match", [
    ("{nets}:no_such", {}, "model.arch: '.*user_nets.py' has no function 'no_such'"),
    ("{tmp}/missing.py:f", {}, "model.arch: model file '.*missing.py' does not exist"),
    ("no_such_package.mod:f", {}, "model.arch: cannot import 'no_such_package.mod' "
                                  "\\(ModuleNotFoundError"),
    ("{nets}:dense_64_37_23_10", {"kwargs": {"depth": 3}},
     "model.kwargs: factory '.*' failed with TypeError"),
    ("{nets}:dense_64_37_23_10", {"act_bits": 4},
     "model.act_bits: factory '.*' takes no argument 'act_bits'"),
    ("{tmp}/broken.py:f", {}, "model.arch: importing '.*broken.py' failed \\(SyntaxError"),
    ("{tmp}/notnet.py:f", {}, "model.arch: factory '.*notnet.py:f' returned int, not a "
                              "torch.nn.Module"),
])
def test_factory_errors_are_one_line(tmp_path, arch, extra, match):
    (tmp_path / "broken.py").write_text("def f(:\n")
    (tmp_path / "notnet.py").write_text("def f():\n    return 3\n")
    cfg = _cfg(arch.format(nets=NETS, tmp=tmp_path), **extra)
    with pytest.raises(ConfigError, match=match) as e:
        model_from_config(cfg, (1, 8, 8), 10)
    assert "\n" not in str(e.value)


def test_onnx_arch_cannot_be_built():
    with pytest.raises(ConfigError, match="is a trained QONNX file; hetq cannot build"):
        model_from_config(_cfg("/x/model.onnx"), (1, 8, 8), 10)
    with pytest.raises(ConfigError, match="is a QONNX file, not a factory"):
        load_factory(parse_arch("/x/model.onnx"))


def test_set_weight_bits_returns_every_width():
    net = call_factory(parse_arch(f"{NETS}:odd_cnn"), {}, (1, 8, 8), 10, {})
    widths = set_weight_bits(net, {"mix": 2}, default=None)
    assert widths == {"features.0": 6, "features.3": 4, "mix": 2, "head": 6}
