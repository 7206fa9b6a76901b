"""Metrics against the paper's own numbers and the latency model against hand counts."""
from __future__ import annotations

import pytest

from flow.core.image import MemoryImage
from flow.pipeline.session import open_session
from flow.reliability.metrics import PdropConstants, latency, layer_cycles, p_drop, rap, weight_bits


def test_rap_reproduces_table_iii_rows():
    """AlexNet rows of Table III: overheads relative to hom(3,-) (memory 174,868,504 bits)."""
    ref_mem = 174_868_504
    assert rap(11.01, 174_973_656 / ref_mem, 1.1243) == pytest.approx(12.38, abs=0.01)
    assert rap(16.13, 233_158_016 / ref_mem, 0.8540) == pytest.approx(18.36, abs=0.02)
    assert rap(3.14, 233_263_168 / ref_mem, 1.5067) == pytest.approx(6.31, abs=0.01)


def test_p_drop_scales_as_the_equation():
    c = PdropConstants(lifetime=100.0, test_interval=10.0, p_single=1e-3)
    assert p_drop(1000, 1e-4, 0.5, c) == pytest.approx(1000 ** 2 * 10 * 1e-3 * 1e-4 * 0.5)
    assert p_drop(2000, 1e-4, 0.5, c) == pytest.approx(4 * p_drop(1000, 1e-4, 0.5, c))


def test_latency_model_counts_and_ignores_protection(mlp_run):
    s = open_session(mlp_run, "cpu")
    cyc = layer_cycles(s.net)
    assert cyc == {"fc1": 64 * 64, "fc2": 64 * 64, "fc3": 10 * 64}
    assert layer_cycles(s.net, pe=4, simd=8) == {"fc1": 16 * 8, "fc2": 16 * 8, "fc3": 3 * 8}
    assert latency(s.net) == {"latency_cycles": 2 * 4096 + 640, "ii_cycles": 4096}
    plain, prot = MemoryImage.build(s.net), MemoryImage.build(s.net, ["fc1", "fc2", "fc3"])
    assert weight_bits(prot) - weight_bits(plain) == 2 * (4096 + 4096 + 640)


def test_conv_cycles():
    import torch

    from flow.nn.lower import lower
    from flow.nn.zoo import cnn
    m = cnn((1, 8, 8), 10)
    m.train()
    m(torch.rand(4, 1, 8, 8))
    cyc = layer_cycles(lower(m, (1, 8, 8)))
    assert cyc["conv1"] == 64 * 16 * 9
    assert cyc["conv2"] == 64 * 32 * 16 * 9
    assert cyc["fc1"] == 10 * 32 * 16
