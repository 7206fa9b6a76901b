"""hetq's data folders: the RTL library, the HLS header, the cocotb testbench, the board files.

They live at the top of the repository (``rtl/``, ``hls_templates/``, ``sim/``, ``boards/``) and
reach an installed package as package data under ``flow/_data/``, where a source checkout keeps
symbolic links to them; so one path serves an editable install, a plain ``pip install .`` and a
wheel.
"""
from __future__ import annotations

from pathlib import Path

import flow
from flow.core.errors import HetqError

FOLDERS = ("rtl", "hls_templates", "sim", "boards")
DEFAULT_CONFIG = Path(flow.__file__).parent / "configs" / "digits.yaml"


def data_dir(name: str) -> Path:
    """The data folder ``name`` (one of :data:`FOLDERS`) of this installation."""
    if name not in FOLDERS:
        raise ValueError(f"unknown data folder {name!r} (known: {', '.join(FOLDERS)})")
    d = Path(flow.__file__).parent / "_data" / name
    if not d.is_dir():
        raise HetqError(f"install: hetq's data folder '{d}' is missing; reinstall hetq "
                        f"(pip install .) from a complete checkout or wheel")
    return d
