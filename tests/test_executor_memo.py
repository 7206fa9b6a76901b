"""Layer-local re-evaluation: a remembered batch is recomputed from the first node whose
parameters differ from the clean ones, and gives the same scores as a full run.

On the zoo CNN and on a user's residual network (a residual add reads a remembered activation),
for faults in each layer alone, in several layers, in biases, after undo, and across many
trials (the remembered activations are never overwritten).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import lowered_network

from flow.core.executor import Executor
from flow.reliability.faults import Injector, SeuSampler, trial_rng

NETS = Path(__file__).with_name("user_nets.py")


def _setup(arch: str):
    net, image, data = lowered_network(arch, "memo")             # one layer protected
    fresh = Executor(net, image, "cpu")                        # never remembers anything
    ex = Executor(net, image, "cpu")
    xq = ex.quantize_input(data.test.x)
    ex.remember(xq, quantized=True)
    return net, image, ex, fresh, xq


@pytest.mark.parametrize("arch", ["cnn", f"{NETS}:residual_gap"], ids=["cnn", "residual_gap"])
def test_remembered_runs_equal_full_runs(arch):
    net, image, ex, fresh, xq = _setup(arch)
    inj, inj_fresh = Injector(image, ex), Injector(image, fresh)
    clean = fresh.run(xq, quantized=True)
    assert torch.equal(ex.run(xq, quantized=True), clean)
    targets = [(layer,) for layer in net.layers()] + [tuple(net.layers()[-2:]), None]
    starts = set()
    for k, layers in enumerate(targets):
        kinds = ("weight",) if layers else ("weight", "bias")
        sampler = SeuSampler(image, kinds=kinds, layers=layers)
        for t in range(4):
            fmap = sampler.sample(3e-2, trial_rng(k, 3e-2, t))
            assert len(fmap) > 0
            with inj.injected(fmap):
                starts.add(ex._first_dirty())
                got = ex.run(xq, quantized=True)
            with inj_fresh.injected(fmap):
                ref = fresh.run(xq, quantized=True)
            assert torch.equal(got, ref), (layers, t)
            assert ex._first_dirty() is None                  # undone: clean again
    assert len(starts) >= len(net.layers())                   # every layer was a start
    assert torch.equal(ex.run(xq, quantized=True), clean)     # remembered values intact
    # a batch it did not remember runs in full
    other = xq[: len(xq) // 2].clone()
    assert torch.equal(ex.run(other, quantized=True), clean[: len(other)])


def test_a_changed_batch_is_not_taken_for_the_remembered_one():
    net, image, ex, fresh, xq = _setup("cnn")
    xq[0] = 0                                                  # in place: another batch now
    assert torch.equal(ex.run(xq, quantized=True), fresh.run(xq, quantized=True))


def test_remember_refuses_a_faulty_network():
    net, image, ex, fresh, xq = _setup("cnn")
    fmap = SeuSampler(image).sample(1e-2, np.random.default_rng(0))
    with Injector(image, ex).injected(fmap):
        with pytest.raises(RuntimeError, match="remember"):
            ex.remember(xq, quantized=True)
