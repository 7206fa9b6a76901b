"""The FPGA board catalogue (flow.hw.boards): shipped boards, user folders, one-line errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import board_doc

from flow.core.errors import ConfigError
from flow.hw.boards import BOARDS_DIR, CAPACITY_KEYS, Board, get_board, load_boards

SHIPPED = ["alveo-u250", "alveo-u50", "kv260", "pynq-z2", "ultra96-v2", "zcu102", "zcu104"]




def _write(folder: Path, stem: str, doc: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_all_shipped_boards_load() -> None:
    boards = load_boards()
    assert sorted(boards) == SHIPPED
    for name, b in boards.items():
        assert isinstance(b, Board)
        assert b.name == name == b.path.stem
        assert b.path.parent == BOARDS_DIR
        assert b.part.strip() and b.vendor_board.strip() and b.source.strip()
        assert b.clock_mhz > 0
        assert set(b.capacity) == set(CAPACITY_KEYS)
        for key, v in b.capacity.items():
            assert isinstance(v, int)
            assert v >= 0 if key == "uram" else v > 0, (name, key, v)
        json.dumps(b.to_json())


def test_families_and_parts() -> None:
    boards = load_boards()
    assert {n: b.family for n, b in boards.items()} == {
        n: ("xc7" if n == "pynq-z2" else "xcup") for n in SHIPPED}
    assert boards["pynq-z2"].part == "xc7z020clg400-1"
    assert boards["zcu102"].part == "xczu9eg-ffvb1156-2-e"
    assert boards["kv260"].capacity == {"lut": 117120, "ff": 234240, "bram18": 288,
                                        "dsp": 1248, "uram": 64}


def test_get_board() -> None:
    b = get_board("zcu104")
    assert b.part == "xczu7ev-ffvc1156-2-e" and b.capacity["uram"] == 96
    assert b.to_json()["path"] == str(b.path)


def test_unknown_board_lists_known_ones() -> None:
    with pytest.raises(ConfigError) as e:
        get_board("zcu999")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg == ("board: unknown board 'zcu999' (known: alveo-u250, alveo-u50, kv260, "
                   "pynq-z2, ultra96-v2, zcu102, zcu104)")


def test_user_folder_adds_and_overrides(tmp_path: Path) -> None:
    mine = tmp_path / "my_boards"
    _write(mine, "arty-a7", board_doc("arty-a7"))
    _write(mine, "zcu102", {**board_doc("zcu102"), "part": "xczu9eg-ffvb1156-2-e",
                            "family": "xcup", "clock_mhz": 250})
    boards = load_boards([mine])
    assert sorted(boards) == sorted([*SHIPPED, "arty-a7"])
    assert boards["arty-a7"].clock_mhz == 125.0 and boards["arty-a7"].path.parent == mine
    assert boards["zcu102"].clock_mhz == 250.0 and boards["zcu102"].path.parent == mine
    assert get_board("arty-a7", [mine]).capacity["lut"] == 20800
    assert load_boards()["zcu102"].clock_mhz == 100.0   # the shipped file is untouched
    with pytest.raises(ConfigError, match="arty-a7"):
        get_board("nope", [mine])


def test_missing_extra_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_boards([tmp_path / "nowhere"])
    assert "nowhere" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("doc, field, needle", [
    (board_doc("bad", capacity={"lut": -5, "ff": 1, "bram18": 1, "dsp": 1, "uram": 0}),
     "capacity.lut", "(got -5)"),
    ({**board_doc("bad"), "speed_grade": 2}, "speed_grade", "unknown key"),
    ({**board_doc("bad"), "capacity": {"lutt": 1, "ff": 1, "bram18": 1, "dsp": 1, "uram": 0}},
     "capacity.lutt", "did you mean 'lut'"),
    (board_doc("bad", capacity={"lut": 1, "ff": 1, "bram18": 1, "dsp": 1}),
     "capacity.uram", "missing"),
    (board_doc("bad", family="xc6"), "family", "'xc6'"),
    (board_doc("bad", clock_mhz=0), "clock_mhz", "(got 0)"),
    (board_doc("other"), "name", "'other'"),
])
def test_malformed_board_names_file_and_field(tmp_path: Path, doc: dict, field: str,
                                               needle: str) -> None:
    path = _write(tmp_path / "b", "bad", doc)
    with pytest.raises(ConfigError) as e:
        load_boards([path.parent])
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: {field}: "), msg
    assert needle in msg, msg


def test_negative_lut_message(tmp_path: Path) -> None:
    path = _write(tmp_path / "b", "foo", board_doc(
        "foo", capacity={"lut": -5, "ff": 1, "bram18": 1, "dsp": 1, "uram": 0}))
    with pytest.raises(ConfigError) as e:
        get_board("foo", [path.parent])
    assert str(e.value) == (f"{path}: capacity.lut: Input should be greater than or equal to 0 "
                            "(got -5)")


def test_not_a_mapping_and_bad_yaml(tmp_path: Path) -> None:
    folder = tmp_path / "b"
    _write(folder, "listy", [1, 2])
    with pytest.raises(ConfigError, match="listy.yaml: expected a mapping"):
        load_boards([folder])
    (folder / "listy.yaml").unlink()
    (folder / "broken.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"board: malformed YAML in .*broken\.yaml.* at line 2"):
        load_boards([folder])
