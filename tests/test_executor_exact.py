"""Exact integer arithmetic at the float32 boundary.

A layer whose worst-case accumulator (any input code times any weight code of the format, so
faulty weights included) reaches 2**24 runs as float32 chunks of its fan-in whose partial sums
stay below 2**24, added exactly in float64. Checked against int64 and float64 references with
worst-case codes, random codes over the whole range, every weight MSB flipped, and protected
(MSB-triplicated) words, for dense and conv layers with a bias; the same cases on the int8
kernels, whose int32 accumulators hold them whole.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flow.core.executor import EXACT_F32, Executor
from flow.core.image import MemoryImage
from flow.core.intkernels import int8_matmul_exact
from flow.core.ir import IntNetwork, Node, Param
from flow.core.precision import Fixed
from flow.reliability.faults import FaultMap, Injector

IN_BITS, W_BITS, B_BITS = 8, 8, 28


def _net(op: str, n_in: int, n_out: int, w: np.ndarray, b: np.ndarray, k: int = 3,
         hw: int = 5) -> IntNetwork:
    """input (unsigned 8-bit codes) -> [flatten] -> conv k x k (pad k//2) or dense, with a bias;
    the accumulator is the output."""
    wfmt, bfmt = Fixed(W_BITS, True, 0), Fixed(B_BITS, True, 0)
    params = {"l.weight": Param("l.weight", "l", "weight", wfmt, w),
              "l.bias": Param("l.bias", "l", "bias", bfmt, b)}
    fan_in = n_in * (k * k if op == "conv" else 1)
    bound = fan_in * ((1 << IN_BITS) - 1) * (1 << (W_BITS - 1)) + (1 << (B_BITS - 1))
    nodes = [Node("input", "input", [], 0, 0, (1 << IN_BITS) - 1,
                  {"bits": IN_BITS, "signed": False})]
    if op == "conv":
        nodes.append(Node("l", "conv", ["input"], 0, -bound, bound,
                          {"weight": "l.weight", "bias": "l.bias", "stride": 1, "pad": k // 2}))
        shape = (n_in, hw, hw)
    else:
        nodes += [Node("flat", "flatten", ["input"], 0, 0, (1 << IN_BITS) - 1),
                  Node("l", "dense", ["flat"], 0, -bound, bound,
                       {"weight": "l.weight", "bias": "l.bias"})]
        shape = (n_in, 1, 1)
    return IntNetwork("boundary", nodes, params, shape, n_out)


def _reference(op: str, x: np.ndarray, w: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """int64 (dense) or float64 (conv, exact: every sum stays far below 2**53) reference."""
    if op == "dense":
        return x.reshape(len(x), -1).astype(np.int64) @ w.astype(np.int64).T + b
    out = F.conv2d(torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(w, dtype=torch.float64),
                   torch.as_tensor(b, dtype=torch.float64), padding=k // 2)
    return out.numpy().astype(np.int64)


CASES = [("dense", 4096, 6, 1), ("conv", 256, 5, 3)]   # worst case 2**30.0 and 2**29.2


def _codes(op, n_in, n_out, k, rng, kind):
    wshape = (n_out, n_in, k, k) if op == "conv" else (n_out, n_in)
    xshape = (7, n_in, 5, 5) if op == "conv" else (7, n_in, 1, 1)
    if kind == "worst":            # the most negative weight code against the largest inputs
        w = np.full(wshape, -(1 << (W_BITS - 1)), np.int64)
        x = np.full(xshape, (1 << IN_BITS) - 1, np.int64)
        b = np.full(n_out, -(1 << (B_BITS - 1)), np.int64)
    else:                          # large odd-and-even values of one sign: sums beyond 2**24
        w = rng.integers(-(1 << (W_BITS - 1)), -48, wshape)
        x = rng.integers(64, 1 << IN_BITS, xshape)
        b = rng.integers(-(1 << (B_BITS - 1)), 1 << (B_BITS - 1), n_out)
    return x, w, b


@pytest.mark.parametrize("op, n_in, n_out, k", CASES)
@pytest.mark.parametrize("kind", ["worst", "random"])
def test_wide_layers_are_exact(op, n_in, n_out, k, kind):
    rng = np.random.default_rng(0)
    x, w, b = _codes(op, n_in, n_out, k, rng, kind)
    net = _net(op, n_in, n_out, w, b, k)
    ex = Executor(net, MemoryImage.build(net, []), "cpu")
    assert ex.split("l") and len(ex._chunks["l"]) > 1   # split, not run in float64
    assert 1 < len(ex._chunks_now("l")) <= len(ex._chunks["l"])
    assert ex.tensors["l.weight"].dtype == torch.float32
    got = ex.run(torch.as_tensor(x, dtype=torch.float32), quantized=True).numpy()
    ref = _reference(op, x, w, b, k)
    assert np.abs(ref - b.reshape((1, -1) + (1,) * (ref.ndim - 2))).max() >= EXACT_F32
    assert np.array_equal(got.astype(np.int64), ref)
    if kind == "random":           # a single float32 kernel would not be exact here
        xt, wt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(w, dtype=torch.float32)
        one = (F.linear(xt.flatten(1), wt) if op == "dense" else F.conv2d(xt, wt, padding=k // 2))
        assert not np.array_equal(one.numpy().astype(np.int64), ref - b.reshape(
            (1, -1) + (1,) * (ref.ndim - 2)))


@pytest.mark.parametrize("op, n_in, n_out, k", CASES)
@pytest.mark.parametrize("protected", [False, True])
def test_every_msb_flipped_stays_exact(op, n_in, n_out, k, protected):
    """Flip the MSB (every copy of it in a protected word) of every weight: the decoded weights
    change sign or magnitude, and the executor still equals the reference on them."""
    rng = np.random.default_rng(1)
    x, w, b = _codes(op, n_in, n_out, k, rng, "random")
    net = _net(op, n_in, n_out, w, b, k)
    image = MemoryImage.build(net, ["l"] if protected else [])
    ex = Executor(net, image, "cpu")
    m = image.memory("l.weight")
    msb = m.msb_bits() if protected else [m.fmt.bits - 1]
    words = np.repeat(np.arange(m.depth), len(msb))
    fmap = FaultMap(["l.weight"] * len(words), words, np.tile(msb, m.depth),
                    ["flip"] * len(words))
    xt = torch.as_tensor(x, dtype=torch.float32)
    with Injector(image, ex).injected(fmap):
        faulty = image.codes("l.weight").reshape(w.shape)
        assert not np.array_equal(faulty, w)
        got = ex.run(xt, quantized=True).numpy().astype(np.int64)
        assert np.array_equal(got, _reference(op, x, faulty, b, k))
    assert np.array_equal(ex.run(xt, quantized=True).numpy().astype(np.int64),
                          _reference(op, x, w, b, k))
    if protected:                  # one copy of every MSB flipped: the voter masks it
        one = FaultMap(["l.weight"] * m.depth, np.arange(m.depth), [msb[0]] * m.depth,
                       ["flip"] * m.depth)
        with Injector(image, ex).injected(one):
            assert np.array_equal(ex.run(xt, quantized=True).numpy().astype(np.int64),
                                  _reference(op, x, w, b, k))


@pytest.mark.parametrize("op, n_in, n_out, k", CASES)
def test_small_weights_run_one_kernel_until_faults_make_them_large(op, n_in, n_out, k):
    """Trained-like weights (small codes): one float32 kernel, exact. Flipping the MSB of every
    weight of output 0 makes its sum of |codes| reach the bound: the layer splits its fan-in,
    stays exact, and runs one kernel again once the faults are undone."""
    rng = np.random.default_rng(2)
    x, _, b = _codes(op, n_in, n_out, k, rng, "random")
    w = rng.integers(-6, 7, (n_out, n_in, k, k) if op == "conv" else (n_out, n_in))
    net = _net(op, n_in, n_out, w, b // 64, k)
    image = MemoryImage.build(net, [])
    ex = Executor(net, image, "cpu")
    xt = torch.as_tensor(x, dtype=torch.float32)
    assert not ex.split("l")
    assert np.array_equal(ex.run(xt, quantized=True).numpy().astype(np.int64),
                          _reference(op, x, w, b // 64, k))
    m = image.memory("l.weight")
    fan = m.depth // n_out
    fmap = FaultMap(["l.weight"] * fan, np.arange(fan), [m.fmt.bits - 1] * fan, ["flip"] * fan)
    with Injector(image, ex).injected(fmap):
        assert ex.split("l")
        faulty = image.codes("l.weight").reshape(w.shape)
        assert np.array_equal(ex.run(xt, quantized=True).numpy().astype(np.int64),
                              _reference(op, x, faulty, b // 64, k))
    assert not ex.split("l")


def test_incremental_sums_and_plan_follow_the_faults():
    """A split layer's sums of |codes| are updated word by word (equal to recounting them), its
    chunk plan stays while every touched output fits and is planned again when one does not;
    every result stays exact, before, under and after the faults."""
    from flow.core.executor import _colsum
    rng = np.random.default_rng(3)
    n_in, n_out = 4096, 6
    x = rng.integers(0, 1 << IN_BITS, (5, n_in, 1, 1))
    w = rng.integers(-40, 41, (n_out, n_in))
    b = rng.integers(-1000, 1000, n_out)
    net = _net("dense", n_in, n_out, w, b)
    image = MemoryImage.build(net, [])
    ex = Executor(net, image, "cpu")
    xt = torch.as_tensor(x, dtype=torch.float32)
    assert np.array_equal(ex.run(xt, quantized=True).numpy().astype(np.int64),
                          _reference("dense", x, w, b, 1))
    clean_plan = ex._chunks_now("l")
    assert ex.split("l") and len(clean_plan) >= 2
    m = image.memory("l.weight")
    inj = Injector(image, ex)

    def check(codes):
        got = ex.run(xt, quantized=True).numpy().astype(np.int64)
        assert np.array_equal(got, _reference("dense", x, codes, b, 1))
        colsum = _colsum(ex.tensors["l.weight"])
        assert np.array_equal(ex._absum["l"], colsum.sum(1))
        if ex._plan["l"] is not None:      # the plan's per-chunk sums, undone exactly too
            sums = np.stack([colsum[:, c].sum(1) for c in ex._plan["l"]], 1)
            assert np.array_equal(ex._chunksum["l"][0], sums)

    few = FaultMap(["l.weight"] * 20, rng.choice(m.depth, 20, replace=False), [0] * 20,
                   ["flip"] * 20)          # LSB flips: every chunk still fits, the plan stays
    with inj.injected(few):
        check(image.codes("l.weight").reshape(w.shape))
        assert ex._plan["l"] is clean_plan
    first = clean_plan[0]                  # MSB flips across output 0's first chunk: it no
    words = np.arange(first.start, first.stop)          # longer fits, so it is planned again
    many = FaultMap(["l.weight"] * words.size, words, [W_BITS - 1] * words.size,
                    ["flip"] * words.size)
    with inj.injected(many):
        check(image.codes("l.weight").reshape(w.shape))
        assert len(ex._chunks_now("l")) > len(clean_plan)
    check(w)                               # undone after the plan changed under the faults
    ex._chunks_now("l")
    with inj.injected(few):                # and undone under a plan made before the faults
        check(image.codes("l.weight").reshape(w.shape))
    check(w)


@pytest.mark.parametrize("op, n_in, n_out, k", CASES)
def test_few_wide_outputs_ride_beside_float32_into_the_requant(op, n_in, n_out, k):
    """conv/dense -> requant with one output of six past 2**24: the fast path (one float32
    kernel, that output in float64 beside it, requantized on its own) equals the exact traced
    path and an int64 reference, clean and under faults that make a second output wide."""
    rng = np.random.default_rng(4)
    x, _, b = _codes(op, n_in, n_out, k, rng, "random")
    w = rng.integers(-6, 7, (n_out, n_in, k, k) if op == "conv" else (n_out, n_in))
    w[0] = rng.integers(-(1 << (W_BITS - 1)), -48, w[0].shape)      # output 0: past 2**24
    b = b // 64
    net = _net(op, n_in, n_out, w, b, k)
    acc = net.nodes[-1]
    # a small shift keeps the wide output's low bits: float32 would round them differently
    shift = -3
    lo, hi = -(1 << 23), (1 << 23) - 1
    net.nodes.append(Node("r", "requant", [acc.name], acc.frac + shift, lo, hi))
    net = IntNetwork("boundary_rq", net.nodes, net.params, net.input_shape, n_out)
    image = MemoryImage.build(net, [])
    ex = Executor(net, image, "cpu")
    assert ex.split("l") and 0 < ex._wide_outputs("l").size * 2 < n_out
    xt = torch.as_tensor(x, dtype=torch.float32)

    def reference(codes):
        accs = _reference(op, x, codes, b, k).astype(np.float64)
        return np.clip(np.round(accs * 2.0 ** shift), lo, hi)

    def check(codes):
        fast = ex.run(xt, quantized=True).numpy()
        traced = ex.run(xt, quantized=True, trace=True)["r"].numpy()
        assert np.array_equal(fast, traced) and np.array_equal(fast, reference(codes))
        ref = reference(codes)                 # the wide output is not saturated
        assert (np.abs(ref[:, 0]) < hi).all() and (ref[:, 0] != np.round(ref[:, 0] / 2) * 2).any()

    check(w)
    m = image.memory("l.weight")
    fan = m.depth // n_out                 # every MSB of output 1: a second wide output
    fmap = FaultMap(["l.weight"] * fan, np.arange(fan, 2 * fan), [m.fmt.bits - 1] * fan,
                    ["flip"] * fan)
    with Injector(image, ex).injected(fmap):
        assert ex._wide_outputs("l").size == 2
        check(image.codes("l.weight").reshape(w.shape))
    check(w)


@pytest.mark.parametrize("op, n_in, n_out, k", CASES)
@pytest.mark.parametrize("protected", [False, True])
def test_sampled_maps_apply_and_undo_exactly(op, n_in, n_out, k, protected):
    """Sampled SEU maps (the Injector's fast path: sorted runs, words with several flips, the
    executor's own undo records) give the scores of an executor built afresh on the faulty
    image, and undoing them restores every value and sum exactly; faults stack (a second map on
    top of the first) and come off in reverse order."""
    from flow.core.executor import _colsum
    from flow.reliability.faults import SeuSampler, trial_rng
    rng = np.random.default_rng(5)
    x, _, b = _codes(op, n_in, n_out, k, rng, "random")
    w = rng.integers(-20, 21, (n_out, n_in, k, k) if op == "conv" else (n_out, n_in))
    net = _net(op, n_in, n_out, w, b // 64, k)
    image = MemoryImage.build(net, ["l"] if protected else [])
    ex = Executor(net, image, "cpu")
    xt = torch.as_tensor(x, dtype=torch.float32)
    clean = ex.run(xt, quantized=True).numpy()
    clean_tensors = {n: t.clone() for n, t in ex.tensors.items()}
    clean_absum = ex._absum["l"].copy()
    inj, sampler = Injector(image, ex), SeuSampler(image)
    splits, multi = [], []
    for t, ber in enumerate((1e-3, 2e-2, 0.2)):
        first = sampler.sample(ber, trial_rng(9, ber, t))
        second = sampler.sample(ber, trial_rng(9, ber, t + 100))
        assert getattr(first, "_runs", None) and len(first) > 5
        want = image.memory("l.weight").words.copy()          # the flips, one at a time
        sel = first.memory == "l.weight"
        np.bitwise_xor.at(want, first.word[sel], np.left_shift(1, first.bit[sel]))
        several = np.unique(first.word[sel], return_counts=True)[1].max() > 1
        inj.apply(first)
        assert np.array_equal(image.memory("l.weight").words, want)
        inj.apply(second)
        fresh = Executor(net, image, "cpu")
        assert np.array_equal(ex.run(xt, quantized=True).numpy(),
                              fresh.run(xt, quantized=True).numpy())
        assert np.array_equal(ex._absum["l"], fresh._absum["l"])
        splits.append(ex.split("l"))
        multi.append(several)
        inj.undo()
        for name, tensor in ex.tensors.items():
            assert torch.equal(tensor, clean_tensors[name]), name
        assert np.array_equal(ex._absum["l"], clean_absum)
        assert np.array_equal(ex._absum["l"], _colsum(ex.tensors["l.weight"]).sum(1))
        assert np.array_equal(ex.run(xt, quantized=True).numpy(), clean)
    assert splits[0] is False and splits[-1] is True     # the faults made the layer split
    assert multi[-1]                                     # and some words took several flips


@pytest.mark.skipif(not int8_matmul_exact(), reason="no exact int8 matrix product on this CPU")
@pytest.mark.parametrize("op, n_in, n_out, k", CASES)
@pytest.mark.parametrize("kind", ["worst", "random"])
@pytest.mark.parametrize("protected", [False, True])
def test_boundary_cases_on_int8_kernels(op, n_in, n_out, k, kind, protected):
    """The same layers on the int8 kernels: worst-case and random codes far past 2**24, then
    every weight MSB flipped (every copy of it in a protected word), then one copy only."""
    rng = np.random.default_rng(4)
    x, w, b = _codes(op, n_in, n_out, k, rng, kind)
    net = _net(op, n_in, n_out, w, b, k)
    image = MemoryImage.build(net, ["l"] if protected else [])
    ex = Executor(net, image, "cpu", kernels="int8")
    assert ex.kernel("l") == "int8"
    xt = torch.as_tensor(x, dtype=torch.float32)
    ref = _reference(op, x, w, b, k)
    assert np.abs(ref).max() >= EXACT_F32
    assert np.array_equal(ex.run(xt, quantized=True).numpy().astype(np.int64), ref)
    m = image.memory("l.weight")
    msb = m.msb_bits() if protected else [m.fmt.bits - 1]
    words = np.repeat(np.arange(m.depth), len(msb))
    fmap = FaultMap(["l.weight"] * len(words), words, np.tile(msb, m.depth),
                    ["flip"] * len(words))
    with Injector(image, ex).injected(fmap):
        faulty = image.codes("l.weight").reshape(w.shape)
        assert not np.array_equal(faulty, w)
        got = ex.run(xt, quantized=True).numpy().astype(np.int64)
        assert np.array_equal(got, _reference(op, x, faulty, b, k))
    assert np.array_equal(ex.run(xt, quantized=True).numpy().astype(np.int64), ref)
    if protected:
        one = FaultMap(["l.weight"] * m.depth, np.arange(m.depth), [msb[0]] * m.depth,
                       ["flip"] * m.depth)
        with Injector(image, ex).injected(one):
            assert np.array_equal(ex.run(xt, quantized=True).numpy().astype(np.int64), ref)
