"""The Verilator runtime's objects shared between plain builds (flow.hw.objcache).

A second build of a model in another folder takes the runtime's objects from the cache (make
compiles only the model) and simulates to the same class scores as the first; profile-guided
builds do not use the cache; a runtime source that changed is a miss.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flow.core.executor import Executor
from flow.core.image import MemoryImage
from flow.hw import objcache, rtlsim
from flow.hw.rtl import design
from flow.hw.rtlgen import write_project
from flow.hw.rtlsim import OBJECTS_ENV, PGO_USE, RtlSim, build_args, image_codes_hwc
from flow.pipeline.session import open_session

pytestmark = pytest.mark.slow

IMAGES = 20


def _compiled(build: Path) -> list[str]:
    """The objects make compiled in ``build`` (from its log)."""
    return [line.split(" -o ")[1].split()[0] for line in
            (build / "build.log").read_text().splitlines() if " -c -o " in line]


def test_second_build_takes_the_runtime_from_the_cache(mlp_run, tmp_path, monkeypatch):
    monkeypatch.delenv(OBJECTS_ENV, raising=False)
    s = open_session(mlp_run, "cpu")
    image = MemoryImage.build(s.net, ["fc2"])
    prj = tmp_path / "prj"
    write_project(prj, design(s.net, image, s.cfg.rtl), image, s.checkpoint_sha256)
    ex = Executor(s.net, image, "cpu")
    codes = image_codes_hwc(ex.quantize_input(s.data.test.x[:IMAGES]).numpy().astype(np.int64))
    cache = tmp_path / "objects"
    scores = []
    for b in ("first", "second"):
        sim = RtlSim(prj, build_dir=tmp_path / b, n_max=IMAGES, objects=cache)
        sim.build()
        res = sim.run(codes, [{"id": 0, "flips": [], "scores": True}], tmp_path / f"w_{b}")
        scores.append(res[0].scores)
    first, second = _compiled(tmp_path / "first"), _compiled(tmp_path / "second")
    keys = json.loads((tmp_path / "second" / objcache.KEYS).read_text())
    # the runtime (verilated*.o and cocotb's main) compiled once, then copied; the model twice
    assert set(keys) >= {"verilated.o", "verilated_vpi.o", "verilator.o"}
    assert set(keys) <= set(first) and not set(keys) & set(second)
    assert [o for o in first if o not in keys] == second == ["Vtop__ALL.o"]
    assert sorted(p.name for p in cache.glob("*.o")) == sorted(f"{k}.o" for k in keys.values())
    assert np.array_equal(scores[0], scores[1])
    assert np.array_equal(scores[0], ex.run(ex.quantize_input(s.data.test.x[:IMAGES]),
                                            quantized=True).numpy().astype(np.int64))
    # the environment's folder is taken over the argument
    monkeypatch.setenv(OBJECTS_ENV, str(tmp_path / "env"))
    assert RtlSim(prj, objects=cache).objects == (tmp_path / "env").resolve()


def test_a_changed_runtime_source_is_a_miss(tmp_path, monkeypatch):
    """The key holds the source's content: the same command on another source is another key."""
    src = tmp_path / "rt.cpp"
    build = tmp_path / "build"
    build.mkdir()
    (build / "Makefile").write_text(f"rt.o:\n\tc++ -O2 -c -o rt.o {src}\n")
    src.write_text("int f() { return 1; }\n")
    one = objcache.runtime_objects(build, ["make"])
    src.write_text("int f() { return 2; }\n")
    two = objcache.runtime_objects(build, ["make"])
    assert set(one) == set(two) == {"rt.o"} and one["rt.o"] != two["rt.o"]


def test_profiled_builds_do_not_use_the_cache(tmp_path, monkeypatch):
    """A profile-guided build's objects depend on its profile: its runner has no cache."""
    monkeypatch.delenv(OBJECTS_ENV, raising=False)
    seen = []

    class Stop(Exception):
        pass

    def runner(tools, objects):
        seen.append(objects)
        raise Stop
    monkeypatch.setattr(rtlsim, "_runner", runner)
    sim = RtlSim.__new__(RtlSim)
    sim.objects, sim.build_dir = tmp_path / "objects", tmp_path
    for args in (build_args(), build_args(PGO_USE), build_args(rtlsim.PGO_GENERATE, link=True)):
        with pytest.raises(Stop):
            sim._build(args, always=True, log="build")
    assert seen == [tmp_path / "objects", None, None]


def test_a_cache_never_fails_a_build(tmp_path, capsys):
    """An unwritable cache folder (a file in its place) and a failing dry run: reported, and
    the command succeeds (make then compiles the objects itself)."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    build = tmp_path / "build"
    build.mkdir()
    (build / objcache.KEYS).write_text(json.dumps({"rt.o": "ab"}))
    (build / "rt.o").write_text("")
    (build / "rt.d").write_text("")
    assert objcache.main(["store", str(blocker / "objects")], build) == 0
    assert objcache.main(["seed", str(tmp_path / "c"), "--", "false"], build) == 0
    err = capsys.readouterr().err
    assert "store skipped" in err and "seed skipped" in err
