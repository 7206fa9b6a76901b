"""The front end on networks and files hetq did not make: refusals (one line, exit 2, nothing
written), a hand-written QONNX graph, and a run whose factory has moved away."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import write_config
from onnx import TensorProto, helper, numpy_helper

from flow.cli import main
from flow.core.executor import Executor
from flow.core.image import MemoryImage
from flow.nn.lower import lower_graph
from flow.nn.oracle import compare_qonnx
from flow.nn.qonnx_graph import load

NETS = Path(__file__).with_name("user_nets.py")


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys, args: list, out: Path, *needles: str) -> str:
    """Run a command that must fail: exit 2, one line on stderr naming ``needles``, and
    ``out`` not created."""
    code, _, err = run_cli(capsys, *args)
    lines = [x for x in err.splitlines() if x.startswith("hetq: error:")]
    assert code == 2, err
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]
    assert not out.exists()
    return lines[0]


REFUSALS = [
    ("float_scale", ["layer 'fc': weight scale", "is not a power of two",
                     "use a fixed-point quantizer such as Int8WeightPerTensorFixedPoint"]),
    ("per_channel", ["layer 'conv': weight scale is per channel (4 values",
                     "needs one per-tensor scale"]),
    ("bias_scale", ["layer 'conv': bias scale 2^-", "is not the accumulator's 2^-",
                    "(input scale x weight scale)", "such as Int16Bias"]),
    ("grouped", ["layer 'conv.grouped': grouped convolution (groups=2)"]),
    ("dilated", ["layer 'conv': dilated convolution (dilation 2x2); use dilation=1"]),
    ("unsupported_op", ["node 'act.0' (Sigmoid): operation 'Sigmoid' is outside hetq's "
                        "supported set", "docs/byo.md"]),
    ("zero_point", ["node 'quant_in' (Quant): zero point 64 is not 0"]),
    ("mnist_sized", ["model: the network does not run on the data's 1x8x8 images",
                     "(1x256 and 3136x10)"]),
]


@pytest.mark.parametrize("factory,needles", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_train_refuses_before_writing(tmp_path, capsys, factory, needles):
    cfg = write_config(tmp_path / "c.yaml", {"model": {"arch": f"{NETS}:{factory}"},
                                             "train": {"epochs": 1}})
    refused(capsys, ["train", cfg, "--out", tmp_path / "run"], tmp_path / "run", *needles)


def test_bit_width_a_layer_cannot_take_is_refused(tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", {"model": {"arch": f"{NETS}:learned_bits",
                                                       "weight_bits": {"fc": 4}}})
    refused(capsys, ["train", cfg, "--out", tmp_path / "run"], tmp_path / "run",
            "model.weight_bits.fc: layer 'fc'", "cannot take 4")


# -- a QONNX graph written by hand -------------------------------------------------------------
def _quant(name: str, x: str, scale: float, bits: int, signed: int, narrow: int = 0):
    """A qonnx Quant node and its three constant inputs."""
    inits = [numpy_helper.from_array(np.array(v, dtype=np.float32), f"{name}_{k}")
             for k, v in (("scale", scale), ("zeropt", 0.0), ("bits", float(bits)))]
    node = helper.make_node("Quant", [x, f"{name}_scale", f"{name}_zeropt", f"{name}_bits"],
                            [name], name=name, domain="qonnx.custom_op.general", signed=signed,
                            narrow=narrow, rounding_mode="ROUND")
    return node, inits


def hand_written(path: Path, side: int = 4, extra_op: str | None = None, seed: int = 0) -> Path:
    """input 1x side x side -> Quant -> Flatten -> MatMul (4-bit) + bias -> Relu -> Quant (4 bit)
    -> MatMul (3-bit, no bias) -> 3 class scores; weights named w1/w2 (no '.weight')."""
    rng = np.random.default_rng(seed)
    n_in = side * side
    w1 = rng.integers(-7, 8, (n_in, 6)).astype(np.float32) / 8
    b1 = rng.integers(-300, 300, 6).astype(np.float32) / 2 ** 7
    w2 = rng.integers(-3, 4, (6, 3)).astype(np.float32) / 4
    nodes, inits = [], [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"),
                        numpy_helper.from_array(w2, "w2"),
                        numpy_helper.from_array(np.array([1, n_in], dtype=np.int64), "shape")]
    for args in (("q_in", "x", 2 ** -4, 5, 0), ("q_w1", "w1", 2 ** -3, 4, 1, 1),
                 ("q_b1", "b1", 2 ** -7, 16, 1), ("q_act", "relu", 2 ** -2, 4, 0),
                 ("q_w2", "w2", 2 ** -2, 3, 1, 1)):
        n, i = _quant(*args)
        nodes.append(n)
        inits += i
    nodes += [helper.make_node("Reshape", ["q_in", "shape"], ["flat"], name="flatten"),
              helper.make_node("MatMul", ["flat", "q_w1"], ["mm1"], name="dense1"),
              helper.make_node("Add", ["mm1", "q_b1"], ["acc1"], name="bias1"),
              helper.make_node(extra_op or "Relu", ["acc1"], ["relu"], name="act1"),
              helper.make_node("MatMul", ["q_act", "q_w2"], ["y"], name="dense2")]
    graph = helper.make_graph(
        nodes, "hand", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, side, side])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, path)
    return path


def npz_data(path: Path, side: int = 4, classes: int = 3,
             n: tuple[int, int] = (120, 40)) -> Path:
    """Random uint8 NHWC images and labels."""
    rng = np.random.default_rng(1)
    arrays = {}
    for split, count in zip(("train", "test"), n):
        arrays[f"x_{split}"] = rng.integers(0, 256, (count, side, side, 1), dtype=np.uint8)
        arrays[f"y_{split}"] = rng.integers(0, classes, count)
    np.savez(path, **arrays)
    return path


def test_hand_written_qonnx_lowers_exactly(tmp_path):
    graph = load(hand_written(tmp_path / "hand.onnx"))
    net = lower_graph(graph, "hand")
    assert net.layers() == ["dense1", "dense2"]
    assert [n.op for n in net.nodes] == ["input", "flatten", "dense", "requant", "dense"]
    assert net.params["dense1.weight"].fmt.bits == 4 and net.params["dense2.weight"].fmt.bits == 3
    assert net.nodes[3].lo == 0                  # the ReLU became the requant's lower bound
    ex = Executor(net, MemoryImage.build(net, ["dense2"]), "cpu")
    res = compare_qonnx(ex, graph, torch.rand(50, 1, 4, 4))
    assert res["exact"] and res["nodes_compared"] == 5


def test_import_a_hand_written_file(tmp_path, capsys):
    model = hand_written(tmp_path / "hand.onnx")
    data = npz_data(tmp_path / "d.npz")
    code, out, err = run_cli(capsys, "import", model, "--data", data, "--out", tmp_path / "run")
    assert code == 0, err
    assert "imported hand.onnx" in out and "2 weight layers (dense1, dense2)" in out
    assert "integer network = qonnx's executor on 40 test images" in out
    assert "data layout: nhwc" in out
    assert (tmp_path / "run" / "train" / "model.onnx").is_file()
    assert not (tmp_path / "run" / "train" / "model.pt").exists()
    code, out, err = run_cli(capsys, "inject", tmp_path / "run", "--ber", "1e-2", "--trials",
                             "3", "--json")
    assert code == 0, err
    code, out, err = run_cli(capsys, "search", tmp_path / "run")
    assert code == 0, err
    note = [x for x in err.splitlines() if x.startswith("search:")]
    assert len(note) == 1 and "cannot retrain" in note[0]


@pytest.mark.parametrize("case,needles", [
    ("shape", ["model input: shape 1x5x5 does not match the data's 1x4x4 images"]),
    ("op", ["node 'act1' (Sigmoid): operation 'Sigmoid' is outside"]),
    ("corrupt", ["model.arch: ", "is not an ONNX file"]),
    ("missing", ["does not exist"]),
])
def test_import_refusals(tmp_path, capsys, case, needles):
    data = npz_data(tmp_path / "d.npz")
    model = tmp_path / "m.onnx"
    if case == "shape":
        hand_written(model, side=5)
    elif case == "op":
        hand_written(model, extra_op="Sigmoid")
    elif case == "corrupt":
        model.write_bytes(b"not a protobuf at all")
    refused(capsys, ["import", model, "--data", data, "--out", tmp_path / "run"],
            tmp_path / "run", *needles)


def test_run_whose_factory_moved(tmp_path, capsys):
    """A trained run keeps its QONNX graph: it opens without the factory; retraining says in
    one line that the factory is gone."""
    nets = tmp_path / "nets.py"
    shutil.copy(NETS, nets)
    cfg = write_config(tmp_path / "c.yaml", {"model": {"arch": "nets.py:dense_64_37_23_10"},
                                             "train": {"epochs": 1}})
    code, _, err = run_cli(capsys, "train", cfg, "--out", tmp_path / "run")
    assert code == 0, err
    nets.unlink()
    code, out, err = run_cli(capsys, "info", tmp_path / "run")
    assert code == 0, err
    assert "classifier.fc2" in out
    code, _, err = run_cli(capsys, "search", tmp_path / "run")
    assert code == 2
    assert err.strip().splitlines()[-1] == (f"hetq: error: model.arch: model file '{nets}' "
                                            f"does not exist")
