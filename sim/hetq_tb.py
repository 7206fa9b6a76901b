"""cocotb testbench of a generated hetq accelerator (``hetq_harness`` around ``hetq_accel``).

Launched by :mod:`flow.hw.rtlsim` through ``cocotb_tools.runner`` with Verilator; never run by hand.
The job file named by ``HETQ_JOB`` (JSON) lists trials; each trial is a set of bit flips in RTL
memories (hierarchical name under the accelerator, address, bit). For each trial the testbench
flips those bits in the memories through VPI, lets the simulator run the preloaded batch of images
free (the clock is generated inside the harness; Python only waits for ``done``), reads the
predictions (and class scores when asked), restores the flipped words, and appends one JSON line
per trial to the job's output file, flushed at once, so a crash loses no finished trial.
"""
from __future__ import annotations

import json
import os
import time
from collections import defaultdict

import cocotb
from cocotb.triggers import RisingEdge
from tb_accel import _memory, _reset


class _Memories:
    """Writes flipped words into RTL memories and restores them.

    VPI writes take effect at the end of the time step, so a word read right after a write still
    shows its old value; the testbench therefore never reads a word it has written: it reads each
    word's fault-free value once, before the first write, and derives every write from it.
    """

    def __init__(self, dut) -> None:
        self.dut = dut
        self.handles: dict[str, object] = {}
        self.clean: dict[tuple[str, int], int] = {}

    def _word(self, hier: str, addr: int):
        mem = self.handles.get(hier)
        if mem is None:
            mem = self.handles[hier] = _memory(self.dut, hier)
        return mem[addr]

    @staticmethod
    def masks(flips: list) -> dict[tuple[str, int], int]:
        """XOR mask per (memory, address) of a list of (memory, address, bit) flips."""
        out: dict[tuple[str, int], int] = defaultdict(int)
        for hier, addr, bit in flips:
            out[(hier, int(addr))] ^= 1 << int(bit)
        return out

    def apply(self, flips: list) -> dict[tuple[str, int], int]:
        """Write the flipped words; returns the masks for :meth:`restore`."""
        masks = self.masks(flips)
        for key, mask in masks.items():
            word = self._word(*key)
            if key not in self.clean:
                self.clean[key] = int(word.value)
            word.value = self.clean[key] ^ mask
        return masks

    def restore(self, masks: dict[tuple[str, int], int]) -> None:
        """Write back the fault-free words."""
        for key in masks:
            self._word(*key).value = self.clean[key]


async def _run_batch(dut, n: int) -> float:
    dut.n_images.value = n
    dut.start.value = 1
    await RisingEdge(dut.clk)
    dut.start.value = 0
    t0 = time.perf_counter()
    await RisingEdge(dut.done)
    return time.perf_counter() - t0


@cocotb.test()
async def run_job(dut) -> None:
    """Run every trial of the job file and append its results."""
    with open(os.environ["HETQ_JOB"]) as f:
        job = json.load(f)
    n = int(job["n_images"])
    classes = int(job["classes"])
    await _reset(dut)
    mems = _Memories(dut)
    with open(job["out"], "a") as out:
        for trial in job["trials"]:
            masks = mems.apply(trial["flips"])
            m = int(trial.get("n_images", n))      # a trial may run the first m images only
            wall = await _run_batch(dut, m)
            preds = [int(dut.preds[i].value) for i in range(m)]
            rec = {"id": trial["id"], "n_faults": trial.get("n_faults"), "preds": preds,
                   "cycles": int(dut.cycles.value), "wall_s": wall}
            if trial.get("scores"):
                bits = int(job["score_bits"])
                raw = [int(dut.scores[i].value) for i in range(m * classes)]
                rec["scores"] = [v - (1 << bits) if v >> (bits - 1) else v for v in raw]
            if trial.get("timing"):
                rec["t_first_in"] = int(dut.t_first_in.value)
                rec["t_out"] = [int(dut.t_out[i].value) for i in range(m)]
            mems.restore(masks)
            out.write(json.dumps(rec) + "\n")
            out.flush()
