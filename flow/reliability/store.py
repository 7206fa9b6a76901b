"""Crash-safe SQLite store of fault-injection campaign trials (one file per run directory).

Every :meth:`TrialStore.add` is committed before it returns (autocommit, WAL journal,
``synchronous=FULL``), so a campaign killed at any moment resumes from :meth:`TrialStore.done`
and loses no finished trial. A campaign is identified by a hash of its canonical JSON spec:
the same spec reopens the same campaign.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import sqlite3
import time
from collections import defaultdict
from pathlib import Path
from types import TracebackType
from typing import Any

from flow.core.errors import ConfigError, RunDirError
from flow.core.io import atomic_write
from flow.reliability.stats import bounded_mean_ci

SCHEMA_VERSION = 1

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS campaigns (id TEXT PRIMARY KEY, spec TEXT NOT NULL, created REAL)",
    "CREATE TABLE IF NOT EXISTS trials (campaign TEXT, ber REAL, trial INTEGER, n_faults INTEGER,"
    " correct INTEGER, total INTEGER, accuracy REAL, seconds REAL,"
    " PRIMARY KEY (campaign, ber, trial))",
)
_TRIAL_COLUMNS = ("campaign", "ber", "trial", "n_faults", "correct", "total", "accuracy", "seconds")


def canonical_json(spec: dict[str, Any]) -> str:
    """The canonical JSON text of a campaign spec (sorted keys, no whitespace)."""
    try:
        return json.dumps(spec, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"campaign spec: not canonical JSON ({exc})") from None


def campaign_id(spec: dict[str, Any]) -> str:
    """The campaign id of ``spec``: the first 16 hex digits of sha256 of its canonical JSON."""
    return hashlib.sha256(canonical_json(spec).encode("utf-8")).hexdigest()[:16]


class TrialStore:
    """SQLite store of campaign trials at ``path`` (created with its tables if missing).

    Use as a context manager (or call :meth:`close`). Raises
    :class:`~flow.core.errors.RunDirError` if the file is not a SQLite database, not a trial store,
    or was written with another schema version.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        except sqlite3.Error as exc:
            raise RunDirError(f"{self.path}: cannot open trial store ({exc})") from None
        try:
            self._setup()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise RunDirError(f"{self.path}: not a hetq trial store ({exc})") from None
        except RunDirError:
            self._db.close()
            raise

    def _setup(self) -> None:
        """Switch to WAL, create missing tables and check the schema version."""
        db = self._db
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("BEGIN IMMEDIATE")
        try:
            self._check_or_create()
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _check_or_create(self) -> None:
        """Inside a write transaction: check an existing store's version, or create the tables."""
        db = self._db
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and "meta" not in tables:
            raise RunDirError(f"{self.path}: SQLite file without a hetq meta table "
                              f"(tables: {', '.join(sorted(tables))})")
        if "meta" in tables:
            row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            found = None if row is None else row[0]
            if found != str(SCHEMA_VERSION):
                raise RunDirError(f"{self.path}: trial store schema version {found}, "
                                  f"this hetq expects {SCHEMA_VERSION}")
        for statement in _SCHEMA:
            db.execute(statement)
        db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                   (str(SCHEMA_VERSION),))

    def close(self) -> None:
        """Close the database connection (idempotent)."""
        self._db.close()

    def __enter__(self) -> TrialStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def open_campaign(self, spec: dict[str, Any]) -> str:
        """Register the campaign of ``spec`` if new and return its id (same spec, same id)."""
        cid = campaign_id(spec)
        self._db.execute("INSERT OR IGNORE INTO campaigns VALUES (?, ?, ?)",
                         (cid, canonical_json(spec), time.time()))
        return cid

    def done(self, campaign: str, ber: float) -> set[int]:
        """Indices of the trials already stored for ``campaign`` at ``ber`` (matched exactly)."""
        rows = self._db.execute("SELECT trial FROM trials WHERE campaign=? AND ber=?",
                                (campaign, float(ber)))
        return {r[0] for r in rows}

    def add(self, campaign: str, ber: float, trial: int, *, n_faults: int, correct: int,
            total: int, seconds: float) -> None:
        """Store one finished trial, committed on return; a duplicate trial is ignored.

        ``accuracy = correct / total`` is stored alongside. A row already stored for
        ``(campaign, ber, trial)`` is kept as is, so a rerun never counts a trial twice.
        """
        if total < 1 or not 0 <= correct <= total:
            raise ValueError(f"add: need 0 <= correct <= total and total >= 1, "
                             f"got correct={correct} total={total}")
        self._db.execute("INSERT OR IGNORE INTO trials VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (campaign, float(ber), int(trial), int(n_faults), int(correct),
                          int(total), correct / total, float(seconds)))

    def trials(self, campaign: str) -> list[dict[str, Any]]:
        """All stored trials of ``campaign`` as dicts, ordered by BER then trial index."""
        rows = self._db.execute(f"SELECT {', '.join(_TRIAL_COLUMNS)} FROM trials "
                                "WHERE campaign=? ORDER BY ber, trial", (campaign,))
        return [dict(zip(_TRIAL_COLUMNS, r)) for r in rows]

    def summary(self, campaign: str, *, clean_accuracy: float,
                confidence: float = 0.95) -> list[dict[str, Any]]:
        """Per-BER statistics of ``campaign`` (ascending BER), accuracies as fractions.

        Accuracy bounds are the Student-t interval over the trials clipped to [0, 1]
        (:func:`flow.reliability.stats.bounded_mean_ci`); ``ci_clipped`` says whether a bound was
        cut.
        With one trial there is no interval: ``accuracy_low == accuracy_high == accuracy_mean``
        and ``ci_defined`` is False. The drop is ``clean_accuracy - accuracy``, so
        ``drop_low = clean - accuracy_high`` and ``drop_high = clean - accuracy_low`` (the drop's
        interval is the clipped accuracy interval, seen from the clean accuracy).
        """
        by_ber: dict[float, list[dict[str, Any]]] = defaultdict(list)
        for row in self.trials(campaign):
            by_ber[row["ber"]].append(row)
        return [_summary_row(ber, rows, clean_accuracy, confidence)
                for ber, rows in sorted(by_ber.items())]


def _summary_row(ber: float, rows: list[dict[str, Any]], clean: float,
                 confidence: float) -> dict[str, Any]:
    """One summary dict for the trials ``rows`` of one BER point."""
    ci = bounded_mean_ci([r["accuracy"] for r in rows], confidence)
    return {"ber": ber, "trials": len(rows),
            "mean_faults": sum(r["n_faults"] for r in rows) / len(rows),
            "accuracy_mean": ci.mean, "accuracy_low": ci.low, "accuracy_high": ci.high,
            "drop_mean": clean - ci.mean, "drop_low": clean - ci.high,
            "drop_high": clean - ci.low, "confidence": ci.confidence,
            "ci_defined": ci.defined, "ci_clipped": ci.clipped}


def export_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """Write ``rows`` as CSV (header: keys of the first row; floats at repr precision).

    An empty ``rows`` writes an empty file. A later row with other keys raises ValueError.
    """
    buf = io.StringIO(newline="")
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    atomic_write(path, buf.getvalue().encode("utf-8"))


def export_json(obj: Any, path: Path) -> None:
    """Write ``obj`` as indented JSON (NaN/infinity refused with ValueError)."""
    text = json.dumps(obj, indent=2, allow_nan=False) + "\n"
    atomic_write(path, text.encode("utf-8"))
