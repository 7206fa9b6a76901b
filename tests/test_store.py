"""Tests of flow.reliability.store (SQLite trial store, exports, crash safety) and
flow.pipeline.plots."""
from __future__ import annotations

import csv
import json
import math
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flow.core.errors import RunDirError
from flow.pipeline.plots import plot_accuracy_vs_ber
from flow.reliability.store import SCHEMA_VERSION, TrialStore, campaign_id, export_csv, export_json

REPO = Path(__file__).resolve().parents[1]
SPEC = {"model": "lenet", "bers": [1e-4, 1e-3], "trials": 30, "seed": 7}


def _fill(store: TrialStore, cid: str) -> None:
    """Three trials at 1e-3 and two at 1e-4 (accuracies 0.9, 0.8, 0.7 / 0.95, 0.97)."""
    for trial, correct in enumerate([90, 80, 70]):
        store.add(cid, 1e-3, trial, n_faults=10 + trial, correct=correct, total=100, seconds=0.5)
    for trial, correct in enumerate([95, 97]):
        store.add(cid, 1e-4, trial, n_faults=1, correct=correct, total=100, seconds=0.25)


def test_add_close_reopen_done(tmp_path: Path) -> None:
    db = tmp_path / "trials.sqlite"
    with TrialStore(db) as store:
        cid = store.open_campaign(SPEC)
        _fill(store, cid)
    with TrialStore(db) as store:
        assert store.open_campaign(SPEC) == cid
        assert store.done(cid, 1e-3) == {0, 1, 2}
        assert store.done(cid, 1e-4) == {0, 1}
        assert store.done(cid, 1e-2) == set()
        assert store.done("0" * 16, 1e-3) == set()
        rows = store.trials(cid)
    assert [(r["ber"], r["trial"]) for r in rows] == [(1e-4, 0), (1e-4, 1), (1e-3, 0), (1e-3, 1),
                                                      (1e-3, 2)]
    assert rows[2] == {"campaign": cid, "ber": 1e-3, "trial": 0, "n_faults": 10, "correct": 90,
                       "total": 100, "accuracy": 0.9, "seconds": 0.5}


def test_duplicate_add_is_ignored(tmp_path: Path) -> None:
    with TrialStore(tmp_path / "t.sqlite") as store:
        cid = store.open_campaign(SPEC)
        store.add(cid, 1e-3, 0, n_faults=3, correct=50, total=100, seconds=1.0)
        store.add(cid, 1e-3, 0, n_faults=9, correct=10, total=100, seconds=2.0)
        rows = store.trials(cid)
    assert len(rows) == 1 and rows[0]["correct"] == 50 and rows[0]["n_faults"] == 3


def test_add_rejects_impossible_counts(tmp_path: Path) -> None:
    with TrialStore(tmp_path / "t.sqlite") as store:
        cid = store.open_campaign(SPEC)
        with pytest.raises(ValueError):
            store.add(cid, 1e-3, 0, n_faults=0, correct=5, total=0, seconds=0.0)
        with pytest.raises(ValueError):
            store.add(cid, 1e-3, 0, n_faults=0, correct=11, total=10, seconds=0.0)


def test_campaign_ids(tmp_path: Path) -> None:
    reordered = dict(reversed(list(SPEC.items())))
    with TrialStore(tmp_path / "t.sqlite") as store:
        a = store.open_campaign(SPEC)
        assert store.open_campaign(reordered) == a
        b = store.open_campaign({**SPEC, "seed": 8})
    assert a != b and len(a) == 16 and int(a, 16) >= 0
    assert a == campaign_id(SPEC)
    with sqlite3.connect(tmp_path / "t.sqlite") as con:
        specs = dict(con.execute("SELECT id, spec FROM campaigns"))
    assert json.loads(specs[a]) == SPEC and len(specs) == 2


def test_summary_against_hand_computation(tmp_path: Path) -> None:
    with TrialStore(tmp_path / "t.sqlite") as store:
        cid = store.open_campaign(SPEC)
        _fill(store, cid)
        rows = store.summary(cid, clean_accuracy=0.98)
    assert [r["ber"] for r in rows] == [1e-4, 1e-3]
    lo, hi = rows
    # BER 1e-3: accuracies 0.9, 0.8, 0.7 -> mean 0.8, s = 0.1, t(0.975, 2) = 4.302652729749464;
    # 0.8 + 0.248 passes 1: the interval is clipped there
    half = 4.302652729749464 * 0.1 / math.sqrt(3)
    assert hi["trials"] == 3 and hi["mean_faults"] == pytest.approx(11.0)
    assert hi["accuracy_mean"] == pytest.approx(0.8)
    assert hi["accuracy_low"] == pytest.approx(0.8 - half)
    assert hi["accuracy_high"] == 1.0
    assert hi["drop_mean"] == pytest.approx(0.18)
    assert hi["drop_low"] == pytest.approx(0.98 - 1.0)
    assert hi["drop_high"] == pytest.approx(0.98 - (0.8 - half))
    assert hi["confidence"] == 0.95
    assert hi["ci_defined"] is True and hi["ci_clipped"] is True
    # BER 1e-4: 0.95, 0.97 -> mean 0.96, s = sqrt(2e-4), t(0.975, 1) = 12.706204736174698;
    # 0.96 + 0.127 passes 1: the interval is clipped there
    half = 12.706204736174698 * math.sqrt(2e-4) / math.sqrt(2)
    assert lo["trials"] == 2 and lo["mean_faults"] == 1.0
    assert lo["accuracy_mean"] == pytest.approx(0.96)
    assert lo["accuracy_mean"] - lo["accuracy_low"] == pytest.approx(half)
    assert lo["accuracy_high"] == 1.0 and lo["ci_clipped"] is True
    assert lo["drop_mean"] == pytest.approx(0.02)
    assert lo["drop_low"] == pytest.approx(0.98 - 1.0)


def test_export_csv_and_json_round_trip(tmp_path: Path) -> None:
    with TrialStore(tmp_path / "t.sqlite") as store:
        cid = store.open_campaign(SPEC)
        _fill(store, cid)
        rows = store.summary(cid, clean_accuracy=0.98)
    export_csv(rows, tmp_path / "summary.csv")
    with open(tmp_path / "summary.csv", newline="") as f:
        back = list(csv.DictReader(f))
    assert list(back[0]) == list(rows[0])
    for got, want in zip(back, rows, strict=True):
        assert {k: v if k.startswith("ci_") else float(v) for k, v in got.items()} == {
            k: str(v) if isinstance(v, bool) else float(v) for k, v in want.items()}
    export_json({"campaign": cid, "summary": rows}, tmp_path / "summary.json")
    assert json.loads((tmp_path / "summary.json").read_text()) == {"campaign": cid,
                                                                   "summary": rows}
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []


def test_garbage_file_is_run_dir_error(tmp_path: Path) -> None:
    bad = tmp_path / "trials.sqlite"
    bad.write_bytes(b"this is not a database at all\n" * 100)
    with pytest.raises(RunDirError, match="not a hetq trial store") as info:
        TrialStore(bad)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


def test_foreign_sqlite_file_is_run_dir_error(tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as con:
        con.execute("CREATE TABLE things (x)")
    con.close()
    with pytest.raises(RunDirError, match="meta"):
        TrialStore(other)


def test_wrong_schema_version_is_run_dir_error(tmp_path: Path) -> None:
    db = tmp_path / "trials.sqlite"
    TrialStore(db).close()
    with sqlite3.connect(db) as con:
        con.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    con.close()
    with pytest.raises(RunDirError) as info:
        TrialStore(db)
    msg = str(info.value)
    assert str(db) in msg and "99" in msg and str(SCHEMA_VERSION) in msg


_WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from flow.reliability.store import TrialStore
    store = TrialStore(Path(sys.argv[1]))
    cid = store.open_campaign({"writer": "loop"})
    for trial in range(1_000_000):
        store.add(cid, 1e-3, trial, n_faults=trial % 7, correct=trial % 101, total=100,
                  seconds=0.001 * trial)
""")


def test_sigkill_mid_campaign_loses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "trials.sqlite"
    with TrialStore(db) as store:
        cid = store.open_campaign({"writer": "loop"})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(db)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        seen = 0
        deadline = time.monotonic() + 20.0
        with TrialStore(db) as store:
            while seen < 5 and proc.poll() is None and time.monotonic() < deadline:
                seen = len(store.done(cid, 1e-3))
                time.sleep(0.005)
        assert seen >= 5, proc.stderr.read().decode() if proc.poll() is not None else "timeout"
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    with TrialStore(db) as store:
        rows = store.trials(cid)
        assert len(rows) >= seen
        assert [r["trial"] for r in rows] == list(range(len(rows)))  # no holes, no partial rows
        for r in rows:
            assert None not in r.values()
            t = r["trial"]
            assert (r["n_faults"], r["correct"], r["total"]) == (t % 7, t % 101, 100)
            assert r["accuracy"] == r["correct"] / 100 and r["seconds"] == 0.001 * t
        store.add(cid, 1e-3, len(rows), n_faults=0, correct=1, total=100, seconds=0.0)
        assert store.done(cid, 1e-3) == set(range(len(rows) + 1))


# ---------------------------------------------------------------- plots


def test_plot_writes_png(tmp_path: Path) -> None:
    with TrialStore(tmp_path / "t.sqlite") as store:
        cid = store.open_campaign(SPEC)
        _fill(store, cid)
        rows = store.summary(cid, clean_accuracy=0.98)
    shifted = [{**r, "accuracy_mean": r["accuracy_mean"] - 0.1,
                "accuracy_low": r["accuracy_low"] - 0.1,
                "accuracy_high": r["accuracy_high"] - 0.1} for r in rows]
    zero = [{**rows[0], "ber": 0.0}]
    out = plot_accuracy_vs_ber({"int8": zero + rows, "int4": shifted}, tmp_path / "acc.png",
                               title="LeNet accuracy vs BER", clean={"int8": 0.98})
    assert out == tmp_path / "acc.png"
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []


def test_plot_without_positive_ber_rows_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        plot_accuracy_vs_ber({"a": []}, tmp_path / "x.png", title="empty")
    assert not (tmp_path / "x.png").exists()
