"""Lower a trained Brevitas :class:`~flow.zoo.ZooNet` to the integer network hardware runs.

Reads the quantizers' power-of-two scales, the integer weight and bias codes, and folds each
binary layer's batch-norm + sign into integer thresholds. The thresholds are found by evaluating
the model's own batch-norm on every accumulator value the layer can produce, so the integer compare
reproduces the float32 model exactly, rounding included.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from flow.ir import IntNetwork, Node, Param
from flow.precision import Fixed, frac_of_scale
from flow.zoo import BDense, Flatten, GlobalAvgPool, QConv, QDense, QResBlock, ZooNet


class _Lowering:
    def __init__(self, model: ZooNet) -> None:
        self.model = model
        self.nodes: list[Node] = []
        self.params: dict[str, Param] = {}
        self.out_q: dict[str, object] = {}   # module name -> its output QuantTensor (one sample)

    # -- helpers -----------------------------------------------------------------------------
    def add(self, node: Node) -> Node:
        self.nodes.append(node)
        return node

    def fmt_of(self, qt, what: str) -> Fixed:
        frac = frac_of_scale(float(qt.scale.reshape(-1)[0]), what)
        bits = int(qt.bit_width)
        return Fixed(bits=bits, signed=bool(qt.signed), frac=frac)

    def requant(self, name: str, src: Node, qt) -> Node:
        fmt = self.fmt_of(qt, name)
        return self.add(Node(name, "requant", [src.name], fmt.frac, fmt.min(), fmt.max(),
                             {"bits": fmt.bits, "signed": fmt.signed}))

    # -- blocks ------------------------------------------------------------------------------
    def weight_layer(self, blk, src: Node, in_qt) -> Node:
        layer = blk.layer
        wq = layer.quant_weight()
        w_frac = frac_of_scale(float(wq.scale.reshape(-1)[0]), f"{blk.name}.weight")
        if blk.binary:
            wfmt = Fixed(bits=1, signed=True, frac=w_frac, bipolar=True)
        else:
            wfmt = Fixed(bits=int(wq.bit_width), signed=True, frac=w_frac, narrow=True)
        wname = f"{blk.name}.weight"
        self.params[wname] = Param(wname, blk.name, "weight", wfmt,
                                   wq.int().detach().cpu().numpy().astype(np.int64))
        attrs: dict = {"weight": wname, "bias": None}
        acc_frac = src.frac + w_frac
        fan_in = int(np.prod(wq.value.shape[1:]))
        in_mag = max(abs(src.lo), abs(src.hi))
        w_mag = 1 if wfmt.bipolar else 1 << (wfmt.bits - 1)
        bound = fan_in * in_mag * w_mag
        if layer.bias is not None:
            bq = layer.bias_quant(layer.bias, in_qt, wq)
            bfmt = Fixed(bits=int(bq.bit_width), signed=True,
                         frac=frac_of_scale(float(bq.scale.reshape(-1)[0]), f"{blk.name}.bias"))
            if bfmt.frac != acc_frac:
                raise ValueError(f"{blk.name}.bias: scale 2^-{bfmt.frac} differs from the "
                                 f"accumulator's 2^-{acc_frac}")
            bname = f"{blk.name}.bias"
            self.params[bname] = Param(bname, blk.name, "bias", bfmt,
                                       bq.int().detach().cpu().numpy().astype(np.int64))
            attrs["bias"] = bname
            bound += 1 << (bfmt.bits - 1)
        op = "conv" if isinstance(blk, QConv) else "dense"
        if op == "conv":
            attrs.update(stride=blk.stride, pad=blk.pad, k=blk.k)
        last_name = blk.name if blk.act_kind is None else f"{blk.name}.acc"
        acc = self.add(Node(last_name, op, [src.name], acc_frac, -bound, bound, attrs))
        if blk.act_kind is None:
            return acc
        if blk.act_kind == "sign":
            return self.threshold(blk, acc)
        act_name = f"{blk.name}.act" if getattr(blk, "pool", 0) else blk.name
        out = self.requant(act_name, acc, self.out_q[f"{blk.name}.act"])
        if getattr(blk, "pool", 0):
            out = self.add(Node(blk.name, "maxpool", [out.name], out.frac, out.lo, out.hi,
                                {"k": blk.pool}))
        return out

    def threshold(self, blk: BDense, acc: Node) -> Node:
        scale = 2.0 ** (-acc.frac)
        a = np.arange(acc.lo, acc.hi + 1, dtype=np.int64)
        bn = blk.bn
        c = bn.num_features
        with torch.no_grad():
            v = torch.from_numpy(a.astype(np.float64) * scale).float()
            dev = bn.weight.device
            pos = (bn(v[:, None].expand(-1, c).contiguous().to(dev)) >= 0).cpu().numpy()
        thr = np.empty(c, dtype=np.int64)
        direction = np.empty(c, dtype=np.int64)
        for ch in range(c):
            col = pos[:, ch]
            d = np.diff(col.astype(np.int8))
            if (d >= 0).all():      # -1 ... -1 +1 ... +1: out = acc >= thr
                idx = np.flatnonzero(col)
                thr[ch] = a[idx[0]] if idx.size else acc.hi + 1
                direction[ch] = 1
            elif (d <= 0).all():    # +1 ... +1 -1 ... -1: out = acc <= thr
                idx = np.flatnonzero(col)
                thr[ch] = a[idx[-1]] if idx.size else acc.lo - 1
                direction[ch] = 0
            else:
                raise ValueError(f"{blk.name}: batch-norm + sign is not monotone in channel {ch}")
        span = max(abs(acc.lo - 1), abs(acc.hi + 1))
        tbits = int(span).bit_length() + 1
        tname, dname = f"{blk.name}.threshold", f"{blk.name}.direction"
        self.params[tname] = Param(tname, blk.name, "threshold", Fixed(tbits, True, acc.frac), thr)
        self.params[dname] = Param(dname, blk.name, "direction", Fixed(1, False, 0), direction)
        return self.add(Node(blk.name, "threshold", [acc.name], 0, -1, 1,
                             {"threshold": tname, "direction": dname}, bipolar=True))

    def resblock(self, blk: QResBlock, src: Node, in_qt) -> Node:
        y = self.weight_layer(blk.conv1, src, in_qt)
        y = self.weight_layer(blk.conv2, y, self.out_q[f"{blk.conv1.name}.act"])
        s = src if blk.shortcut is None else self.weight_layer(blk.shortcut, src, in_qt)
        frac = max(y.frac, s.frac)
        lo = (y.lo << (frac - y.frac)) + (s.lo << (frac - s.frac))
        hi = (y.hi << (frac - y.frac)) + (s.hi << (frac - s.frac))
        add = self.add(Node(f"{blk.name}.add", "add", [y.name, s.name], frac, lo, hi))
        return self.requant(blk.name, add, self.out_q[f"{blk.name}.act"])

    def run(self) -> IntNetwork:
        model = self.model
        hooks = [model.input.register_forward_hook(
            lambda m, i, o: self.out_q.__setitem__("input", o))]
        for mod in model.modules():
            if getattr(mod, "act", None) is not None and hasattr(mod, "name"):
                key = f"{mod.name}.act"
                hooks.append(mod.act.register_forward_hook(
                    lambda m, i, o, key=key: self.out_q.__setitem__(key, o)))
            if isinstance(mod, GlobalAvgPool):
                key = f"{mod.name}.in"
                hooks.append(mod.register_forward_pre_hook(
                    lambda m, i, key=key: self.out_q.__setitem__(key, i[0])))
        x = torch.zeros((1, *model.input_shape), device=next(model.parameters()).device)
        with torch.no_grad():
            model.forward_quant(x)
        for h in hooks:
            h.remove()
        in_qt = self.out_q["input"]
        fmt = self.fmt_of(in_qt, "input")
        src = self.add(Node("input", "input", [], fmt.frac, fmt.min(), fmt.max(),
                            {"bits": fmt.bits, "signed": fmt.signed}))
        cur_qt = in_qt
        for blk in model.blocks:
            if isinstance(blk, QResBlock):
                src = self.resblock(blk, src, cur_qt)
                cur_qt = self.out_q[f"{blk.name}.act"]
            elif isinstance(blk, (QConv, QDense, BDense)):
                src = self.weight_layer(blk, src, cur_qt)
                cur_qt = self.out_q.get(f"{blk.name}.act", cur_qt)
            elif isinstance(blk, Flatten):
                src = self.add(Node("flatten", "flatten", [src.name], src.frac, src.lo, src.hi,
                                    bipolar=src.bipolar))
            elif isinstance(blk, GlobalAvgPool):
                src = self.sumpool(blk, src)
                cur_qt = self.out_q[f"{blk.name}.act"]
            else:
                raise TypeError(f"cannot lower block {type(blk).__name__}")
        return IntNetwork(model.arch, self.nodes, self.params, tuple(model.input_shape),
                          model.num_classes)

    def sumpool(self, blk: GlobalAvgPool, src: Node) -> Node:
        area = self._spatial_area(blk)
        shift = int(math.log2(area))
        if 1 << shift != area:
            raise ValueError(f"{blk.name}: pooled area {area} is not a power of two")
        s = self.add(Node(f"{blk.name}.sum", "sumpool", [src.name], src.frac + shift,
                          src.lo * area, src.hi * area))
        return self.requant(blk.name, s, self.out_q[f"{blk.name}.act"])

    def _spatial_area(self, blk: GlobalAvgPool) -> int:
        t = self.out_q[f"{blk.name}.in"]
        v = t.value if hasattr(t, "value") else t
        return int(v.shape[2] * v.shape[3])


@torch.no_grad()
def lower(model: ZooNet) -> IntNetwork:
    """Lower a trained ZooNet (put in eval mode here) to its integer network."""
    model.eval()
    return _Lowering(model).run()
