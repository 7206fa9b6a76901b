"""The benchmarks run end to end (their figures are reported, not asserted), and the peers are
used as their users use them: PyTorchFI flips one bit of a weight's fixed-point code per fault,
MRFI re-injects at every forward and leaves the weights alone in its golden run."""
from __future__ import annotations

import gc
import json
import random

import numpy as np
import pytest
import torch

from flow.core.intkernels import int8_matmul_exact
from flow.pipeline.bench import CLEAN, TOOLS, bench_text
from flow.pipeline.bench_peers import (
    FloatTwin,
    flip_fixed_point,
    frozen_heap,
    mrfi_model,
    pytorchfi_trial,
    seed_peers,
    timed,
)
from flow.pipeline.commands import Console, bench
from flow.pipeline.session import open_session


@pytest.mark.slow
def test_bench_fi_reports_every_tool_and_size(tmp_path):
    res = bench(str(tmp_path / "bench"), repeats=1, epochs=1,
                sets=["bench.trials=2", "bench.bers=[1e-3, 1e-2]", "bench.images=64",
                      "bench.batch_maps=3",
                      "bench.sizes=[{arch: mlp, width: 0.5}, {arch: cnn, width: 0.5}]"],
                con=Console(progress=False)).to_json()
    assert [n["network"] for n in res["networks"]] == ["mlp x0.5", "cnn x0.5"]
    assert res["test_images"] == 64
    for n in res["networks"]:
        assert [r["ber"] for r in n["bers"]] == [1e-3, 1e-2]
        for r in n["bers"]:
            assert all(r["trial_seconds"][k] > 0 for k in TOOLS)
            assert all(r["clean_seconds"][k] > 0 for k in CLEAN)
            assert set(r["hetq_speedup"]) == set(TOOLS[1:])
            assert r["campaign_seconds"] > 0 and r["campaign_vs_clean"] > 0
            assert r["batched_seconds"] > 0 and r["batched_vs_clean"] > 0
            # MRFI float32 flips 32 bits per weight, the others the stored bits
            assert r["flips"]["mrfi_float32"] == pytest.approx(
                r["flips"]["mrfi_int"] * 32 * n["weights"] / n["weight_bits"])
        assert n["bers"][1]["flips"]["hetq"] > n["bers"][0]["flips"]["hetq"]
    text = bench_text(res)
    assert "PyTorchFI" in text and "MRFI int" in text and "MRFI f32" in text
    assert "campaign trial" in text and "3 maps a call (per forward pass)" in text
    # the MLP's maps run one at a time (compiled), the CNN's in one forward pass
    assert [n["batched_one_at_a_time"] for n in res["networks"]] == [True, False]
    assert "3 maps a call (one at a time, compiled dense chain)" in text
    stored = json.loads((tmp_path / "bench" / "bench" / "result.json").read_text())
    assert stored == res


@pytest.mark.slow
def test_bench_clean_names_each_layers_kernel_and_times_the_grid(tmp_path):
    res = bench(str(tmp_path / "clean"), what="clean", repeats=1, epochs=1,
                sets=["bench.sizes=[{arch: mlp, width: 8}, {arch: cnn, width: 0.5}]"],
                con=Console(progress=False))
    rows = res.to_json()["rows"]
    assert [r["network"] for r in rows] == ["mlp x8", "cnn x0.5"]
    assert set(rows[0]["kernels"]) == {"fc1", "fc2", "fc3"}
    assert set(rows[1]["kernels"]) == {"conv1", "conv2", "fc1"}
    assert rows[1]["kernels"]["conv1"] == "float32"          # 9 inputs: too small to gain
    if int8_matmul_exact():
        assert rows[0]["kernels"]["fc2"] == "int8"           # 512 x 512
        assert {(g["op"], g["fan_in"], g["outputs"]) for g in res.grid} >= {
            ("dense", 2048, 1024), ("conv", 27, 16)}
        assert all(g["float32_s"] > 0 and g["int8_s"] > 0 for g in res.grid)
        assert "picks int8" in res.summary()


class _Cycle:
    """An object in a reference cycle: only the garbage collector frees it."""

    freed = 0

    def __init__(self) -> None:
        self.me = self

    def __del__(self) -> None:
        _Cycle.freed += 1


def test_frozen_heap_keeps_old_objects_out_of_timed_collections_and_frees_new_garbage():
    _Cycle.freed = 0
    old = _Cycle()
    del old                          # garbage before the block
    gc.disable()
    try:
        with frozen_heap():
            assert _Cycle.freed == 1                # the block starts with a full collection
            kept = _Cycle()
            assert gc.get_freeze_count() > 0
            timed(lambda: [_Cycle() for _ in range(3)])   # three cycles made in the call
            assert _Cycle.freed == 1                # not collected during the timed call
            timed(lambda: None)                      # ... but by the next call's collection
            assert _Cycle.freed == 4
        assert gc.get_freeze_count() == 0            # everything is collectable again
        del kept
        gc.collect()
        assert _Cycle.freed == 5
    finally:
        gc.enable()


@pytest.mark.parametrize("bits,frac", [(8, 6), (4, 2), (2, 1)])
def test_flip_fixed_point_flips_one_bit_of_the_code(bits, frac):
    random.seed(0)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    for code in range(lo, hi + 1):
        out = flip_fixed_point(torch.tensor(code * 2.0 ** -frac), bits, frac)
        new = out * 2 ** frac
        assert new == int(new) and lo <= new <= hi
        diff = (code ^ int(new)) & ((1 << bits) - 1)
        assert diff and diff & (diff - 1) == 0          # exactly one bit of the bits-bit word


def test_pytorchfi_trial_flips_code_bits_at_its_own_locations(mlp_run):
    s = open_session(mlp_run, "cpu")
    twin = FloatTwin(s.net).eval()
    trial = pytorchfi_trial(s.net, twin, 4, [1, 8, 8])
    bits = sum(s.net.params[n].codes.size * s.net.params[n].fmt.bits for n in twin.param_layers)
    seed_peers(3)
    corrupted = trial(3e-4, bits)
    changed = 0
    for name, (_, a), (_, b) in zip(twin.param_layers, twin.weight_modules(),
                                    corrupted.weight_modules()):
        f = s.net.params[name].fmt
        ca = (a.weight.detach().numpy() * 2.0 ** f.frac).astype(np.int64)
        cb = (b.weight.detach().numpy() * 2.0 ** f.frac).astype(np.int64)
        diff = (ca ^ cb) & ((1 << f.bits) - 1)
        changed += int((diff != 0).sum())
        assert all(d & (d - 1) == 0 for d in diff[diff != 0])   # one bit each (seed 3: distinct)
    assert changed > 0
    assert all(torch.equal(p, q) for p, q in zip(twin.parameters(),
                                                 FloatTwin(s.net).parameters()))   # untouched
    seed_peers(3)
    again = trial(3e-4, bits)                               # seeded: the same faults
    assert all(torch.equal(p, q) for p, q in zip(corrupted.parameters(), again.parameters()))


def test_mrfi_injects_each_forward_and_not_in_its_golden_run(mlp_run):
    s = open_session(mlp_run, "cpu")
    twin = FloatTwin(s.net).eval()
    x = s.data.test.x[:64]
    seed_peers(0)
    for integer in (True, False):
        m = mrfi_model(s.net, twin, 1e-2, integer=integer)
        with m.golden_run():
            gold = m(x)
        first, second = m(x), m(x)
        assert not torch.equal(first, gold) and not torch.equal(first, second)
        with m.golden_run():
            assert torch.equal(m(x), gold)                  # weights restored before each call
        if not integer:
            assert torch.equal(gold, twin(x).detach())      # float32: nothing but the flips
