"""The executor's int8 kernels (flow.core.intkernels) against exact references.

Networks written here, not by hetq's zoo: convolutions with odd kernels, strides, paddings and
spatial sizes, inputs that are unsigned, signed or neither (shifted by a general offset), 4-bit,
unsigned 7-bit and bipolar weights, worst-case codes, batches of one image and patch matrices
built in several blocks. Every result is compared with a float64 reference (exact: every sum
stays far below 2**53) and with the float32 kernels; under sampled fault maps the int8 weight
copy is checked against the decoded weights word for word.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flow.core import delta, intkernels
from flow.core.executor import Executor
from flow.core.image import MemoryImage
from flow.core.intkernels import int8_matmul_exact, plan_int8, weight_matrix
from flow.core.ir import IntNetwork, Node, Param
from flow.core.multimap import predict_maps
from flow.core.precision import Fixed
from flow.reliability import parallel
from flow.reliability.faults import FaultMap, Injector, SeuSampler, trial_rng
from flow.reliability.parallel import FaultWorker

needs_int8 = pytest.mark.skipif(not int8_matmul_exact(),
                                reason="no exact int8 matrix product on this CPU")


def _layer_net(op: str, x_range: tuple[int, int], wfmt: Fixed, w: np.ndarray,
               b: np.ndarray | None, *, k: int = 1, stride: int = 1, pad: int = 0,
               hw: tuple[int, int] = (1, 1), b_bits: int = 24) -> IntNetwork:
    """input (codes in ``x_range``) -> [flatten] -> one conv or dense layer: the accumulator
    is the output."""
    lo, hi = x_range
    params = {"l.weight": Param("l.weight", "l", "weight", wfmt, w)}
    if b is not None:
        params["l.bias"] = Param("l.bias", "l", "bias", Fixed(b_bits, True, 0), b)
    attrs = {"weight": "l.weight", "bias": "l.bias" if b is not None else None}
    nodes = [Node("input", "input", [], 0, lo, hi, {"bits": 8, "signed": lo < 0})]
    big = 1 << 40
    if op == "conv":
        nodes.append(Node("l", "conv", ["input"], 0, -big, big,
                          {**attrs, "stride": stride, "pad": pad, "k": k}))
        shape = (w.shape[1], *hw)
    else:
        nodes += [Node("flat", "flatten", ["input"], 0, lo, hi),
                  Node("l", "dense", ["flat"], 0, -big, big, attrs)]
        shape = (w.shape[1], 1, 1)
    return IntNetwork("odd", nodes, params, shape, w.shape[0])


def _reference(op: str, x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: int,
               pad: int) -> np.ndarray:
    xt, wt = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(w, dtype=torch.float64)
    bt = None if b is None else torch.as_tensor(b, dtype=torch.float64)
    out = (F.conv2d(xt, wt, bt, stride=stride, padding=pad) if op == "conv"
           else F.linear(xt.flatten(1), wt, bt))
    return out.numpy().astype(np.int64)


# (op, input range, weight format, n_in, n_out, k, stride, pad, spatial, bias, images)
LAYERS = [
    ("conv", (0, 255), Fixed(8, True, 0), 24, 40, 3, 1, 1, (8, 8), True, 5),
    ("conv", (-128, 127), Fixed(4, True, 0), 7, 33, 5, 2, 0, (11, 9), False, 3),
    ("conv", (-100, 155), Fixed(1, True, 0, bipolar=True), 16, 12, 3, 2, 1, (7, 10), True, 4),
    ("conv", (0, 15), Fixed(8, True, 0, narrow=True), 1, 8, 3, 1, 1, (6, 6), True, 1),
    ("dense", (-64, 63), Fixed(7, False, 0), 300, 70, 1, 1, 0, (1, 1), True, 6),
    ("dense", (0, 255), Fixed(8, True, 0), 130, 65, 1, 1, 0, (1, 1), True, 1),
    ("dense", (0, 255), Fixed(2, True, 0), 2, 3, 1, 1, 0, (1, 1), False, 2),
]


def _codes(rng, fmt: Fixed, shape) -> np.ndarray:
    if fmt.bipolar:
        return rng.choice([-1, 1], shape)
    lo = -(1 << (fmt.bits - 1)) if fmt.signed else 0
    return rng.integers(lo, fmt.max() + 1, shape)


@needs_int8
@pytest.mark.parametrize("case", LAYERS, ids=lambda c: f"{c[0]}-{c[1][0]}..{c[1][1]}-"
                         f"{c[2].name()}-{c[3]}x{c[4]}-k{c[5]}s{c[6]}p{c[7]}")
@pytest.mark.parametrize("codes", ["random", "extreme"])
def test_odd_layers_equal_the_reference(case, codes):
    op, (lo, hi), fmt, n_in, n_out, k, s, p, hw, bias, n = case
    rng = np.random.default_rng(n_in * n_out)
    wshape = (n_out, n_in, k, k) if op == "conv" else (n_out, n_in)
    xshape = (n, n_in, *hw) if op == "conv" else (n, n_in, 1, 1)
    w = _codes(rng, fmt, wshape)
    x = rng.integers(lo, hi + 1, xshape)
    b = rng.integers(-(1 << 23), 1 << 23, n_out) if bias else None
    if codes == "extreme":         # the format's most negative weight against the input bounds
        w[...] = (-1 if fmt.bipolar else -(1 << (fmt.bits - 1)) if fmt.signed
                  else fmt.max())
        x[...] = lo
        x[0] = hi
    net = _layer_net(op, (lo, hi), fmt, w, b, k=k, stride=s, pad=p, hw=hw)
    ex = Executor(net, MemoryImage.build(net, []), "cpu", kernels="int8")
    assert ex.kernel("l") == "int8"
    xt = torch.as_tensor(x, dtype=torch.float32)
    got = ex.run(xt, quantized=True)
    ref = _reference(op, x, w, b, s, p)
    assert np.array_equal(got.numpy().astype(np.int64), ref)
    flt = Executor(net, MemoryImage.build(net, []), "cpu", kernels="float")
    assert flt.kernel("l") != "int8"
    assert np.array_equal(flt.run(xt, quantized=True).numpy().astype(np.int64), ref)
    if op == "dense":
        # the input stored column by column (as delta's sparse form leaves it): the transposed
        # product, its result the transpose of a contiguous one
        cols = xt.flatten(1).t().contiguous().t()
        b_t = ex._tensors["l.bias"] if bias else None
        got = ex._int8["l"].run(cols, ex._w8["l.weight"], b_t, torch.float64)
        assert np.array_equal(got.numpy().astype(np.int64), ref)
        assert n == 1 or got.stride() == (1, n)


@needs_int8
def test_patch_matrix_in_blocks_and_batches_of_any_size(monkeypatch):
    """A small block size splits the patch matrix over several image blocks (the last one
    partial); the kernel's work buffers are reused across calls and batch sizes."""
    rng = np.random.default_rng(7)
    fmt = Fixed(8, True, 0)
    w = _codes(rng, fmt, (36, 20, 3, 3))
    b = rng.integers(-1000, 1000, 36)
    net = _layer_net("conv", (0, 255), fmt, w, b, k=3, stride=1, pad=1, hw=(6, 6))
    ex = Executor(net, MemoryImage.build(net, []), "cpu", kernels="int8")
    monkeypatch.setattr(intkernels, "BLOCK_BYTES", 3 * 6 * 6 * 9 * 20)   # three images
    for n in (7, 7, 1, 4, 7):
        x = rng.integers(0, 256, (n, 20, 6, 6))
        got = ex.run(torch.as_tensor(x, dtype=torch.float32), quantized=True)
        assert np.array_equal(got.numpy().astype(np.int64), _reference("conv", x, w, b, 1, 1))


@needs_int8
@pytest.mark.parametrize("op", ["conv", "dense"])
def test_a_kept_input_follows_its_input(monkeypatch, op):
    """A conv's patch matrix, or a dense layer's int8 input, kept for an unchanging input
    (remembered activations: a trial recomputes a few faulty outputs on them) is reused for
    selected outputs, rebuilt when the input changes in place or another input comes, and not
    kept past KEEP_BYTES; every result equals the reference."""
    rng = np.random.default_rng(9)
    fmt = Fixed(8, True, 0)
    w = _codes(rng, fmt, (30, 11, 3, 3))
    b = rng.integers(-1000, 1000, 30)
    if op == "conv":
        net = _layer_net("conv", (-100, 155), fmt, w, b, k=3, stride=2, pad=1, hw=(7, 9))
        ref_w, stride, pad, hw = w, 2, 1, (7, 9)
    else:                                   # an unflattened input: the layer flattens it
        net = _layer_net("dense", (-100, 155), fmt, w.reshape(30, -1), b, hw=(3, 3))
        ref_w, stride, pad, hw = w.reshape(30, -1), 1, 0, (3, 3)
    ex = Executor(net, MemoryImage.build(net, []), "cpu", kernels="int8")
    kern, w8 = ex._int8["l"], ex._w8["l.weight"]
    rows = torch.tensor([0, 3, 4, 29])
    bias = torch.as_tensor(b, dtype=torch.float32)

    def check(x: torch.Tensor) -> None:
        got = kern.run(x, w8, bias, torch.float64, rows, keep=True)
        ref = _reference(op, x.numpy().astype(np.int64), ref_w, b, stride, pad)[:, rows.numpy()]
        assert np.array_equal(got.numpy().astype(np.int64), ref)

    x = torch.as_tensor(rng.integers(-100, 156, (5, 11, *hw)), dtype=torch.float32)
    check(x)
    kept = kern._kept[2]
    check(x)
    assert kern._kept[2] is kept                       # reused
    x[2] = 155.0                                        # changed in place: rebuilt
    check(x)
    assert kern._kept[2] is not kept
    other = x.clone()
    check(other)
    assert kern._kept[0] is other
    monkeypatch.setattr(intkernels, "KEEP_BYTES", 10)   # too large to keep
    kern._kept = None
    check(x)
    assert kern._kept is None


def _chain(rng, wbits: int = 8, protected: bool = False, mag: int | None = None
           ) -> tuple[IntNetwork, list[str]]:
    """input 0..255 -> conv 3x3 (64 ch) -> requant -> maxpool -> conv 3x3 (64 ch) -> requant
    -> flatten -> dense 256 -> requant -> dense 10: two layers on int8 under ``auto``; ``mag``:
    the clean weight codes' largest magnitude (default: the format's)."""
    wf = Fixed(wbits, True, 7, narrow=True)
    shapes = {"c1": (64, 3, 3, 3), "c2": (64, 64, 3, 3), "d1": (256, 64 * 4 * 4),
              "d2": (10, 256)}
    params = {}
    for name, shape in shapes.items():
        params[f"{name}.weight"] = Param(f"{name}.weight", name, "weight", wf,
                                         rng.integers(-(mag or (1 << (wbits - 1)) - 1),
                                                      mag or 1 << (wbits - 1), shape))
        params[f"{name}.bias"] = Param(f"{name}.bias", name, "bias", Fixed(16, True, 15),
                                       rng.integers(-3000, 3000, shape[0]))

    def mac(name, src, op, **a):
        return Node(name, op, [src], 15, -(1 << 30), 1 << 30,
                    {"weight": f"{name}.weight", "bias": f"{name}.bias", **a})

    def rq(name, src):
        return Node(name, "requant", [src], 6, 0, 255)

    nodes = [Node("input", "input", [], 8, 0, 255, {"bits": 8, "signed": False}),
             mac("c1", "input", "conv", stride=1, pad=1, k=3), rq("r1", "c1"),
             Node("p1", "maxpool", ["r1"], 6, 0, 255, {"k": 2}),
             mac("c2", "p1", "conv", stride=1, pad=1, k=3), rq("r2", "c2"),
             Node("f", "flatten", ["r2"], 6, 0, 255),
             mac("d1", "f", "dense"), rq("r3", "d1"), mac("d2", "r3", "dense")]
    net = IntNetwork("chain", nodes, params, (3, 8, 8), 10)
    return net, (["c1", "c2", "d1", "d2"] if protected else [])


@needs_int8
@pytest.mark.parametrize("protected", [False, True])
def test_faults_keep_the_int8_weights_in_step(protected):
    """Sampled SEU maps (1e-3 and 1e-2, words hit more than once included) applied to an
    executor on int8 kernels and to one on float32 kernels give equal traces; the int8 weight
    copy equals the decoded weights under the faults and after every undo."""
    rng = np.random.default_rng(11)
    net, prot = _chain(rng, protected=protected)
    img_a, img_f = MemoryImage.build(net, prot), MemoryImage.build(net, prot)
    ea = Executor(net, img_a, "cpu")
    ef = Executor(net, img_f, "cpu", kernels="float")
    assert [n for n in ("c1", "c2", "d1", "d2") if ea.kernel(n) == "int8"] == ["c2", "d1"]
    x = torch.as_tensor(rng.integers(0, 256, (9, 3, 8, 8)), dtype=torch.float32)
    sa, sf = SeuSampler(img_a), SeuSampler(img_f)
    ia, jf = Injector(img_a, ea), Injector(img_f, ef)

    def same() -> None:
        ta, tf = ea.run(x, quantized=True, trace=True), ef.run(x, quantized=True, trace=True)
        for name in ta:
            assert torch.equal(ta[name].double(), tf[name].double()), name
        assert torch.equal(ea.run(x, quantized=True), ef.run(x, quantized=True).to(
            ea.run(x, quantized=True).dtype))
        for wname, w8 in ea._w8.items():           # the int8 copy, its sums, the float32 view
            codes = img_a.codes(wname).reshape(w8.shape)
            assert torch.equal(w8.matrix, weight_matrix(torch.as_tensor(codes))), wname
            assert torch.equal(w8.rowsum, w8.matrix.sum(1, dtype=torch.int32)), wname
            assert np.array_equal(ea.tensors[wname].numpy().astype(np.int64), codes), wname

    same()
    for t, ber in enumerate((1e-3, 1e-2, 1e-2)):
        fa, ff = sa.sample(ber, trial_rng(5, ber, t)), sf.sample(ber, trial_rng(5, ber, t))
        assert len(fa) == len(ff) > 0
        ia.apply(fa)
        jf.apply(ff)
        same()
        ia.undo()
        jf.undo()
        same()


@needs_int8
def test_accumulators_past_float32_reach_the_requant_exactly():
    """The largest weights against the largest inputs push the accumulators past 2**24: the
    requant reading them gets float32 only where its clamp hides float32's rounding, and a
    trace keeps them exact."""
    rng = np.random.default_rng(3)
    net, _ = _chain(rng)
    for p in net.params.values():
        if p.kind == "weight":
            p.codes[...] = 127
    ea = Executor(net, MemoryImage.build(net, []), "cpu")
    ef = Executor(net, MemoryImage.build(net, []), "cpu", kernels="float")
    x = torch.full((2, 3, 8, 8), 255.0)
    x[1] = 0
    ta, tf = ea.run(x, quantized=True, trace=True), ef.run(x, quantized=True, trace=True)
    assert ta["d1"].abs().max() >= 1 << 24
    for name in ta:
        assert torch.equal(ta[name].double(), tf[name].double()), name
    assert torch.equal(ea.run(x, quantized=True).double(), tf["d2"].double())


@needs_int8
@pytest.mark.parametrize("weights", ["random", "all 127"])
def test_a_wide_int8_layer_adds_its_changed_inputs_in_float32_only_while_exact(monkeypatch,
                                                                              weights):
    """d1 (1024 -> 256) runs on int8 with float64 accumulators (its worst case passes 2**24).
    Flips in c2's rows change d1's input features (16 per row): d1 adds their change to a
    float32 copy of its clean accumulator only while the clean peak plus what the changed
    features can move it stays below 2**24, and runs whole otherwise. With random weights both
    maps below (7 rows, 1 row) take float32; with every weight 127 against inputs of 255 (clean
    peak about 10.1M) the 7 rows' 112 features could pass 2**24 (whole), one row's 16 cannot.
    Every result equals a full forward pass on float32 kernels."""
    rng = np.random.default_rng(13)
    net, _ = _chain(rng)
    x = torch.as_tensor(rng.integers(0, 256, (9, 3, 8, 8)), dtype=torch.float32)
    if weights == "all 127":
        net.params["d1.weight"].codes[...] = 127
        x[...] = 255
    img, img_f = MemoryImage.build(net, []), MemoryImage.build(net, [])
    ea, ef = Executor(net, img, "cpu"), Executor(net, img_f, "cpu", kernels="float")
    assert ea.kernel("d1") == "int8" and ea._dtype["d1"] == torch.float64
    ea.remember(x, quantized=True)
    clean = ea.run(x, quantized=True, trace=True)
    peak = float(clean["d1"].abs().max())
    assert peak < 1 << 24 and (peak > 1e7) == (weights == "all 127")
    monkeypatch.setattr(delta, "CALL_COST", 0)
    monkeypatch.setattr(delta, "TRANSPOSED_COST", 0)
    calls = []
    dense_delta = delta._dense_delta
    monkeypatch.setattr(delta, "_dense_delta", lambda *a: calls.append(a[-1]) or dense_delta(*a))
    # the MSB of one weight in each of 7 of c2's rows, then in one row only
    for fmap in (FaultMap.from_faults([("c2.weight", 576 * r + 5, 7) for r in range(0, 64, 9)]),
                 FaultMap.from_faults([("c2.weight", 576 * 3 + 100, 7)])):
        with Injector(img, ea).injected(fmap), Injector(img_f, ef).injected(fmap):
            got, ref = ea.run(x, quantized=True), ef.run(x, quantized=True)
        assert torch.equal(got.double(), ref.double())
    assert calls == ([True] if weights == "all 127" else [True, True])


def test_plan_refuses_what_int8_cannot_hold():
    f8 = Fixed(8, True, 0)

    def dense(x_range, fmt=f8, n_in=256, n_out=64, b_bits=24):
        w = np.zeros((n_out, n_in), np.int64)
        return _layer_net("dense", x_range, fmt, w, np.zeros(n_out, np.int64), b_bits=b_bits)

    net = dense((0, 255))
    assert plan_int8(net, net.node("l"), small=True).offset == 128
    assert plan_int8(net, net.node("l"), small=True).unsigned
    net = dense((-128, 127))
    assert plan_int8(net, net.node("l"), small=True).offset == 0
    net = dense((-100, 155))
    assert plan_int8(net, net.node("l"), small=True).offset == 28
    big = dense((0, 255), n_in=512, n_out=256)        # large enough to gain
    assert plan_int8(big, big.node("l")) is not None
    for net in (dense((0, 256)),                      # 257 input codes
                dense((0, 255), Fixed(9, True, 0)),   # 9-bit weights
                dense((0, 255), Fixed(8, False, 0)),  # unsigned 8-bit weights: up to 255
                dense((0, 255), n_in=1),              # fan-in of one
                dense((0, 255), b_bits=32)):          # the bias alone reaches 2**31
        assert plan_int8(net, net.node("l"), small=True) is None
    small = dense((0, 255), n_in=32, n_out=10)        # too small to gain: only when asked
    assert plan_int8(small, small.node("l")) is None
    assert plan_int8(small, small.node("l"), small=True) is not None
    # an input that nothing clamps (a residual add) is not trusted to stay in its range
    net = dense((0, 255))
    net.nodes.insert(1, Node("sum", "add", ["input", "input"], 0, 0, 255))
    net.nodes[2].inputs = ["sum"]
    assert plan_int8(net, net.node("l"), small=True) is None


@needs_int8
def test_batched_maps_read_the_int8_layers_faulty_weights(monkeypatch):
    """A campaign worker classifying several maps in one pass reads each map's faulty weights
    from the executor (an int8 layer's float32 weights follow its int8 copy when read): the
    same (flips, correct) as one map at a time, and the clean results after."""
    rng = np.random.default_rng(5)
    net, _ = _chain(rng, mag=12)           # small codes: the batched form stays below 2**24
    image = MemoryImage.build(net, [])
    ex = Executor(net, image, "cpu")
    assert ex.kernel("d1") == "int8"
    x = torch.as_tensor(rng.integers(0, 256, (16, 3, 8, 8)), dtype=torch.float32)
    y = ex.predict(x)                      # labels: the clean predictions
    worker = FaultWorker(ex, image, x, y)
    clean = ex.run(worker.xq, quantized=True)
    tasks = [(3, 1e-2, t, ("weight",), None, None, "flip") for t in range(6)]
    one = [worker.trial(*task)[:2] for task in tasks]
    batched = []
    monkeypatch.setattr(parallel, "predict_maps", lambda *a, **k: batched.append(
        predict_maps(*a, **k)) or batched[-1])
    assert [r[:2] for r in worker.trials(tasks)] == one
    assert batched and batched[0] is not None                # batched, not one at a time
    assert worker.clean == 16 and any(c < 16 for _, c in one)
    assert torch.equal(ex.run(worker.xq.clone(), quantized=True), clean)


@needs_int8
def test_a_brevitas_network_runs_its_large_layers_on_int8_with_hand_written_faults():
    """A Brevitas module written here (5-bit and 6-bit convs, a stride-2 conv, 8- and 7-bit
    activations, a 7-bit 384 -> 360 dense layer), exported to QONNX and lowered as any user's:
    under ``auto`` its two large layers run on int8 (one after unsigned 8-bit inputs, shifted;
    one after 7-bit inputs, not shifted) and equal the float32 kernels, clean and under a fault
    map written by hand."""
    import importlib.util

    from flow.nn.lower import lower_graph
    from flow.nn.qonnx_graph import export_module
    spec = importlib.util.spec_from_file_location("user_nets_int8",
                                                  Path(__file__).with_name("user_nets.py"))
    un = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(un)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.quant_in = un._in(8)
            self.c1, self.r1 = un._conv(1, 40, 3, bits=5, padding=1), un._relu(8)
            self.c2, self.r2 = un._conv(40, 96, 3, bits=6, stride=2, padding=1), un._relu(7)
            self.pool = torch.nn.MaxPool2d(2)
            self.f1, self.r3 = un._linear(384, 360, bits=7), un._relu(6)
            self.f2 = un._linear(360, 10)

        def forward(self, x):
            y = self.pool(self.r2(self.c2(self.r1(self.c1(self.quant_in(x))))))
            return self.f2(self.r3(self.f1(y.flatten(1))))

    torch.manual_seed(3)
    net = lower_graph(export_module(Net(), (1, 8, 8)), "user")
    layers = [n.name for n in net.nodes if n.op in ("conv", "dense")]
    ia, jf = MemoryImage.build(net, []), MemoryImage.build(net, [])
    ea, ef = Executor(net, ia, "cpu"), Executor(net, jf, "cpu", kernels="float")
    assert [ea.kernel(n) for n in layers] == ["float32", "int8", "int8", "float32"]
    assert [ea._int8[n].layer.offset for n in layers[1:3]] == [128, 0]
    x = torch.rand(23, 1, 8, 8)
    clean = ea.run(x)
    assert torch.equal(clean, ef.run(x).to(clean.dtype))
    c2, f1 = (net.node(n).attrs["weight"] for n in layers[1:3])
    m1, m2 = ia.memory(c2), ia.memory(f1)
    rows = ([(c2, w, b) for w in (0, 7, 359, m1.depth - 1) for b in range(m1.width)]
            + [(f1, w, m2.width - 1) for w in range(0, m2.depth, 7)])
    fmap = FaultMap.from_faults(rows)
    for img, ex in ((ia, ea), (jf, ef)):
        Injector(img, ex).apply(fmap)
    faulty = ea.run(x)
    assert not torch.equal(faulty, clean)
    assert torch.equal(faulty, ef.run(x).to(faulty.dtype))
    for name in (c2, f1):
        assert np.array_equal(ea.tensors[name].numpy().ravel().astype(np.int64),
                              ia.codes(name).ravel())
