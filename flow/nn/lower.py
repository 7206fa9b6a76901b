"""The front end: lower a QONNX graph to the integer network hardware runs (:mod:`flow.core.ir`).

One path for every network: a Brevitas module is exported to QONNX first
(:func:`flow.nn.qonnx_graph.export_module`), a QONNX file is read as it is
(:func:`flow.nn.qonnx_graph.load`); :func:`lower_graph` then walks the prepared graph once, in
topological order, and turns every tensor into integer codes with a power-of-two scale:

- ``Quant`` on the graph input: the input quantizer; on a weight or bias initializer: the
  parameter's integer codes (computed with qonnx's own ``int_quant``); on an activation: a
  ``requant`` (round half to even, saturation). A ``Relu`` before it is its lower bound of 0.
- ``Conv`` (square kernel, equal strides and pads, groups = 1, no dilation), ``MatMul`` and
  ``Gemm``: integer multiply-accumulate; a quantized bias in the node or in the ``Add`` after it
  must sit at the accumulator's scale (input scale x weight scale).
- ``BipolarQuant``: binary weights (1 bit), or the sign of an activation; after a
  ``BatchNormalization`` it becomes integer thresholds with a direction bit, found by evaluating
  the batch-norm in float32 (as PyTorch does) on the accumulator's integer grid, so the compare
  reproduces the float model exactly.
- ``MaxPool`` (kernel = stride, no padding), ``Flatten`` / ``Reshape`` to one vector per image,
  ``Add`` of two quantized tensors (residual), ``GlobalAveragePool`` / ``ReduceMean`` over the
  map (an integer sum whose scale absorbs the power-of-two area), ``Identity`` and ``Dropout``.

Anything else stops with a :class:`~flow.nn.qonnx_graph.ModelError`: one line that names the layer
or node, the op or the value, and what to change. Every integer node records the ONNX tensor it
reproduces (``attrs['onnx']``), so tests compare it with qonnx's executor tensor by tensor.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from flow.core.ir import IntNetwork, Node, Param
from flow.core.precision import Fixed
from flow.nn.qonnx_graph import ModelError, module_path, safe_name

MAX_WEIGHT_BITS = 16
MAX_ACT_BITS = 24
SUPPORTED = ("Quant", "BipolarQuant", "Conv", "MatMul", "Gemm", "Add", "Relu", "MaxPool",
             "Flatten", "Reshape", "BatchNormalization", "GlobalAveragePool", "ReduceMean",
             "Transpose", "Identity", "Dropout")


@dataclass
class _Const:
    """A static float tensor (an initializer)."""

    array: np.ndarray
    name: str


@dataclass
class _QConst:
    """A quantized static tensor: integer codes and their format; ``source`` names the
    initializer it came from (for layer names)."""

    codes: np.ndarray
    fmt: Fixed
    source: str


@dataclass
class _Act:
    """A dynamic tensor held as integer codes by IR node ``node``. ``relu`` marks a pending
    clamp at 0 (fused into the next quantizer); ``bn`` a pending batch-norm (before a sign)."""

    node: Node
    relu: bool = False
    bn: dict | None = None


@dataclass
class _FloatInput:
    """The graph input, float pixels before the input quantizer."""

    name: str


def _pow2_frac(scale: np.ndarray, what: str, hint: str) -> int:
    """``f`` with every element of ``scale`` equal to 2**-f; else a ModelError naming ``what``."""
    s = np.asarray(scale, dtype=np.float64).reshape(-1)
    if s.size == 0:
        raise ModelError(f"{what} scale is empty")
    if s.size > 1:
        raise ModelError(f"{what} scale is per channel ({s.size} values, {s.min():.4g} to "
                         f"{s.max():.4g}) where the hardware needs one per-tensor scale; "
                         f"use a per-tensor quantizer such as {hint}")
    v = float(s[0])
    m, e = math.frexp(v)
    if v <= 0 or m != 0.5:
        raise ModelError(f"{what} scale {v:.6g} is not a power of two; use a fixed-point "
                         f"quantizer such as {hint}")
    return -(e - 1)


def _attrs(node) -> dict:
    from onnx import helper
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _as_str(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class _Lowering:
    def __init__(self, model, arch: str) -> None:
        self.model, self.arch = model, arch
        self.nodes: list[Node] = []
        self.params: dict[str, Param] = {}
        self.values: dict[str, object] = {}
        self.names: set[str] = set()
        self.layer_names: set[str] = set()
        self.consumers: dict[str, int] = {}
        for n in model.graph.node:
            for i in n.input:
                self.consumers[i] = self.consumers.get(i, 0) + 1
        for o in model.graph.output:
            self.consumers[o.name] = self.consumers.get(o.name, 0) + 1

    # -- naming --------------------------------------------------------------------------------
    def unique(self, name: str) -> str:
        base, k = safe_name(name), 1
        out = base
        while out in self.names:
            k += 1
            out = f"{base}_{k}"
        self.names.add(out)
        return out

    def where(self, node) -> str:
        """How a message names an ONNX node: its module path if the exporter recorded one."""
        path = module_path(node.name)
        return f"node '{path}' ({node.op_type})" if path else \
            f"node '{node.name}' ({node.op_type})"

    def layer_name(self, weight: _QConst, node) -> str:
        src = weight.source
        if src.endswith(".weight"):
            name = src[: -len(".weight")]
        else:
            name = module_path(node.name) or node.name or src
        name = safe_name(name)
        base, k = name, 1
        while name in self.layer_names or name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.layer_names.add(name)
        self.names.add(name)
        return name

    def add(self, node: Node) -> Node:
        self.nodes.append(node)
        return node

    # -- values --------------------------------------------------------------------------------
    def get(self, tensor: str) -> object:
        if tensor in self.values:
            return self.values[tensor]
        init = self.model.get_initializer(tensor)
        if init is not None:
            return _Const(np.asarray(init), tensor)
        raise ModelError(f"model: tensor '{tensor}' has no producer and no value")

    def const(self, tensor: str, node, what: str) -> np.ndarray:
        v = self.get(tensor)
        if not isinstance(v, _Const):
            raise ModelError(f"{self.where(node)}: {what} must be a constant")
        return v.array

    def act(self, tensor: str, node, role: str = "input") -> _Act:
        """The dynamic integer tensor ``tensor`` with any pending ReLU applied."""
        v = self.get(tensor)
        if isinstance(v, _FloatInput):
            raise ModelError(f"{self.where(node)}: its {role} is the unquantized network input; "
                             f"start the network with an input quantizer (a QuantIdentity with "
                             f"a fixed-point act_quant such as Uint8ActPerTensorFixedPoint)")
        if isinstance(v, (_Const, _QConst)):
            raise ModelError(f"{self.where(node)}: its {role} is a constant, not an activation")
        if v.bn is not None:
            raise ModelError(f"{self.where(node)}: it reads a batch-norm output that feeds no "
                             f"sign; a batch-norm is supported only directly before a binary "
                             f"sign quantizer (BipolarQuant, e.g. SignedBinaryActPerTensorConst)")
        if v.relu:
            return _Act(self.materialize_relu(v.node))
        return v

    def materialize_relu(self, src: Node) -> Node:
        lo, hi = 0, max(src.hi, 0)
        return self.add(Node(self.unique(f"{src.name}.relu"), "requant", [src.name], src.frac,
                             lo, hi, {"bits": max(1, hi.bit_length()), "signed": False,
                                      "onnx": None}))

    # -- ops -----------------------------------------------------------------------------------
    def run(self) -> IntNetwork:
        g = self.model.graph
        inp = g.input[0].name
        self.values[inp] = _FloatInput(inp)
        for node in g.node:
            op = node.op_type
            if op == "IntQuant":
                op = "Quant"
            handler = getattr(self, f"op_{op}", None)
            if handler is None:
                raise ModelError(
                    f"{self.where(node)}: operation '{node.op_type}' is outside hetq's supported "
                    f"set ({', '.join(SUPPORTED)}); see docs/byo.md for the layers hetq lowers")
            handler(node)
        out = g.output[0].name
        last = self.get(out)
        if isinstance(last, _FloatInput) or isinstance(last, (_Const, _QConst)):
            raise ModelError("model: the graph output is not computed from the input")
        last = self.act(out, g.node[-1], "output")
        if last.node is not self.nodes[-1]:
            raise ModelError(f"model: the graph output '{out}' is not the last computed tensor")
        shape = self.model.get_tensor_shape(out)
        if shape is None or len(shape) != 2:
            raise ModelError(f"model output: shape {shape} is not (batch, classes); end the "
                             f"network with a dense layer (or flatten its output)")
        if not self.nodes or self.nodes[0].op != "input":
            raise ModelError("model: the network input is not quantized")
        in_shape = tuple(int(d) for d in self.model.get_tensor_shape(inp)[1:])
        if len(in_shape) != 3:
            raise ModelError(f"model input: shape {in_shape} is not (channels, height, width)")
        if not any(p.kind == "weight" for p in self.params.values()):
            raise ModelError("model: the network has no weight layer (Conv, MatMul or Gemm "
                             "with quantized weights)")
        return IntNetwork(self.arch, self.nodes, self.params, in_shape, int(shape[1]))

    def op_Identity(self, node) -> None:
        self.values[node.output[0]] = self.get(node.input[0])

    op_Dropout = op_Identity

    def op_Transpose(self, node) -> None:
        v = self.get(node.input[0])
        perm = _attrs(node).get("perm")
        if isinstance(v, _Const):
            self.values[node.output[0]] = _Const(np.transpose(v.array, perm), v.name)
        elif isinstance(v, _QConst):
            self.values[node.output[0]] = _QConst(np.transpose(v.codes, perm), v.fmt, v.source)
        else:
            raise ModelError(f"{self.where(node)}: transposes an activation; hetq lowers "
                             f"networks in PyTorch's NCHW layout without transposes")

    def op_Quant(self, node) -> None:
        a = _attrs(node)
        signed, narrow = bool(a.get("signed", 1)), bool(a.get("narrow", 0))
        rounding = _as_str(a.get("rounding_mode", "ROUND")).upper()
        scale = self.const(node.input[1], node, "the scale")
        zeropt = self.const(node.input[2], node, "the zero point")
        bits_arr = self.const(node.input[3], node, "the bit-width")
        bits = int(np.asarray(bits_arr).reshape(-1)[0])
        if np.any(np.asarray(zeropt) != 0):
            z = float(np.asarray(zeropt).reshape(-1)[0])
            raise ModelError(f"{self.where(node)}: zero point {z:g} is not 0; hetq's hardware "
                             f"is symmetric (use a quantizer without zero point, e.g. "
                             f"Uint8ActPerTensorFixedPoint)")
        if bits != float(np.asarray(bits_arr).reshape(-1)[0]) or bits < 2:
            raise ModelError(f"{self.where(node)}: bit-width {bits_arr!r} is not an integer >= 2 "
                             f"(1-bit values use BipolarQuant)")
        v = self.get(node.input[0])
        if isinstance(v, _Const):
            self.values[node.output[0]] = self.quant_const(node, v, scale, bits, signed, narrow,
                                                           rounding)
            return
        hint = ("Uint8ActPerTensorFixedPoint" if not signed else "Int8ActPerTensorFixedPoint")
        if bits > MAX_ACT_BITS:
            raise ModelError(f"{self.where(node)}: bit-width {bits} exceeds {MAX_ACT_BITS}")
        if rounding not in ("ROUND", "ROUND_HALF_EVEN"):
            raise ModelError(f"{self.where(node)}: rounding mode {rounding} is not supported; "
                             f"hetq's hardware rounds half to even (rounding_mode ROUND)")
        what = f"{self.where(node)}: activation"
        frac = _pow2_frac(scale, what, hint)
        fmt = Fixed(bits=bits, signed=signed, frac=frac, narrow=narrow)
        if isinstance(v, _FloatInput):
            if self.nodes:
                raise ModelError(f"{self.where(node)}: the network input is quantized twice")
            self.values[node.output[0]] = _Act(self.add(Node(
                "input", "input", [], frac, fmt.min(), fmt.max(),
                {"bits": bits, "signed": signed, "onnx": node.output[0],
                 "module": module_path(node.name)})))
            self.names.add("input")
            return
        if not isinstance(v, _Act):
            raise ModelError(f"{self.where(node)}: quantizes a constant that is not an "
                             f"initializer")
        if v.bn is not None:
            raise ModelError(f"{self.where(node)}: a batch-norm feeds a {bits}-bit quantizer; "
                             f"hetq lowers a batch-norm only before a binary sign quantizer "
                             f"(fold it into the layer before it for fixed-point networks)")
        lo, hi = fmt.min(), fmt.max()
        if v.relu:
            lo = max(lo, 0)
        src = v.node
        self.values[node.output[0]] = _Act(self.add(Node(
            self.unique(module_path(node.name) or node.name), "requant", [src.name], frac, lo, hi,
            {"bits": bits, "signed": signed, "onnx": node.output[0],
             "module": module_path(node.name)})))

    def quant_const(self, node, v: _Const, scale, bits: int, signed: bool, narrow: bool,
                    rounding: str) -> _QConst:
        from qonnx.custom_op.general.quant import quant
        role = "bias" if v.name.endswith(".bias") else "weight"
        layer = v.name.rsplit(".", 1)[0] if v.name.endswith((".weight", ".bias")) else None
        what = f"layer '{layer}': {role}" if layer else f"{self.where(node)}: {role}"
        hint = "Int16Bias" if role == "bias" else "Int8WeightPerTensorFixedPoint"
        frac = _pow2_frac(scale, what, hint)
        s = np.float64(2.0 ** -frac)
        vals = quant(np.asarray(v.array, dtype=np.float64), s, np.float64(0), np.float64(bits),
                     signed, narrow, rounding)
        codes = np.round(np.asarray(vals, dtype=np.float64) / s).astype(np.int64)
        return _QConst(codes, Fixed(bits=bits, signed=signed, frac=frac, narrow=narrow), v.name)

    def op_BipolarQuant(self, node) -> None:
        scale = self.const(node.input[1], node, "the scale")
        v = self.get(node.input[0])
        if isinstance(v, _Const):
            what = (f"layer '{v.name.rsplit('.', 1)[0]}': binary weight"
                    if v.name.endswith(".weight") else f"{self.where(node)}: binary weight")
            frac = _pow2_frac(scale, what, "SignedBinaryWeightPerTensorConst with "
                              "scaling_const 1.0")
            codes = np.where(np.asarray(v.array) >= 0, 1, -1).astype(np.int64)
            self.values[node.output[0]] = _QConst(
                codes, Fixed(bits=1, signed=True, frac=frac, bipolar=True), v.name)
            return
        frac = _pow2_frac(scale, f"{self.where(node)}: sign", "SignedBinaryActPerTensorConst "
                          "with scaling_const 1.0")
        if isinstance(v, _FloatInput):
            raise ModelError(f"{self.where(node)}: binarizes the network input; quantize the "
                             f"input with a fixed-point QuantIdentity instead")
        if not isinstance(v, _Act):
            raise ModelError(f"{self.where(node)}: binarizes a constant that is not an "
                             f"initializer")
        src = v.node if not v.relu else self.materialize_relu(v.node)
        self.values[node.output[0]] = _Act(self.threshold(node, src, v.bn, frac))

    def threshold(self, node, acc: Node, bn: dict | None, frac: int) -> Node:
        channels = self.model.get_tensor_shape(node.input[0])[1]
        layer = module_path(node.name) or node.name
        thr, direction = sign_thresholds(acc, bn, int(channels))
        span = max(abs(acc.lo - 1), abs(acc.hi + 1))
        tbits = int(span).bit_length() + 1
        owner = self._layer_of(acc)
        tname = self.unique(f"{owner}.threshold")
        dname = self.unique(f"{owner}.direction")
        self.params[tname] = Param(tname, owner, "threshold", Fixed(tbits, True, acc.frac), thr)
        self.params[dname] = Param(dname, owner, "direction", Fixed(1, False, 0), direction)
        return self.add(Node(self.unique(layer), "threshold", [acc.name], frac, -1, 1,
                             {"threshold": tname, "direction": dname, "onnx": node.output[0],
                              "module": module_path(node.name)}, bipolar=True))

    def _layer_of(self, node: Node) -> str:
        """The weight layer whose output ``node`` is (walking back through its inputs)."""
        cur = node
        while cur.op not in ("conv", "dense"):
            if not cur.inputs:
                return cur.name
            cur = next(n for n in self.nodes if n.name == cur.inputs[0])
        return next(p.layer for p in self.params.values() if p.name == cur.attrs["weight"])

    def op_BatchNormalization(self, node) -> None:
        x = self.act(node.input[0], node)
        names = ("scale", "bias", "mean", "variance")
        vals = {k: np.asarray(self.const(t, node, f"its {k}"), dtype=np.float32)
                for k, t in zip(names, node.input[1:5])}
        eps = float(_attrs(node).get("epsilon", 1e-5))
        shape = [1, *self.model.get_tensor_shape(node.input[0])[1:]]
        self.values[node.output[0]] = _Act(x.node, bn={**vals, "eps": eps, "shape": shape,
                                                       "where": self.where(node)})

    def op_Relu(self, node) -> None:
        v = self.get(node.input[0])
        if not isinstance(v, _Act) or v.bn is not None:
            self.act(node.input[0], node)       # the one-line refusal
            raise ModelError(f"{self.where(node)}: ReLU of something that is not an activation")
        self.values[node.output[0]] = _Act(v.node, relu=True)

    def weight(self, tensor: str, node) -> _QConst:
        v = self.get(tensor)
        if isinstance(v, _QConst):
            return v
        name = v.name if isinstance(v, _Const) else tensor
        if isinstance(v, _Const):
            layer = name[:-len(".weight")] if name.endswith(".weight") else \
                (module_path(node.name) or node.name)
            raise ModelError(f"layer '{layer}': weights are not quantized (no Quant node on "
                             f"'{name}'); use a Brevitas weight quantizer such as "
                             f"Int8WeightPerTensorFixedPoint")
        raise ModelError(f"{self.where(node)}: its weights are computed, not stored; hetq "
                         f"needs quantized weight initializers")

    def mac(self, node, x: _Act, w: _QConst, op: str, attrs: dict, out_tensor: str) -> None:
        layer = self.layer_name(w, node)
        if w.fmt.bits > MAX_WEIGHT_BITS and not w.fmt.bipolar:
            raise ModelError(f"layer '{layer}': weight bit-width {w.fmt.bits} exceeds "
                             f"{MAX_WEIGHT_BITS}")
        src = x.node
        wname = f"{layer}.weight"
        fmt = w.fmt if w.fmt.bipolar else Fixed(bits=w.fmt.bits, signed=True, frac=w.fmt.frac,
                                                 narrow=w.fmt.narrow)
        if not w.fmt.bipolar and not w.fmt.signed:
            raise ModelError(f"layer '{layer}': unsigned weights; use a signed weight quantizer "
                             f"such as Int8WeightPerTensorFixedPoint")
        self.params[wname] = Param(wname, layer, "weight", fmt, w.codes)
        fan_in = int(np.prod(w.codes.shape[1:]))
        in_mag = max(abs(src.lo), abs(src.hi))
        w_mag = 1 if fmt.bipolar else 1 << (fmt.bits - 1)
        bound = fan_in * in_mag * w_mag
        acc = self.add(Node(layer, op, [src.name], src.frac + fmt.frac, -bound, bound,
                            {"weight": wname, "bias": None, **attrs, "onnx": out_tensor,
                             "module": layer}))
        self.values[out_tensor] = _Act(acc)

    def bias(self, node, acc: Node, b: object) -> None:
        layer = self.params[acc.attrs["weight"]].layer
        if isinstance(b, _Const):
            raise ModelError(f"layer '{layer}': the bias is not quantized; use a bias quantizer "
                             f"at the accumulator's scale such as Int16Bias (or bias=False)")
        if not isinstance(b, _QConst) or b.fmt.bipolar:
            raise ModelError(f"layer '{layer}': the bias is not a quantized constant")
        if b.fmt.frac != acc.frac:
            raise ModelError(f"layer '{layer}': bias scale 2^-{b.fmt.frac} is not the "
                             f"accumulator's 2^-{acc.frac} (input scale x weight scale); use a "
                             f"bias quantizer at the accumulator's scale such as Int16Bias")
        codes = b.codes.reshape(-1)
        out = self.params[acc.attrs["weight"]].codes.shape[0]
        if codes.size != out:
            raise ModelError(f"layer '{layer}': bias has {codes.size} values for {out} outputs")
        bname = f"{layer}.bias"
        bfmt = Fixed(bits=b.fmt.bits, signed=True, frac=b.fmt.frac)
        self.params[bname] = Param(bname, layer, "bias", bfmt, codes)
        acc.attrs["bias"] = bname
        mag = 1 << (bfmt.bits - 1)
        acc.lo, acc.hi = acc.lo - mag, acc.hi + mag

    def op_Conv(self, node) -> None:
        a = _attrs(node)
        w = self.weight(node.input[1], node)
        layer = w.source[:-len(".weight")] if w.source.endswith(".weight") else \
            (module_path(node.name) or node.name)
        group = int(a.get("group", 1))
        if group != 1:
            raise ModelError(f"layer '{layer}': grouped convolution (groups={group}); hetq's "
                             f"hardware computes groups=1 convolutions only")
        dil = list(a.get("dilations", [1, 1]))
        if any(d != 1 for d in dil):
            raise ModelError(f"layer '{layer}': dilated convolution (dilation "
                             f"{'x'.join(map(str, dil))}); use dilation=1")
        if _as_str(a.get("auto_pad", "NOTSET")) not in ("NOTSET", "VALID"):
            raise ModelError(f"layer '{layer}': auto_pad {_as_str(a['auto_pad'])}; give explicit "
                             f"padding")
        if w.codes.ndim != 4:
            raise ModelError(f"layer '{layer}': {w.codes.ndim - 2}-D convolution; hetq lowers "
                             f"2-D convolutions (QuantConv2d)")
        kh, kw = (int(k) for k in a.get("kernel_shape", w.codes.shape[2:]))
        strides = [int(s) for s in a.get("strides", [1, 1])]
        pads = [int(p) for p in a.get("pads", [0, 0, 0, 0])]
        if kh != kw:
            raise ModelError(f"layer '{layer}': kernel {kh}x{kw} is not square; use a square "
                             f"kernel")
        if strides[0] != strides[1]:
            raise ModelError(f"layer '{layer}': strides {strides} differ; use one stride for "
                             f"both axes")
        if len(set(pads)) != 1:
            raise ModelError(f"layer '{layer}': padding {pads} is not the same on every side")
        x = self.act(node.input[0], node)
        self.mac(node, x, w, "conv", {"stride": strides[0], "pad": pads[0], "k": kh},
                 node.output[0])
        if len(node.input) > 2 and node.input[2]:
            self.bias(node, self.values[node.output[0]].node, self.get(node.input[2]))

    def _dense(self, node, x_tensor: str, w: _QConst, transposed: bool) -> None:
        x = self.act(x_tensor, node)
        shape = self.model.get_tensor_shape(x_tensor)
        if shape is None or len(shape) != 2:
            raise ModelError(f"{self.where(node)}: input of shape {shape} is not one vector per "
                             f"image; flatten it first")
        codes = w.codes.T if transposed else w.codes
        self.mac(node, x, _QConst(np.ascontiguousarray(codes), w.fmt, w.source), "dense", {},
                 node.output[0])

    def op_MatMul(self, node) -> None:
        w = self.weight(node.input[1], node)
        if w.codes.ndim != 2:
            raise ModelError(f"{self.where(node)}: weights of shape {w.codes.shape} are not a "
                             f"matrix")
        self._dense(node, node.input[0], w, transposed=True)

    def op_Gemm(self, node) -> None:
        a = _attrs(node)
        if float(a.get("alpha", 1.0)) != 1.0 or float(a.get("beta", 1.0)) != 1.0 \
                or int(a.get("transA", 0)):
            raise ModelError(f"{self.where(node)}: Gemm with alpha/beta != 1 or transA is not "
                             f"supported")
        w = self.weight(node.input[1], node)
        self._dense(node, node.input[0], w, transposed=not int(a.get("transB", 0)))
        if len(node.input) > 2 and node.input[2]:
            self.bias(node, self.values[node.output[0]].node, self.get(node.input[2]))

    def op_Add(self, node) -> None:
        a, b = (self.get(t) for t in node.input[:2])
        if isinstance(a, (_Const, _QConst)):
            a, b = b, a
        if isinstance(b, (_Const, _QConst)):
            acc = a.node if isinstance(a, _Act) else None
            if (acc is None or acc.op not in ("conv", "dense") or acc.attrs.get("bias")
                    or a.relu or a.bn is not None or self.consumers.get(acc.attrs["onnx"], 0) != 1):
                raise ModelError(f"{self.where(node)}: adds a constant that is not the bias of "
                                 f"the layer before it")
            self.bias(node, acc, b)
            acc.attrs["onnx"] = node.output[0]
            self.values[node.output[0]] = _Act(acc)
            return
        x = self.act(node.input[0], node, "first input")
        y = self.act(node.input[1], node, "second input")
        fx, fy = x.node, y.node
        frac = max(fx.frac, fy.frac)
        lo = (fx.lo << (frac - fx.frac)) + (fy.lo << (frac - fy.frac))
        hi = (fx.hi << (frac - fx.frac)) + (fy.hi << (frac - fy.frac))
        name = self.unique(f"{module_path(node.name) or node.name}.add")
        self.values[node.output[0]] = _Act(self.add(Node(
            name, "add", [fx.name, fy.name], frac, lo, hi,
            {"onnx": node.output[0], "module": None})))

    def op_MaxPool(self, node) -> None:
        a = _attrs(node)
        v = self.get(node.input[0])
        if not isinstance(v, _Act) or v.bn is not None:
            self.act(node.input[0], node)
        k = [int(i) for i in a.get("kernel_shape", [])]
        s = [int(i) for i in a.get("strides", k)]
        pads = [int(p) for p in a.get("pads", [0, 0, 0, 0])]
        dil = [int(d) for d in a.get("dilations", [1, 1])]
        if (len(k) != 2 or k[0] != k[1] or s != k or any(pads) or any(d != 1 for d in dil)
                or int(a.get("ceil_mode", 0))):
            raise ModelError(f"{self.where(node)}: max-pool with kernel {k}, stride {s}, padding "
                             f"{pads}; hetq pools with kernel = stride (square), no padding, "
                             f"floor mode (e.g. nn.MaxPool2d(2))")
        src = v.node
        name = self.unique(module_path(node.name) or node.name)
        out = self.add(Node(name, "maxpool", [src.name], src.frac, src.lo, src.hi,
                            {"k": k[0], "onnx": None if v.relu else node.output[0],
                             "module": module_path(node.name)}, bipolar=src.bipolar))
        # max-pool commutes with the clamp at 0: the ReLU stays pending
        self.values[node.output[0]] = _Act(out, relu=v.relu)

    def _flatten(self, node) -> None:
        v = self.get(node.input[0])
        if not isinstance(v, _Act) or v.bn is not None:
            self.act(node.input[0], node)
        shape_in = self.model.get_tensor_shape(node.input[0])
        shape_out = self.model.get_tensor_shape(node.output[0])
        if shape_out is None or len(shape_out) != 2 or shape_out[0] != shape_in[0]:
            raise ModelError(f"{self.where(node)}: reshape {shape_in} -> {shape_out} is not a "
                             f"flatten to one vector per image")
        src = v.node
        if len(shape_in) == 2:
            self.values[node.output[0]] = v
            return
        out = self.add(Node(self.unique(module_path(node.name) or node.name), "flatten",
                            [src.name], src.frac, src.lo, src.hi,
                            {"onnx": None if v.relu else node.output[0]}, bipolar=src.bipolar))
        self.values[node.output[0]] = _Act(out, relu=v.relu)

    op_Flatten = _flatten
    op_Reshape = _flatten

    def _mean(self, node, shape_in) -> None:
        x = self.act(node.input[0], node)
        area = int(shape_in[2] * shape_in[3])
        shift = int(math.log2(area)) if area > 0 else -1
        if area <= 0 or 1 << shift != area:
            raise ModelError(f"{self.where(node)}: average over {shape_in[2]}x{shape_in[3]} = "
                             f"{area} pixels, not a power of two; hetq divides by shifting")
        src = x.node
        self.values[node.output[0]] = _Act(self.add(Node(
            self.unique(module_path(node.name) or node.name), "sumpool", [src.name],
            src.frac + shift, src.lo * area, src.hi * area,
            {"onnx": node.output[0], "module": module_path(node.name)})))

    def op_GlobalAveragePool(self, node) -> None:
        self._mean(node, self.model.get_tensor_shape(node.input[0]))

    def op_ReduceMean(self, node) -> None:
        shape_in = self.model.get_tensor_shape(node.input[0])
        a = _attrs(node)
        axes = a.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = self.const(node.input[1], node, "the axes").reshape(-1).tolist()
        axes = sorted(int(x) % len(shape_in) for x in (axes or []))
        if len(shape_in) != 4 or axes != [2, 3]:
            raise ModelError(f"{self.where(node)}: mean over axes {axes} of {shape_in}; hetq "
                             f"lowers the global average pool (mean over height and width)")
        self._mean(node, shape_in)


def sign_thresholds(acc: Node, bn: dict | None, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer thresholds and directions of ``sign(bn(acc))`` per channel.

    ``out = +1`` where ``acc >= thr`` (direction 1) or ``acc <= thr`` (direction 0). The
    batch-norm is evaluated in float32 with PyTorch's kernel on values of the accumulator's
    integer grid; it is monotone in the accumulator, so a binary search over [lo, hi] finds each
    threshold exactly. Without a batch-norm the sign's threshold is 0.
    """
    import torch
    import torch.nn.functional as F
    lo, hi = int(acc.lo), int(acc.hi)
    if bn is None:
        return np.zeros(channels, dtype=np.int64), np.ones(channels, dtype=np.int64)
    scale = 2.0 ** (-acc.frac)
    shape = tuple(bn["shape"])            # one image, as the model's forward sees it
    t = {k: torch.tensor(np.asarray(bn[k], dtype=np.float32))
         for k in ("scale", "bias", "mean", "variance")}

    def pos(codes: np.ndarray) -> np.ndarray:
        """sign(bn(code * scale)) >= 0 for one candidate code per channel."""
        v = (codes.astype(np.float64) * scale).astype(np.float32)
        x = torch.from_numpy(v).reshape((1, channels) + (1,) * (len(shape) - 2)).expand(shape)
        y = F.batch_norm(x.contiguous(), t["mean"], t["variance"], t["scale"], t["bias"],
                         False, 0.0, bn["eps"])
        return (y.reshape(channels, -1)[:, 0] >= 0).numpy()

    at_lo = pos(np.full(channels, lo))
    at_hi = pos(np.full(channels, hi))
    rising = ~at_lo & at_hi
    falling = at_lo & ~at_hi
    # binary search of the first code where the predicate flips, every channel at once
    a, b = np.full(channels, lo, dtype=np.int64), np.full(channels, hi, dtype=np.int64)
    while np.any(b - a > 1):
        mid = (a + b) // 2
        p = pos(mid)
        flip = np.where(rising, p, ~p)          # True once past the crossing
        b = np.where(flip, mid, b)
        a = np.where(flip, a, mid)
    thr = np.empty(channels, dtype=np.int64)
    direction = np.ones(channels, dtype=np.int64)
    thr[rising] = b[rising]                      # smallest code with +1
    direction[falling] = 0
    thr[falling] = a[falling]                    # largest code with +1
    const = ~rising & ~falling
    thr[const & at_lo] = lo                      # +1 everywhere
    thr[const & ~at_lo] = hi + 1                 # -1 everywhere
    return thr, direction


def lower_graph(model, arch: str) -> IntNetwork:
    """Lower a prepared QONNX ModelWrapper (:func:`flow.nn.qonnx_graph.prepare`) to the integer
    network; ``arch`` names it in reports."""
    return _Lowering(model, arch).run()


def lower(module, input_shape: tuple[int, int, int], arch: str = "model") -> IntNetwork:
    """Export a Brevitas module to QONNX and lower it (the same path as a QONNX file)."""
    from flow.nn.qonnx_graph import export_module
    return lower_graph(export_module(module, input_shape), arch)
