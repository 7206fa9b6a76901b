"""A lowered ZOBNN network (:mod:`flow.zobnn.lower`) as a QONNX graph that hls4ml converts.

hetq's hls4ml flow (:mod:`flow.hw.hls`) reads QONNX graphs. A ZOBNN network is plain PyTorch with
every parameter already an integer code, so its QONNX graph is written here from the integer
network itself, one ONNX node group per integer node, the value of a code ``c`` at fraction
``f`` being ``c * 2^-f``:

- ``input`` -> ``Quant`` (unsigned, the input's bits, scale ``2^-frac``);
- ``conv`` -> ``Conv`` whose weight is a ``Quant`` (integer weights, scale ``2^-frac``, narrow) or
  a ``BipolarQuant`` (binary weights) initializer; no bias;
- ``threshold`` -> ``BatchNormalization`` ``2 (x - t)`` (``-2`` for direction 0, ``t`` half a
  code below or above the threshold) + ``BipolarQuant`` (the sign); hls4ml merges them into its
  binary threshold layer, whose thresholds and direction bits hetq's pass
  (:mod:`flow.hw.hls_ext`) sets from the integer network (hls4ml ignores a negative scale; a
  scale of 2, not 1, keeps hls4ml from folding it into the convolution before it);
- ``affine`` -> ``BatchNormalization`` with the integer scale and offset as values, ``requant``
  -> ``Quant`` (round half to even); the pass gives the batch-norm exact types and the
  requant's rounding, as hls4ml's float-derived types would not be exact;
- ``maxpool`` -> ``MaxPool`` (k x k, stride k), ``flatten`` -> ``Flatten``;
- ``dense`` -> ``Gemm`` with ``Quant`` weight and bias initializers;
- the binary ResNet's (``breact``) operations: ``avgpool`` -> ``AveragePool`` (k x k, stride k:
  the exact mean), ``repeat`` -> hetq's ``HetqRepeat``, ``add`` -> ``Add``, ``rprelu`` -> hetq's
  ``HetqRPReLU`` (gamma, slope, zeta as values) + the ``Quant`` of the ``requant`` after it,
  ``sumpool`` -> ``GlobalAveragePool`` + ``Flatten`` + the ``Quant`` of ``pool.mean``. hetq's two
  operations are qonnx custom operations (:mod:`flow.zobnn.qonnx_ops`), so qonnx's executor
  runs the graph; :func:`flow.hw.hls.hls_graph` makes them channels-last and
  :mod:`flow.hw.hls_ext` gives hls4ml their layers and exact types.

An op outside these is a PlanError.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from flow.core.errors import PlanError
from flow.core.ir import IntNetwork, Param

DOMAIN = "qonnx.custom_op.general"
QDOMAIN = "flow.zobnn.qonnx_ops"          # hetq's own operations (RPReLU, channel repetition)


class _Graph:
    """Collects ONNX nodes and initializers."""

    def __init__(self) -> None:
        self.nodes: list = []
        self.inits: list = []

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], name: str,
             domain: str = "", **attrs) -> None:
        from onnx import helper
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, domain=domain,
                                           **attrs))

    def quant(self, name: str, x: str, frac: int, bits: int, signed: bool, narrow: bool) -> str:
        """``Quant`` of tensor ``x`` to ``bits``-bit codes at scale ``2^-frac``."""
        out = f"{name}_q"
        self.node("Quant", [x, self.const(f"{name}_scale", 2.0 ** -frac),
                            self.const(f"{name}_zeropt", 0.0),
                            self.const(f"{name}_bitwidth", float(bits))],
                  [out], name, DOMAIN, signed=int(signed), narrow=int(narrow),
                  rounding_mode="ROUND")
        return out

    def param(self, p: Param, narrow: bool) -> str:
        """A parameter as an initializer behind its quantizer."""
        if p.fmt.bipolar:
            src = self.const(p.name, p.codes)
            out = f"{p.name}_q"
            self.node("BipolarQuant", [src, self.const(f"{p.name}_scale", 1.0)], [out],
                      f"{p.name}_quant", DOMAIN)
            return out
        src = self.const(p.name, p.codes * 2.0 ** -p.fmt.frac)
        return self.quant(f"{p.name}_quant", src, p.fmt.frac, p.fmt.bits, p.fmt.signed, narrow)

    def batchnorm(self, name: str, x: str, gamma: np.ndarray, beta: np.ndarray,
                  mean: np.ndarray, out: str) -> None:
        """``gamma (x - mean) + beta`` per channel (variance 1, epsilon 0)."""
        self.node("BatchNormalization",
                  [x, self.const(f"{name}_gamma", gamma), self.const(f"{name}_beta", beta),
                   self.const(f"{name}_mean", mean),
                   self.const(f"{name}_var", np.ones_like(gamma))], [out], name, epsilon=0.0)


def write_qonnx(net: IntNetwork, path: Path) -> Path:
    """Write the QONNX graph of the lowered ZOBNN network ``net`` to ``path`` (see the module
    docstring) and return ``path``."""
    from onnx import TensorProto, helper
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.cleanup import cleanup_model

    g = _Graph()
    c, h, w = net.input_shape
    names: dict[str, str] = {}
    for node in net.nodes:
        src = names.get(node.inputs[0]) if node.inputs else "global_in"
        out = node.name
        if node.op == "input":
            out = g.quant("input_quant", src, node.frac, int(node.attrs["bits"]),
                          bool(node.attrs["signed"]), False)
        elif node.op == "conv":
            a = node.attrs
            if a.get("bias"):
                raise PlanError(f"zobnn qonnx: conv '{node.name}' has a bias")
            k, s, p = int(a["k"]), int(a["stride"]), int(a["pad"])
            g.node("Conv", [src, g.param(net.params[a["weight"]], True)], [out], node.name,
                   kernel_shape=[k, k], strides=[s, s], pads=[p, p, p, p], dilations=[1, 1],
                   group=1)
        elif node.op == "threshold":
            # +1 iff acc >= thr (direction 1) or acc <= thr (0): the sign of 2 (x - (thr -+ 1/2))
            thr = net.params[node.attrs["threshold"]]
            up = net.params[node.attrs["direction"]].codes.astype(bool)
            mean = (thr.codes + np.where(up, -0.5, 0.5)) * 2.0 ** -thr.fmt.frac
            g.batchnorm(f"{node.name}_bn", src, np.where(up, 2.0, -2.0), np.zeros(mean.size),
                        mean, f"{node.name}_bn")
            g.node("BipolarQuant", [f"{node.name}_bn", g.const(f"{node.name}_one", 1.0)],
                   [out], node.name, DOMAIN)
        elif node.op == "affine":
            m, o = net.params[node.attrs["scale"]], net.params[node.attrs["offset"]]
            g.batchnorm(node.name, src, m.codes * 2.0 ** -m.fmt.frac,
                        o.codes * 2.0 ** -o.fmt.frac, np.zeros(m.codes.size), out)
        elif node.op == "requant":
            if net.node(node.inputs[0]).op not in ("affine", "rprelu", "sumpool"):
                raise PlanError(f"zobnn qonnx: requant '{node.name}' follows no affine, "
                                f"rprelu or sum pool")
            out = g.quant(node.name, src, node.frac, int(node.attrs["bits"]),
                          bool(node.attrs["signed"]), False)
        elif node.op == "maxpool":
            k = int(node.attrs["k"])
            g.node("MaxPool", [src], [out], node.name, kernel_shape=[k, k], strides=[k, k],
                   pads=[0, 0, 0, 0], dilations=[1, 1], ceil_mode=0)
        elif node.op == "avgpool":
            k = int(node.attrs["k"])
            g.node("AveragePool", [src], [out], node.name, kernel_shape=[k, k], strides=[k, k],
                   pads=[0, 0, 0, 0], ceil_mode=0, count_include_pad=1)
        elif node.op == "repeat":
            g.node("HetqRepeat", [src], [out], node.name, QDOMAIN, times=int(node.attrs["times"]))
        elif node.op == "add":
            g.node("Add", [names[i] for i in node.inputs], [out], node.name)
        elif node.op == "rprelu":
            a = node.attrs
            vals = [net.params[a[key]] for key in ("shift", "slope", "offset")]
            g.node("HetqRPReLU", [src, *(g.const(p.name, p.codes * 2.0 ** -p.fmt.frac)
                                         for p in vals)], [out], node.name, QDOMAIN)
        elif node.op == "sumpool":
            g.node("GlobalAveragePool", [src], [f"{out}_gap"], node.name)
            g.node("Flatten", [f"{out}_gap"], [out], f"{node.name}_flatten", axis=1)
        elif node.op == "flatten":
            g.node("Flatten", [src], [out], node.name, axis=1)
        elif node.op == "dense":
            a = node.attrs
            ins = [src, g.param(net.params[a["weight"]], True)]
            if a.get("bias"):
                ins.append(g.param(net.params[a["bias"]], False))
            g.node("Gemm", ins, [out], node.name, transB=1)
        else:
            raise PlanError(f"zobnn qonnx: op '{node.op}' of '{node.name}' has no QONNX form")
        names[node.name] = out
    graph = helper.make_graph(
        g.nodes, "hetq_zobnn",
        [helper.make_tensor_value_info("global_in", TensorProto.FLOAT, [1, c, h, w])],
        [helper.make_tensor_value_info(names[net.output], TensorProto.FLOAT,
                                       [1, net.num_classes])],
        initializer=g.inits)
    model = helper.make_model(graph, producer_name="hetq",
                              opset_imports=[helper.make_opsetid("", 13),
                                             helper.make_opsetid(DOMAIN, 1),
                                             helper.make_opsetid(QDOMAIN, 1)])
    path.parent.mkdir(parents=True, exist_ok=True)
    cleanup_model(ModelWrapper(model)).save(str(path))
    return path
