"""``hetq hls``: the hls4ml project of a run for a board, checked in C simulation.

Writes ``RUN_DIR/hls/``: ``model.qonnx.onnx`` (the cleaned QONNX export, usable by other tools),
``prj/`` (the complete project hls4ml writes: sources, ``build_prj.tcl`` and ``project.tcl`` with
the board's part and clock, weights; ``firmware/hetq_plan.h`` stamps the plan and checkpoint
hashes) and ``summary.json``. Then it compiles the C simulation (g++), compares every class score
on the test set with the integer executor, and replays SEU fault maps (the maps ``hetq inject``
draws for the same seed) by rewriting the weight files and reloading the library.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from flow.core.io import sha256_file, write_json
from flow.hw.boards import config_board_dirs, get_board
from flow.hw.hls import build
from flow.pipeline.runner import StepContext, StepResult
from flow.pipeline.session import Session, open_session
from flow.reliability.faults import SeuSampler, trial_rng


def _replay(s: Session, prj, codes, ref_clean, maps: int, ber: float, seed: int,
            progress: bool) -> dict:
    """Replay ``maps`` SEU maps in C-sim and in the executor; count agreements and time."""
    sampler = SeuSampler(s.image)
    fmaps = (sampler.sample(ber, trial_rng(seed, ber, t))
             for t in tqdm(range(maps), desc="C-sim replay", unit="map",
                           disable=not progress or None))
    res = prj.check_maps(fmaps, codes, ref_clean, s.executor)
    return {**res, "maps": maps, "ber": ber, "seed": seed, "images": int(codes.shape[0])}


def _parallel(v: dict) -> str:
    """The note on a layer hls4ml builds fully parallel (its weights become logic)."""
    if not v["fully_parallel"]:
        return ""
    why = ", the only valid factor" if v["target"] > 1 else ""
    return f" (fully parallel: weights in logic, not a memory{why})"


@dataclass
class HlsResult(StepResult):
    """The hls4ml project of the run: its board and settings, C-sim vs the executor, replay."""

    board: dict
    backend: str
    reuse_factor: int
    io_type: str
    qonnx: str
    project: str
    plan_sha256: str
    protected: list[str]
    csim: dict
    replay: dict
    reuse_factors: dict          # layer -> {target, used, n_in, n_out, fully_parallel}

    @property
    def ok(self) -> bool:
        return self.csim["bit_exact"] and self.replay["equal"] == self.replay["maps"]

    def summary(self) -> str:
        c, r, b = self.csim, self.replay, self.board
        return "\n".join([
            f"hls4ml {self.backend} project for {b['name']} ({b['part']}, "
            f"{b['clock_mhz']:g} MHz), {self.io_type}: {self.project}",
            "reuse factor (target " + str(self.reuse_factor) + ", hls4ml's valid list): "
            + ", ".join(f"{k} {v['used']}" + _parallel(v) for k, v in self.reuse_factors.items()),
            f"protected layers: {', '.join(self.protected) or 'none'}",
            f"C-sim vs integer executor on {c['images']} images: "
            + ("bit-exact" if c["bit_exact"] else f"{c['mismatched_images']} images DIFFER"),
            f"fault replay: {r['equal']}/{r['maps']} maps at BER {r['ber']:g} give the "
            f"executor's scores ({r['maps_changing_predictions']} change predictions); "
            f"{r['replay_ms']:.1f} ms per map to rewrite the weights and reload, "
            f"{r['csim_predict_ms']:.1f} ms to classify {r['images']} images"])

    def brief(self) -> str:
        return ("hls: C-sim " + ("bit-exact" if self.csim["bit_exact"] else "DIFFERS")
                + f" on {self.csim['images']} images; {self.replay['equal']}/"
                f"{self.replay['maps']} fault maps equal")

    def record(self) -> dict:
        return {"board": self.board["name"], "bit_exact": self.csim["bit_exact"],
                "maps_equal": self.replay["equal"], "maps": self.replay["maps"]}


def run(ctx: StepContext) -> HlsResult:
    """Build, compile and check the hls4ml project of the run for ``hls.board``."""
    run, cfg = ctx.run, ctx.cfg
    h = cfg.hls
    b = get_board(h.board, config_board_dirs(cfg), "hls.board")
    s = open_session(run.path, "cpu")
    plan_sha = sha256_file(run.plan_file)
    folder = ctx.out
    prj = build(s.qonnx, s.net, s.image, folder, part=b.part, clock_mhz=b.clock_mhz,
                backend=h.backend, reuse_factor=h.reuse_factor,
                stamp={"plan_sha256": plan_sha, "checkpoint_sha256": s.checkpoint_sha256,
                       "board": b.name, "part": b.part})
    codes = s.executor.quantize_input(s.data.test.x)
    ref = s.executor.run(codes, quantized=True).cpu().numpy().astype(np.int64)
    t1 = time.perf_counter()
    hls_scores = prj.scores(prj.inputs(codes.cpu().numpy()))
    predict_s = time.perf_counter() - t1
    mismatched = int((hls_scores != ref).any(axis=1).sum())
    n = h.replay_images or codes.shape[0]
    seed = cfg.seed if cfg.campaign.seed is None else cfg.campaign.seed
    replay = _replay(s, prj, codes[:n], ref[:n], h.replay_maps, h.replay_ber, seed,
                     ctx.progress)
    final = run / "hls"
    res = HlsResult(
        board=b.to_json(), backend=h.backend, reuse_factor=h.reuse_factor,
        io_type="io_stream" if prj.conv else "io_parallel",
        qonnx=str(final / "model.qonnx.onnx"), project=str(final / "prj"),
        plan_sha256=plan_sha,
        protected=sorted(n for n, e in s.plan["layers"].items() if e["protected"]),
        csim={"images": int(codes.shape[0]), "bit_exact": mismatched == 0,
              "mismatched_images": mismatched, "predict_s": predict_s},
        replay=replay, reuse_factors=prj.reuse)
    write_json(folder / "summary.json", res.to_json())
    # the project is written in hls.partial/ and renamed afterwards: record its final folder
    yml = folder / "prj" / "hls4ml_config.yml"
    yml.write_text(yml.read_text().replace(str(folder), str(final)))
    return res
