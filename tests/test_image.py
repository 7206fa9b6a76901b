"""The weight-memory image: word formats, the MSB voter, sizes, and TMR masking in the executor."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from flow.core.errors import FaultMapError
from flow.core.executor import Executor
from flow.core.image import MemoryImage, decode, encode
from flow.core.precision import Fixed
from flow.pipeline.session import open_session
from flow.reliability.faults import FaultMap, Injector


@pytest.mark.parametrize("bits", [2, 3, 4, 8, 16])
@pytest.mark.parametrize("protected", [False, True])
def test_encode_decode_roundtrip(bits, protected):
    fmt = Fixed(bits, True, 0, narrow=True)
    codes = np.arange(fmt.min(), fmt.max() + 1)
    words = encode(codes, fmt, protected)
    assert words.min() >= 0 and words.max() < (1 << (bits + 2 * protected))
    assert np.array_equal(decode(words, fmt, protected), codes)


def test_word_layout_of_protected_weight():
    fmt = Fixed(4, True, 0, narrow=True)
    # -3 = 0b1101 in 4-bit two's complement -> MSB 1 copied into bits 5 and 4: 0b111101
    assert int(encode(np.array([-3]), fmt, True)[0]) == 0b111101
    assert int(encode(np.array([5]), fmt, True)[0]) == 0b000101
    assert int(encode(np.array([-3]), fmt, False)[0]) == 0b1101


def test_bipolar_words():
    fmt = Fixed(1, True, 0, bipolar=True)
    assert encode(np.array([-1, 1]), fmt, False).tolist() == [0, 1]
    assert encode(np.array([-1, 1]), fmt, True).tolist() == [0, 0b111]
    assert decode(np.array([0b011, 0b100, 0b110]), fmt, True).tolist() == [1, -1, 1]


def test_exhaustive_voter_on_every_word_pattern():
    """Every value and every subset of flipped MSB copies: 0 or 1 flip masked, 2 or 3 not."""
    fmt = Fixed(3, True, 0, narrow=True)
    for code in range(fmt.min(), fmt.max() + 1):
        word = int(encode(np.array([code]), fmt, True)[0])
        for r in range(4):
            for bits in itertools.combinations((4, 3, 2), r):
                w = word
                for b in bits:
                    w ^= 1 << b
                got = int(decode(np.array([w]), fmt, True)[0])
                if r <= 1:
                    assert got == code
                else:
                    assert got != code


def test_sizes_count_protection(mlp_run):
    s = open_session(mlp_run, "cpu")
    mems = s.image.memories
    w1, w2 = mems["fc1.weight"], mems["fc2.weight"]
    assert not w1.protected and w1.width == 4
    assert w2.protected and w2.width == 6
    sizes = s.image.size_bits()
    bias_bits = mems["fc2.bias"].bits
    assert sizes["fc2"] == w2.depth * 6 + bias_bits
    assert sizes["total"] == sum(m.bits for m in mems.values())
    assert s.image.size_bits(("weight",))["total"] == sum(
        m.depth * m.width for m in mems.values() if m.kind == "weight")


def test_protected_layer_tmr_exhaustive_in_executor(mlp_run):
    """Every single flip of one MSB copy in the protected layer is masked; two in a triplet are not.

    Checked on the decoded weights for every word, and on the executor's class scores for a sample
    of words with a nonzero effect.
    """
    s = open_session(mlp_run, "cpu")
    mem = s.image.memories["fc2.weight"]
    assert mem.protected
    inj = Injector(s.image, s.executor)
    x = s.data.test.x[:64]
    clean = s.executor.run(x).clone()
    ref = s.executor.tensors["fc2.weight"].clone()
    n = mem.fmt.bits
    words = np.arange(mem.depth)
    for b in (n + 1, n, n - 1):       # all single flips of every word, one bit position at a time
        fmap = FaultMap(("fc2.weight",) * mem.depth, words, np.full(mem.depth, b),
                        ("flip",) * mem.depth)
        with inj.injected(fmap):
            assert torch.equal(s.executor.tensors["fc2.weight"], ref)
            assert torch.equal(s.executor.run(x), clean)
    assert torch.equal(s.executor.tensors["fc2.weight"], ref)
    changed_scores = 0
    for w in range(mem.depth):
        for pair in itertools.combinations((n + 1, n, n - 1), 2):
            fmap = FaultMap.from_faults([("fc2.weight", w, pair[0]), ("fc2.weight", w, pair[1])])
            with inj.injected(fmap):
                assert s.executor.tensors["fc2.weight"].view(-1)[w] != ref.view(-1)[w]
                if w % 97 == 0:
                    changed_scores += not torch.equal(s.executor.run(x), clean)
    assert changed_scores > 0
    assert torch.equal(s.executor.run(x), clean)


def test_unprotected_msb_flip_changes_value(mlp_run):
    s = open_session(mlp_run, "cpu")
    mem = s.image.memories["fc1.weight"]
    ref = s.executor.tensors["fc1.weight"].clone()
    inj = Injector(s.image, s.executor)
    fmap = FaultMap(("fc1.weight",) * mem.depth, np.arange(mem.depth),
                    np.full(mem.depth, mem.fmt.bits - 1), ("flip",) * mem.depth)
    with inj.injected(fmap):
        assert bool((s.executor.tensors["fc1.weight"] != ref).all())


def test_unknown_protected_layer_is_an_error(mlp_run):
    s = open_session(mlp_run, "cpu")
    with pytest.raises(FaultMapError, match="unknown layer 'fc7'"):
        MemoryImage.build(s.net, ["fc7"])


def test_executor_on_image_matches_codes(mlp_run):
    s = open_session(mlp_run, "cpu")
    ex = Executor(s.net, s.image, "cpu")
    for name, p in s.net.params.items():
        assert np.array_equal(ex.tensors[name].cpu().numpy().astype(np.int64), p.codes)
