"""The compiled injection steps (flow.core.flips) against the NumPy code they replace: every
word of every format decoded, flips merged per word, sampled positions split by memory, and an
executor's fast update against its general one on a user's network."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from flow.core import flips
from flow.core.executor import Executor
from flow.core.image import Memory, MemoryImage, decode, stored_width, word_dtype
from flow.core.intkernels import Int8Weights, int8_matmul_exact, weight_matrix
from flow.core.precision import Fixed
from flow.reliability.faults import FaultMap, Injector, SeuSampler, trial_rng
from tests.conftest import lowered_network

NETS = Path(__file__).with_name("user_nets.py")

FORMATS = [Fixed(1, True, 0, bipolar=True), Fixed(2, True, 0), Fixed(5, True, 0, narrow=True),
           Fixed(8, True, 0), Fixed(8, False, 0), Fixed(3, False, 0), Fixed(16, True, 0)]


@pytest.mark.parametrize("protected", [False, True], ids=["plain", "tmr"])
@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f"{'s' if f.signed else 'u'}{f.bits}"
                         + ("bip" if f.bipolar else ""))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_update_decodes_every_word_as_the_image_does(fmt, protected, dtype):
    """Every stored word of the format (TMR: every vote of the three MSB copies), decoded into
    parameters that hold other values: the codes, the previous values, which differ from the
    clean ones and by how many the count moves."""
    width = stored_width(fmt, protected)
    new = np.arange(1 << width).astype(word_dtype(width))
    u = np.arange(new.size, dtype=np.int64) * 2 + 1            # every other parameter
    rng = np.random.default_rng(width)
    values = rng.integers(-3, 4, 2 * new.size + 1).astype(dtype)
    clean = values.copy()
    clean[u[::3]] = decode(new[::3], fmt, protected)           # a third back at their clean value
    differs = values != clean
    before, was_before = values.copy(), differs.copy()
    old, was = np.empty(u.size, dtype), np.empty(u.size, bool)
    dn = flips.update(new, u, fmt.bits, flips.decode_mode(fmt.signed, fmt.bipolar, protected),
                      values, clean, differs, old, was)
    want = decode(new, fmt, protected)
    assert np.array_equal(values[u], want.astype(dtype))
    assert np.array_equal(old, before[u]) and np.array_equal(was, was_before[u])
    assert np.array_equal(differs, values != clean)
    assert dn == int(differs.sum()) - int(was_before.sum())
    rest = np.setdiff1d(np.arange(values.size), u)
    assert np.array_equal(values[rest], before[rest])


@pytest.mark.parametrize("width", [6, 15, 16, 31, 40])
def test_flip_merges_the_flips_of_each_word(width):
    """Sorted, distinct (word, bit) pairs with several bits of some words: one write per word,
    the XOR of its bits; the touched words' previous and new values in order."""
    rng = np.random.default_rng(width)
    stored = rng.integers(0, 1 << width, 50).astype(word_dtype(width))
    pairs = sorted({(int(w), int(b)) for w, b in zip(rng.integers(0, 50, 120),
                                                      rng.integers(0, width, 120))})
    w = np.array([p[0] for p in pairs], np.int64)
    b = np.array([p[1] for p in pairs], np.int64)
    want = stored.copy()
    np.bitwise_xor.at(want, w, np.left_shift(1, b).astype(want.dtype))
    before = stored.copy()
    uw, old, new = (np.empty(w.size, np.int64), np.empty(w.size, stored.dtype),
                    np.empty(w.size, stored.dtype))
    nu = flips.flip(stored, w, b, uw, old, new)
    assert np.array_equal(stored, want)
    assert np.array_equal(uw[:nu], np.unique(w)) and nu < w.size
    assert np.array_equal(old[:nu], before[uw[:nu]]) and np.array_equal(new[:nu], want[uw[:nu]])


def test_split_equals_the_general_position_path():
    """Sorted positions over memories of several widths, one protected, with every bit and with
    a subset of bits (not 0..k-1): the compiled split gives the general path's memories, words
    and bits, including positions at each memory's first and last bit."""
    mems = [Memory(f"l{i}.weight", f"l{i}", "weight", Fixed(n, True, 0), prot, n + 2 * prot,
                   (d,), np.zeros(d, np.int64))
            for i, (n, prot, d) in enumerate([(7, False, 301), (4, True, 50), (6, False, 3),
                                              (16, False, 1)])]
    image = MemoryImage(mems)
    for bits in (None, [1, 3, 5], [0, 15], [6]):
        sampler = SeuSampler(image, bits=bits)
        ends = np.concatenate([sampler._cum[1:] - 1, sampler._cum[:-1]])
        rng = np.random.default_rng(len(bits or ()))
        pos = np.unique(np.concatenate([ends, rng.choice(sampler.total_bits, 60, replace=False)]))
        for kind in ("flip", "stuck0"):
            fast = sampler.faults_at(pos, kind)
            general = sampler.faults_at(pos[::-1].copy(), kind)
            for key in ("memory", "word", "bit", "kind"):
                assert np.array_equal(getattr(fast, key), getattr(general, key)[::-1]), key


def _general(image: MemoryImage, ex: Executor, fmap: FaultMap) -> list:
    """``fmap`` applied without the compiled steps: words flipped by NumPy, the executor updated
    from the image (its general path). Returns the undo records."""
    records = []
    for name in dict.fromkeys(fmap.memory.tolist()):
        sel = fmap.memory == name
        mem = image.memories[name]
        np.bitwise_xor.at(mem.words, fmap.word[sel],
                          np.left_shift(1, fmap.bit[sel]).astype(mem.words.dtype))
        records.append((name, ex.update(name, np.unique(fmap.word[sel]))))
    return records


@pytest.mark.parametrize("conv", [False, True], ids=["dense", "conv"])
def test_swap8_follows_the_int8_matrix_layout(conv):
    """Weights set by flat index (PyTorch's layout, unsorted, some twice) in an int8 layer's
    matrix: the matrix and its per-output sums equal those made afresh from the new weights."""
    rng = np.random.default_rng(7)
    w = torch.as_tensor(rng.integers(-128, 128, (6, 5, 3, 2) if conv else (6, 45)),
                        dtype=torch.float32)
    w8 = Int8Weights(w)
    u = rng.integers(0, w.numel(), 40)
    new = rng.integers(-128, 128, u.size)
    before = w.clone()
    old = w8.swap(u, new)
    flat = w.view(-1)
    for i, v in zip(u.tolist(), new.tolist()):         # in order: a later write wins
        flat[i] = v
    assert np.array_equal(w8.matrix.numpy(), weight_matrix(w).numpy())
    assert np.array_equal(w8.rowsum.numpy(), weight_matrix(w).sum(1, dtype=torch.int32).numpy())
    first = {i: t for t, i in reversed(list(enumerate(u.tolist())))}
    assert all(old[t] == before.view(-1)[i] for i, t in first.items())


NETWORKS = [("dense_64_37_23_10", "float", {"classifier.fc2.weight": [9, 8, 7, 0],
                                             "classifier.fc2.bias": [0, 15]}),
            pytest.param("odd_cnn", "int8", {"features.3.weight": [5, 4, 3, 0],
                                             "features.0.weight": [5, 1],
                                             "features.0.bias": [15, 0]},
                         marks=pytest.mark.skipif(not int8_matmul_exact(),
                                                  reason="no exact int8 matrix product"))]


@pytest.mark.parametrize("arch,kernels,hand", NETWORKS, ids=["dense-float", "cnn-int8"])
def test_fast_update_equals_the_general_one_on_a_users_network(arch, kernels, hand):
    """A user's network (dense 64-37-23-10 on float kernels; an odd CNN on int8 kernels), its
    second layer TMR-protected, two executors that remember the test set: sampled maps (several
    flips of some words, biases, protected words) and a hand-written one, stacked, through the
    Injector's compiled steps on one and the general path on the other: equal parameters (int8
    matrices and their sums included), equal bookkeeping of which differ, equal scores, equal
    to a float executor's; both clean after undo."""
    net, image, data = lowered_network(f"{NETS}:{arch}", "flips")
    assert any(m.protected for m in image.memories.values())
    twin = MemoryImage.build(net, [m.layer for m in image.memories.values() if m.protected])
    fast, general = (Executor(net, image, "cpu", kernels=kernels),
                     Executor(net, twin, "cpu", kernels=kernels))
    assert bool(fast._w8) == (kernels == "int8")
    x = fast.quantize_input(data.test.x[:64])
    fast.remember(x, quantized=True)
    general.remember(x, quantized=True)
    clean = general.run(x, quantized=True).clone()
    sampler = SeuSampler(image)
    hand = FaultMap.from_faults([(name, 3, b) for name, bits in hand.items() for b in bits])
    maps = [sampler.sample(ber, trial_rng(3, ber, t)) for t, ber in enumerate((1e-3, 2e-2))]
    inj = Injector(image, fast)
    words = {n: m.words.copy() for n, m in twin.memories.items()}
    records = []
    for fmap in maps + [hand]:
        inj.apply(fmap)
        records += _general(twin, general, fmap)
        for name in image.memories:
            assert np.array_equal(image.memories[name].words, twin.memories[name].words)
            assert np.array_equal(fast._flat[name], general._flat[name]), name
            assert np.array_equal(fast._differs[name], general._differs[name]), name
            if name in fast._w8:
                for a, b in zip(fast._w8[name].layout()[:2], general._w8[name].layout()[:2]):
                    assert np.array_equal(a, b), name
        assert fast._ndiff == general._ndiff
        got = fast.run(x, quantized=True)
        assert torch.equal(got, general.run(x, quantized=True))
        assert torch.equal(got.double(), Executor(net, image, "cpu", kernels="float").run(
            x, quantized=True).double())
    assert max(fast._ndiff.values()) > 0
    inj.undo()
    for name, m in twin.memories.items():
        m.words[:] = words[name]
    for _, record in reversed(records):
        general.restore(record)
    assert fast._first_dirty() is None and general._first_dirty() is None
    assert torch.equal(fast.run(x, quantized=True), clean)
