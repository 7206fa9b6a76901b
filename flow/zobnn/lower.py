"""Lower a ZOBNN network (:func:`flow.zobnn.quant.zobnn`) to the integer network hardware runs.

The ZOBNN network already stores every parameter as an integer code at one scale ``delta``; this
module turns its layers into the integer operations of :mod:`flow.core.ir`, so the weight-memory
image
(:mod:`flow.core.image`), the integer executor, the RTL generator and the cocotb SEU campaign
handle it
like the other networks. Supported: the DoReFa-Net-style CNN (arch ``bdorefa``):

- **input**: the pixels as fixed-point codes, ``x = code * 2^-input_frac`` (digits pixels lie on
  the k/16 grid, so ``input_frac = 4`` is exact);
- **first layer**: the ZOBNN first conv (weights ``W / delta``, ``bits`` wide) as an integer conv;
- **batch-norm + sign** (the sign of the next block; a 2x2 max-pool between them commutes with
  the sign, ``sign(max(v)) = max(sign(v))``): folded to one integer threshold and direction per
  channel. In the quantized domain the batch-norm output is
  ``w (acc * alpha / 2^f - mu) / sigma + b`` (Eq. 12, all integers; ``alpha`` the binary conv's
  scale code, 1 for the first conv; ``f`` the accumulator's fraction bits); with ``sigma > 0``
  its sign is the sign of ``A acc + B``, ``A = w alpha``, ``B = 2^f (b sigma - w mu)``, so the
  threshold is exact, computed with Python integers;
- **binary convs**: +-1 weights, XNOR-popcount (zero padding contributes 0);
- **last batch-norm** (not followed by a sign; it feeds the output layer through a max-pool):
  an integer per-channel affine ``z = M acc + O`` (``M = round(2^S w alpha / sigma)``,
  ``O = round(2^S (b - w mu / sigma))`` with ``S = ceil(log2 max|acc|) + 8``, so ``z / 2^S`` is
  within 2^-8 of the exact batch-norm output; ``M`` and ``O`` as wide as their codes need) and
  a round-half-even shift by ``S``: the batch-norm output as an integer code at ``delta``, as
  the quantized domain of Eq. 6 holds it;
- **output layer**: integer weights at ``delta``, bias at ``delta^2`` (32 bits); argmax of the
  integer scores absorbs the final dequantization.

Every stored array is a memory: binary weights, integer weights, thresholds, directions, the
affine multipliers (kind ``scale``) and offsets (kind ``offset``) and the output bias; a fault
campaign can target each kind. Thresholds and the last batch-norm's rounding make the integer
network an exact-arithmetic realization of the float32-evaluated ZOBNN model: predictions agree
on all but borderline images (measured by :func:`agreement`).

The binary ResNet (``breact``) needs residual adds of non-binary maps, an average-pool shortcut
with channel repetition and RPReLU with a real slope, which have no integer lowering yet.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import torch
from torch import nn

from flow.core.errors import PlanError
from flow.core.ir import IntNetwork, Node, Param
from flow.core.layout import signed_bits
from flow.core.precision import Fixed
from flow.zobnn.bnn import BinaryConv2d, DoReFaBlock
from flow.zobnn.quant import BIAS_BITS, QBatchNorm2d

INPUT_FRAC = 4      # digits pixels are multiples of 1/16
INPUT_BITS = 5      # 0 .. 16 (unsigned)
GUARD_BITS = 8      # the last batch-norm's affine is exact to 2^-GUARD_BITS of an output code


def _ints(t: torch.Tensor, what: str) -> list[int]:
    """Integer codes of a ZOBNN parameter (refuses values that are not integers)."""
    v = t.detach().cpu().double().reshape(-1).numpy()
    if not np.array_equal(v, np.round(v)):
        raise PlanError(f"zobnn lower: '{what}' holds non-integer values; lower the output of "
                        f"flow.zobnn.quant.zobnn(), not a float-parameter network")
    return [int(x) for x in v]


def _bn_ints(layer: str, bn: QBatchNorm2d) -> tuple[list[int], ...]:
    """Integer weight, bias, mean and sigma of a ZOBNN batch-norm (sigma, a divisor, > 0)."""
    w, b = _ints(bn.weight, f"{layer}.bn.weight"), _ints(bn.bias, f"{layer}.bn.bias")
    mu, sig = _ints(bn.mean, f"{layer}.bn.mean"), _ints(bn.sigma, f"{layer}.bn.sigma")
    bad = next((c for c, v in enumerate(sig) if v <= 0), None)
    if bad is not None:
        raise PlanError(f"zobnn lower: '{layer}.bn.sigma' channel {bad} is {sig[bad]} "
                        f"(a divisor must be positive)")
    return w, b, mu, sig


def _per_channel(vals: list[int], c: int) -> list[int]:
    return vals * c if len(vals) == 1 else vals


class _Lowering:
    def __init__(self, model: nn.Module, bits: int, input_shape: tuple[int, int, int],
                 num_classes: int, input_frac: int, input_bits: int) -> None:
        self.model, self.bits = model, bits
        self.input_shape, self.num_classes = tuple(input_shape), num_classes
        self.input_frac, self.input_bits = input_frac, input_bits
        self.nodes: list[Node] = []
        self.params: dict[str, Param] = {}

    def add(self, node: Node) -> Node:
        self.nodes.append(node)
        return node

    def param(self, layer: str, kind: str, fmt: Fixed, codes: np.ndarray) -> str:
        name = f"{layer}.{kind}"
        self.params[name] = Param(name, layer, kind, fmt, np.asarray(codes, dtype=np.int64))
        return name

    # -- layers --------------------------------------------------------------------------------
    def conv(self, layer: str, mod: nn.Module, src: Node) -> tuple[Node, list[int]]:
        """Integer or binary conv; returns the accumulator node and the per-channel scale."""
        if isinstance(mod, BinaryConv2d):
            w = np.asarray(_ints(mod.wbin, f"{layer}.wbin")).reshape(mod.wbin.shape)
            fmt = Fixed(bits=1, signed=True, bipolar=True)
            alpha = _per_channel(_ints(mod.alpha, f"{layer}.alpha"), mod.cout)
            k, stride, pad, w_mag = mod.k, mod.stride, mod.padding, 1
        else:
            w = np.asarray(_ints(mod.weight, f"{layer}.weight")).reshape(mod.weight.shape)
            fmt = Fixed(bits=self.bits, signed=True, narrow=True)
            alpha = [1] * mod.out_channels
            (k, _), (stride, _), (pad, _) = mod.kernel_size, mod.stride, mod.padding
            w_mag = 1 << (self.bits - 1)
            if mod.bias is not None:
                raise PlanError(f"zobnn lower: conv '{layer}' has a bias (expected BN after it)")
        wname = self.param(layer, "weight", fmt, w)
        bound = int(np.prod(w.shape[1:])) * max(abs(src.lo), abs(src.hi)) * w_mag
        node = self.add(Node(f"{layer}.acc", "conv", [src.name], src.frac, -bound, bound,
                             {"weight": wname, "bias": None, "stride": stride, "pad": pad,
                              "k": k}))
        return node, alpha

    def threshold(self, layer: str, bn: QBatchNorm2d, acc: Node, alpha: list[int]) -> Node:
        """Batch-norm + sign as integer thresholds (exact)."""
        w, b, mu, sig = _bn_ints(layer, bn)
        f = acc.frac
        thr, direction = [], []
        for c in range(len(w)):
            a = w[c] * alpha[c]
            bb = (b[c] * sig[c] - w[c] * mu[c]) << f
            # +1 iff a * acc + bb >= 0
            if a > 0:
                thr.append(-(bb // a))                 # ceil(-bb / a)
                direction.append(1)
            elif a < 0:
                thr.append(bb // (-a))                 # floor(bb / |a|)
                direction.append(0)
            else:
                thr.append(acc.lo if bb >= 0 else acc.hi + 1)
                direction.append(1)
        thr_a = np.clip(np.asarray(thr, dtype=object), acc.lo - 1, acc.hi + 1).astype(np.int64)
        span = max(abs(acc.lo - 1), abs(acc.hi + 1))
        tfmt = Fixed(int(span).bit_length() + 1, True, acc.frac)
        tname = self.param(layer, "threshold", tfmt, thr_a)
        dname = self.param(layer, "direction", Fixed(1, False, 0), np.asarray(direction))
        return self.add(Node(f"{layer}.sign", "threshold", [acc.name], 0, -1, 1,
                             {"threshold": tname, "direction": dname}, bipolar=True))

    def affine(self, layer: str, bn: QBatchNorm2d, acc: Node, alpha: list[int]) -> Node:
        """The last batch-norm as an integer affine + round-half-even shift (codes at delta)."""
        w, b, mu, sig = _bn_ints(layer, bn)
        scale = Fraction(1, 1 << acc.frac)
        m = [Fraction(w[c] * alpha[c], sig[c]) * scale for c in range(len(w))]
        o = [b[c] - Fraction(w[c] * mu[c], sig[c]) for c in range(len(w))]
        # |M acc + O - 2^S (m acc + o)| <= (|acc| + 1) / 2: below 2^-GUARD_BITS of a code
        shift = math.ceil(math.log2(max(abs(acc.lo), abs(acc.hi)) + 1)) + GUARD_BITS
        mq = [round(x * (1 << shift)) for x in m]
        oq = [round(x * (1 << shift)) for x in o]
        ends = [mq[c] * a + oq[c] for c in range(len(mq)) for a in (acc.lo, acc.hi)]
        lo, hi = min(ends), max(ends)
        if max(abs(lo), abs(hi)) >= 1 << 52:
            raise PlanError(f"zobnn lower: '{layer}' affine values reach 2^52 (not exact in the "
                            f"executor's float64)")
        mname = self.param(layer, "scale", Fixed(signed_bits(min(mq), max(mq)), True,
                                                 shift - acc.frac), np.asarray(mq))
        oname = self.param(layer, "offset", Fixed(signed_bits(min(oq), max(oq)), True, shift),
                           np.asarray(oq))
        # z = M acc + O stands for the batch-norm output z * 2^-shift (in units of delta)
        z = self.add(Node(f"{layer}.affine", "affine", [acc.name], shift, lo, hi,
                          {"scale": mname, "offset": oname}))
        ybits = signed_bits((lo >> shift) - 1, (hi >> shift) + 1)
        fmt = Fixed(ybits, True, 0)
        return self.add(Node(f"{layer}.bn", "requant", [z.name], 0, fmt.min(), fmt.max(),
                             {"bits": ybits, "signed": True}))

    def maxpool(self, layer: str, src: Node) -> Node:
        return self.add(Node(f"{layer}.pool", "maxpool", [src.name], src.frac, src.lo, src.hi,
                             {"k": 2}, bipolar=src.bipolar))

    # -- network -------------------------------------------------------------------------------
    def run(self) -> IntNetwork:
        m = self.model
        fmt = Fixed(self.input_bits, False, self.input_frac)
        src = self.add(Node("input", "input", [], fmt.frac, fmt.min(), fmt.max(),
                            {"bits": fmt.bits, "signed": False}))
        blocks = list(m.blocks)
        acc, alpha = self.conv("stem", m.stem.conv, src)
        src = self.threshold("stem", m.stem.bn, acc, alpha)
        for i, blk in enumerate(blocks):
            layer = f"bconv{i}"
            acc, alpha = self.conv(layer, blk.conv, src)
            last = i == len(blocks) - 1
            src = (self.affine if last else self.threshold)(layer, blk.bn, acc, alpha)
            if blk.pool:
                src = self.maxpool(layer, src)
        src = self.add(Node("flatten", "flatten", [src.name], src.frac, src.lo, src.hi))
        fc = m.fc
        w = np.asarray(_ints(fc.weight, "fc.weight")).reshape(fc.weight.shape)
        wname = self.param("fc", "weight", Fixed(self.bits, True, 0, narrow=True), w)
        bound = w.shape[1] * max(abs(src.lo), abs(src.hi)) * (1 << (self.bits - 1))
        attrs: dict = {"weight": wname, "bias": None}
        if fc.bias is not None:
            attrs["bias"] = self.param("fc", "bias", Fixed(BIAS_BITS, True, 0),
                                       np.asarray(_ints(fc.bias, "fc.bias")))
            bound += 1 << (BIAS_BITS - 1)
        self.add(Node("fc", "dense", [src.name], src.frac, -bound, bound, attrs))
        return IntNetwork(f"zobnn_{m.arch}", self.nodes, self.params, self.input_shape,
                          self.num_classes)


@torch.no_grad()
def lower_zobnn(model: nn.Module, bits: int, input_shape: tuple[int, int, int],
                num_classes: int, *, input_frac: int = INPUT_FRAC,
                input_bits: int = INPUT_BITS) -> IntNetwork:
    """The integer network of a ZOBNN ``bdorefa`` network (from :func:`flow.zobnn.quant.zobnn`)."""
    arch = getattr(model, "arch", type(model).__name__)
    if not getattr(model, "stored_formats", None):
        raise PlanError(f"zobnn lower: '{arch}' is not a ZOBNN network (quantize it with "
                        f"flow.zobnn.quant.zobnn first)")
    if arch != "bdorefa" or not all(isinstance(b, DoReFaBlock) for b in model.blocks):
        raise PlanError(f"zobnn lower: arch '{arch}' has no integer lowering (supported: "
                        f"bdorefa; breact needs residual adds, an average-pool shortcut and "
                        f"RPReLU in hardware)")
    return _Lowering(model.eval(), bits, input_shape, num_classes, input_frac,
                     input_bits).run()


@torch.no_grad()
def agreement(model: nn.Module, executor, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Fault-free comparison of the float32-evaluated ZOBNN model and its integer network.

    Returns both accuracies and the fraction of images where the predictions agree.
    """
    pt = model.eval()(x).argmax(1).cpu()
    it = executor.predict(x).cpu()
    return {"images": int(len(y)), "model_accuracy": float((pt == y).float().mean()),
            "integer_accuracy": float((it == y).float().mean()),
            "prediction_agreement": float((pt == it).float().mean())}
