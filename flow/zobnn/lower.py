"""Lower a ZOBNN network (:func:`flow.zobnn.quant.zobnn`) to the integer network hardware runs.

The ZOBNN network already stores every parameter as an integer code at one scale ``delta``; this
module turns its layers into the integer operations of :mod:`flow.core.ir`, so the weight-memory
image
(:mod:`flow.core.image`), the integer executor, the RTL generator and the cocotb SEU campaign
handle it
like the other networks. Supported: the DoReFa-Net-style CNN (arch ``bdorefa``) and the binary
ResNet (``breact``, below). ``bdorefa``:

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

The binary ResNet (``breact``) lowers the same way, with a residual stream of fixed-point codes at
delta (``16 - bits`` fraction bits, so that its resolution is that of a 16-bit ZOBNN, saturated
at 24 bits, :data:`ACT_BITS`):

- **stem**: the first conv, then its batch-norm as an integer affine rounded half to even to the
  stream's codes (where the worst-case products of the affine would pass 2^52, ``S`` is as large
  as stays below it);
- **per block**: RSign ``sign(x - beta)`` as a threshold at ``beta`` (exact), the binary conv
  (per-channel scale in the affine), the batch-norm as a rounded affine, the shortcut (the stream
  itself, or its 2x2 average pool, an exact mean with 2 more fraction bits, channels repeated),
  the residual add (exact), and RPReLU ``prelu(x - gamma, slope) + zeta`` as the ``rprelu`` op:
  gamma and zeta at delta (integers), the float32 slope as an exact fixed-point code (a float32
  is a dyadic rational), rounded half to even to the stream's codes;
- **global mean**: the sum over the map (exact), rounded to integer codes at delta, and the
  output layer as for the CNN.

Memories: the RSign thresholds and directions, the RPReLU's gamma and zeta (kind ``offset``,
``blockN.rprelu.gamma``/``zeta``) and slope (kind ``scale``), besides the kinds above. Measured
on digits (width 0.5, 4 epochs): predictions agree with the float32-evaluated ZOBNN model on
359 of 359 test images at 16 and at 8 bits.
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
from flow.zobnn.bnn import BinaryConv2d, DoReFaBlock, ReActBlock
from flow.zobnn.quant import BIAS_BITS, QBatchNorm2d

INPUT_FRAC = 4      # digits pixels are multiples of 1/16
INPUT_BITS = 5      # 0 .. 16 (unsigned)
GUARD_BITS = 8      # the last batch-norm's affine is exact to 2^-GUARD_BITS of an output code
ACT_BITS = 24       # breact: the residual stream's codes at delta, saturated at 24 bits


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
        self.act_frac = 0               # breact: fraction bits of the residual stream's codes

    def add(self, node: Node) -> Node:
        self.nodes.append(node)
        return node

    def param(self, layer: str, kind: str, fmt: Fixed, codes: np.ndarray,
              name: str | None = None) -> str:
        name = name or f"{layer}.{kind}"
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

    def affine(self, layer: str, bn: QBatchNorm2d, acc: Node, alpha: list[int],
               cap: int | None = None, out_frac: int = 0) -> Node:
        """A batch-norm that feeds no sign as an integer affine + round-half-even shift (codes
        at delta with ``out_frac`` fraction bits; with ``cap``, saturated to ``cap``-bit
        codes)."""
        w, b, mu, sig = _bn_ints(layer, bn)
        scale = Fraction(1, 1 << acc.frac)
        m = [Fraction(w[c] * alpha[c], sig[c]) * scale for c in range(len(w))]
        o = [b[c] - Fraction(w[c] * mu[c], sig[c]) for c in range(len(w))]
        # |M acc + O - 2^S (m acc + o)| <= (|acc| + 1) / 2: below 2^-GUARD_BITS of a code, unless
        # the worst-case products would pass 2^52 (float64's exact range): then S is as large
        # as stays below it (a relative error below 2^-S / |m|)
        shift = math.ceil(math.log2(max(abs(acc.lo), abs(acc.hi)) + 1)) + GUARD_BITS
        while True:
            mq = [round(x * (1 << shift)) for x in m]
            oq = [round(x * (1 << shift)) for x in o]
            ends = [mq[c] * a + oq[c] for c in range(len(mq)) for a in (acc.lo, acc.hi)]
            lo, hi = min(ends), max(ends)
            if max(abs(lo), abs(hi)) < 1 << 52:
                break
            if shift == 0:
                raise PlanError(f"zobnn lower: '{layer}' affine values reach 2^52 (not exact "
                                f"in the executor's float64)")
            shift -= 1
        mname = self.param(layer, "scale", Fixed(signed_bits(min(mq), max(mq)), True,
                                                 shift - acc.frac), np.asarray(mq))
        oname = self.param(layer, "offset", Fixed(signed_bits(min(oq), max(oq)), True, shift),
                           np.asarray(oq))
        # z = M acc + O stands for the batch-norm output z * 2^-shift (in units of delta)
        z = self.add(Node(f"{layer}.affine", "affine", [acc.name], shift, lo, hi,
                          {"scale": mname, "offset": oname}))
        ybits = signed_bits((lo >> (shift - out_frac)) - 1, (hi >> (shift - out_frac)) + 1)
        ybits = min(ybits, cap) if cap else ybits
        fmt = Fixed(ybits, True, out_frac)
        return self.add(Node(f"{layer}.bn", "requant", [z.name], out_frac, fmt.min(),
                             fmt.max(), {"bits": ybits, "signed": True}))

    def rsign(self, layer: str, rs: nn.Module, src: Node) -> Node:
        """ReActNet's RSign ``sign(x - beta)`` (+1 at 0) on fixed-point codes: a threshold at
        beta (at delta, an integer), exact."""
        beta = [b << src.frac for b in _ints(rs.beta, f"{layer}.rsign.beta")]
        thr = np.clip(np.asarray(beta, dtype=np.int64), src.lo - 1, src.hi + 1)
        span = max(abs(int(thr.min())), abs(int(thr.max())), 1)
        tname = self.param(layer, "threshold", Fixed(span.bit_length() + 1, True, src.frac),
                           thr)
        dname = self.param(layer, "direction", Fixed(1, False, 0), np.ones(thr.size, np.int64))
        return self.add(Node(f"{layer}.sign", "threshold", [src.name], 0, -1, 1,
                             {"threshold": tname, "direction": dname}, bipolar=True))

    def shortcut(self, layer: str, blk: nn.Module, src: Node, h: int, w: int) -> Node:
        """The block's shortcut: ``src`` itself, or its k x k average pool (an exact mean at
        frac + log2(k*k)) with the channels repeated."""
        s = src
        if blk.stride > 1:
            k = blk.stride
            if k & (k - 1) or h % k or w % k:
                raise PlanError(f"zobnn lower: '{layer}' average-pools a {h}x{w} map by {k} "
                                f"(a power of two dividing the map is needed)")
            s = self.add(Node(f"{layer}.avgpool", "avgpool", [s.name],
                              s.frac + 2 * (k.bit_length() - 1), s.lo * k * k, s.hi * k * k,
                              {"k": k}))
        if blk.repeat > 1:
            s = self.add(Node(f"{layer}.repeat", "repeat", [s.name], s.frac, s.lo, s.hi,
                              {"times": blk.repeat}))
        return s

    def rprelu(self, layer: str, pr: nn.Module, src: Node) -> Node:
        """RPReLU ``prelu(x - gamma, slope) + zeta`` with gamma and zeta at delta (integers)
        and the float32 slope as an exact fixed-point code; then rounded half to even to codes
        at delta."""
        f = src.frac
        gamma = [g << f for g in _ints(pr.gamma, f"{layer}.rprelu.gamma")]
        slopes = [Fraction(float(v)) for v in pr.slope.detach().float().reshape(-1)]
        p = max(int(math.log2(sl.denominator)) for sl in slopes)     # float32: powers of two
        if p > 40:
            raise PlanError(f"zobnn lower: '{layer}.rprelu.slope' needs {p} fraction bits")
        sq = [int(sl * (1 << p)) for sl in slopes]
        zeta = [z << (f + p) for z in _ints(pr.zeta, f"{layer}.rprelu.zeta")]
        lay = f"{layer}.rprelu"
        g = self.param(lay, "offset", Fixed(signed_bits(min(gamma), max(gamma)), True, f),
                       np.asarray(gamma), name=f"{lay}.gamma")
        sl = self.param(lay, "scale", Fixed(signed_bits(min(sq), max(sq)), True, p),
                        np.asarray(sq), name=f"{lay}.slope")
        z = self.param(lay, "offset", Fixed(signed_bits(min(zeta), max(zeta)), True, f + p),
                       np.asarray(zeta), name=f"{lay}.zeta")
        ends = []
        for c in range(len(gamma)):
            for u in (src.lo - gamma[c], src.hi - gamma[c], 0):
                ends.append((u << p if u >= 0 else u * sq[c]) + zeta[c])
        lo, hi = min(ends), max(ends)
        if max(abs(lo), abs(hi)) >= 1 << 52:
            raise PlanError(f"zobnn lower: '{lay}' values reach 2^52 (not exact in the "
                            f"executor's float64)")
        y = self.add(Node(f"{lay}.acc", "rprelu", [src.name], f + p, lo, hi,
                          {"shift": g, "slope": sl, "offset": z, "p": p}))
        return self.requant(f"{lay}.out", y, ACT_BITS, self.act_frac)

    def requant(self, name: str, src: Node, cap: int | None = None, frac: int = 0) -> Node:
        """Round half to even to codes with ``frac`` fraction bits, as wide as the bounds need
        (with ``cap``, saturated to ``cap``-bit codes)."""
        sh = src.frac - frac
        bits = signed_bits((src.lo >> sh) - 1, (src.hi >> sh) + 1)
        bits = min(bits, cap) if cap else bits
        fmt = Fixed(bits, True, frac)
        return self.add(Node(name, "requant", [src.name], frac, fmt.min(), fmt.max(),
                             {"bits": bits, "signed": True}))

    def maxpool(self, layer: str, src: Node) -> Node:
        return self.add(Node(f"{layer}.pool", "maxpool", [src.name], src.frac, src.lo, src.hi,
                             {"k": 2}, bipolar=src.bipolar))

    # -- network -------------------------------------------------------------------------------
    def input(self) -> Node:
        fmt = Fixed(self.input_bits, False, self.input_frac)
        return self.add(Node("input", "input", [], fmt.frac, fmt.min(), fmt.max(),
                             {"bits": fmt.bits, "signed": False}))

    def output_layer(self, src: Node) -> IntNetwork:
        """The float output layer on codes at delta: weights at delta, bias at delta^2."""
        fc = self.model.fc
        w = np.asarray(_ints(fc.weight, "fc.weight")).reshape(fc.weight.shape)
        wname = self.param("fc", "weight", Fixed(self.bits, True, 0, narrow=True), w)
        bound = w.shape[1] * max(abs(src.lo), abs(src.hi)) * (1 << (self.bits - 1))
        attrs: dict = {"weight": wname, "bias": None}
        if fc.bias is not None:
            attrs["bias"] = self.param("fc", "bias", Fixed(BIAS_BITS, True, 0),
                                       np.asarray(_ints(fc.bias, "fc.bias")))
            bound += 1 << (BIAS_BITS - 1)
        self.add(Node("fc", "dense", [src.name], src.frac, -bound, bound, attrs))
        return IntNetwork(f"zobnn_{self.model.arch}", self.nodes, self.params,
                          self.input_shape, self.num_classes)

    def run_react(self) -> IntNetwork:
        """The binary ResNet: stem conv + batch-norm (rounded to codes at delta), then per block
        RSign, binary conv, batch-norm (rounded), + shortcut (exact), RPReLU (rounded); the
        global mean rounded to codes at delta; the output layer."""
        m = self.model
        acc, alpha = self.conv("stem", m.stem.conv, self.input())
        self.act_frac = max(0, 16 - self.bits)
        h = self.affine("stem", m.stem.bn, acc, alpha, ACT_BITS, self.act_frac)
        hw = self.input_shape[1]
        for i, blk in enumerate(m.blocks):
            layer = f"block{i}"
            acc, alpha = self.conv(layer, blk.conv, self.rsign(layer, blk.rsign, h))
            d = self.affine(layer, blk.bn, acc, alpha, ACT_BITS, self.act_frac)
            s = self.shortcut(layer, blk, h, hw, hw)
            hw = (hw - 1) // blk.stride + 1
            f = max(d.frac, s.frac)
            e = self.add(Node(f"{layer}.add", "add", [d.name, s.name], f,
                              (d.lo << (f - d.frac)) + (s.lo << (f - s.frac)),
                              (d.hi << (f - d.frac)) + (s.hi << (f - s.frac))))
            h = self.rprelu(layer, blk.rprelu, e)
        area = hw * hw
        if area & (area - 1):
            raise PlanError(f"zobnn lower: the global mean over {hw}x{hw} pixels is not a "
                            f"power of two")
        pool = self.add(Node("pool", "sumpool", [h.name], h.frac + area.bit_length() - 1,
                             h.lo * area, h.hi * area))
        return self.output_layer(self.requant("pool.mean", pool))

    def run(self) -> IntNetwork:
        m = self.model
        src = self.input()
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
        return self.output_layer(src)


@torch.no_grad()
def lower_zobnn(model: nn.Module, bits: int, input_shape: tuple[int, int, int],
                num_classes: int, *, input_frac: int = INPUT_FRAC,
                input_bits: int = INPUT_BITS) -> IntNetwork:
    """The integer network of a ZOBNN ``bdorefa`` or ``breact`` network (from
    :func:`flow.zobnn.quant.zobnn`)."""
    arch = getattr(model, "arch", type(model).__name__)
    if not getattr(model, "stored_formats", None):
        raise PlanError(f"zobnn lower: '{arch}' is not a ZOBNN network (quantize it with "
                        f"flow.zobnn.quant.zobnn first)")
    low = _Lowering(model.eval(), bits, input_shape, num_classes, input_frac, input_bits)
    if arch == "bdorefa" and all(isinstance(b, DoReFaBlock) for b in model.blocks):
        return low.run()
    if arch == "breact" and all(isinstance(b, ReActBlock) for b in model.blocks):
        return low.run_react()
    raise PlanError(f"zobnn lower: arch '{arch}' has no integer lowering (supported: bdorefa, "
                    f"breact)")


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
