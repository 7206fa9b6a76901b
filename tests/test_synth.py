"""Yosys set-up: yowasp compiles its WebAssembly once per machine, under hetq's lock file."""
from __future__ import annotations

import threading
import time

from flow.hw.synth import _file_lock


def test_file_lock_serializes_threads(tmp_path):
    """A second holder waits until the first lets go (what keeps two boards, or two test
    workers, from compiling yosys.wasm twice on a fresh machine)."""
    lock = tmp_path / "cache" / "hetq-prepare.lock"
    events: list[str] = []
    held = threading.Event()

    def first():
        with _file_lock(lock):
            held.set()
            events.append("first in")
            time.sleep(0.3)
            events.append("first out")

    t = threading.Thread(target=first)
    t.start()
    held.wait()
    with _file_lock(lock):
        events.append("second in")
    t.join()
    assert events == ["first in", "first out", "second in"]
