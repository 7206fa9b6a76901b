"""The RTL accelerator in Verilator through cocotb against the integer executor.

For the MLP, the small CNN and the binary MLP, each with its plan's protection (one layer with
MSB TMR, the others plain): class scores bit-exact on 200 test images; 30 random SEU maps give
exactly the software's predictions; every single flip of a protected MSB triplet is masked and
every double flip is not; a weight bit named by (layer, output, input, bit) through the manifest
flips the same weight as in software; cycles match the analytic count (that they do not change
with TMR: test_flow_run.py, whose flow simulates the unprotected baseline too). One simulator run
per design carries all of these trials; the CNN's fault trials run on its first 60 images (the
CNN is the slowest design to simulate).
"""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from flow.core.executor import Executor
from flow.core.image import MemoryImage
from flow.hw import rtlsim
from flow.hw.rtl import design
from flow.hw.rtlgen import write_project
from flow.hw.rtlsim import RtlSim, SimError, image_codes_hwc, measured_timing
from flow.pipeline.session import open_session
from flow.reliability.faults import FaultMap, Injector, SeuSampler, trial_rng

# one worker runs this module under pytest-xdist: its simulations are cached per process
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("rtl")]

IMAGES = 200
# the fault trials of the CNN (the slowest to simulate) run on its first 60 images
FAULT_IMAGES = {"mlp": IMAGES, "cnn": 60, "bmlp": IMAGES}
SEU_MAPS = 30
SEU_BER = 1e-2
NETS = ("mlp", "cnn", "bmlp")
# (layer, output, PyTorch fan-in index) of the weight flipped through the manifest
NAMED = {"mlp": ("fc1", 3, 37), "cnn": ("conv1", 5, 4), "bmlp": ("fc3", 7, 11)}
# the design built with GCC's profile-guided optimization (sim.pgo)
PGO_NET = "mlp"

_cache: dict[str, dict] = {}


def _maps(image: MemoryImage, protected: list[str], named: tuple, man) -> list[tuple]:
    """(kind, FaultMap, RTL flips or None) of every trial after the clean one."""
    sampler = SeuSampler(image)
    out = [("seu", sampler.sample(SEU_BER, trial_rng(7, SEU_BER, t)), None)
           for t in range(SEU_MAPS)]
    for layer in protected:
        m = image.memory(f"{layer}.weight")
        words = np.arange(m.depth)
        for copy in m.msb_bits():                       # one copy flipped in every word
            out.append(("tmr1", FaultMap([m.name] * m.depth, words, [copy] * m.depth,
                                         ["flip"] * m.depth), None))
        for a, b in itertools.combinations(m.msb_bits(), 2):   # two copies in every word
            out.append(("tmr2", FaultMap([m.name] * 2 * m.depth, np.repeat(words, 2),
                                         np.tile([a, b], m.depth), ["flip"] * 2 * m.depth),
                        None))
    layer, o, i = named
    m = image.memory(f"{layer}.weight")
    fanin = int(np.prod(m.shape[1:]))
    bit = m.fmt.bits - 1 if not m.protected else m.fmt.bits - 2   # MSB, or a voted-free bit
    fmap = FaultMap([m.name], [o * fanin + i], [bit], ["flip"])
    out.append(("named", fmap, [list(man.locate_weight(layer, o, i, bit))]))
    return out


def _simulate(run_dir: Path, tmp: Path) -> dict:
    s = open_session(run_dir, "cpu")
    prot = [n for n, e in s.plan["layers"].items() if e["protected"]]
    image = MemoryImage.build(s.net, prot)
    ex = Executor(s.net, image, "cpu")
    prj = tmp / "prj"
    write_project(prj, design(s.net, image, s.cfg.rtl), image, s.checkpoint_sha256)
    # the MLP's model is built with GCC's profile (as hetq sim builds by default): every test
    # below holds for that build as for the plain ones
    pgo = s.cfg.model.arch == PGO_NET
    sim = RtlSim(prj, n_max=IMAGES, pgo=pgo)
    codes = ex.quantize_input(s.data.test.x[:IMAGES])
    if pgo:        # over a plain build, as a run directory of an older hetq has
        RtlSim(prj, n_max=IMAGES).build()
        sim.build(train=image_codes_hwc(codes.numpy().astype(np.int64)))
    clean = ex.run(codes, quantized=True).numpy().astype(np.int64)
    trials = [("clean", FaultMap((), (), (), ()), None)] + _maps(
        image, prot, NAMED[s.cfg.model.arch], sim.manifest)
    nf = FAULT_IMAGES[s.cfg.model.arch]
    jobs = [{"id": k, "flips": flips if flips is not None else sim.flips(fm),
             "scores": True, "timing": kind == "clean",
             "n_images": IMAGES if kind == "clean" else nf}
            for k, (kind, fm, flips) in enumerate(trials)]
    res = sim.run(image_codes_hwc(codes.numpy().astype(np.int64)), jobs, tmp / "work")
    inj = Injector(image, ex)
    soft = []
    for kind, fm, _ in trials:
        with inj.injected(fm):
            out = ex.run(codes, quantized=True).numpy().astype(np.int64)
        soft.append(out if kind == "clean" else out[:nf])
    return {"kinds": [t[0] for t in trials], "rtl": [r.scores for r in res], "soft": soft,
            "clean": clean, "fault_clean": clean[:nf], "timing": measured_timing(res[0]),
            "protected": prot,
            "analytic": sim.manifest.obj["analytic"], "project": prj,
            "profiles": sorted(p.name for p in sim.build_dir.glob("*.gcda"))}


def results(request, tmp_path_factory, net: str) -> dict:
    """Simulation results of ``net`` with its plan's protection (cached)."""
    if net not in _cache:
        run_dir = request.getfixturevalue(f"{net}_run")
        _cache[net] = _simulate(run_dir, tmp_path_factory.mktemp(f"rtl_{net}"))
    return _cache[net]


@pytest.mark.parametrize("net", NETS)
def test_clean_scores_bit_exact(request, tmp_path_factory, net):
    r = results(request, tmp_path_factory, net)
    assert r["protected"], "the plan protects a layer"
    assert r["rtl"][0].shape == r["clean"].shape == (IMAGES, 10)
    assert np.array_equal(r["rtl"][0], r["clean"])
    assert len(np.unique(r["clean"].argmax(1))) > 5     # a real classifier, not a constant


@pytest.mark.parametrize("net", NETS)
def test_seu_maps_match_software(request, tmp_path_factory, net):
    r = results(request, tmp_path_factory, net)
    idx = [k for k, kind in enumerate(r["kinds"]) if kind == "seu"]
    assert len(idx) == SEU_MAPS
    changed = 0
    for k in idx:
        assert np.array_equal(r["rtl"][k], r["soft"][k]), f"map {k}"
        assert np.array_equal(r["rtl"][k].argmax(1), r["soft"][k].argmax(1))
        changed += int((r["soft"][k].argmax(1) != r["fault_clean"].argmax(1)).any())
    assert changed >= SEU_MAPS // 2, "the BER must change some predictions"


@pytest.mark.parametrize("net", NETS)
def test_tmr_masks_single_flips_not_double(request, tmp_path_factory, net):
    r = results(request, tmp_path_factory, net)
    singles = [k for k, kind in enumerate(r["kinds"]) if kind == "tmr1"]
    doubles = [k for k, kind in enumerate(r["kinds"]) if kind == "tmr2"]
    assert len(singles) == len(doubles) == 3 * len(r["protected"]) > 0
    for k in singles:
        assert np.array_equal(r["rtl"][k], r["fault_clean"])
    for k in doubles:
        assert np.array_equal(r["rtl"][k], r["soft"][k])
        assert not np.array_equal(r["rtl"][k], r["fault_clean"])


@pytest.mark.parametrize("net", NETS)
def test_manifest_names_weight_bits(request, tmp_path_factory, net):
    r = results(request, tmp_path_factory, net)
    k = r["kinds"].index("named")
    assert np.array_equal(r["rtl"][k], r["soft"][k])
    assert not np.array_equal(r["rtl"][k], r["fault_clean"]), "the named flip reached the scores"


@pytest.mark.parametrize("net", NETS)
def test_cycles_match_analytic(request, tmp_path_factory, net):
    prot = results(request, tmp_path_factory, net)
    m, a = prot["timing"], prot["analytic"]
    assert 0.9 <= m["latency_cycles"] / a["latency_cycles"] <= 1.1
    assert 0.9 <= m["ii_cycles"] / a["ii_cycles"] <= 1.1


def test_profiled_build_is_used_as_it_is(request, tmp_path_factory):
    """The profiled model (built over a plain one and run once on the images) is what a plain
    request finds: no second build, the stamp keeps the profile's options; a profiled request
    with nothing to profile on fails with a clear error on a project without a build."""
    r = results(request, tmp_path_factory, PGO_NET)
    # the instrumented model ran (its objects were compiled again, not kept from the plain build)
    assert any(p.startswith("Vtop") for p in r["profiles"]), r["profiles"]
    prj = r["project"]
    stamp = prj / "sim_build" / "hetq_build.json"
    binary = prj / "sim_build" / "hetq_harness"
    before = (stamp.read_text(), binary.stat().st_mtime_ns)
    assert "-fprofile-use" in before[0]
    assert RtlSim(prj, n_max=IMAGES).up_to_date()
    assert RtlSim(prj, n_max=IMAGES, pgo=True).up_to_date()
    assert not RtlSim(prj, n_max=IMAGES + 1).up_to_date()     # another harness: a build to do
    tools = rtlsim._tools()
    with pytest.MonkeyPatch.context() as mp:                  # other tools: a build to do
        mp.setattr(rtlsim, "_tools", lambda: {**tools, "verilator": "5.0.0"})
        assert not RtlSim(prj, n_max=IMAGES).up_to_date()
    RtlSim(prj, n_max=IMAGES).build()                       # plain request: the same model
    assert RtlSim(prj, n_max=IMAGES - 1, pgo=True).up_to_date()   # fewer images: this harness
    RtlSim(prj, n_max=IMAGES - 1, pgo=True).build()
    RtlSim(prj, n_max=IMAGES, pgo=True).build()             # fresh: nothing to profile again
    assert (stamp.read_text(), binary.stat().st_mtime_ns) == before
    with pytest.raises(SimError, match="needs images to profile on"):
        RtlSim(prj, build_dir=tmp_path_factory.mktemp("pgo_empty"), n_max=IMAGES,
               pgo=True).build()
