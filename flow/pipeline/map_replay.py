"""``hetq sim RUN --map F`` and ``hetq hls RUN --map F``: a user's fault map replayed in RTL
(Verilator) or in hls4ml C-sim, beside the integer executor under the same map.

The map is read and checked against the run's memory image before any tool starts (the same
one-line errors as ``hetq inject --map``); then the level's own checks (bit flips only, memories
the level stores). The result gives the accuracy at that level and, image by image, whether the
prediction and the class scores equal the executor's: the project's promise that the same map
gives the same predictions at every level, checked on maps hetq did not draw. It also counts the
images whose class scores the map changes at that level (against the level's own fault-free
run), which shows whether the voter masked the map.

RTL replay runs on the campaign's images (``sim.images``, so the built model is reused) in
``rtl/work/map/``; C-sim replay builds the run's hls4ml project again in a temporary folder
inside the run directory (the ``hls/`` step's own weight files are never rewritten), on
``hls.replay_images``, and removes it afterwards.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flow.core.config import RunConfig
from flow.core.errors import FaultMapError, RunDirError
from flow.core.io import sha256_file
from flow.hw.boards import config_board_dirs, get_board
from flow.pipeline.rundir import RunDir
from flow.pipeline.runner import StepResult
from flow.pipeline.session import Session, open_session
from flow.reliability.faults import FaultMap, Injector


@dataclass
class MapReplayResult(StepResult):
    """One fault map at one level, image by image against the executor under the same map."""

    level: str
    map: str
    faults: int
    images: int
    correct: int
    accuracy: float
    executor_accuracy: float
    predictions_equal: int
    scores_equal: int
    scores_changed: int
    predictions: list[int]
    executor_predictions: list[int]

    @property
    def ok(self) -> bool:
        return self.scores_equal == self.images

    def summary(self) -> str:
        name = {"rtl": "RTL (Verilator)", "csim": "hls4ml C-sim"}[self.level]
        agree = ("bit-exact" if self.ok else "DIFFERENT")
        return (f"{name}, {self.faults} faults from {self.map}: accuracy "
                f"{100 * self.accuracy:.2f} % ({self.correct}/{self.images} images); integer "
                f"executor under the same map {100 * self.executor_accuracy:.2f} %\n"
                f"per image: predictions equal on {self.predictions_equal}/{self.images}, "
                f"class scores equal on {self.scores_equal}/{self.images}: {agree}; the map "
                f"changes the class scores of {self.scores_changed} images at this level")


def _load(s: Session, map_path: str, level: str, stored: set[str]) -> FaultMap:
    """The map, checked against the image and against what ``level`` can replay: bit flips in
    the memories it stores (``stored``), each a one-line FaultMapError naming the fault."""
    fmap = FaultMap.load(map_path)
    fmap.validate(s.image)
    for i, (m, k) in enumerate(zip(fmap.memory, fmap.kind)):
        if k != "flip":
            raise FaultMapError(f"faultmap.faults[{i}].kind: '{k}' cannot be replayed in "
                                f"{level} (bit flips only)")
        if m not in stored:
            raise FaultMapError(f"faultmap.faults[{i}].memory: '{m}' is not stored in a "
                                f"memory in {level} (replayable: {', '.join(sorted(stored))})")
    return fmap


def _result(level: str, map_path: str, fmap: FaultMap, scores: np.ndarray, ref: np.ndarray,
            clean: np.ndarray, y: np.ndarray) -> MapReplayResult:
    pred, ref_pred = scores.argmax(1), ref.argmax(1)
    n = len(y)
    return MapReplayResult(
        level=level, map=str(map_path), faults=len(fmap), images=n,
        correct=int((pred == y).sum()), accuracy=float((pred == y).mean()),
        executor_accuracy=float((ref_pred == y).mean()),
        predictions_equal=int((pred == ref_pred).sum()),
        scores_equal=int((scores == ref).all(axis=1).sum()),
        scores_changed=int((scores != clean).any(axis=1).sum()),
        predictions=pred.tolist(), executor_predictions=ref_pred.tolist())


def replay_rtl(run: RunDir, map_path: str, images: int | None) -> MapReplayResult:
    """The map in the run's RTL project (Verilator, cocotb) on the first ``images`` images."""
    from flow.hw.rtlsim import RtlSim, image_codes_hwc, verilator_env
    from flow.pipeline.rtl_step import open_project
    s = open_session(run.path, "cpu")
    man = open_project(s)
    fmap = _load(s, map_path, "RTL", set(man.layouts))
    x, y = s.data.test.x, s.data.test.y.numpy()
    if images is not None:
        x, y = x[:images], y[:images]
    codes = s.executor.quantize_input(x)
    sim = RtlSim(run / "rtl", build_dir=run / "rtl" / "sim_build", n_max=max(len(y), 1))
    flips = sim.flips(fmap)
    hwc = image_codes_hwc(codes.cpu().numpy().astype(np.int64))
    with verilator_env():
        sim.build()
        clean, r = sim.run(hwc, [{"id": "clean", "flips": [], "scores": True},
                                 {"id": "map", "flips": flips, "scores": True}],
                           run / "rtl" / "work" / "map", log="sim_map")
    ref = Injector(s.image, s.executor).scores(fmap, codes)
    return _result("rtl", map_path, fmap, r.scores, ref, clean.scores, y)


def replay_csim(run: RunDir, cfg: RunConfig, map_path: str) -> MapReplayResult:
    """The map in a fresh build of the run's hls4ml project (C-sim) on ``hls.replay_images``."""
    from flow.hw.hls import build
    s = open_session(run.path, "cpu")
    weights = {m.name for m in s.image.memories.values() if m.kind == "weight"}
    fmap = _load(s, map_path, "C-sim", weights)
    if not run.step_done("hls"):
        raise RunDirError(f"run_dir: '{run.path}' has no hls4ml project (run 'hetq hls' first)")
    h = cfg.hls
    b = get_board(h.board, config_board_dirs(cfg), "hls.board")
    n = h.replay_images or len(s.data.test.y)
    x, y = s.data.test.x[:n], s.data.test.y[:n].numpy()
    codes = s.executor.quantize_input(x)
    with tempfile.TemporaryDirectory(prefix="hls_map_", dir=run.path) as tmp:
        prj = build(s.qonnx, s.net, s.image, Path(tmp), part=b.part, clock_mhz=b.clock_mhz,
                    backend=h.backend, reuse_factor=h.reuse_factor,
                    stamp={"plan_sha256": sha256_file(run.plan_file),
                           "checkpoint_sha256": s.checkpoint_sha256, "board": b.name,
                           "part": b.part})
        x_in = prj.inputs(codes.cpu().numpy())
        clean = prj.scores(x_in)
        prj.replay(fmap)
        scores = prj.scores(x_in)
    ref = Injector(s.image, s.executor).scores(fmap, codes)
    return _result("csim", map_path, fmap, scores, ref, clean, y)
