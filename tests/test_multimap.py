"""Batched fault maps: k maps in one forward pass give, map by map, the predictions of one map
at a time, on networks of every node type (conv, dense, max-pool, residual add, thresholds,
affine), for faults in every kind of memory, at BERs from empty maps to dense ones, across
remembered-batch pieces; and a layer that one map pushes past 2**24 is refused (None), never
rounded.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import lowered_network

from flow.core.executor import Executor
from flow.core.image import MemoryImage
from flow.core.multimap import MapParams, predict_maps
from flow.reliability.faults import FaultMap, Injector, SeuSampler, trial_rng

NETS = Path(__file__).with_name("user_nets.py")


def _setup(arch: str):
    net, image, data = lowered_network(arch, "maps")             # one layer protected
    ex = Executor(net, image, "cpu")
    return net, image, ex, ex.quantize_input(data.test.x)


def _captured(ex: Executor, inj: Injector, fmap: FaultMap, xq: torch.Tensor
              ) -> tuple[MapParams, torch.Tensor]:
    """The map's parameters as predict_maps takes them, and its one-at-a-time predictions."""
    with inj.injected(fmap):
        touched = {str(m): fmap.word[fmap.memory == m] for m in np.unique(fmap.memory)}
        params = MapParams.capture(ex, touched)
        pred = ex.predict(xq, 128, quantized=True)
    return params, pred


@pytest.mark.parametrize("arch", ["cnn", "bmlp", f"{NETS}:residual_gap", f"{NETS}:binary_mlp"],
                         ids=["cnn", "bmlp", "residual_gap", "binary_mlp"])
def test_batched_maps_equal_one_at_a_time(arch):
    net, image, ex, xq = _setup(arch)
    ex.remember(xq, 128, quantized=True)
    inj = Injector(image, ex)
    kinds = tuple(sorted({m.kind for m in image.memories.values()}))
    targets = [(("weight",), (layer,)) for layer in net.layers()] + [(kinds, None)]
    checked = 0
    for ti, (kd, layers) in enumerate(targets):
        sampler = SeuSampler(image, kinds=kd, layers=layers)
        for ber in (1e-5, 1e-3, 3e-2):
            maps = [sampler.sample(ber, trial_rng(ti, ber, t)) for t in range(5)]
            got = [_captured(ex, inj, f, xq) for f in maps]
            for rows in (1024, 7):        # one piece per batch, and many pieces
                res = predict_maps(ex, xq, [g[0] for g in got], batch_size=128, max_rows=rows)
                assert res is not None
                for (_, ref), pred in zip(got, res):
                    assert torch.equal(pred, ref)
                checked += 1
    assert checked == 2 * 3 * len(targets)
    # the executor is clean afterwards: its remembered activations were not overwritten
    assert torch.equal(ex.predict(xq, 128, quantized=True),
                       Executor(net, image, "cpu").predict(xq, 128, quantized=True))


def test_a_map_past_the_float32_bound_is_refused():
    """A dense layer with 4096 inputs whose clean weights keep its sums far below 2**24; one map
    that sets the MSB of a whole row's weights (code -128 each: 4096 * 255 * 128 >= 2**24) makes
    predict_maps refuse the group; maps with a few flips are batched and exact."""
    from test_executor_exact import _net
    rng = np.random.default_rng(1)
    n_in, n_out = 4096, 6
    w = rng.integers(-2, 3, (n_out, n_in))
    b = rng.integers(-1000, 1000, n_out)
    net = _net("dense", n_in, n_out, w, b)
    image = MemoryImage.build(net, [])
    ex = Executor(net, image, "cpu")
    xq = torch.as_tensor(rng.integers(0, 256, (9, n_in, 1, 1)), dtype=torch.float32)
    ex.remember(xq, 128, quantized=True)
    inj = Injector(image, ex)
    mem = image.memories["l.weight"]
    few = FaultMap.from_faults([("l.weight", w, mem.width - 1) for w in (5, 4100, 9000)])
    row = FaultMap.from_faults([("l.weight", w, mem.width - 1) for w in range(n_in)])
    got = [_captured(ex, inj, few, xq), _captured(ex, inj, few, xq)]
    res = predict_maps(ex, xq, [g[0] for g in got], batch_size=128)
    assert res is not None and all(torch.equal(p, g[1]) for p, g in zip(res, got))
    assert predict_maps(ex, xq, [got[0][0], _captured(ex, inj, row, xq)[0]],
                        batch_size=128) is None


def test_campaign_with_batched_maps_stores_the_same_trials(tmp_path):
    """run_campaign with 4 maps per pass stores, trial by trial, what 1 map per pass stores."""
    from flow.reliability.campaign import CampaignSpec, run_campaign
    from flow.reliability.store import TrialStore
    net, image, data = lowered_network("cnn", "maps")
    ex = Executor(net, image, "cpu")
    spec = CampaignSpec(bers=(1e-4, 1e-2), trials=10, seed=3)
    rows = {}
    for k in (1, 4):
        store = tmp_path / f"k{k}.sqlite"
        res = run_campaign(ex, image, data.test.x, data.test.y, spec, store, progress=False,
                           batch_maps=k)
        with TrialStore(store) as st:
            rows[k] = [(r["ber"], r["trial"], r["n_faults"], r["correct"])
                       for r in st.trials(res["campaign"])]
    assert len(rows[1]) == 20 and rows[1] == rows[4]
    assert len({r[3] for r in rows[1]}) > 1            # the faults changed some results
