"""A quiet console: the tools' output goes to a log file, hetq's progress stays on the terminal.

hls4ml and qonnx print to stdout, g++, Verilator and Yosys write to the process's file
descriptors, and libraries warn. While a step runs, :func:`tools_to_log` sends file descriptors 1
and 2, Python's ``sys.stdout`` and the warnings to the step's log, and keeps Python's
``sys.stderr`` (where hetq's progress lines and tqdm bars go) where it was: on the terminal (or
in whatever captures it). With ``verbose`` the tools' output stays on the terminal, moved from
stdout to stderr, so that stdout holds only hetq's result (``--json``).
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def tools_to_log(log: Path, verbose: bool = False) -> Iterator[None]:
    """Send the tools' output to ``log`` (appended) while the block runs; with ``verbose`` to
    stderr instead."""
    if verbose:
        with _stdout_to_stderr():
            yield
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    terminal = io.TextIOWrapper(io.FileIO(os.dup(saved_err), "w"), line_buffering=True,
                                encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
                                errors="replace")
    with open(log, "ab", buffering=0) as f:
        text = io.TextIOWrapper(io.FileIO(os.dup(f.fileno()), "w"), line_buffering=True,
                                encoding="utf-8", errors="replace")
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        old = sys.stdout, sys.stderr, warnings.showwarning

        def to_log(message, category, filename, lineno, file=None, line=None):
            text.write(warnings.formatwarning(message, category, filename, lineno, line))

        try:                      # sys.stderr writes to file descriptor 2: keep it on the terminal
            on_fd2 = sys.stderr.fileno() == 2
        except (AttributeError, OSError, ValueError):
            on_fd2 = False
        sys.stdout, warnings.showwarning = text, to_log
        if on_fd2:
            sys.stderr = terminal
        try:
            yield
        finally:
            for stream in (text, terminal):
                stream.flush()
            sys.stdout, sys.stderr, warnings.showwarning = old
            os.dup2(saved_out, 1)
            os.dup2(saved_err, 2)
            os.close(saved_out)
            os.close(saved_err)
            text.close()
            terminal.close()


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """File descriptor 1 and ``sys.stdout`` onto stderr while the block runs."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
