"""The hardware part of ``hetq zobnn``: a ZOBNN network as integer memories, RTL and SEU campaign.

For a network :mod:`flow.zobnn.lower` can lower (``bdorefa``, ``breact``):

1. the integer network and its weight-memory image (binary weights, integer weights, thresholds,
   directions, affine multipliers and offsets, output bias); its fault-free predictions against
   the float32-evaluated ZOBNN model on the whole test set;
2. a software fault campaign of the integer network over **every** memory kind (``zobnn.bers``,
   ``zobnn.trials`` maps, stored in ``RUN_DIR/campaigns.sqlite`` as trials finish);
3. the RTL project (``RUN_DIR/zobnn/hw_<arch>/rtl``, folded for ``zobnn.rtl_target_cycles``), built
   with Verilator and run through cocotb on the first ``zobnn.rtl_images`` test images:
   class scores against the executor, cycles against the analytic count, then
   ``zobnn.rtl_trials`` maps per fault rate of ``zobnn.rtl_bers`` (map ``t`` is the software
   campaign's trial ``t``), flipped in the RTL memories through VPI, each compared score for
   score with the executor under the same map;
4. hls4ml C-sim (``zobnn.csim``): the integer network as a QONNX graph
   (:mod:`flow.zobnn.qonnx`) through hetq's hls4ml flow for ``hls.board``; class scores on the
   test set against the executor, then SEU maps in the weight memories replayed in C-sim. hls4ml's
   own binary convolution would be wrong here: its zero padding writes the XNOR code 0, which its
   binary product reads as -1, while the network pads with 0; hetq's pass streams the signs as
   -1/+1 (``ap_int<2>``), so the padding's 0 contributes 0 (see :mod:`flow.hw.hls_ext`).
5. its resources from Yosys for ``hls.board`` (``zobnn.synth``).

Both networks run every step; an operation without a QONNX form (a network lowered in the future)
reports C-sim as not run, with the reason.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

from flow.core.config import RtlConfig, RunConfig
from flow.core.errors import PlanError
from flow.core.executor import Executor
from flow.core.image import MemoryImage
from flow.core.io import atomic_write, write_json
from flow.core.ir import IntNetwork
from flow.hw.boards import config_board_dirs, get_board
from flow.hw.hls import build
from flow.hw.rtl import design
from flow.hw.rtlgen import write_project
from flow.hw.rtlsim import RtlSim, image_codes_hwc, measured_timing
from flow.hw.synth import synthesize_cached
from flow.nn.data import Dataset
from flow.reliability.campaign import CampaignSpec, run_campaign
from flow.reliability.faults import Injector, SeuSampler, trial_rng
from flow.zobnn.lower import agreement, lower_zobnn
from flow.zobnn.qonnx import write_qonnx


def _net_sha(image: MemoryImage) -> str:
    h = hashlib.sha256()
    for m in image.memories.values():
        h.update(f"{m.name}:{m.width}:{m.shape}".encode())
        h.update(m.words.astype(np.int64).tobytes())     # as when words were all int64
    return h.hexdigest()


def input_grid(x: torch.Tensor, max_frac: int = 8) -> tuple[int, int, bool]:
    """Fixed-point input format for pixels ``x`` (non-negative): the fewest fraction bits (up to
    ``max_frac``) that hold every pixel exactly, the unsigned bits of the largest code, and
    whether the grid is exact (digits: k/16, 4 fraction bits; CIFAR's k/255 is not exact)."""
    v = x.detach().double().cpu().numpy()
    if v.min() < 0:
        raise PlanError("zobnn hardware: negative input pixels have no unsigned input format")
    frac = next((f for f in range(max_frac + 1) if np.array_equal(v * 2 ** f,
                                                                  np.round(v * 2 ** f))), None)
    exact = frac is not None
    frac = max_frac if frac is None else frac
    return frac, max(1, int(np.round(v.max() * 2 ** frac)).bit_length()), exact


def hardware(folder: Path, store: Path, arch: str, model: nn.Module, bits: int, cfg: RunConfig,
             data: Dataset, progress: bool = True) -> dict:
    """Lower, check and fault-simulate the ZOBNN network ``model`` into ``folder`` (the
    campaign's trials go to the store ``store``); results also in ``folder/hardware.json``. Returns
    ``{"lowered": False, "reason"}`` for a
    network that has no integer lowering."""
    t0 = time.time()
    z = cfg.zobnn
    frac, in_bits, exact = input_grid(data.test.x)
    try:
        net = lower_zobnn(model, bits, data.input_shape, data.num_classes, input_frac=frac,
                          input_bits=in_bits)
    except PlanError as e:
        return {"lowered": False, "reason": str(e)}
    folder.mkdir(parents=True, exist_ok=True)
    image = MemoryImage.build(net)
    ex = Executor(net, image, "cpu")
    sha = _net_sha(image)
    agree = agreement(model, ex, data.test.x, data.test.y)
    kinds = tuple(k for k in image.KINDS if image.targets([k]))
    spec = CampaignSpec(bers=tuple(z.bers), trials=z.trials, seed=cfg.seed, kinds=kinds,
                        extra={"study": "zobnn", "arch": arch, "net": "zobnn_integer",
                               "image_sha256": sha})
    camp = run_campaign(ex, image, data.test.x, data.test.y, spec, store,
                        progress=progress)
    res = {"lowered": True, "arch": net.arch, "bits": bits, "image_sha256": sha,
           "input": {"frac": frac, "bits": in_bits, "exact": exact},
           "stored_bits": image.size_bits()["total"], "memories": image.summary(),
           "bits_by_kind": {k: image.size_bits([k])["total"] for k in kinds},
           "agreement": agree, "campaign": camp,
           "rtl": _unless_unsupported(_rtl, folder, net, image, ex, cfg, data, kinds, sha)}
    if z.csim:
        res["csim"] = _unless_unsupported(_csim, folder, net, image, ex, cfg, data)
    if z.synth and res["rtl"]["generated"]:
        res["synth"] = _synth(folder, cfg)
    res["seconds"] = round(time.time() - t0, 3)
    write_json(folder / "hardware.json", res)
    return res


def _unless_unsupported(part, *args) -> dict:
    """``part(*args)`` with ``generated: True``, or ``{"generated": False, "reason"}`` where the
    RTL generator or the QONNX writer has no form of one of the network's operations."""
    try:
        return {"generated": True, **part(*args)}
    except PlanError as e:
        return {"generated": False, "reason": str(e)}


def _rtl(folder: Path, net: IntNetwork, image: MemoryImage, ex: Executor, cfg: RunConfig,
         data: Dataset, kinds: tuple[str, ...], sha: str) -> dict:
    """Verilator: clean bit-exactness and cycles, then the SEU maps against the executor."""
    z = cfg.zobnn
    n = min(z.rtl_images, len(data.test.y))
    prj = folder / "rtl"
    write_project(prj, design(net, image, RtlConfig(target_cycles=z.rtl_target_cycles)),
                  image, sha)
    sim = RtlSim(prj, build_dir=prj / "sim_build", n_max=n)
    build_s = sim.build()
    codes = ex.quantize_input(data.test.x[:n])
    clean = ex.run(codes, quantized=True).numpy().astype(np.int64)
    sampler = SeuSampler(image, kinds=kinds)
    maps = [(b, t, sampler.sample(b, trial_rng(cfg.seed, b, t)))
            for b in z.rtl_bers for t in range(z.rtl_trials)]
    jobs = [{"id": "clean", "flips": [], "scores": True, "timing": True}]
    jobs += [{"id": [b, t], "flips": sim.flips(fm), "scores": True} for b, t, fm in maps]
    t0 = time.perf_counter()
    recs = sim.run(image_codes_hwc(codes.numpy().astype(np.int64)), jobs, prj / "work")
    wall = time.perf_counter() - t0
    inj = Injector(image, ex)
    equal, changed, hit = 0, 0, Counter()
    y = data.test.y[:n].numpy()
    per_trial = []
    for (b, t, fm), r in zip(maps, recs[1:]):
        soft = inj.scores(fm, codes)
        same = bool(np.array_equal(soft, r.scores))
        equal += same
        changed += bool((soft.argmax(1) != clean.argmax(1)).any())
        hit.update(image.memory(str(m)).kind for m in fm.memory)
        per_trial.append({"ber": b, "trial": t, "flips": len(fm), "scores_equal": same,
                          "rtl_correct": int((r.preds == y).sum())})
    timing = measured_timing(recs[0])
    ana = sim.manifest.obj["analytic"]
    return {"images": n, "bit_exact": bool(np.array_equal(recs[0].scores, clean)),
            "maps": len(maps), "maps_scores_equal": equal, "maps_changing_predictions": changed,
            "flips_by_kind": dict(hit), "trials": per_trial, "measured": timing,
            "analytic": {k: ana[k] for k in ("latency_cycles", "ii_cycles")},
            "build_seconds": round(build_s, 3), "sim_seconds": round(wall, 3),
            "project": str(prj.relative_to(folder))}


def _csim(folder: Path, net: IntNetwork, image: MemoryImage, ex: Executor, cfg: RunConfig,
          data: Dataset) -> dict:
    """hls4ml C-sim: the QONNX graph of the integer network (:mod:`flow.zobnn.qonnx`) through
    hetq's hls4ml flow; class scores on the test set against the executor, then SEU maps in the
    weight memories (``zobnn.rtl_trials`` per rate of ``zobnn.rtl_bers``) replayed in C-sim."""
    z, h = cfg.zobnn, cfg.hls
    board = get_board(h.board, config_board_dirs(cfg), "hls.board")
    t0 = time.perf_counter()
    qonnx = write_qonnx(net, folder / "hls" / "model.zobnn.onnx")
    prj = build(qonnx, net, image, folder / "hls", part=board.part, clock_mhz=board.clock_mhz,
                backend=h.backend, reuse_factor=h.reuse_factor)
    build_s = time.perf_counter() - t0
    codes = ex.quantize_input(data.test.x)
    clean = ex.run(codes, quantized=True).numpy().astype(np.int64)
    got = prj.scores(prj.inputs(codes.numpy()))
    sampler = SeuSampler(image, kinds=("weight",))
    t1 = time.perf_counter()
    rep = prj.check_maps((sampler.sample(b, trial_rng(cfg.seed, b, t))
                          for b in z.rtl_bers for t in range(z.rtl_trials)), codes, clean, ex)
    return {"board": board.name, "images": int(len(clean)),
            "bit_exact": bool(np.array_equal(got, clean)),
            "mismatched_images": int((got != clean).any(1).sum()),
            "maps": rep["maps"], "maps_scores_equal": rep["equal"],
            "maps_changing_predictions": rep["maps_changing_predictions"],
            "reuse_factors": prj.reuse, "build_seconds": round(build_s, 3),
            "replay_seconds": round(time.perf_counter() - t1, 3),
            "project": str(prj.folder.relative_to(folder))}


def _synth(folder: Path, cfg: RunConfig) -> dict:
    """Yosys resources of the RTL project on ``hls.board`` (kept while the sources match)."""
    board = get_board(cfg.hls.board, config_board_dirs(cfg), "hls.board")
    out = folder / "synth" / board.name
    res = synthesize_cached(folder / "rtl", board, out, folder / ".cache")
    atomic_write(out / "report.json", json.dumps(res, indent=1))
    return res


def _rtl_line(r: dict) -> list[str]:
    """The study.md lines of the RTL check."""
    return [f"RTL (Verilator, {r['images']} images): class scores "
            f"{'bit-exact' if r['bit_exact'] else 'NOT bit-exact'} with the integer executor; "
            f"latency {r['measured']['latency_cycles']} cycles (analytic "
            f"{r['analytic']['latency_cycles']}), II {r['measured']['ii_cycles']:.0f} "
            f"(analytic {r['analytic']['ii_cycles']}); {r['maps_scores_equal']}/{r['maps']} "
            f"SEU maps gave the executor's scores exactly ({r['maps_changing_predictions']} "
            f"changed a prediction; flips by memory kind: "
            + ", ".join(f"{k} {v}" for k, v in sorted(r["flips_by_kind"].items())) + ").", ""]


def markdown(arch: str, hw: dict, bers: list[float]) -> list[str]:
    """The study.md lines of one network's hardware part."""
    if not hw["lowered"]:
        return [f"Hardware: not generated ({hw['reason']}).", ""]
    a, r = hw["agreement"], hw["rtl"]
    c = hw.get("csim")
    rows = [f"| {row['memory']} | {row['kind']} | {row['format']} | {row['depth']} | "
            f"{row['width']} | {row['bits']:,} |" for row in hw["memories"]]
    summ = {s["ber"]: s for s in hw["campaign"]["summary"]}
    lines = [f"Hardware ({hw['arch']}, {hw['bits']}-bit): the integer network stores "
             f"{hw['stored_bits']:,} bits in {len(hw['memories'])} memories.", "",
             "| memory | kind | format | words | bits/word | bits |", "|---|---|---|---|---|---|",
             *rows, "",
             f"Input: unsigned {hw['input']['bits']}-bit pixels with {hw['input']['frac']} "
             f"fraction bits ({'exact' if hw['input']['exact'] else 'rounded'}). "
             f"Fault-free on {a['images']} test images: float32-evaluated ZOBNN "
             f"{100 * a['model_accuracy']:.2f} %, integer network "
             f"{100 * a['integer_accuracy']:.2f} %, predictions agree on "
             f"{100 * a['prediction_agreement']:.2f} %.", "",
             "Integer network under faults in every memory kind "
             f"({hw['campaign']['trials']} maps per rate): "
             + ", ".join(f"{b:g}: {100 * summ[b]['accuracy_mean']:.2f} % "
                         f"[{100 * summ[b]['accuracy_low']:.2f}, "
                         f"{100 * summ[b]['accuracy_high']:.2f}]" for b in bers if b in summ)
             + ".", "",
             *(_rtl_line(r) if r["generated"] else
               [f"RTL: not generated ({r['reason']}).", ""])]
    if c and not c["generated"]:
        lines += [f"hls4ml C-sim: not run ({c['reason']}).", ""]
    elif c:
        lines += [f"hls4ml C-sim ({c['board']}, {c['images']} images): class scores "
                  + ("bit-exact" if c["bit_exact"] else
                     f"NOT bit-exact ({c['mismatched_images']} images differ)")
                  + f" with the integer executor; {c['maps_scores_equal']}/{c['maps']} SEU "
                  f"maps in the weight memories gave the executor's scores "
                  f"({c['maps_changing_predictions']} changed a prediction).", ""]
    if "synth" in hw:
        y, t = hw["synth"], hw["synth"]["total"]
        lines += [f"Resources (Yosys synth_xilinx, {y['board']}): {t['lut']:,} LUT, "
                  f"{t['ff']:,} FF, {t['bram18']} BRAM18, {t['dsp']} DSP; "
                  + ("fits." if y["fits"] else
                     f"does not fit ({', '.join(y['over_capacity'])}).") , ""]
    return lines
