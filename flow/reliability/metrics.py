"""The paper's metrics: memory, memory and performance overheads, RAP (Eq. 2) and P_drop (Eq. 3).

- Memory utilization: stored weight bits from the weight-memory image (protected layers count
  their n+2 bits).
- perf_ovh from the hardware latency model: cycles of a folded dataflow accelerator (every
  weight layer a matrix-vector unit with PE x SIMD lanes). The MSB voter is combinational, so
  protection adds no cycle: configurations that differ only in protection have equal cycles.
- RAP = acc_drop x mem_ovh x perf_ovh, overheads relative to a reference configuration (the
  paper's tables use hom(n,-) with the smallest n).
- P_drop = (N W)^2 x T / t x P_single x BER x acc_drop, where N W is the stored weight bits
  (sum over layers of weights x bits) and T, t, P_single are explicit constants.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from flow.core.image import MemoryImage
from flow.core.ir import IntNetwork


@dataclass(frozen=True)
class PdropConstants:
    """Constants of Eq. 3: device lifetime T and test interval t (same unit), P_single."""

    lifetime: float = 87_600.0        # T: 10 years, in hours
    test_interval: float = 24.0       # t: one day, in hours
    p_single: float = 1e-20           # probability of one given bit flipping during t

    def to_json(self) -> dict:
        """Plain dict, printed beside every P_drop."""
        return asdict(self)


def layer_cycles(net: IntNetwork, pe: int = 1, simd: int = 1) -> dict[str, int]:
    """Cycles per inference of each weight layer: output pixels x ceil(out/PE) x ceil(in/SIMD).

    ``in`` is the fan-in of one output (in_channels x k x k for a convolution).
    """
    out: dict[str, int] = {}
    shapes = _output_pixels(net)
    for node in net.nodes:
        if node.op not in ("conv", "dense"):
            continue
        w = net.params[node.attrs["weight"]].codes
        fan_in = int(math.prod(w.shape[1:]))
        layer = net.params[node.attrs["weight"]].layer
        out[layer] = shapes[node.name] * math.ceil(w.shape[0] / pe) * math.ceil(fan_in / simd)
    return out


def _output_pixels(net: IntNetwork) -> dict[str, int]:
    """Output pixels (H x W; 1 for dense) of every conv/dense node, by tracing shapes."""
    c, h, w = net.input_shape
    hw: dict[str, tuple[int, int]] = {"input": (h, w)}
    pixels: dict[str, int] = {}
    for node in net.nodes[1:]:
        src = hw.get(node.inputs[0], (1, 1))
        a = node.attrs
        if node.op == "conv":
            k, s, p = a["k"], a["stride"], a["pad"]
            cur = ((src[0] + 2 * p - k) // s + 1, (src[1] + 2 * p - k) // s + 1)
            pixels[node.name] = cur[0] * cur[1]
        elif node.op == "dense":
            cur = (1, 1)
            pixels[node.name] = 1
        elif node.op == "maxpool":
            cur = (src[0] // a["k"], src[1] // a["k"])
        elif node.op in ("flatten", "sumpool"):
            cur = (1, 1)
        else:
            cur = src
        hw[node.name] = cur
    return pixels


def latency(net: IntNetwork, pe: int = 1, simd: int = 1) -> dict[str, int]:
    """Analytic latency (sum of layer cycles) and initiation interval (slowest layer)."""
    cyc = layer_cycles(net, pe, simd)
    return {"latency_cycles": sum(cyc.values()), "ii_cycles": max(cyc.values())}


def weight_bits(image: MemoryImage) -> int:
    """Stored weight bits (memory utilization as the paper counts it)."""
    return image.size_bits(("weight",))["total"]


def rap(acc_drop: float, mem_ovh: float, perf_ovh: float) -> float:
    """Eq. 2: RAP = acc_drop x mem_ovh x perf_ovh."""
    return acc_drop * mem_ovh * perf_ovh


def p_drop(stored_bits: int, ber: float, acc_drop: float, c: PdropConstants) -> float:
    """Eq. 3 with N x W = ``stored_bits``: (N W)^2 x T/t x P_single x BER x acc_drop."""
    return float(stored_bits) ** 2 * (c.lifetime / c.test_interval) * c.p_single * ber * acc_drop
