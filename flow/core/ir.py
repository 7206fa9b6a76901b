"""The integer network: what hardware computes, as a list of nodes over integer tensors.

Produced from a QONNX graph (a Brevitas export or a user's file) by :mod:`flow.nn.lower`, stored in
the weight-memory image (:mod:`flow.core.image`) and run by the integer executor
(:mod:`flow.core.executor`); the HLS and RTL generators read the same structure. Every tensor holds
integer codes; a node's ``frac`` says the code ``c`` stands for ``c * 2**-frac``.

Ops (``Node.op``) and their attributes:

- ``input``: quantize float pixels: ``clamp(round(x * 2**frac), lo, hi)``.
- ``conv`` / ``dense``: integer multiply-accumulate with the weight parameter ``attrs['weight']``
  plus the bias parameter ``attrs['bias']`` (at the accumulator's scale) if any; conv has
  ``stride`` and ``pad``.
- ``requant``: ``clamp(round_half_even(acc * 2**(frac_out - frac_in)), lo, hi)`` (ReLU is the
  clamp at 0 of an unsigned output).
- ``threshold``: batch-norm + sign folded: out = +1 where ``acc >= thr`` (``dir`` = 1) or
  ``acc <= thr`` (``dir`` = 0), else -1.
- ``affine``: per-channel ``acc * scale[c] + offset[c]`` with the parameters ``attrs['scale']``
  and ``attrs['offset']`` (a batch-norm that feeds no sign, followed by a ``requant``).
- ``rprelu``: ReActNet's RPReLU, per channel: ``u = x - shift[c]``, then ``u * 2**p`` where
  ``u >= 0``, else ``u * slope[c]`` (the slope a fixed-point code with ``p`` fraction bits),
  plus ``offset[c]`` (parameters ``attrs['shift']``, ``attrs['slope']``, ``attrs['offset']``;
  ``frac`` grows by ``p``; followed by a ``requant``).
- ``maxpool`` (``k``), ``avgpool`` (``k``: the sum of each k x k window, stride k; ``frac``
  grows by log2(k*k), so the code is the exact mean), ``sumpool`` (global sum; ``frac`` grows by
  log2 of the area), ``repeat`` (``times``: the channels repeated, ``x.repeat(1, times, 1, 1)``),
  ``flatten``, ``add`` (two inputs aligned to the finer scale).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from flow.core.precision import Fixed

# the attributes of a node that name a parameter (a memory of the image)
PARAM_KEYS: tuple[str, ...] = ("weight", "bias", "threshold", "direction", "scale", "offset",
                               "shift", "slope")


@dataclass
class Param:
    """An integer parameter array that hardware keeps in a memory.

    ``kind`` is ``weight``, ``bias``, ``threshold``, ``direction``, ``scale`` or ``offset``
    (an RPReLU's slope is a ``scale``, its shift and offset ``offset``s).
    ``codes`` holds the integer values (for bipolar weights -1/+1), in PyTorch's layout
    (out, in[, kh, kw]).
    """

    name: str
    layer: str
    kind: str
    fmt: Fixed
    codes: np.ndarray


@dataclass
class Node:
    """One operation of the integer network; ``lo``/``hi`` bound its output codes."""

    name: str
    op: str
    inputs: list[str]
    frac: int
    lo: int
    hi: int
    attrs: dict = field(default_factory=dict)
    bipolar: bool = False


@dataclass
class IntNetwork:
    """The integer network: nodes in execution order, parameters by name, and metadata."""

    arch: str
    nodes: list[Node]
    params: dict[str, Param]
    input_shape: tuple[int, int, int]
    num_classes: int

    @property
    def output(self) -> str:
        """Name of the node whose codes are the class scores."""
        return self.nodes[-1].name

    def node(self, name: str) -> Node:
        """The node called ``name``."""
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def layers(self) -> list[str]:
        """Weight layer names in execution order."""
        return [p.layer for p in self.params.values() if p.kind == "weight"]

    def max_abs_code(self) -> int:
        """Largest magnitude any node's codes can take (decides the executor's float width)."""
        return max(max(abs(n.lo), abs(n.hi)) for n in self.nodes)


def layer_act_bits(net: IntNetwork) -> dict[str, int | None]:
    """Bits of each weight layer's quantized output: the first requant (or sign, 1 bit) after it,
    through max-pools and flattens; None for a layer whose accumulator is the output."""
    owner: dict[str, str | None] = {}
    bits: dict[str, int | None] = {name: None for name in net.layers()}
    weight_layer = {p.name: p.layer for p in net.params.values() if p.kind == "weight"}
    for n in net.nodes:
        if n.op in ("conv", "dense"):
            owner[n.name] = weight_layer[n.attrs["weight"]]
            continue
        src = owner.get(n.inputs[0]) if len(n.inputs) == 1 else None
        if src is not None and bits[src] is None and n.op in ("requant", "threshold"):
            bits[src] = 1 if n.op == "threshold" else int(n.attrs["bits"])
            src = None
        owner[n.name] = src if n.op in ("maxpool", "flatten") or src is None else None
    return bits

