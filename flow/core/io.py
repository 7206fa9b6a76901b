"""Files written so a crash never leaves half of one: atomic writes, JSON, SHA-256.

Every file hetq writes goes to a synced temporary name in the same folder and is renamed into
place.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from flow.core.errors import RunDirError


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` through a synced temporary file in the same folder, then
    rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: object) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: Path, what: str) -> dict:
    """Read a JSON file; a missing or malformed one is a RunDirError naming ``what``."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RunDirError(f"{what}: '{path}' does not exist") from None
    except (OSError, json.JSONDecodeError) as e:
        raise RunDirError(f"{what}: '{path}' is not valid JSON ({e})") from None


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
