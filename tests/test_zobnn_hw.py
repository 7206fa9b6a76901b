"""A ZOBNN network as integer hardware: lowering, integer executor, RTL in Verilator
(flow.zobnn.lower, flow.zobnn.hardware, rtl/affine_unit.sv, the XNOR MVU with zero padding)."""
from __future__ import annotations

import itertools
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flow.core.config import RtlConfig
from flow.core.errors import PlanError
from flow.core.executor import Executor
from flow.core.image import MemoryImage
from flow.hw.rtl import design
from flow.hw.rtlgen import write_project
from flow.hw.rtlsim import RtlSim, image_codes_hwc, measured_timing, verilator_env
from flow.nn.data import load_dataset
from flow.reliability.faults import FaultMap, Injector, SeuSampler, trial_rng
from flow.zobnn.bnn import build_bnn, train_bnn
from flow.zobnn.lower import agreement, lower_zobnn
from flow.zobnn.quant import zobnn

BITS = 16
IMAGES = 100
SEU_MAPS = 12
SEU_BER = 1e-3


# one worker runs this module under pytest-xdist: its trained network and simulations are shared
pytestmark = pytest.mark.xdist_group("zobnn_hw")


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits", None, seed=0, val_fraction=0.1, test_fraction=0.2, limit=None)


@pytest.fixture(scope="module")
def zq(data):
    torch.set_num_threads(1)
    m = build_bnn("bdorefa", data.input_shape, data.num_classes, width=0.5, seed=0)
    train_bnn(m, data, epochs=4, seed=0, progress=False)
    return zobnn(m, BITS)[0]


@pytest.fixture(scope="module")
def net(zq, data):
    return lower_zobnn(zq, BITS, data.input_shape, data.num_classes)


def test_integer_network_predicts_as_the_zobnn_model(zq, net, data):
    image = MemoryImage.build(net)
    a = agreement(zq, Executor(net, image, "cpu"), data.test.x, data.test.y)
    assert a["model_accuracy"] > 0.85
    # thresholds are exact; only the last batch-norm's rounding to integer codes can move a
    # borderline image
    assert a["prediction_agreement"] >= 0.99, a
    assert abs(a["integer_accuracy"] - a["model_accuracy"]) <= 0.01
    kinds = {m.kind for m in image.memories.values()}
    assert kinds == {"weight", "threshold", "direction", "scale", "offset", "bias"}
    assert image.memory("bconv0.weight").width == 1
    assert image.memory("stem.weight").width == BITS


def _bn64(bn, v: np.ndarray) -> np.ndarray:
    """The quantized batch-norm of Eq. 12 in float64: w (v - mu) / sigma + b, (N, C, H, W)."""
    def col(t):
        return t.detach().double().numpy().reshape(1, -1, 1, 1)
    return col(bn.weight) * (v - col(bn.mean)) / col(bn.sigma) + col(bn.bias)


def test_thresholds_and_affine_follow_the_quantized_batch_norm(zq, net, data):
    ex = Executor(net, MemoryImage.build(net), "cpu")
    tr = {k: v.double().numpy() for k, v in ex.run(data.test.x[:64], trace=True).items()}
    # stem: real input, so its accumulator is at 2^-4; BN + sign = threshold, exactly
    v = tr["stem.acc"] / 16.0
    assert np.array_equal(np.where(_bn64(zq.stem.bn, v) >= 0, 1.0, -1.0), tr["stem.sign"])
    for i in (0, 1):
        alpha = zq.blocks[i].conv.alpha.double().numpy().reshape(1, -1, 1, 1)
        v = tr[f"bconv{i}.acc"] * alpha
        want = np.where(_bn64(zq.blocks[i].bn, v) >= 0, 1.0, -1.0)
        assert np.array_equal(want, tr[f"bconv{i}.sign"])
    last = len(zq.blocks) - 1
    alpha = zq.blocks[last].conv.alpha.double().numpy().reshape(1, -1, 1, 1)
    real = _bn64(zq.blocks[last].bn, tr[f"bconv{last}.acc"] * alpha)
    err = np.abs(tr[f"bconv{last}.bn"] - real)
    # rounded to the nearest code at delta from an affine exact to 2^-8 of a code
    assert err.max() <= 0.5 + 2.0 ** -8, err.max()
    assert np.abs(tr[f"bconv{last}.bn"]).max() > 8      # a real range, not a collapsed one


def test_input_grid_is_the_exact_fixed_point_format_of_the_pixels(data):
    from flow.zobnn.hardware import input_grid
    assert input_grid(data.test.x) == (4, 5, True)               # digits: k/16, up to 16/16
    assert input_grid(torch.tensor([0.0, 1 / 255, 1.0])) == (8, 9, False)
    assert input_grid(torch.tensor([0.5, 3.0])) == (1, 3, True)
    with pytest.raises(PlanError, match="negative"):
        input_grid(torch.tensor([-0.5]))


def test_lowering_refuses_what_it_cannot_build(data):
    plain = build_bnn("bdorefa", data.input_shape, data.num_classes, width=0.25, seed=0)
    with pytest.raises(PlanError, match="not a ZOBNN network"):
        lower_zobnn(plain.eval(), 8, data.input_shape, data.num_classes)


_cache: dict[str, dict] = {}


def _simulate(net, data, tmp, protected: list[str], images: int = IMAGES,
              seu_maps: int = SEU_MAPS) -> dict:
    image = MemoryImage.build(net, protected)
    ex = Executor(net, image, "cpu")
    prj = tmp / "prj"
    write_project(prj, design(net, image, RtlConfig(target_cycles=2304)), image, "0" * 64)
    sim = RtlSim(prj, n_max=images)
    codes = ex.quantize_input(data.test.x[:images])
    kinds = tuple(sorted({m.kind for m in image.memories.values()}))
    sampler = SeuSampler(image, kinds=kinds)
    maps = [("seu", sampler.sample(SEU_BER, trial_rng(3, SEU_BER, t))) for t in range(seu_maps)]
    # one map per memory kind: the top bit of every word of its first unprotected memory
    for kind in kinds:
        m = next(m for m in image.memories.values() if m.kind == kind and not m.protected)
        maps.append((kind, FaultMap([m.name] * m.depth, np.arange(m.depth),
                                    [m.width - 1] * m.depth, ["flip"] * m.depth)))
    for layer in protected:
        m = image.memory(f"{layer}.weight")
        words = np.arange(m.depth)
        for copy in m.msb_bits():
            maps.append(("tmr1", FaultMap([m.name] * m.depth, words, [copy] * m.depth,
                                          ["flip"] * m.depth)))
        for a, b in itertools.combinations(m.msb_bits(), 2):
            maps.append(("tmr2", FaultMap([m.name] * 2 * m.depth, np.repeat(words, 2),
                                          np.tile([a, b], m.depth), ["flip"] * 2 * m.depth)))
    jobs = [{"id": "clean", "flips": [], "scores": True, "timing": True}]
    jobs += [{"id": k, "flips": sim.flips(fm), "scores": True} for k, (_, fm) in enumerate(maps)]
    res = sim.run(image_codes_hwc(codes.numpy().astype(np.int64)), jobs, tmp / "work")
    inj = Injector(image, ex)
    soft = []
    for _, fm in maps:
        with inj.injected(fm):
            soft.append(ex.run(codes, quantized=True).numpy().astype(np.int64))
    return {"clean": ex.run(codes, quantized=True).numpy().astype(np.int64),
            "rtl_clean": res[0].scores, "kinds": [k for k, _ in maps],
            "rtl": [r.scores for r in res[1:]], "soft": soft, "timing": measured_timing(res[0]),
            "analytic": sim.manifest.obj["analytic"], "prj": prj}


def _results(net, data, tmp_path_factory, variant: str) -> dict:
    if variant not in _cache:
        prot = [] if variant == "plain" else ["stem", "bconv1"]
        _cache[variant] = _simulate(net, data, tmp_path_factory.mktemp(f"zobnn_{variant}"), prot)
    return _cache[variant]


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["plain", "tmr"])
def test_rtl_is_bit_exact_with_the_executor(net, data, tmp_path_factory, variant):
    r = _results(net, data, tmp_path_factory, variant)
    assert np.array_equal(r["rtl_clean"], r["clean"])
    assert len(np.unique(r["clean"].argmax(1))) > 5
    m, a = r["timing"], r["analytic"]
    assert 0.9 <= m["latency_cycles"] / a["latency_cycles"] <= 1.1
    assert m["ii_cycles"] == a["ii_cycles"]


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["plain", "tmr"])
def test_rtl_faults_in_every_memory_kind_match_the_executor(net, data, tmp_path_factory,
                                                            variant):
    r = _results(net, data, tmp_path_factory, variant)
    moved = set()
    for kind, rtl, soft in zip(r["kinds"], r["rtl"], r["soft"]):
        assert np.array_equal(rtl, soft), kind
        if not np.array_equal(soft, r["clean"]):
            moved.add(kind)
    # every parameter kind is a live fault target: flipping it changes the scores
    assert {"seu", "weight", "threshold", "direction", "scale", "offset", "bias"} <= moved


@pytest.mark.slow
def test_tmr_masks_single_msb_flips_of_integer_and_binary_weights(net, data, tmp_path_factory):
    r = _results(net, data, tmp_path_factory, "tmr")
    singles = [k for k, kind in enumerate(r["kinds"]) if kind == "tmr1"]
    doubles = [k for k, kind in enumerate(r["kinds"]) if kind == "tmr2"]
    assert len(singles) == len(doubles) == 6
    for k in singles:
        assert np.array_equal(r["rtl"][k], r["clean"])
    for k in doubles:
        assert not np.array_equal(r["rtl"][k], r["clean"])


@pytest.mark.slow
def test_generated_zobnn_top_lints_clean(net, data, tmp_path_factory):
    prj = _results(net, data, tmp_path_factory, "plain")["prj"]
    files = [*sorted((prj / "src").glob("*.sv")), prj / "hetq_accel.sv", prj / "hetq_harness.sv"]
    with verilator_env():
        r = subprocess.run(["verilator", "--lint-only", "-Wall", "--timing", "--top-module",
                            "hetq_accel", *map(str, files)], capture_output=True, text=True)
    assert r.returncode == 0 and "%Warning" not in r.stderr, r.stderr


def _msb_copies(image: MemoryImage, memory: str) -> tuple[FaultMap, FaultMap]:
    """Hand-written maps of a protected memory: one MSB copy flipped in every word, and two."""
    m = image.memory(memory)
    words = np.arange(m.depth)
    a, b = m.msb_bits()[:2]
    return (FaultMap([m.name] * m.depth, words, [a] * m.depth, ["flip"] * m.depth),
            FaultMap([m.name] * 2 * m.depth, np.repeat(words, 2), np.tile([a, b], m.depth),
                     ["flip"] * 2 * m.depth))


@pytest.mark.slow
def test_csim_is_bit_exact_with_zero_padding_and_replays_weight_faults(net, data, tmp_path):
    """hls4ml C-sim of the lowered network (its QONNX graph from flow.zobnn.qonnx): hls4ml's own
    binary convolution reads the zero padding as -1; hetq streams the signs as -1/+1."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx

    from flow.hw.hls import build
    from flow.zobnn.qonnx import write_qonnx
    image = MemoryImage.build(net, ["stem", "bconv1", "fc"])
    ex = Executor(net, image, "cpu")
    path = write_qonnx(net, tmp_path / "zobnn.onnx")
    codes = ex.quantize_input(data.test.x)
    clean = ex.run(codes, quantized=True).numpy().astype(np.int64)
    # the graph itself computes the network (float32 in qonnx's executor: same predictions)
    m = ModelWrapper(str(path))
    for i in range(8):
        y = next(iter(execute_onnx(m, {"global_in": data.test.x[i:i + 1].numpy()}).values()))
        assert y.argmax() == clean[i].argmax()
    prj = build(path, net, image, tmp_path / "hls", part="xc7z020clg400-1", clock_mhz=100)
    assert np.array_equal(prj.scores(prj.inputs(codes.numpy())), clean)
    codes, clean = codes[:64], clean[:64]               # fault replay on 64 images
    x = prj.inputs(codes.numpy())
    sampler = SeuSampler(image, kinds=("weight",))
    inj = Injector(image, ex)
    maps = [sampler.sample(1e-3, trial_rng(5, 1e-3, t)) for t in range(3)]
    single, double = _msb_copies(image, "bconv1.weight")
    for fm in [*maps, single, double]:
        prj.replay(fm)
        assert np.array_equal(prj.scores(x), inj.scores(fm, codes))
    prj.replay(single)
    assert np.array_equal(prj.scores(x), clean)              # one MSB copy: masked
    prj.replay(double)
    assert not np.array_equal(prj.scores(x), clean)          # two copies: not
    assert sum(len(fm) for fm in maps) > 20


# -- the binary ResNet (breact) --------------------------------------------------------------------

@pytest.fixture(scope="module")
def react(data):
    torch.set_num_threads(1)
    m = build_bnn("breact", data.input_shape, data.num_classes, width=0.5, seed=0)
    train_bnn(m, data, epochs=4, seed=0, progress=False)
    return m


@pytest.mark.parametrize("bits", [16, 8])
def test_binary_resnet_lowers_and_predicts_as_the_zobnn_model(react, data, bits):
    zq = zobnn(react, bits)[0]
    net = lower_zobnn(zq, bits, data.input_shape, data.num_classes)
    image = MemoryImage.build(net)
    ex = Executor(net, image, "cpu")
    a = agreement(zq, ex, data.test.x, data.test.y)
    assert a["model_accuracy"] > 0.8
    # every rounding is to the residual stream's codes (16 - bits fraction bits at delta)
    assert a["prediction_agreement"] >= 0.99, a
    ops = {n.op for n in net.nodes}
    assert {"rprelu", "avgpool", "repeat", "add", "sumpool", "threshold"} <= ops
    assert {"block0.rprelu.gamma", "block0.rprelu.slope", "block0.rprelu.zeta",
            "block0.threshold"} <= set(image.memories)
    assert image.memory("block0.rprelu.slope").kind == "scale"


def test_binary_resnet_ops_compute_the_float_model_exactly(react, data):
    """The rprelu op, the average-pool shortcut and the RSign threshold on the executor's own
    codes, against the float formulas in float64 (exact here): equal code for code."""
    zq = zobnn(react, 8)[0]
    net = lower_zobnn(zq, 8, data.input_shape, data.num_classes)
    ex = Executor(net, MemoryImage.build(net), "cpu")
    tr = {k: v.double() for k, v in ex.run(data.test.x[:64], trace=True).items()}
    fr = {n.name: n.frac for n in net.nodes}

    def col(t: torch.Tensor) -> torch.Tensor:
        return t.detach().double().view(1, -1, 1, 1)

    checked = False
    for i, blk in enumerate(zq.blocks):
        e = tr[f"block{i}.add"] * 2.0 ** -fr[f"block{i}.add"]
        want = F.prelu(e - col(blk.rprelu.gamma), blk.rprelu.slope.detach().double()) \
            + col(blk.rprelu.zeta)
        f = fr[f"block{i}.rprelu.out"]
        want = torch.round(want * 2.0 ** f).clamp(-(2 ** 23), 2 ** 23 - 1)
        assert torch.equal(want, tr[f"block{i}.rprelu.out"])
        src = tr[net.node(f"block{i}.sign").inputs[0]] * 2.0 ** -f
        sign = torch.where(src - col(blk.rsign.beta) >= 0, 1.0, -1.0)
        assert torch.equal(sign, tr[f"block{i}.sign"])
        if blk.stride > 1:
            mean = F.avg_pool2d(src, 2).repeat(1, blk.repeat, 1, 1)
            assert torch.equal(mean * 2.0 ** fr[f"block{i}.repeat"], tr[f"block{i}.repeat"])
            checked = True
    assert checked


def test_binary_resnet_faults_in_every_memory_kind_and_batched_maps(react, data):
    from flow.core.multimap import MapParams, predict_maps
    zq = zobnn(react, 8)[0]
    net = lower_zobnn(zq, 8, data.input_shape, data.num_classes)
    image = MemoryImage.build(net)
    ex = Executor(net, image, "cpu")
    xq = ex.quantize_input(data.test.x)
    clean = ex.predict(xq, quantized=True)
    inj = Injector(image, ex)
    moved = set()
    for m in image.memories.values():       # the top bit of every word of each memory
        fm = FaultMap([m.name] * m.depth, np.arange(m.depth), [m.width - 1] * m.depth,
                      ["flip"] * m.depth)
        with inj.injected(fm):
            if not torch.equal(ex.predict(xq, quantized=True), clean):
                moved.add(m.kind)
    assert moved == {"weight", "threshold", "direction", "scale", "offset", "bias"}
    # k maps in one pass (the RPReLU's parameters per map) equal one map at a time; the output
    # layer (24-bit inputs: float64) is left out, as its per-map weights are not batched
    ex.remember(xq, quantized=True)
    layers = tuple(sorted({m.layer for m in image.memories.values()} - {"fc"}))
    sampler = SeuSampler(image, kinds=tuple(sorted(moved)), layers=layers)
    got = []
    for t in range(4):
        fm = sampler.sample(2e-3, trial_rng(1, 2e-3, t))
        with inj.injected(fm):
            touched = {str(n): fm.word[fm.memory == n] for n in np.unique(fm.memory)}
            got.append((MapParams.capture(ex, touched), ex.predict(xq, quantized=True)))
    assert any(any(".rprelu." in n for n in p.words) for p, _ in got)
    res = predict_maps(ex, xq, [p for p, _ in got])
    assert res is not None
    for (_, ref), pred in zip(got, res):
        assert torch.equal(pred, ref)


@pytest.mark.slow
def test_binary_resnet_rtl_is_bit_exact_under_faults_and_tmr(react, data, tmp_path):
    """breact in RTL: the average-pool shortcut (avgpool.sv), channel repetition
    (channel_repeat.sv) and RPReLU (rprelu_unit.sv) beside the residual adds; 8-bit ZOBNN with
    the stem and block1 protected."""
    zq = zobnn(react, 8)[0]
    net = lower_zobnn(zq, 8, data.input_shape, data.num_classes)
    r = _simulate(net, data, tmp_path, ["stem", "block1"], images=16, seu_maps=4)
    assert np.array_equal(r["rtl_clean"], r["clean"])
    assert len(np.unique(r["clean"].argmax(1))) > 5
    moved = set()
    for kind, rtl, soft in zip(r["kinds"], r["rtl"], r["soft"]):
        assert np.array_equal(rtl, soft), kind
        if kind not in ("tmr1", "tmr2") and not np.array_equal(soft, r["clean"]):
            moved.add(kind)
    assert {"seu", "weight", "threshold", "direction", "scale", "offset", "bias"} <= moved
    for kind, rtl in zip(r["kinds"], r["rtl"]):
        if kind == "tmr1":
            assert np.array_equal(rtl, r["clean"])
        elif kind == "tmr2":
            assert not np.array_equal(rtl, r["clean"])
    m, a = r["timing"], r["analytic"]
    assert abs(m["latency_cycles"] / a["latency_cycles"] - 1) <= 0.01
    assert m["ii_cycles"] == a["ii_cycles"]
    files = [*sorted((r["prj"] / "src").glob("*.sv")), r["prj"] / "hetq_accel.sv",
             r["prj"] / "hetq_harness.sv"]
    with verilator_env():
        lint = subprocess.run(["verilator", "--lint-only", "-Wall", "--timing",
                               "--top-module", "hetq_accel", *map(str, files)],
                              capture_output=True, text=True)
    assert lint.returncode == 0 and "%Warning" not in lint.stderr, lint.stderr


@pytest.mark.slow
def test_binary_resnet_csim_is_bit_exact_and_replays_weight_faults(react, data, tmp_path):
    """breact in hls4ml C-sim: hetq's RPReLU layer, channel repetition, the average-pool
    shortcut and the residual adds with exact types (8-bit ZOBNN, stem and block1 protected)."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx

    from flow.hw.hls import build
    from flow.zobnn.qonnx import write_qonnx
    net = lower_zobnn(zobnn(react, 8)[0], 8, data.input_shape, data.num_classes)
    assert {"rprelu", "avgpool", "repeat", "add", "sumpool"} <= {n.op for n in net.nodes}
    image = MemoryImage.build(net, ["stem", "block1"])
    ex = Executor(net, image, "cpu")
    path = write_qonnx(net, tmp_path / "breact.onnx")
    codes = ex.quantize_input(data.test.x)
    clean = ex.run(codes, quantized=True).numpy().astype(np.int64)
    m = ModelWrapper(str(path))             # hetq's custom operations run in qonnx's executor
    for i in range(8):
        y = next(iter(execute_onnx(m, {"global_in": data.test.x[i:i + 1].numpy()}).values()))
        assert y.argmax() == clean[i].argmax()
    prj = build(path, net, image, tmp_path / "hls", part="xc7z020clg400-1", clock_mhz=100)
    assert np.array_equal(prj.scores(prj.inputs(codes.numpy())), clean)
    codes, clean = codes[:64], clean[:64]
    x = prj.inputs(codes.numpy())
    inj = Injector(image, ex)
    sampler = SeuSampler(image, kinds=("weight",))
    maps = [sampler.sample(1e-2, trial_rng(5, 1e-2, t)) for t in range(3)]
    single, double = _msb_copies(image, "block1.weight")
    for fm in maps:
        prj.replay(fm)
        got, ref = prj.scores(x), inj.scores(fm, codes)
        assert np.array_equal(got, ref)
        assert not np.array_equal(ref, clean)
    prj.replay(single)
    assert np.array_equal(prj.scores(x), clean)              # one MSB copy: masked
    prj.replay(double)
    assert not np.array_equal(prj.scores(x), clean)          # two copies: not
