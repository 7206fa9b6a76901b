"""The fault-injection benchmark runs end to end (its figures are reported, not asserted)."""
from __future__ import annotations

import json

import pytest

from flow.pipeline.bench import BERS, bench_text
from flow.pipeline.commands import Console, bench


@pytest.mark.slow
def test_bench_fi_reports_every_figure(tmp_path):
    res = bench(str(tmp_path / "bench"), repeats=1, epochs=1, sets=["bench.trials=3"],
                con=Console(progress=False)).to_json()
    assert [r["ber"] for r in res["bers"]] == list(BERS)
    for r in res["bers"]:
        assert r["trials_per_second"] > 0 and r["pytorchfi_trials_per_second"] > 0
        assert r["vs_clean_inference"] > 0 and r["vs_pytorchfi"] > 0
    assert res["bers"][-1]["mean_faults"] > res["bers"][0]["mean_faults"]
    assert "PyTorchFI" in bench_text(res)


def test_pytorchfi_corrupts_the_same_weights(mlp_run):
    """PyTorchFI's corrupted float twin holds exactly our faulty weights, dequantized."""
    import numpy as np
    import torch
    from pytorchfi.core import fault_injection

    from flow.core.executor import Executor
    from flow.core.image import MemoryImage
    from flow.pipeline.bench import _pfi_args, _Twin
    from flow.pipeline.session import open_session
    from flow.reliability.faults import Injector, sample_seu

    s = open_session(mlp_run, "cpu")
    image = MemoryImage.build(s.net)            # unprotected, as in the benchmark
    ex = Executor(s.net, image, "cpu")
    twin = _Twin(s.net).eval()
    pfi = fault_injection(twin, 4, input_shape=[1, 8, 8],
                          layer_types=[torch.nn.Conv2d, torch.nn.Linear])
    fmap = sample_seu(image, 2e-2, np.random.default_rng(3))
    corrupted = pfi.declare_weight_fi(**_pfi_args(fmap, image, twin))
    with Injector(image, ex).injected(fmap):
        layers = [m for m in corrupted.modules() if isinstance(m, torch.nn.Linear)]
        for name, lin in zip(twin.param_layers, layers):
            frac = s.net.params[name].fmt.frac
            assert torch.equal(lin.weight.data, ex.tensors[name] * 2.0 ** -frac)


def test_bench_clean_reports_each_size(tmp_path):
    """`hetq bench clean` on two MLP widths: both timed, the 1M-weight one's layers past 2**24
    named with the way they ran, the result stored in the run."""
    from conftest import hetq_inproc
    r = hetq_inproc(None, "bench", "clean", "--out", tmp_path / "b", "--repeats", "2", "--json",
                    "--set", "bench.clean_sizes=[{arch: mlp, width: 0.5}, {arch: mlp, width: 16}]")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout)
    small, large = res["rows"]
    assert (small["weights"], small["wide_layers"]) == (3392, {})
    assert large["weights"] > 1_000_000 and set(large["wide_layers"]) == {"fc2", "fc3"}
    assert set(large["wide_layers"].values()) <= {"split", "one kernel"}
    assert all(row["executor_s"] > 0 and row["float_twin_s"] > 0 for row in res["rows"])
    assert json.loads((tmp_path / "b" / "bench_clean" / "result.json").read_text()) == res
