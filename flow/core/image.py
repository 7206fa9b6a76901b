"""The weight-memory image: the quantized network as hardware stores it. Single source of truth.

Every parameter array of the integer network (:class:`flow.core.ir.Param`) becomes one memory of
``depth`` words of ``width`` bits, one word per value in the parameter's flat (PyTorch) order:

- an n-bit signed weight is stored as an n-bit two's complement word;
- a weight of a **protected** layer is stored in n+2 bits: bits n+1, n and n-1 all hold the MSB
  (sign) and bits n-2..0 the rest; a 2-of-3 majority voter decodes the MSB on every read;
- a binary (bipolar) weight is 1 bit: 1 for +1, 0 for -1 (protected: 3 copies, voted);
- biases (16-bit), batch-norm+sign thresholds and their direction bits are memories too
  (kinds ``bias``, ``threshold``, ``direction``), and so are the per-channel multipliers and
  offsets of an integer affine batch-norm (kinds ``scale``, ``offset``), stored plain.

Fault injection flips bits of these words (:mod:`flow.reliability.faults`); the executor, the HLS
C-sim and
the RTL all decode the same words with :func:`decode`. Sizes in bits come from here.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from flow.core.errors import FaultMapError
from flow.core.ir import IntNetwork
from flow.core.kinds import MEMORY_KINDS, MemoryKind
from flow.core.precision import Fixed

WEIGHT_KINDS = (MemoryKind.WEIGHT.value,)
ALL_KINDS = MEMORY_KINDS


@dataclass
class Memory:
    """One memory: ``words[i]`` is the stored bit pattern of value ``i`` (``width`` bits)."""

    name: str
    layer: str
    kind: str
    fmt: Fixed            # format of the decoded value
    protected: bool       # MSB triplicated + voter
    width: int
    shape: tuple[int, ...]
    words: np.ndarray     # flat, one word per value (int16/32/64: word_dtype(width))

    @property
    def depth(self) -> int:
        """Number of words."""
        return int(self.words.size)

    @property
    def bits(self) -> int:
        """Stored bits: depth x width."""
        return self.depth * self.width

    def msb_bits(self) -> tuple[int, ...]:
        """Bit positions that hold the value's MSB (three for a protected memory, else one)."""
        n = self.fmt.bits
        return (n + 1, n, n - 1) if self.protected else (n - 1,)


def encode(codes: np.ndarray, fmt: Fixed, protected: bool) -> np.ndarray:
    """Integer codes -> stored words (int64) in the format described in the module docstring."""
    codes = np.asarray(codes, dtype=np.int64)
    n = fmt.bits
    if fmt.bipolar:
        raw = (codes > 0).astype(np.int64)
    else:
        raw = codes & ((1 << n) - 1)
    if not protected:
        return raw
    msb = (raw >> (n - 1)) & 1
    return (msb << (n + 1)) | (msb << n) | raw


def decode(words: np.ndarray, fmt: Fixed, protected: bool) -> np.ndarray:
    """Stored words -> integer codes, with the 2-of-3 MSB vote for protected words."""
    words = np.asarray(words, dtype=np.int64)
    n = fmt.bits
    if not protected and fmt.signed and not fmt.bipolar:
        # two's complement in three passes: (word mod 2^n, MSB flipped) - 2^(n-1)
        half = 1 << (n - 1)
        out = np.bitwise_and(words, (1 << n) - 1)
        np.bitwise_xor(out, half, out=out)
        return np.subtract(out, half, out=out)
    low_mask = (1 << (n - 1)) - 1
    if protected:
        a, b, c = (words >> (n + 1)) & 1, (words >> n) & 1, (words >> (n - 1)) & 1
        msb = (a & b) | (a & c) | (b & c)
    else:
        msb = (words >> (n - 1)) & 1
    low = words & low_mask
    if fmt.bipolar:
        return np.where(msb == 1, 1, -1).astype(np.int64)
    if fmt.signed:
        return low - (msb << (n - 1))
    return low | (msb << (n - 1))


def word_dtype(width: int) -> type:
    """The smallest signed NumPy integer type that holds ``width``-bit stored words: a fault
    campaign reads and writes the words at random, so the narrower the array, the fewer cache
    misses."""
    return np.int16 if width <= 15 else np.int32 if width <= 31 else np.int64


def stored_width(fmt: Fixed, protected: bool) -> int:
    """Bits per stored word."""
    return fmt.bits + (2 if protected else 0)


class MemoryImage:
    """All memories of a network, built from its integer network and the set of protected layers."""

    KINDS: tuple[str, ...] = ALL_KINDS      # memory kinds this image holds (fault targets)

    def __init__(self, memories: Iterable[Memory]) -> None:
        self.memories: dict[str, Memory] = {m.name: m for m in memories}

    @classmethod
    def build(cls, net: IntNetwork, protected: Iterable[str] = ()) -> "MemoryImage":
        """Image of ``net`` where the weight memories of the layers in ``protected`` carry TMR."""
        prot = set(protected)
        unknown = sorted(prot - set(net.layers()))
        if unknown:
            raise FaultMapError(f"protected: unknown layer '{unknown[0]}' "
                                f"(layers: {', '.join(net.layers())})")
        mems = []
        for p in net.params.values():
            is_prot = p.kind == "weight" and p.layer in prot
            width = stored_width(p.fmt, is_prot)
            mems.append(Memory(p.name, p.layer, p.kind, p.fmt, is_prot, width,
                               tuple(p.codes.shape),
                               encode(p.codes.reshape(-1), p.fmt, is_prot).astype(
                                   word_dtype(width))))
        return cls(mems)

    def memory(self, name: str) -> Memory:
        """The memory called ``name`` (a clear error if there is none)."""
        try:
            return self.memories[name]
        except KeyError:
            raise FaultMapError(f"fault.memory: unknown memory '{name}' "
                                f"(memories: {', '.join(self.memories)})") from None

    def codes(self, name: str) -> np.ndarray:
        """Decoded integer codes of memory ``name`` in the parameter's shape."""
        m = self.memory(name)
        return decode(m.words, m.fmt, m.protected).reshape(m.shape)

    def targets(self, kinds: Iterable[str] = WEIGHT_KINDS,
                layers: Iterable[str] | None = None) -> list[Memory]:
        """Memories of the given kinds (and layers, if given), in network order."""
        kinds = tuple(kinds)
        bad = [k for k in kinds if k not in self.KINDS]
        if bad:
            raise FaultMapError(f"fault.kinds: unknown memory kind '{bad[0]}' "
                                f"(known: {', '.join(self.KINDS)})")
        names = None if layers is None else set(layers)
        if names is not None:
            known = {m.layer for m in self.memories.values()}
            unknown = sorted(names - known)
            if unknown:
                raise FaultMapError(f"fault.layers: unknown layer '{unknown[0]}' "
                                    f"(layers: {', '.join(sorted(known))})")
        return [m for m in self.memories.values()
                if m.kind in kinds and (names is None or m.layer in names)]

    def size_bits(self, kinds: Iterable[str] = ALL_KINDS) -> dict[str, int]:
        """Stored bits per layer (over memories of the given kinds) and ``total``."""
        out: dict[str, int] = {}
        for m in self.memories.values():
            if m.kind in tuple(kinds):
                out[m.layer] = out.get(m.layer, 0) + m.bits
        out["total"] = sum(out.values())
        return out

    def summary(self) -> list[dict]:
        """One row per memory: name, layer, kind, width, depth, bits, protected, value format."""
        return [{"memory": m.name, "layer": m.layer, "kind": m.kind, "width": m.width,
                 "depth": m.depth, "bits": m.bits, "protected": m.protected,
                 "format": m.fmt.name()} for m in self.memories.values()]


def protected_layers(plan_layers: Mapping[str, Mapping]) -> list[str]:
    """Names of the layers a plan marks protected."""
    return [name for name, entry in plan_layers.items() if entry.get("protected")]

