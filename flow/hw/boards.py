"""The FPGA board catalogue: one YAML file per board (part, Yosys family, clock, capacity).

The shipped boards live in the repository's ``boards/`` folder (:data:`BOARDS_DIR`); a user adds
or overrides boards by dropping YAML files with the same fields into a folder of their own and
passing it as an extra directory. Every file is validated: an unknown key, a missing field, a
value of the wrong type or out of range, or a ``name`` that differs from the file stem ends in a
one-line :class:`~flow.core.errors.ConfigError` naming the file, the field and the value.
``boards/README.md`` documents the fields.

Board names become folder and file names (``synth/<design>/<board>/``) and parts reach hls4ml's
TCL, so both are restricted to safe characters (:func:`check_board_name`, :data:`PART_RE`).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from flow.core.config import one_line, read_yaml
from flow.core.errors import ConfigError
from flow.core.resources import data_dir

BOARDS_DIR = data_dir("boards")
"""The shipped board catalogue (``boards/`` at the repository root, package data when installed)."""

CAPACITY_KEYS = ("lut", "ff", "bram18", "dsp", "uram")
"""The capacity fields of every board, in the order they are reported."""

NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
"""A board name: letters, digits, '-', '_' and '.', not starting with '.' (it names folders)."""

PART_RE = re.compile(r"[A-Za-z0-9-]+")
"""A part string: letters, digits and '-' (it reaches hls4ml's TCL)."""


def check_board_name(name: str, field: str = "board") -> str:
    """Return ``name`` if it is a safe board name (:data:`NAME_RE`), else raise
    :class:`~flow.core.errors.ConfigError` naming ``field`` and the name."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ConfigError(f"{field}: {name!r} is not a board name (letters, digits, '-', '_' "
                          f"and '.', not starting with '.')")
    return name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _Capacity(_Strict):
    lut: int = Field(ge=0)
    ff: int = Field(ge=0)
    bram18: int = Field(ge=0)
    dsp: int = Field(ge=0)
    uram: int = Field(ge=0)


class _BoardFile(_Strict):
    name: str = Field(min_length=1)
    vendor_board: str = Field(min_length=1)
    part: str = Field(min_length=1)
    family: Literal["xc7", "xcu", "xcup"]
    clock_mhz: float = Field(gt=0)
    capacity: _Capacity
    source: str = Field(min_length=1)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.fullmatch(v):
            raise ValueError("not a board name (letters, digits, '-', '_' and '.', not starting "
                             "with '.')")
        return v

    @field_validator("part")
    @classmethod
    def _part(cls, v: str) -> str:
        if not PART_RE.fullmatch(v):
            raise ValueError("not a part (letters, digits and '-')")
        return v


@dataclass(frozen=True)
class Board:
    """One FPGA board: Xilinx part, Yosys ``synth_xilinx`` family, default clock and capacity.

    ``capacity`` maps ``lut``, ``ff``, ``bram18`` (18 Kb block RAMs), ``dsp`` and ``uram`` to the
    device totals; ``source`` cites where they come from; ``path`` is the YAML file read.
    """

    name: str
    vendor_board: str
    part: str
    family: str
    clock_mhz: float
    capacity: dict[str, int] = field(hash=False)
    source: str
    path: Path

    def to_json(self) -> dict:
        """The board as a JSON-ready mapping (``path`` as a string)."""
        return {"name": self.name, "vendor_board": self.vendor_board, "part": self.part,
                "family": self.family, "clock_mhz": self.clock_mhz,
                "capacity": dict(self.capacity), "source": self.source, "path": str(self.path)}


def _load_file(path: Path) -> Board:
    src = str(path)
    check_board_name(path.stem, f"{src}: name")       # the stem names the board
    obj = read_yaml(path, "board")
    if not isinstance(obj, dict):
        raise ConfigError(f"{src}: expected a mapping of keys at the top, got "
                          f"{type(obj).__name__}")
    try:
        b = _BoardFile.model_validate(obj)
    except ValidationError as e:
        raise ConfigError(one_line(e, src, _BoardFile)) from None
    if b.name != path.stem:
        raise ConfigError(f"{src}: name: must equal the file name '{path.stem}' "
                          f"(got {b.name!r})")
    return Board(name=b.name, vendor_board=b.vendor_board, part=b.part, family=b.family,
                 clock_mhz=float(b.clock_mhz), capacity=b.capacity.model_dump(),
                 source=b.source, path=path)


def load_boards(extra_dirs: Sequence[Path] = ()) -> dict[str, Board]:
    """Read every ``*.yaml`` in :data:`BOARDS_DIR`, then in each of ``extra_dirs`` in order.

    A board in a later folder overrides one of the same name read earlier (so a user's file
    replaces a shipped one). Raises :class:`~flow.core.errors.ConfigError` if an extra folder does
    not
    exist or a file is malformed. Returns the boards by name, sorted by name.
    """
    boards: dict[str, Board] = {}
    for d in (BOARDS_DIR, *(Path(x) for x in extra_dirs)):
        if not d.is_dir():
            what = "is not a folder" if d.exists() else "does not exist"
            raise ConfigError(f"boards: board folder '{d}' {what}")
        for path in sorted(d.glob("*.yaml")):
            b = _load_file(path)
            boards[b.name] = b
    return dict(sorted(boards.items()))


def get_board(name: str, extra_dirs: Sequence[Path] = (), field: str = "board") -> Board:
    """The board called ``name`` (shipped or from ``extra_dirs``, see :func:`load_boards`).

    Raises :class:`~flow.core.errors.ConfigError` naming ``field`` if ``name`` is not a safe board
    name (:func:`check_board_name`), or listing the known boards if there is none.
    """
    check_board_name(name, field)
    boards = load_boards(extra_dirs)
    if name not in boards:
        raise ConfigError(f"{field}: unknown board {name!r} (known: {', '.join(sorted(boards))})")
    return boards[name]


def config_board_dirs(cfg, *more: str | None) -> list[Path]:
    """Extra board folders of a run: ``more`` (command-line ones) first, then ``hls.boards_dir``."""
    return [Path(d) for d in (*more, cfg.hls.boards_dir) if d]
