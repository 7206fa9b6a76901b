"""``hetq hls``: the hls4ml project of a run for a board, checked in C simulation.

Writes ``RUN_DIR/hls/``: ``model.qonnx.onnx`` (the cleaned QONNX export, usable by other tools),
``prj/`` (the complete project hls4ml writes: sources, ``build_prj.tcl`` and ``project.tcl`` with
the board's part and clock, weights; ``firmware/hetq_plan.h`` stamps the plan and checkpoint
hashes) and ``summary.json``. Then it compiles the C simulation (g++), compares every class score
on the test set with the integer executor, and replays SEU fault maps (the maps ``hetq inject``
draws for the same seed) by rewriting the weight files and reloading the library.
"""
from __future__ import annotations

import json
import time

import numpy as np
from tqdm import tqdm

from flow.core.io import atomic_write, sha256_file
from flow.hw.boards import config_board_dirs, get_board
from flow.hw.hls import build
from flow.pipeline.rundir import RunDir
from flow.pipeline.session import Session, open_session
from flow.reliability.faults import FaultMap, Injector, SeuSampler, trial_rng


def _replay(s: Session, prj, codes, ref_clean, maps: int, ber: float, seed: int,
            progress: bool) -> dict:
    """Replay ``maps`` SEU maps in C-sim and in the executor; count agreements and time."""
    sampler = SeuSampler(s.image)
    inj = Injector(s.image, s.executor)
    x = prj.inputs(codes.cpu().numpy())
    equal = changed = 0
    t_replay = t_predict = 0.0
    for t in tqdm(range(maps), desc="C-sim replay", unit="map", disable=not progress or None):
        fmap = sampler.sample(ber, trial_rng(seed, ber, t))
        t0 = time.perf_counter()
        prj.replay(fmap)
        t1 = time.perf_counter()
        hls = prj.scores(x)
        t2 = time.perf_counter()
        t_replay += t1 - t0
        t_predict += t2 - t1
        with inj.injected(fmap):
            ref = s.executor.run(codes, quantized=True).cpu().numpy().astype(np.int64)
        equal += int(np.array_equal(hls, ref))
        changed += int((ref.argmax(1) != ref_clean.argmax(1)).any())
    prj.replay(FaultMap((), (), (), ()))                            # fault-free weights back
    n = max(maps, 1)
    return {"maps": maps, "ber": ber, "seed": seed, "equal": equal,
            "maps_changing_predictions": changed, "replay_ms": 1e3 * t_replay / n,
            "csim_predict_ms": 1e3 * t_predict / n, "images": int(codes.shape[0])}


def hls(run: RunDir, *, board: str | None = None, backend: str | None = None,
        boards_dir: str | None = None, progress: bool = True) -> dict:
    """Build, compile and check the hls4ml project of ``run`` for ``board``."""
    t0 = time.time()
    cfg = run.config()
    h = cfg.hls
    extra = config_board_dirs(cfg, boards_dir)
    b = get_board(board or h.board, extra)
    s = open_session(run.path, "cpu")
    plan_sha = sha256_file(run / "plan.json")
    with run.step_folder("hls") as folder:
        prj = build(s.qonnx, s.net, s.image, folder, part=b.part, clock_mhz=b.clock_mhz,
                    backend=backend or h.backend, reuse_factor=h.reuse_factor,
                    stamp={"plan_sha256": plan_sha, "checkpoint_sha256": s.checkpoint_sha256,
                           "board": b.name, "part": b.part})
        codes = s.executor.quantize_input(s.data.test.x)
        ref = s.executor.run(codes, quantized=True).cpu().numpy().astype(np.int64)
        t1 = time.perf_counter()
        hls_scores = prj.scores(prj.inputs(codes.cpu().numpy()))
        predict_s = time.perf_counter() - t1
        mismatched = int((hls_scores != ref).any(axis=1).sum())
        n = h.replay_images or codes.shape[0]
        replay = _replay(s, prj, codes[:n], ref[:n], h.replay_maps, h.replay_ber, cfg.seed,
                         progress)
        res = {"board": b.to_json(), "backend": backend or h.backend,
               "reuse_factor": h.reuse_factor, "io_type": "io_stream" if prj.conv
               else "io_parallel", "qonnx": str(run / "hls" / "model.qonnx.onnx"),
               "project": str(run / "hls" / "prj"), "plan_sha256": plan_sha,
               "protected": sorted(n for n, e in s.plan["layers"].items() if e["protected"]),
               "csim": {"images": int(codes.shape[0]), "bit_exact": mismatched == 0,
                        "mismatched_images": mismatched, "predict_s": predict_s},
               "replay": replay}
        atomic_write(folder / "summary.json", json.dumps(res, indent=1, default=str))
    # the project was written in hls.partial/ and renamed: keep its recorded folder true
    yml = run / "hls" / "prj" / "hls4ml_config.yml"
    yml.write_text(yml.read_text().replace("hls.partial", "hls"))
    res["seconds"] = round(time.time() - t0, 3)
    run.record_step("hls", status="done", seconds=res["seconds"], board=b.name,
                    bit_exact=res["csim"]["bit_exact"])
    return res
