"""``hetq rtl``: write the RTL project of a run (top level, memory files, manifest).

The project folder holds ``src/`` (a copy of the ``rtl/`` library), ``hetq_accel.sv`` (the
generated top level), ``hetq_harness.sv`` (the simulation harness), ``mem/<memory>.mem`` (one
``$readmemh`` file per memory, paths relative to the project folder) and ``manifest.json``, which
lists every memory with its hierarchical name, word width, depth and folding, so any stored bit of
the software image maps to (memory, address, bit) in RTL (:meth:`RtlManifest.locate`).
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import jinja2
import numpy as np

from flow import __version__
from flow.core.errors import RunDirError
from flow.core.image import MemoryImage
from flow.core.io import atomic_write
from flow.core.layout import Layout, mem_file_text
from flow.core.resources import data_dir
from flow.hw.rtl import Design
from flow.reliability.faults import FaultMap

MANIFEST_FORMAT = 1
LIBRARY = ("tmr_vote", "weight_mem", "param_rom", "stream_fifo", "stream_fork", "stream_lanes",
           "frame_fifo", "frame_buffer", "swg", "xnor_popcount", "mvu", "requant", "threshold_unit",
           "affine_unit", "rprelu_unit", "pool2d", "channel_repeat", "residual_add",
           "sum_pool", "argmax")


def library_dir() -> Path:
    """The ``rtl/`` library (:func:`flow.core.resources.data_dir`)."""
    d = data_dir("rtl")
    if not (d / "mvu.sv").is_file():
        raise RunDirError(f"rtl: the SystemVerilog library in '{d}' lacks mvu.sv (reinstall hetq)")
    return d


def library_sources() -> list[Path]:
    """The library's files in dependency order."""
    d = library_dir()
    return [d / f"{m}.sv" for m in LIBRARY]


def _sv(v: object) -> str:
    """A Python parameter value as SystemVerilog text."""
    if isinstance(v, str):
        return json.dumps(v)
    return str(int(v))


def render(d: Design, checkpoint: str) -> tuple[str, str]:
    """Text of ``hetq_accel.sv`` and ``hetq_harness.sv``."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("flow", "templates"),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    ctx = {"d": d, "arch": d.arch, "checkpoint": checkpoint, "version": __version__,
           "sv": _sv}
    return (env.get_template("hetq_accel.sv.j2").render(**ctx),
            env.get_template("hetq_harness.sv.j2").render(**ctx))


def manifest(d: Design, image: MemoryImage, checkpoint: str) -> dict:
    """The manifest: memories with their RTL location and folding, stages, analytic cycles."""
    mems = []
    for name, lay in d.layouts.items():
        m = image.memory(name)
        entry = lay.to_json()
        entry.update(value_bits=m.fmt.bits, protected=m.protected,
                     msb_bits=list(m.msb_bits()), image_depth=m.depth)
        if lay.perm is not None:
            entry["fanin_perm"] = lay.perm.tolist()
        mems.append(entry)
    stages = [{"name": s.name, "module": s.module, "layer": s.layer, "cycles": s.cycles,
               "params": s.params, "ports": s.ports, **s.info} for s in d.stages]
    return {"format": MANIFEST_FORMAT, "arch": d.arch, "top": "hetq_accel",
            "harness": "hetq_harness", "checkpoint_sha256": checkpoint,
            "accel_prefix": "u_accel", "input": {"elements": d.in_elems, "bits": d.in_bits,
                                                 "order": "HWC"},
            "output": {"classes": d.num_classes, "bits": d.out_bits, "lanes": d.out_lanes},
            "memories": mems, "stages": stages, "analytic": d.analytic()}


def write_project(folder: Path, d: Design, image: MemoryImage, checkpoint: str) -> dict:
    """Write the whole project into ``folder`` (which must be empty or not exist)."""
    (folder / "src").mkdir(parents=True, exist_ok=True)
    (folder / "mem").mkdir(exist_ok=True)
    for src in library_sources():
        shutil.copyfile(src, folder / "src" / src.name)
    accel, harness = render(d, checkpoint)
    atomic_write(folder / "hetq_accel.sv", accel)
    atomic_write(folder / "hetq_harness.sv", harness)
    for name, lay in d.layouts.items():
        atomic_write(folder / "mem" / f"{name}.mem", mem_file_text(lay, image.memory(name).words))
    man = manifest(d, image, checkpoint)
    atomic_write(folder / "manifest.json", json.dumps(man, indent=1))
    return man


def sources(folder: Path) -> list[Path]:
    """Every SystemVerilog file of a project, library first."""
    return [folder / "src" / f"{m}.sv" for m in LIBRARY] + [folder / "hetq_accel.sv",
                                                            folder / "hetq_harness.sv"]


def project_hash(folder: Path) -> str:
    """SHA-256 over the project's sources (what a Verilator build depends on)."""
    h = hashlib.sha256()
    for p in sources(folder):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


class RtlManifest:
    """A project's manifest, read back: locates image bits in RTL memories."""

    def __init__(self, obj: dict) -> None:
        self.obj = obj
        self.layouts: dict[str, Layout] = {}
        for m in obj["memories"]:
            perm = np.asarray(m["fanin_perm"], dtype=np.int64) if "fanin_perm" in m else None
            self.layouts[m["memory"]] = Layout(m["memory"], m["layer"], m["kind"], m["hier"],
                                               m["depth"], m["lanes"], m["lane_bits"], m["pe"],
                                               m["simd"], m["sf"], m["fanin"], perm)

    @classmethod
    def load(cls, folder: Path) -> "RtlManifest":
        """Read ``folder/manifest.json``."""
        return cls(json.loads((folder / "manifest.json").read_text()))

    def locate(self, memory: str, word: np.ndarray, bit: np.ndarray
               ) -> tuple[str, np.ndarray, np.ndarray]:
        """Image (memory, word, bit) -> (hierarchical RTL memory name, address, bit)."""
        lay = self.layouts[memory]
        addr, rbit = lay.locate(word, bit)
        return lay.hier, addr, rbit

    def flips(self, fmap: FaultMap) -> list[list]:
        """A fault map's bit flips as RTL [memory, address, bit] triples, memory by memory."""
        out: list[list] = []
        for mem in dict.fromkeys(fmap.memory.tolist()):
            sel = fmap.memory == mem
            hier, addr, bit = self.locate(mem, fmap.word[sel], fmap.bit[sel])
            out.extend([hier, int(a), int(b)] for a, b in zip(addr, bit))
        return out

    def locate_weight(self, layer: str, out: int, fan_in: int, bit: int
                      ) -> tuple[str, int, int]:
        """(layer, output, PyTorch fan-in index, stored bit) -> (RTL memory, address, bit)."""
        for lay in self.layouts.values():
            if lay.layer == layer and lay.kind == "weight":
                hier, addr, rbit = self.locate(lay.memory, np.array([out * lay.fanin + fan_in]),
                                               np.array([bit]))
                return hier, int(addr[0]), int(rbit[0])
        raise KeyError(layer)

