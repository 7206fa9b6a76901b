"""Typed precisions: fixed-point formats of integer codes, as hardware stores and computes them.

Like qonnx ``DataType`` and hls4ml ``FixedPrecisionType``, a precision is a value with
``min()``/``max()``, not a loose pair of ints. A code ``c`` of a :class:`Fixed` format stands for
the real value ``c * 2**-frac``. A bipolar format (1 bit) stores 1 for +1 and 0 for -1.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Fixed:
    """Fixed-point format: ``bits`` wide, signed or not, value = code * 2**-frac.

    ``narrow`` excludes the most negative code (symmetric range, as Brevitas narrow weights).
    ``bipolar`` is the 1-bit {-1, +1} format of binary networks.
    """

    bits: int
    signed: bool
    frac: int = 0
    narrow: bool = False
    bipolar: bool = False

    def min(self) -> int:
        """Smallest code."""
        if self.bipolar:
            return -1
        if not self.signed:
            return 0
        return -(1 << (self.bits - 1)) + (1 if self.narrow else 0)

    def max(self) -> int:
        """Largest code."""
        if self.bipolar:
            return 1
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def scale(self) -> float:
        """Real value of one code step, 2**-frac."""
        return 2.0 ** (-self.frac)

    def name(self) -> str:
        """Short name such as ``INT4.2`` (signed, 4 bits, 2 fraction bits), ``UINT8.7`` or
        ``BIPOLAR``."""
        if self.bipolar:
            return "BIPOLAR"
        return f"{'INT' if self.signed else 'UINT'}{self.bits}.{self.frac}"

    def to_json(self) -> dict:
        """Plain-dict form for plan.json and manifests."""
        return {"bits": self.bits, "signed": self.signed, "frac": self.frac,
                "narrow": self.narrow, "bipolar": self.bipolar}


def frac_of_scale(scale: float, what: str) -> int:
    """Return ``f`` with ``scale == 2**-f`` exactly, or raise ValueError naming ``what``."""
    import math

    m, e = math.frexp(float(scale))
    if m != 0.5:
        raise ValueError(f"{what}: scale {scale!r} is not a power of two")
    return -(e - 1)
