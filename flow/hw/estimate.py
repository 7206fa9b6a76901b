"""Analytic resource estimate of an RTL project, beside Yosys' counts (FINN-R style).

The matrix-vector units are estimated with the formulas of FINN-R (Blott et al., "FINN-R: An
End-to-End Deep-Learning Framework for Fast Exploration of Quantized Neural Networks", TRETS
2018), as FINN's MVAU ``lut_estimation`` / ``bram_estimation`` / ``dsp_estimation`` use them:

- LUT = c0 + c1 * PE * (mult + adder tree + accumulator), c0 = 300, c1 = 1.1, with
  mult = SIMD * (2 * ceil((W + A) / 6) - 1) * (W + A) for LUT products (0 for DSP products) and
  adder tree = (W + A) * (2 * SIMD - 1); the accumulator width is the generator's exact one;
- plus one LUT per TMR voter (a 2-of-3 majority is one LUT3; one voter per weight lane);
- DSP: one per product lane where Yosys' ``synth_xilinx`` maps a multiplier to a DSP48 (both
  operands >= 2 bits and a product of >= 9 bits), else 0;
- BRAM18 of the weight memory from its word width (PE * SIMD * stored bits) and depth, assuming
  simple-dual-port RAMB18 aspect ratios (UG473), which is FINN's rule.

Only the matrix-vector units are estimated; requantization, max-pool and the activation buffers
are not (their bits are given separately). The estimate is a cross-check, not a sign-off.
"""
from __future__ import annotations

import math

C0, C1 = 300, 1.1


def _dsp_product(wbits: int, abits: int) -> bool:
    """True if Yosys maps a wbits x abits multiplier to a DSP48 (synth_xilinx's minimum widths)."""
    return wbits >= 2 and abits >= 2 and wbits + abits >= 9


def bram18(width: int, depth: int) -> int:
    """RAMB18 count of a ``width`` x ``depth`` memory (FINN's aspect-ratio rule)."""
    if width == 1:
        return math.ceil(depth / 16384)
    if width == 2:
        return math.ceil(depth / 8192)
    if width <= 4:
        return math.ceil(depth / 4096) * math.ceil(width / 4)
    if width <= 9:
        return math.ceil(depth / 2048) * math.ceil(width / 9)
    if width <= 18 or depth > 512:
        return math.ceil(depth / 1024) * math.ceil(width / 18)
    return math.ceil(depth / 512) * math.ceil(width / 36)


def mvu(stage: dict, memory: dict) -> dict:
    """Analytic LUT / BRAM18 / DSP / voter LUTs / bits of one matrix-vector unit stage."""
    p = stage["params"]
    pe, simd = stage["pe"], stage["simd"]
    w = 1 if stage["mode"] != "int" else p["WBITS"]
    a = 1 if stage["mode"] == "xnor" else p["ABITS"]
    dsp_lanes = stage["mode"] == "int" and _dsp_product(w, a)
    mult = 0 if dsp_lanes else simd * (2 * math.ceil((w + a) / 6) - 1) * (w + a)
    adder = (w + a) * (2 * simd - 1)
    voters = pe * simd if memory["protected"] else 0
    lut = C0 + C1 * pe * (mult + adder + p["ACCBITS"]) + voters
    return {"lut": int(round(lut)), "voter_luts": voters, "dsp": pe * simd if dsp_lanes else 0,
            "bram18": bram18(memory["word_bits"], memory["depth"]),
            "weight_bits": memory["word_bits"] * memory["depth"],
            "buffer_bits": 2 * p["H"] * p["W"] * p["C"] * p["ABITS"]}


def estimate(manifest: dict) -> dict:
    """Per matrix-vector stage and in total, from an RTL manifest (``rtl/manifest.json``)."""
    mems = {(m["layer"], m["kind"]): m for m in manifest["memories"]}
    stages = {st["name"]: mvu(st, mems[(st["layer"], "weight")])
              for st in manifest["stages"] if st["module"] == "mvu"}
    keys = ("lut", "voter_luts", "dsp", "bram18", "weight_bits", "buffer_bits")
    total = {k: sum(s[k] for s in stages.values()) for k in keys}
    return {"method": "FINN-R MVU formulas (c0 = 300, c1 = 1.1), matrix-vector units only",
            "stages": stages, "total": total}
