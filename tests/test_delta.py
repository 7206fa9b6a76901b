"""Re-evaluation of a remembered batch from what a fault map changed (flow.core.delta).

A remembered executor recomputes only the faulty rows of a layer whose input is clean, passes
the changed channels through requant, max-pool and flatten, and adds a dense layer's changed
input features to its clean accumulator. Every result is compared with an executor that
remembers nothing (a full forward pass, float32 kernels), on networks written here and users'
Brevitas networks, under fault maps written by hand (single MSBs, every bit of a few words,
biases only, most rows of a layer, stuck-at bits, stacked maps, TMR words) and sampled ones;
the paths each map is meant to take are checked to be taken.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import lowered_network, same_scores

from flow.core import chain, delta
from flow.core.executor import Executor
from flow.core.image import MemoryImage
from flow.core.intkernels import int8_matmul_exact
from flow.core.ir import IntNetwork, Node, Param
from flow.core.precision import Fixed
from flow.reliability.faults import FaultMap, Injector, SeuSampler, trial_rng

NETS = Path(__file__).with_name("user_nets.py")
KERNELS = ["float", pytest.param("int8", marks=pytest.mark.skipif(
    not int8_matmul_exact(), reason="no exact int8 matrix product on this CPU"))]


def _net(rng: np.random.Generator, wide: bool = False) -> IntNetwork:
    """input 0..255 (3x8x8) -> conv 3x3 pad 1 (24 ch) -> requant -> max-pool 2 -> conv 3x3 pad 0
    (40 ch) -> requant -> flatten (160) -> dense 96 -> requant -> dense 10. ``wide``: the first
    dense layer has 512 outputs of code 255 (zero weights, bias 600), the last one weights -128
    or 127 by row: accumulators within 2**16 of 2**24."""
    w8 = Fixed(8, True, 7)
    d1_out = 512 if wide else 96
    shapes = {"c1": (24, 3, 3, 3), "c2": (40, 24, 3, 3), "d1": (d1_out, 160),
              "d2": (10, d1_out)}
    params = {}
    for name, shape in shapes.items():
        codes = rng.integers(-128, 128, shape)
        bias = rng.integers(-3000, 3000, shape[0])
        if wide and name == "d1":
            codes, bias = np.zeros(shape, np.int64), np.full(shape[0], 600)
        if wide and name == "d2":
            codes = np.where(rng.random((shape[0], 1)) < 0.5, -128, 127).repeat(shape[1], 1)
        params[f"{name}.weight"] = Param(f"{name}.weight", name, "weight", w8, codes)
        params[f"{name}.bias"] = Param(f"{name}.bias", name, "bias", Fixed(16, True, 15),
                                       bias)

    def mac(name, src, op, **a):
        return Node(name, op, [src], 15, -(1 << 24) + 1, (1 << 24) - 1,
                    {"weight": f"{name}.weight", "bias": f"{name}.bias", **a})

    def rq(name, src, frac=6):
        return Node(name, "requant", [src], frac, 0, 255)

    nodes = [Node("input", "input", [], 8, 0, 255, {"bits": 8, "signed": False}),
             mac("c1", "input", "conv", stride=1, pad=1, k=3), rq("r1", "c1"),
             Node("p1", "maxpool", ["r1"], 6, 0, 255, {"k": 2}),
             mac("c2", "p1", "conv", stride=1, pad=0, k=3), rq("r2", "c2"),
             Node("f", "flatten", ["r2"], 6, 0, 255),
             mac("d1", "f", "dense"), rq("r3", "d1", 14 if wide else 6),
             mac("d2", "r3", "dense")]
    return IntNetwork("delta", nodes, params, (3, 8, 8), 10)


class _Spy:
    """Records which form each node took: (node, 'part' | 'whole'), the dense deltas and the
    weight-change products (a few rows or all on the clean accumulator, or a few rows' changes
    alone, "added"). With ``free_calls`` PyTorch calls and results stored column by
    column cost nothing in the choice of form, so the small networks here take every form a map
    allows (by default they would run whole)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, free_calls: bool = True) -> None:
        # the PyTorch forms only: dense chains to the output would run compiled (test_chain.py)
        monkeypatch.setattr(chain, "forward", lambda *a: None)
        if free_calls:
            monkeypatch.setattr(delta, "CALL_COST", 0)
            monkeypatch.setattr(delta, "TRANSPOSED_COST", 0)
        self.steps: Counter = Counter()
        self.deltas = 0
        self.single: list[bool] = []            # each dense delta: one product of differences
        self.sparse: Counter = Counter()        # weight-change products: (node, rows or all)
        step, dense, weights = delta._step, delta._dense_delta, delta._weight_delta
        conv, conv_layer = delta._conv_weight_delta, delta._conv
        self.conv_input: Counter = Counter()   # convs that added their input channels' change

        def spy_step(ex, node, memo, parts, side):
            part = step(ex, node, memo, parts, side)
            self.steps[(node.name, "whole" if part.cols is None else "part")] += 1
            return part

        def spy_dense(*a):
            self.deltas += 1
            self.single.append(a[-1])
            return dense(*a)

        def spy_weights(ex, node, memo, side, ch, rows, dtype, clean=True):
            form = "all" if rows is None else "rows" if clean else "added"
            self.sparse[(node.name, form)] += 1
            return weights(ex, node, memo, side, ch, rows, dtype, clean)
        def spy_conv(memo, side, node, patches, ch, rows, clean=True):
            self.sparse[(node.name, "rows" if clean else "added")] += 1
            return conv(memo, side, node, patches, ch, rows, clean)
        monkeypatch.setattr(delta, "_step", spy_step)
        def spy_conv_layer(ex, node, memo, parts, side):
            part = conv_layer(ex, node, memo, parts, side)
            self.conv_input[node.name] += part is not None and node.inputs[0] in parts
            return part
        monkeypatch.setattr(delta, "_conv_weight_delta", spy_conv)
        monkeypatch.setattr(delta, "_conv", spy_conv_layer)
        monkeypatch.setattr(delta, "_dense_delta", spy_dense)
        monkeypatch.setattr(delta, "_weight_delta", spy_weights)


def _pair(net: IntNetwork, protected: list[str], kernels: str, x: torch.Tensor):
    """An image, a remembering executor on ``kernels`` and a fresh float32 one over it."""
    image = MemoryImage.build(net, protected)
    ex, fresh = Executor(net, image, "cpu", kernels=kernels), Executor(net, image, "cpu",
                                                                       kernels="float")
    ex.remember(x, quantized=True)
    return image, ex, fresh


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("protected", [False, True], ids=["plain", "tmr"])
def test_hand_written_maps_equal_a_full_forward(monkeypatch, kernels, protected):
    """Maps written for each form (one row per layer, a conv row and the dense delta after it,
    biases, most rows of a layer, stuck-at bits, stacked maps) equal a full forward pass."""
    rng = np.random.default_rng(4)
    net = _net(rng)
    x = torch.as_tensor(rng.integers(0, 256, (37, 3, 8, 8)), dtype=torch.float32)
    image, ex, fresh = _pair(net, ["c2", "d1"] if protected else [], kernels, x)
    spy = _Spy(monkeypatch)
    mem = {n: image.memory(f"{n}.weight") for n in ("c1", "c2", "d1", "d2")}
    top = {n: m.width - 1 for n, m in mem.items()}
    clean = fresh.run(x, quantized=True)
    maps = {
        # the two top bits of one word per layer (two MSB copies of a TMR word): one faulty
        # row, its channel passed on to the end
        **{f"msb {n}": [FaultMap.from_faults([(f"{n}.weight", 5, top[n]),
                                              (f"{n}.weight", 5, top[n] - 1)])] for n in mem},
        # every bit of three words of one conv row, and two words of the dense layer after
        "rows and delta": [FaultMap.from_faults(
            [("c2.weight", w, b) for w in (0, 1, 215) for b in range(mem["c2"].width)]
            + [("d1.weight", 3, 0), ("d1.weight", 161, top["d1"])])],
        "biases": [FaultMap.from_faults([("c1.bias", 2, 15), ("d1.bias", 7, 14),
                                         ("d2.bias", 0, 15)])],
        # a conv's input channel and its own faulty row (its weight changes' products added
        # after the input's change), or a row with many changed words (recomputed), alone or
        # after the input's change
        "conv input and row": [FaultMap.from_faults([("c1.weight", 30, top["c1"]),
                                                     ("c2.weight", 216 * 3 + 5, 3)])],
        "conv input and full row": [FaultMap.from_faults(
            [("c1.weight", 30, top["c1"])]
            + [("c2.weight", 216 * 3 + w, 4) for w in range(0, 40, 2)])],
        "full conv row": [FaultMap.from_faults([("c2.weight", 216 * 5 + w, 4)
                                                for w in range(0, 40, 2)])],
        # most rows of the first dense layer: it runs whole
        "most rows": [FaultMap.from_faults([("d1.weight", 160 * r + 9, top["d1"])
                                            for r in range(0, 96, 2)])],
        "stuck and flips": [FaultMap.from_faults(
            [("c1.weight", 17, top["c1"], "stuck1"), ("c1.weight", 17, 0),
             ("d2.weight", 40, top["d2"], "stuck0"), ("d2.weight", 41, 1, "stuck1")])],
        # two maps stacked: the second touches words of the first again
        "stacked": [FaultMap.from_faults([("c2.weight", 99, top["c2"]), ("d1.weight", 8, 3)]),
                    FaultMap.from_faults([("c2.weight", 99, top["c2"]),
                                          ("c2.weight", 100, 2), ("d2.weight", 1, 0)])],
    }
    changed = 0
    for name, fmaps in maps.items():
        changed += not torch.equal(same_scores(image, ex, fresh, x, fmaps).double(), clean.double())
    assert changed >= len(maps) // 2                 # the maps do change scores
    # the forms the maps were written for were taken
    for form in (("c1", "part"), ("r1", "part"), ("p1", "part"), ("c2", "whole"),
                 ("c2", "part"), ("r2", "part"), ("f", "part"), ("d1", "whole"),
                 ("d1", "part"), ("d2", "part"), ("d2", "whole")):
        assert spy.steps[form], form
    assert spy.deltas > 0
    # d1's changed weights as products added to its clean accumulator: a few rows alone, and
    # all rows (most rows faulty: their MSBs, which TMR words out-vote); after its input's
    # change, the faulty rows' products alone added last (all rows first, before an input
    # change that is not one product: test_worst_case_codes_near_float32s_limit)
    assert spy.sparse[("d1", "rows")] and spy.sparse[("d1", "added")]
    assert spy.sparse[("d1", "all")] or protected
    assert any(spy.single)             # features' changes as one product of differences
    # c2's faulty rows: its weight changes' products on the clean input's patch matrix, alone
    # or added after its input channels' change
    assert spy.sparse[("c2", "rows")] and spy.sparse[("c2", "added")]
    assert spy.conv_input["c2"] >= 3                # its input channels' change added
    if kernels == "int8":                 # c2's rows on its clean input: a kept patch matrix
        assert ex._int8["c2"]._kept[0] is ex._memo[ex._key(x, True)][1]["p1"]
    assert torch.equal(ex.run(x, quantized=True).double(), clean.double())


@pytest.mark.parametrize("kernels", KERNELS)
def test_worst_case_codes_near_float32s_limit(monkeypatch, kernels):
    """The last layer's accumulators lie within 2**17 of 2**24 (fan-in 512 of codes 255 times
    -128 or 127): its clean accumulator minus the old products plus the new ones stays exact
    when the layer before changes a few features, and when its own weights flip. One weight
    flip (bit 6) is added as a product to the clean accumulator (it moves it by 64 x 255); the
    MSBs of eight words of one row could move it past 2**24, so that row is recomputed; the
    features' change is never one product of differences (that could pass 2**24), always the
    old products out, then the new ones in."""
    rng = np.random.default_rng(8)
    net = _net(rng, wide=True)
    x = torch.full((6, 3, 8, 8), 255.0)
    image, ex, fresh = _pair(net, [], kernels, x)
    assert ex._dtype["d2"] == torch.float32
    acc = fresh.run(x, quantized=True, trace=True)
    assert acc["r3"].max() == 255 and acc["d2"].abs().max() > (1 << 24) - (1 << 17)
    spy = _Spy(monkeypatch)
    clean = ex.run(x, quantized=True)
    for rows in ([0], [7, 300], list(range(0, 512, 40))):
        # bias 600 -> 88: those features fall from 255 to 44; a weight bit of the last layer
        fmap = FaultMap.from_faults([("d1.bias", r, 9) for r in rows]
                                    + [("d2.weight", 512 * 3 + 11, 6)])
        assert not torch.equal(same_scores(image, ex, fresh, x, [fmap]), clean)
    assert spy.sparse[("d2", "all")] == 3
    fmap = FaultMap.from_faults([("d1.bias", 5, 9)]
                                + [("d2.weight", 512 * 3 + w, 7) for w in range(0, 512, 64)])
    assert not torch.equal(same_scores(image, ex, fresh, x, [fmap]), clean)
    assert spy.sparse[("d2", "all")] == 3 and spy.deltas == 4 and not any(spy.single)


def _conv_chain(peak_codes: int) -> IntNetwork:
    """input 0..255 (56 x 6 x 6) -> 1x1 conv c0 (56 ch, weight 1 on its own channel, bias 0)
    -> requant -> 3x3 conv c1 pad 1 (4 ch; weights ``peak_codes`` by sign of the row: -128 or
    127 on rows 0, 2 and 1, 3; 0 elsewhere) -> requant. With inputs of 255, c1's centre outputs
    sum 504 products of 255 x 127 (16.3M, within 2**19 of 2**24) at ``peak_codes`` 127."""
    w0 = np.zeros((56, 56, 1, 1), np.int64)
    w0[np.arange(56), np.arange(56)] = 1
    w1 = np.zeros((4, 56, 3, 3), np.int64)
    w1[[0, 2]] = -min(peak_codes + 1, 128)
    w1[[1, 3]] = peak_codes
    fmt = Fixed(8, True, 7)
    params = {"c0.weight": Param("c0.weight", "c0", "weight", fmt, w0),
              "c0.bias": Param("c0.bias", "c0", "bias", Fixed(16, True, 15), np.zeros(56)),
              "c1.weight": Param("c1.weight", "c1", "weight", fmt, w1),
              "c1.bias": Param("c1.bias", "c1", "bias", Fixed(16, True, 15), np.zeros(4))}
    big = (1 << 24) - 1
    return IntNetwork("conv_chain", [
        Node("input", "input", [], 0, 0, 255, {"bits": 8, "signed": False}),
        Node("c0", "conv", ["input"], 7, -big, big,
             {"weight": "c0.weight", "bias": "c0.bias", "stride": 1, "pad": 0, "k": 1}),
        Node("r0", "requant", ["c0"], 7, 0, 255),
        Node("c1", "conv", ["r0"], 14, -big, big,
             {"weight": "c1.weight", "bias": "c1.bias", "stride": 1, "pad": 1, "k": 3}),
        Node("r1", "requant", ["c1"], -2, -128, 127)], params, (56, 6, 6), 144)


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("peak", [127, 8])
def test_conv_input_change_near_float32s_limit(monkeypatch, kernels, peak):
    """A conv whose input channels change adds ``conv((x' - x)[:, C], W'[:, C])`` to its clean
    accumulator only while every partial sum stays below 2**24: with accumulators within 2**19
    of 2**24 (peak 127), two changed channels (each can move an output by 2 x 9 x 255 x 128)
    are refused and the layer runs whole; at peak 8 they are added, with c1's own faulty
    channel (a weight's bit 6) recomputed or its product added. Both equal a full forward."""
    net = _conv_chain(peak)
    x = torch.full((5, 56, 6, 6), 255.0)
    x[:, :, 0, 0] = 0
    image, ex, fresh = _pair(net, [], kernels, x)
    acc = fresh.run(x, quantized=True, trace=True)["c1"]
    assert (acc.abs().max() > (1 << 24) - (1 << 19)) == (peak == 127)
    spy = _Spy(monkeypatch)
    clean = fresh.run(x, quantized=True)
    # c0's weight bit 7 of channels 3 and 40 (1 -> -127: those channels fall to 0), and a
    # weight of c1's row 1
    fmap = FaultMap.from_faults([("c0.weight", 3 * 56 + 3, 7), ("c0.weight", 40 * 56 + 40, 7),
                                 ("c1.weight", 504 + 9 * 7 + 4, 6)])
    assert not torch.equal(same_scores(image, ex, fresh, x, [fmap]), clean)
    assert spy.conv_input["c1"] == (0 if peak == 127 else 1)


def test_small_layers_run_whole_large_ones_recompute_their_faulty_rows(monkeypatch):
    """The cost rule: one faulty row of the small test network's first conv over 15 images
    (0.6M MACs) is not worth three extra PyTorch calls, so it runs whole; one faulty row of a
    512 -> 512 dense layer over 256 inputs (67M MACs) is recomputed alone, and so are 128 (a
    quarter), not 129."""
    rng = np.random.default_rng(2)
    net = _net(rng)
    x = torch.as_tensor(rng.integers(0, 256, (15, 3, 8, 8)), dtype=torch.float32)
    image, ex, fresh = _pair(net, [], "float", x)
    spy = _Spy(monkeypatch, free_calls=False)
    same_scores(image, ex, fresh, x, [FaultMap.from_faults([("c1.weight", 0, 7)])])
    assert spy.steps[("c1", "whole")] == 1 and not spy.steps[("c1", "part")]
    params = {"d.weight": Param("d.weight", "d", "weight", Fixed(8, True, 7),
                                rng.integers(-128, 128, (512, 512))),
              "d.bias": Param("d.bias", "d", "bias", Fixed(16, True, 15),
                              rng.integers(-3000, 3000, 512))}
    net2 = IntNetwork("dense", [
        Node("input", "input", [], 8, 0, 255, {"bits": 8, "signed": False}),
        Node("f", "flatten", ["input"], 8, 0, 255),
        Node("d", "dense", ["f"], 15, -(1 << 24) + 1, (1 << 24) - 1,
             {"weight": "d.weight", "bias": "d.bias"})], params, (8, 8, 8), 512)
    x2 = torch.as_tensor(rng.integers(0, 256, (256, 8, 8, 8)), dtype=torch.float32)
    image2, ex2, fresh2 = _pair(net2, [], "float", x2)
    same_scores(image2, ex2, fresh2, x2, [FaultMap.from_faults([("d.weight", 5, 7)])])
    assert spy.steps[("d", "part")] == 1
    # a quarter of the outputs faulty (DENSE_PART_MAX): still alone; one row more: whole
    for rows, form in ((128, "part"), (129, "whole")):
        spy.steps.clear()
        same_scores(image2, ex2, fresh2, x2, [FaultMap.from_faults(
            [("d.weight", 512 * r + 3, 7) for r in range(rows)])])
        assert spy.steps == Counter({("d", form): 1})


@pytest.mark.parametrize("kernels", KERNELS)
def test_layer_run_whole_on_its_changed_input_in_place(monkeypatch, kernels):
    """A conv whose input changed in one channel and most of whose rows are faulty runs whole:
    a float kernel on the remembered clean codes with the changed channel written in (no copy
    of its whole input), equal to a full forward pass; the clean codes are back after, also
    when the layer raises. An int8 kernel takes its input made whole."""
    rng = np.random.default_rng(6)
    net = _net(rng)
    x = torch.as_tensor(rng.integers(0, 256, (23, 3, 8, 8)), dtype=torch.float32)
    image, ex, fresh = _pair(net, [], kernels, x)
    memo = ex._memo[ex._key(x, True)][1]
    before = {n: t.clone() for n, t in memo.items()}
    calls = []
    patched = delta._on_patched
    monkeypatch.setattr(delta, "_on_patched", lambda *a: calls.append(a[1].name) or patched(*a))
    top = image.memory("c1.weight").width - 1
    # c1's row 4 (one input channel of c2) and one word in each of 30 of c2's 40 rows
    fmap = FaultMap.from_faults([("c1.weight", 27 * 4 + 2, top)]
                                + [("c2.weight", 216 * r + 7, 6) for r in range(30)])
    same_scores(image, ex, fresh, x, [fmap])
    assert calls == (["c2"] if kernels == "float" else [])
    assert all(torch.equal(memo[n], t) for n, t in before.items())
    assert torch.equal(ex.run(x, quantized=True), fresh.run(x, quantized=True))
    if kernels == "float":              # an error inside the layer: the clean codes restored
        node = ex._node

        def broken(n, vals, inplace):
            if n.name == "c2":
                raise RuntimeError("out of memory")
            return node(n, vals, inplace)
        monkeypatch.setattr(ex, "_node", broken)
        inj = Injector(image, ex)
        inj.apply(fmap)
        with pytest.raises(RuntimeError, match="out of memory"):
            ex.run(x, quantized=True)
        inj.undo()
        monkeypatch.setattr(ex, "_node", node)
        assert all(torch.equal(memo[n], t) for n, t in before.items())
        assert torch.equal(ex.run(x, quantized=True), fresh.run(x, quantized=True))


@pytest.mark.parametrize("kernels", KERNELS)
def test_channels_a_requant_leaves_clean_are_dropped(monkeypatch, kernels):
    """A change that the requant rounds away or clamps goes no further: the LSB of the bias of
    outputs of d1 below the requant's zero for every image (clamped to 0 either way) leaves r3
    clean, and d2 is not run; with a weight's MSB flip beside them, in an output inside r3's
    range for some images, r3 passes on that output's channel alone."""
    rng = np.random.default_rng(6)
    net = _net(rng)
    x = torch.as_tensor(rng.integers(0, 256, (37, 3, 8, 8)), dtype=torch.float32)
    image, ex, fresh = _pair(net, [], kernels, x)
    trace = fresh.run(x, quantized=True, trace=True)
    acc, feats = trace["d1"], trace["f"]
    low = np.flatnonzero((acc.max(0).values < -1024).numpy())     # r3 is 0 there, +-1 or not
    inside = ((acc > 1024) & (acc < 200 * 512)).sum(0).numpy()      # images, by output
    assert low.size >= 3 and inside.max() > 0
    live, feat = int(inside.argmax()), int(feats.min(0).values.argmax())
    assert feats[:, feat].min() >= 8          # the MSB moves every image's code by 2 or more
    spy = _Spy(monkeypatch)
    cols: list[list[int]] = []
    step = delta._step

    def spy_r3(ex_, node, memo, parts, side):
        part = step(ex_, node, memo, parts, side)
        if node.name == "r3":
            cols.append(part.cols.tolist())
        return part
    monkeypatch.setattr(delta, "_step", spy_r3)
    bits = [("d1.bias", int(r), 0) for r in low[:3]]
    clean = fresh.run(x, quantized=True)
    assert torch.equal(same_scores(image, ex, fresh, x, [FaultMap.from_faults(bits)]), clean)
    assert cols == [[]] and not spy.steps[("d2", "whole")] + spy.steps[("d2", "part")]
    same_scores(image, ex, fresh, x, [FaultMap.from_faults(bits + [("d1.weight", 160 * live + feat,
                                                               7)])])
    assert cols[1] == [live] and spy.steps[("d2", "whole")] + spy.steps[("d2", "part")] == 1


@pytest.mark.parametrize("arch", ["dense_64_37_23_10", "residual_gap", "binary_mlp",
                                  "odd_cnn"])
def test_sampled_maps_on_users_networks(monkeypatch, arch):
    """Users' Brevitas networks (an odd MLP, a residual network whose add reads a changed and a
    clean input, a binary MLP whose thresholds run whole, an odd CNN), sampled maps at 1e-3 and
    1e-2 over weights and biases, 6 trials each."""
    net, image, data = lowered_network(f"{NETS}:{arch}", "delta")
    fresh = Executor(net, image, "cpu", kernels="float")
    ex = Executor(net, image, "cpu")
    x = ex.quantize_input(data.test.x[:150])
    ex.remember(x, quantized=True)
    monkeypatch.setattr(delta, "CALL_COST", 0)            # every form a map allows
    monkeypatch.setattr(delta, "TRANSPOSED_COST", 0)
    sampler = SeuSampler(image, kinds=("weight", "bias"))
    flips = 0
    for ber in (1e-3, 1e-2):
        for t in range(6):
            fmap = sampler.sample(ber, trial_rng(3, ber, t))
            flips += len(fmap)
            same_scores(image, ex, fresh, x, [fmap])
    assert flips > 0
