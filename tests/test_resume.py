"""A campaign killed with SIGKILL and rerun ends with the same table as an uninterrupted one."""
from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BERS = ("1e-3", "1e-2")
TRIALS = 60
TOTAL = TRIALS * len(BERS)
KILL_AFTER = 20  # trials committed before the kill
ARGS = ["--ber", *BERS, "--trials", str(TRIALS), "--seed", "7", "--json"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}


def _cmd(run: Path) -> list[str]:
    return [sys.executable, "-m", "flow.cli", "inject", str(run), *ARGS]


def _inject(run: Path, cwd: Path) -> dict:
    res = subprocess.run(_cmd(run), cwd=cwd, env=_env(), capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _count(db: Path) -> int | None:
    """Trials stored so far (read-only), or None while the store is missing, empty or locked."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1)
    except sqlite3.OperationalError:
        return None
    try:
        return con.execute("SELECT COUNT(*) FROM trials").fetchone()[0]
    except sqlite3.OperationalError:
        return None
    finally:
        con.close()


@pytest.mark.slow
def test_killed_campaign_resumes_to_same_table(mlp_run: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "A", tmp_path / "B"
    shutil.copytree(mlp_run, a)
    shutil.copytree(mlp_run, b)
    db = b / "campaigns.sqlite"
    assert not db.exists()

    uninterrupted = _inject(a, tmp_path)
    assert [r["trials"] for r in uninterrupted["summary"]] == [TRIALS] * len(BERS)

    proc = subprocess.Popen(_cmd(b), cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            n = _count(db)
            if n is not None and n >= KILL_AFTER:
                break
            if proc.poll() is not None:
                pytest.fail(f"campaign on B exited (status {proc.returncode}) before "
                            f"{KILL_AFTER} trials were stored ({n}); raise TRIALS")
            if time.monotonic() > deadline:
                pytest.fail(f"only {n} trials stored after 120 s")
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, (
        f"campaign on B finished (status {proc.returncode}) before the SIGKILL; raise TRIALS")
    con = sqlite3.connect(db)
    try:
        killed_at = con.execute("SELECT COUNT(*) FROM trials").fetchone()[0]
    finally:
        con.close()
    assert KILL_AFTER <= killed_at < TOTAL, (
        f"{killed_at} of {TOTAL} trials stored at the kill: the campaign was not interrupted; "
        f"raise TRIALS")

    resumed = _inject(b, tmp_path)
    assert resumed["campaign"] == uninterrupted["campaign"]
    assert resumed["clean_accuracy"] == uninterrupted["clean_accuracy"]
    assert resumed["summary"] == uninterrupted["summary"]  # bit-identical floats

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT campaign, ber, trial FROM trials").fetchall()
    finally:
        con.close()
    assert len(rows) == TOTAL
    assert len(set(rows)) == TOTAL
    assert {r[0] for r in rows} == {uninterrupted["campaign"]}
    for ber in BERS:
        assert sorted(t for _, x, t in rows if x == float(ber)) == list(range(TRIALS))
