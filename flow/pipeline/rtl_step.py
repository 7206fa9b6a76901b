"""The RTL steps of a run: ``hetq rtl`` (generate the project) and ``hetq sim`` (Verilator).

``hetq sim`` first runs the clean test set through the RTL and compares every class score with the
integer executor (bit-exactness) and the measured cycles with the analytic count, then runs a
fault campaign whose trials use exactly the fault maps the software campaign draws for the same
seed, BER and trial index (:func:`flow.reliability.faults.trial_rng`), translated through the
manifest. Trials
are stored in the run's ``campaigns.sqlite`` like software campaigns (spec field
``level: rtl``), so the summaries have the same format and a crash loses no finished trial.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from flow.core.errors import RunDirError
from flow.core.executor import Executor
from flow.core.image import MemoryImage
from flow.hw.rtl import design
from flow.hw.rtlgen import RtlManifest, write_project
from flow.hw.rtlsim import PGO_IMAGES, RtlSim, image_codes_hwc, measured_timing, verilator_env
from flow.pipeline.rtl_tests import write_tests
from flow.pipeline.rundir import RunDir
from flow.pipeline.runner import StepContext, StepResult
from flow.pipeline.session import Session, open_session
from flow.reliability.campaign import CampaignSpec
from flow.reliability.faults import SeuSampler, check_ber, trial_rng
from flow.reliability.store import TrialStore, export_csv, export_json

BASELINE = "rtl_base"


@dataclass
class RtlResult(StepResult):
    """The RTL project of the plan: stages, analytic cycles, memories; the baseline's folder."""

    project: str
    stages: list[dict]
    analytic: dict
    memories: list[dict]
    baseline: str | None
    tests: dict

    def summary(self) -> str:
        a = self.analytic
        w = [max(len(head), *(len(st[k] or "-") for st in self.stages))
             for k, head in (("name", "stage"), ("module", "module"), ("layer", "layer"))]
        lines = [f"{'stage':<{w[0]}} {'module':<{w[1]}} {'layer':<{w[2]}} {'PE':>4} "
                 f"{'SIMD':>5} {'cycles':>8}"]
        lines += [f"{st['name']:<{w[0]}} {st['module']:<{w[1]}} {st['layer'] or '-':<{w[2]}} "
                  f"{st.get('pe', '-'):>4} {st.get('simd', '-'):>5} {st['cycles'] or '-':>8}"
                  for st in self.stages]
        path = a.get("critical_path", [])
        beside = [st["layer"] for st in self.stages
                  if st["module"] == "mvu" and st["layer"] not in path]
        lines.append(f"analytic: latency {a['latency_cycles']} cycles, II {a['ii_cycles']} "
                     f"cycles" + (f" (off the critical path: {', '.join(beside)})" if beside
                                  else ""))
        lines.append(f"{len(self.memories)} memories; project: {self.project}")
        t = self.tests
        lines.append(f"standalone cocotb tests (pytest in the project; requirements.txt): "
                     f"{t['images']} vectors, {t['single_copy']} protected memories' single and "
                     f"{t['two_copies']} double MSB-copy flips, {t['maps']} fault maps, cycles")
        return "\n".join(lines)

    def record(self) -> dict:
        return {"project": self.project, "baseline": self.baseline, "analytic": self.analytic}

    def brief(self) -> str:
        a = self.analytic
        return (f"rtl: {len(self.stages)} stages, {len(self.memories)} memories, analytic "
                f"latency {a['latency_cycles']} cycles, II {a['ii_cycles']}: {self.project}")


def run_rtl(ctx: StepContext) -> RtlResult:
    """Write ``RUN_DIR/rtl/`` for the run's plan (replacing an older project).

    With ``report.baseline`` and at least one protected layer, also write ``RUN_DIR/rtl_base/``:
    the same network and folding with no layer protected, the reference the report measures the
    cost of protection against. Both folders are written atomically.
    """
    run = ctx.run
    s = open_session(run.path, "cpu")
    d = design(s.net, s.image, s.cfg.rtl)
    seed = s.cfg.seed if s.cfg.campaign.seed is None else s.cfg.campaign.seed
    with ctx.atomic("rtl") as folder:
        man = write_project(folder, d, s.image, s.checkpoint_sha256)
        tests = write_tests(folder, s, seed)
    base = None
    if s.cfg.report.baseline and any(m.protected for m in s.image.memories.values()):
        img = MemoryImage.build(s.net, [])
        with ctx.atomic(BASELINE) as folder:
            base = write_project(folder, design(s.net, img, s.cfg.rtl), img, s.checkpoint_sha256)
    else:
        shutil.rmtree(run / BASELINE, ignore_errors=True)
    return RtlResult(
        project=str(run / "rtl"), stages=man["stages"], analytic=man["analytic"],
        memories=[{k: m[k] for k in ("memory", "hier", "word_bits", "depth", "protected")}
                  for m in man["memories"]],
        baseline=None if base is None else str(run / BASELINE), tests=tests)


def open_project(s: Session) -> RtlManifest:
    """The run's RTL manifest, checked against the run's checkpoint and protection."""
    folder = s.run / "rtl"
    if not (folder / "manifest.json").is_file():
        raise RunDirError(f"run_dir: '{s.run.path}' has no RTL project (run 'hetq rtl' first)")
    man = RtlManifest.load(folder)
    if man.obj.get("checkpoint_sha256") != s.checkpoint_sha256:
        raise RunDirError(f"rtl: the project in '{folder}' belongs to another checkpoint "
                          f"(rerun 'hetq rtl')")
    for name, lay in man.layouts.items():
        m = s.image.memory(name)
        prot = next(e["protected"] for e in man.obj["memories"] if e["memory"] == name)
        if prot != m.protected or lay.lane_bits != m.width:
            raise RunDirError(f"rtl: memory '{name}' in '{folder}' does not match the plan's "
                              f"protection (rerun 'hetq rtl')")
    return man


def _test_codes(s: Session, limit: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, y = s.data.test.x, s.data.test.y
    if limit is not None:
        x, y = x[:limit], y[:limit]
    codes = s.executor.quantize_input(x)
    ref = s.executor.run(codes, quantized=True).cpu().numpy().astype(np.int64)
    hwc = image_codes_hwc(codes.cpu().numpy().astype(np.int64))
    return hwc, y.numpy(), ref


def check(s: Session, sim: RtlSim, hwc: np.ndarray, ref: np.ndarray, work: Path) -> dict:
    """Clean batch: class scores vs the executor, cycles vs the analytic count."""
    r = sim.run(hwc, [{"id": "clean", "flips": [], "scores": True, "timing": True}], work)[0]
    mismatched = int((r.scores != ref).any(axis=1).sum())
    timing = measured_timing(r)
    ana = sim.manifest.obj["analytic"]
    return {"images": int(hwc.shape[0]), "bit_exact": mismatched == 0,
            "mismatched_images": mismatched, "measured": timing, "analytic": ana,
            "latency_ratio": timing["latency_cycles"] / ana["latency_cycles"],
            "ii_ratio": timing["ii_cycles"] / ana["ii_cycles"],
            "sim_cycles_per_s": r.cycles / r.wall_s, "inferences_per_s": hwc.shape[0] / r.wall_s}


def check_baseline(run: RunDir, s: Session, limit: int | None = None) -> dict | None:
    """Clean bit-exactness and cycles of the unprotected baseline (``rtl_base/``), if present."""
    folder = run / BASELINE
    if not (folder / "manifest.json").is_file():
        return None
    man = RtlManifest.load(folder)
    if man.obj.get("checkpoint_sha256") != s.checkpoint_sha256:
        raise RunDirError(f"rtl: the project in '{folder}' belongs to another checkpoint "
                          f"(rerun 'hetq rtl')")
    img = MemoryImage.build(s.net, [])
    base = Session(s.run, s.cfg, s.data, s.qonnx, s.net, img,
                   Executor(s.net, img, s.executor.device), s.plan, s.checkpoint_sha256)
    hwc, _, ref = _test_codes(base, limit)
    sim = RtlSim(folder, build_dir=folder / "sim_build", n_max=max(hwc.shape[0], 1))
    build_s = sim.build()
    res = check(base, sim, hwc, ref, folder / "work")
    res["build_seconds"] = round(build_s, 3)
    return res


def _pct(x: float) -> str:
    return f"{100 * x:.2f} %"


@dataclass
class SimResult(StepResult):
    """Verilator: clean bit-exactness and cycles (and the baseline's), then the RTL campaign."""

    campaign: str
    clean_accuracy: float
    bits: int
    trials: int
    summary_rows: list[dict]
    check: dict
    baseline_check: dict | None
    build_seconds: float
    faulty_inferences_per_s: float | None
    simulators: int
    executor: str
    spec: dict
    out_dir: str

    @property
    def ok(self) -> bool:
        return self.check["bit_exact"] and (self.baseline_check is None
                                            or self.baseline_check["bit_exact"])

    def to_json(self) -> dict:
        out = super().to_json()
        out["summary"] = out.pop("summary_rows")
        return out

    def summary(self) -> str:
        from flow.pipeline.inject_step import campaign_text
        c = self.check
        m, a = c["measured"], c["analytic"]
        lines = [f"RTL vs integer executor on {c['images']} images: "
                 + ("bit-exact" if c["bit_exact"] else f"{c['mismatched_images']} images DIFFER"),
                 f"cycles: latency {m['latency_cycles']} (analytic {a['latency_cycles']}), "
                 f"II {m['ii_cycles']:.1f} (analytic {a['ii_cycles']}); "
                 f"{c['sim_cycles_per_s']:,.0f} simulated cycles/s",
                 campaign_text(self.to_json())]
        if self.faulty_inferences_per_s:
            many = "s" if self.simulators > 1 else ""
            who = (f"{self.simulators} Ray actor{many}, their builds included"
                   if self.executor == "ray" else f"{self.simulators} simulator{many}")
            lines.append(f"{self.faulty_inferences_per_s:,.0f} faulty inferences/s in Verilator "
                         f"({who})")
        return "\n".join(lines)

    def record(self) -> dict:
        return {"campaign": self.campaign, "out_dir": self.out_dir, "bit_exact": self.ok}


def sim_workers(requested: int | None) -> int:
    """Simulator processes for a campaign: ``requested``, else the CPUs this process may use."""
    if requested is not None:
        return requested
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:                               # not on Linux
        return max(1, os.cpu_count() or 1)


def _task(sim: RtlSim, sampler: SeuSampler, seed: int, ber: float, t: int) -> dict:
    """Trial ``t`` at ``ber`` for the testbench: the campaign's fault map as RTL flips."""
    fmap = sampler.sample(ber, trial_rng(seed, ber, t))
    return {"id": [ber, t], "flips": sim.flips(fmap), "n_faults": len(fmap)}


class _Simulators:
    """Runs parts of an RTL campaign, one simulator per worker thread, each with its own work
    folder, result file and log (the build is shared: it exists once on disk)."""

    def __init__(self, project: Path, n_max: int, work: Path, cid: str, hwc: np.ndarray,
                 sampler: SeuSampler, seed: int) -> None:
        self.project, self.n_max, self.work, self.cid = project, n_max, work, cid
        self.hwc, self.sampler, self.seed = hwc, sampler, seed
        self._local = threading.local()
        self._count = 0
        self._lock = threading.Lock()

    def _mine(self) -> tuple[RtlSim, Path, Path, str]:
        """This thread's simulator, work folder, result file and log name."""
        if not hasattr(self._local, "sim"):
            with self._lock:
                n = self._count
                self._count += 1
            sim = RtlSim(self.project, build_dir=self.project / "sim_build", n_max=self.n_max)
            sim.build()                                  # the model on disk: nothing to do
            self._local.sim = (sim, self.work / f"w{n}",
                               self.work / f"trials_{self.cid}_w{n}.jsonl", f"sim_w{n}")
        return self._local.sim

    def run(self, part: list[tuple[float, int]]) -> list[tuple[dict, object]]:
        """The (BER, trial) pairs of ``part`` in one simulator launch: (task, result) each."""
        sim, folder, results, log = self._mine()
        batch = [_task(sim, self.sampler, self.seed, b, t) for b, t in part]
        return list(zip(batch, sim.run(self.hwc, batch, folder, out_file=results, log=log)))

    def each(self, pool: ThreadPoolExecutor, todo: list[tuple[float, int]], size: int
             ) -> Iterator[tuple[dict, object]]:
        """Every trial of ``todo`` as it finishes, parts of ``size`` spread over ``pool``."""
        jobs = [pool.submit(self.run, todo[i:i + size]) for i in range(0, len(todo), size)]
        for job in as_completed(jobs):
            yield from job.result()


def run_sim(ctx: StepContext, chunk: int = 100) -> SimResult:
    """Bit-exactness check, then the RTL fault campaign (``sim.bers``, else ``campaign.bers``;
    ``sim.trials``; the campaign's seed; the first ``sim.images`` test images); results in
    ``sim/<campaign>/``, written atomically, every trial to the run's store as it finishes.

    The campaign's trials are spread over ``sim.workers`` simulator processes (default: the
    CPUs), one launch per worker when the campaign is small (a launch costs a Python start and
    a model load, about a second of CPU), at most ``chunk`` trials per launch. When the run has
    an unprotected baseline project (``rtl_base/``), its clean bit-exactness and cycles are
    measured too (``baseline_check`` in the result), beside the campaign.
    """
    run, cfg = ctx.run, ctx.cfg
    bers = [check_ber(b) for b in (cfg.sim.bers or cfg.campaign.bers)]
    trials, limit = cfg.sim.trials, cfg.sim.images
    seed = cfg.seed if cfg.campaign.seed is None else cfg.campaign.seed
    s = open_session(run.path, "cpu")
    open_project(s)
    hwc, y, ref = _test_codes(s, limit)
    n_max = max(hwc.shape[0], 1)
    sim = RtlSim(run / "rtl", build_dir=run / "rtl" / "sim_build", n_max=n_max, pgo=cfg.sim.pgo)
    workers = sim_workers(cfg.sim.workers)
    with verilator_env(), ThreadPoolExecutor(max_workers=workers) as pool, \
            ThreadPoolExecutor(max_workers=1) as side:
        # the baseline's build and check need no result of the campaign: they run beside it
        base_job = side.submit(check_baseline, run, s, limit) if workers > 1 else None
        if not sim.up_to_date():
            ctx.say("  building the Verilator model" + (
                f" (profile-guided: an instrumented build runs {PGO_IMAGES} images, then a "
                "second build)"
                if sim.pgo else ""))
        build_s = sim.build(train=hwc)
        work = run / "rtl" / "work"
        clean = check(s, sim, hwc, ref, work)
        prot = sorted(n for n, e in s.plan["layers"].items() if e["protected"])
        spec = CampaignSpec(bers=tuple(bers), trials=trials, seed=seed,
                            extra={"checkpoint_sha256": s.checkpoint_sha256, "protected": prot,
                                   "level": "rtl", "images": int(hwc.shape[0])})
        sampler = SeuSampler(s.image)
        clean_correct = int((ref.argmax(1) == y).sum())
        inferences, wall = 0, 0.0
        with TrialStore(run.store) as store:
            cid = store.open_campaign({**spec.to_json(), "clean_correct": clean_correct,
                                       "test_size": len(y)})
            # the simulators' own records of finished trials, outside the atomic result folder
            for f in sorted(work.glob(f"trials_{cid}*.jsonl")):
                _ingest(store, cid, f, y)                # trials a crashed run finished
            done = {b: store.done(cid, b) for b in bers}
            todo = [(b, t) for b in bers for t in range(trials) if t not in done[b]]
            size = max(1, min(chunk, math.ceil(len(todo) / workers)))
            bar = tqdm(total=len(todo), desc="rtl campaign", unit="trial",
                       disable=not ctx.progress or None)
            t0 = time.perf_counter()
            if cfg.parallel.executor == "ray":
                trials_done = _on_ray(run, sim, n_max, workers, cfg.parallel.address, hwc,
                                      sampler, seed, todo, size)
            else:
                sims = _Simulators(run / "rtl", n_max, work, cid, hwc, sampler, seed)
                trials_done = ((task, r.preds, r.wall_s)
                               for task, r in sims.each(pool, todo, size))
            for task, preds, wall_s in trials_done:
                store.add(cid, task["id"][0], task["id"][1], n_faults=task["n_faults"],
                          correct=int((np.asarray(preds) == y).sum()), total=len(y),
                          seconds=wall_s)
                inferences += len(y)
                bar.update(1)
            wall = time.perf_counter() - t0      # elapsed: simulator launches included
            bar.close()
            summary = store.summary(cid, clean_accuracy=clean_correct / len(y))
        base = base_job.result() if base_job is not None else check_baseline(run, s, limit)
    rel = f"sim/{cid}"
    res = SimResult(
        campaign=cid, clean_accuracy=clean_correct / len(y), bits=sampler.total_bits,
        trials=trials, summary_rows=summary, check=clean, baseline_check=base,
        build_seconds=round(build_s, 3),
        faulty_inferences_per_s=inferences / wall if inferences else None,
        simulators=workers, executor=cfg.parallel.executor, spec=spec.to_json(),
        out_dir=str(run / rel))
    with ctx.atomic(rel) as out:
        export_csv(summary, out / "summary.csv")
        export_json(res.to_json(), out / "summary.json")
    return res


def _on_ray(run: RunDir, sim: RtlSim, n_max: int, workers: int, address: str | None,
            hwc: np.ndarray, sampler: SeuSampler, seed: int, todo: list[tuple[float, int]],
            size: int) -> Iterator[tuple[dict, list[int], float]]:
    """The trials of ``todo`` on ``workers`` Ray actors, each with a built model (its own, or
    ``sim``'s on this node): the maps are drawn and translated to RTL flips here, in parts of
    ``size`` trials."""
    from flow.hw.rtl_ray import RaySimulators
    tasks = [_task(sim, sampler, seed, b, t) for b, t in todo]
    parts = [tasks[i:i + size] for i in range(0, len(tasks), size)]
    sims = RaySimulators(run / "rtl", n_max, workers, address, build_dir=sim.build_dir,
                         train=hwc if sim.pgo else None)
    try:
        for task, r in sims.each(hwc, parts):
            yield task, r["preds"], r["wall_s"]
    finally:
        sims.close()


def _ingest(store: TrialStore, cid: str, results: Path, y: np.ndarray) -> None:
    """Store the trials an interrupted run wrote to ``results`` but did not store yet."""
    if not results.is_file():
        return
    done: dict[float, set[int]] = {}
    for line in results.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:        # a line cut by the crash
            continue
        b, t = r["id"]
        seen = done.setdefault(b, store.done(cid, b))
        if t in seen:
            continue
        seen.add(t)
        store.add(cid, b, t, n_faults=int(r.get("n_faults", -1)),
                  correct=int((np.asarray(r["preds"]) == y).sum()), total=len(y),
                  seconds=r["wall_s"])

