"""Where the words of an image memory sit in an RTL memory: lanes, folding, fan-in order.

A matrix-vector unit with PE x SIMD lanes keeps its weights in one memory of NF x SF words,
NF = out / PE, SF = fan-in / SIMD; word ``nf * SF + sf`` holds, in lane ``pe * SIMD + s``, the
weight of output ``nf * PE + pe`` and RTL fan-in position ``sf * SIMD + s``, each lane the image's
stored word verbatim. Biases, thresholds and per-channel parameters live in NF words of PE lanes.
:class:`Layout` maps any stored bit of the software image to its RTL (address, bit) and back; the
RTL generator, the HLS replay and the cocotb testbench all use it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def signed_bits(lo: int, hi: int) -> int:
    """Bits of a two's complement word that holds every integer in [lo, hi]."""
    return max(int(lo).bit_length(), int(hi).bit_length()) + 1


@dataclass
class Layout:
    """Where the words of one image memory sit in its RTL memory.

    ``lanes`` values per RTL word, ``lane_bits`` bits per lane; ``pe``/``simd``/``sf`` the folding
    (``simd`` = ``sf`` = 1 for per-channel memories); ``perm[j]`` is the PyTorch fan-in index at
    RTL fan-in position ``j`` (weights only).
    """

    memory: str
    layer: str
    kind: str
    hier: str
    depth: int
    lanes: int
    lane_bits: int
    pe: int
    simd: int
    sf: int
    fanin: int
    perm: np.ndarray | None = None

    @property
    def word_bits(self) -> int:
        """Bits of one RTL word."""
        return self.lanes * self.lane_bits

    def place(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Image word indices (flat PyTorch order) -> (RTL address, lane)."""
        index = np.asarray(index, dtype=np.int64)
        if self.perm is None:
            return index // self.pe, index % self.pe
        o, i = index // self.fanin, index % self.fanin
        j = self.inverse()[i]
        return (o // self.pe) * self.sf + j // self.simd, (o % self.pe) * self.simd + j % self.simd

    def inverse(self) -> np.ndarray:
        """RTL fan-in position of each PyTorch fan-in index."""
        inv = np.empty_like(self.perm)
        inv[self.perm] = np.arange(self.perm.size)
        return inv

    def locate(self, index: np.ndarray, bit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Image (word index, bit) -> (RTL address, RTL bit)."""
        addr, lane = self.place(index)
        return addr, lane * self.lane_bits + np.asarray(bit, dtype=np.int64)

    def to_json(self) -> dict:
        """Manifest entry (the permutation is given by its rule in ``fanin_order``)."""
        return {"memory": self.memory, "layer": self.layer, "kind": self.kind,
                "hier": self.hier, "word_bits": self.word_bits, "depth": self.depth,
                "lanes": self.lanes, "lane_bits": self.lane_bits, "pe": self.pe,
                "simd": self.simd, "sf": self.sf, "fanin": self.fanin}


def memory_words(layout: Layout, words: np.ndarray) -> list[int]:
    """RTL memory contents (one int per address) from the image's stored words."""
    rows = np.zeros((layout.depth, layout.lanes), dtype=np.int64)
    addr, lane = layout.place(np.arange(words.size))
    rows[addr, lane] = words
    out = []
    for r in rows:
        v = 0
        for lane_i in range(layout.lanes - 1, -1, -1):
            v = (v << layout.lane_bits) | int(r[lane_i])
        out.append(v)
    return out


def mem_file_text(layout: Layout, words: np.ndarray) -> str:
    """``$readmemh`` text of one memory: one hex word per line."""
    digits = (layout.word_bits + 3) // 4
    return "".join(f"{v:0{digits}x}\n" for v in memory_words(layout, words))
