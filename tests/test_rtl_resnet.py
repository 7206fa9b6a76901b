"""ResNet-18 (CIFAR form, width 1/8, trained on digits32) as RTL, in Verilator through cocotb,
against the integer executor: the residual adds, the 1x1 stride-2 shortcuts, the forks and
frame FIFOs around each block and the global average pool.

- class scores bit-exact on the first test images;
- random SEU maps (BER 1e-3, about 700 flips each) give exactly the executor's scores;
- in the two protected layers (one on a main branch, one shortcut), one MSB copy flipped in
  every word is masked and two copies are not;
- latency and initiation interval within 1 % of the analytic count (the critical path through
  the main branches; the shortcut FIFOs keep the interval at the slowest layer's).
One simulator run carries all trials.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import write_config

from flow.cli import main
from flow.core.executor import Executor
from flow.core.image import MemoryImage
from flow.hw.rtl import design
from flow.hw.rtlgen import write_project
from flow.hw.rtlsim import RtlSim, image_codes_hwc, measured_timing
from flow.pipeline.session import open_session
from flow.reliability.faults import FaultMap, Injector, SeuSampler, trial_rng

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("rtl_resnet")]

IMAGES = 16
SEU_BER = 1e-3
SEU_MAPS = 6
PROTECTED = ["layer2.0.conv1", "layer3.0.shortcut"]
CFG = {"seed": 0, "data": {"name": "digits32"},
       "model": {"arch": "resnet18", "width": 0.125, "default_weight_bits": 4, "act_bits": 8,
                 "protected": PROTECTED},
       "train": {"epochs": 3, "lr": 0.001, "batch_size": 16},
       "rtl": {"target_cycles": 8192}}


def _tmr_maps(image: MemoryImage, layer: str) -> list[tuple[str, FaultMap]]:
    """One MSB copy flipped in every word; two copies flipped in every word."""
    m = image.memory(f"{layer}.weight")
    words = np.arange(m.depth)
    a, b = list(itertools.islice(m.msb_bits(), 2))
    return [("tmr1", FaultMap([m.name] * m.depth, words, [a] * m.depth, ["flip"] * m.depth)),
            ("tmr2", FaultMap([m.name] * 2 * m.depth, np.repeat(words, 2),
                              np.tile([a, b], m.depth), ["flip"] * 2 * m.depth))]


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("resnet_rtl")
    run = root / "run"
    assert main(["train", str(write_config(root / "resnet18.yaml", CFG)), "--out", str(run),
                 "--json"]) == 0
    s = open_session(run, "cpu")
    image = MemoryImage.build(s.net, PROTECTED)
    ex = Executor(s.net, image, "cpu")
    prj = root / "prj"
    write_project(prj, design(s.net, image, s.cfg.rtl), image, s.checkpoint_sha256)
    rtl = RtlSim(prj, n_max=IMAGES)
    codes = ex.quantize_input(s.data.test.x[:IMAGES])
    sampler = SeuSampler(image)
    trials = [("clean", FaultMap((), (), (), ()))]
    trials += [("seu", sampler.sample(SEU_BER, trial_rng(3, SEU_BER, t)))
               for t in range(SEU_MAPS)]
    for layer in PROTECTED:
        trials += _tmr_maps(image, layer)
    jobs = [{"id": k, "flips": rtl.flips(fm), "scores": True, "timing": k == 0}
            for k, (_, fm) in enumerate(trials)]
    res = rtl.run(image_codes_hwc(codes.numpy().astype(np.int64)), jobs, root / "work")
    inj = Injector(image, ex)
    return {"kinds": [k for k, _ in trials], "flips": [len(fm) for _, fm in trials],
            "rtl": [r.scores for r in res], "soft": [inj.scores(fm, codes) for _, fm in trials],
            "timing": measured_timing(res[0]), "analytic": rtl.manifest.obj["analytic"],
            "accuracy": float((s.data.test.y[:IMAGES].numpy() == res[0].preds).mean())}


def test_resnet_clean_scores_bit_exact(sim):
    assert sim["rtl"][0].shape == (IMAGES, 10)
    assert np.array_equal(sim["rtl"][0], sim["soft"][0])
    assert len(np.unique(sim["soft"][0].argmax(1))) > 3     # a trained classifier
    assert sim["accuracy"] > 0.5


def test_resnet_seu_maps_match_executor(sim):
    idx = [k for k, kind in enumerate(sim["kinds"]) if kind == "seu"]
    assert len(idx) == SEU_MAPS and min(sim["flips"][k] for k in idx) > 500
    for k in idx:
        assert np.array_equal(sim["rtl"][k], sim["soft"][k]), f"map {k}"
    assert any(not np.array_equal(sim["soft"][k], sim["soft"][0]) for k in idx)


def test_resnet_tmr_masks_one_copy_not_two(sim):
    for k, kind in enumerate(sim["kinds"]):
        if kind == "tmr1":
            assert np.array_equal(sim["rtl"][k], sim["soft"][0])
        elif kind == "tmr2":
            assert np.array_equal(sim["rtl"][k], sim["soft"][k])
            assert not np.array_equal(sim["rtl"][k], sim["soft"][0])
    assert sim["kinds"].count("tmr1") == sim["kinds"].count("tmr2") == len(PROTECTED)


def test_resnet_cycles_within_one_percent_of_analytic(sim):
    m, a = sim["timing"], sim["analytic"]
    assert abs(m["latency_cycles"] / a["latency_cycles"] - 1) <= 0.01
    assert abs(m["ii_cycles"] / a["ii_cycles"] - 1) <= 0.01
    assert not any("shortcut" in layer for layer in a["critical_path"])
