"""hetq's extension of hls4ml, through its extension API only (never patching the package).

Registered on the Vivado backend (the Vitis backend runs the Vivado flows, and templates
registered on the Vivado backend win over the Vitis ones):

- the optimizer pass ``hetq_weight_words`` (appended to ``vivado:optimize``, so it runs after
  precision inference): it makes every weight type hold the stored word exactly (wrap-around, so a
  flipped MSB gives -2^(n-1) as in hardware, instead of saturating); stores the weights of
  protected layers as (n+2)-bit words with the MSB triplicated (the software image's words);
  gives binary layers exact accumulator types; replaces hls4ml's batch-norm + sign thresholds
  by the integer thresholds and direction bits of the integer network (hls4ml ignores a negative
  batch-norm scale), streaming the signs of a convolutional network as -1/+1 so that zero
  padding contributes 0 (hls4ml's XNOR product reads its 0 as -1); and gives a batch-norm that
  feeds no sign (a ZOBNN network's last one) the integer affine's exact types and a
  round-half-even result;
- the same pass sets each weight layer's reuse factor to the smallest one in hls4ml's valid list
  that reaches the config's (``hls.reuse_factor`` is the target; hls4ml would take the closest
  valid one, often 1, fully parallel, where the weights become logic rather than a memory) and
  records it in the layer's ``hetq_reuse`` attribute;
- config templates for Dense, Conv2D and PointwiseConv2D (hls4ml's form of a 1x1 convolution)
  whose product reads protected words through the 2-of-3 voter of ``hls_templates/hetq_nnet.h``,
  and a function template for the thresholds;
- the source ``hls_templates/hetq_nnet.h``;
- an ONNX front-end handler (``register_onnx_layer_handler``) for the ``GlobalAveragePoolNHWC``
  node that :func:`flow.hw.hls.global_pools` makes of a channels-last ``ReduceMean`` or
  ``GlobalAveragePool``, and the pass gives its global average pool an exact accumulator;
- a binary ResNet's operations (:mod:`flow.zobnn.qonnx`): a layer of hetq's own for RPReLU
  (``HetqRPReLU``, registered with ``register_layer``, its config and function templates, and
  ``hetq_rprelu_stream`` in the header) with the integer network's parameters and exact types;
  channel repetition (``HetqRepeat``) as hls4ml's concatenation of a tensor with itself, keeping
  its input's type; average-pool shortcuts with an exact accumulator; and residual adds typed
  again from their inputs' final types (hls4ml types them before the pass changes an input).

What the pass needs comes from the model config: ``HLSConfig['Model']['Hetq']`` holds, per weight
layer in network order, ``{name, bits, frac, binary, protected, acc_bits, acc_frac}`` and, per
binary threshold layer in order, ``{name, threshold, direction, frac}`` and, per affine
batch-norm in order, ``{name, scale, scale_bits, scale_frac, offset, offset_bits, offset_frac,
out_bits, out_frac}`` and, per global average pool in order, ``{name, lo, hi, frac, scale}`` (the
integer network's sumpool: bounds and fraction bits of the average, and H x W), per k x k
average pool ``{name, lo, hi, frac}``, per RPReLU ``{name, in_lo, in_hi, in_frac, out_lo,
out_hi}`` with ``gamma``, ``slope``, ``zeta`` codes and their ``_bits`` and ``_frac``, and
``signed_signs`` (a convolutional network).
"""
from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np

from flow.core.errors import HetqError
from flow.core.resources import data_dir

PASS = "hetq_weight_words"
HEADER = "hetq_nnet.h"


class HlsError(HetqError):
    """The hls4ml project could not be built as the plan asks."""


def header_path() -> Path:
    """``hls_templates/hetq_nnet.h`` (:func:`flow.core.resources.data_dir`)."""
    p = data_dir("hls_templates") / HEADER
    if not p.is_file():
        raise HlsError(f"hls: '{p}' is missing (reinstall hetq)")
    return p


def _words(codes: np.ndarray, bits: int, binary: bool) -> np.ndarray:
    """Stored words of a protected layer (MSB in bits n+1, n, n-1), as the image encodes them."""
    from flow.core.image import encode
    from flow.core.precision import Fixed
    fmt = Fixed(bits=1, signed=True, frac=0, bipolar=True) if binary else \
        Fixed(bits=bits, signed=True, frac=0)
    return encode(codes, fmt, True)


def _make_pass():
    from hls4ml.model.layers import Conv2D, Dense, GlobalPooling2D, Pooling2D
    from hls4ml.model.optimizer import OptimizerPass
    from hls4ml.model.types import FixedPrecisionType, IntegerPrecisionType, NamedType

    def info(model) -> dict:
        return model.config.config["HLSConfig"].get("Model", {}).get("Hetq") or {}

    def plan_spec(model, node, same, key: str, what: str) -> dict:
        """The plan's entry (``Hetq[key]``) for ``node``: the k-th of the model's layers for
        which ``same`` holds is the plan's k-th entry."""
        k = [n for n in model.get_layers() if same(n)].index(node)
        specs = info(model).get(key, [])
        if k >= len(specs):
            raise HlsError(f"hls: {what} '{node.name}' has no entry in the plan's {key}")
        return specs[k]

    def exact_param(node, wname: str, codes, bits: int, frac: int, what: str,
                    plan_name: str) -> None:
        """Weight ``wname`` of ``node`` set to the integer ``codes`` at ``frac`` fraction bits, in
        a signed ``bits``-bit type of its own (hls4ml gives such parameters the shared default
        type)."""
        w = node.weights[wname]
        codes = np.asarray(codes, dtype=np.float64)
        if w.data.size != codes.size:
            raise HlsError(f"hls: {what} '{node.name}' has {w.data.size} channels, the plan's "
                           f"'{plan_name}' has {codes.size}")
        w.data = (codes * 2.0 ** -frac).reshape(w.data.shape)
        prec = FixedPrecisionType(bits, bits - frac, signed=True)
        w.type = NamedType(f"{wname}{node.index}_t", prec)
        w.update_precision(prec)

    def exact_mean(node, spec: dict, n: int) -> None:
        """An average over ``n`` values (a power of two) computed exactly: the sum in an
        accumulator with the mean's fraction bits, so hls4ml's division drops no bit; the mean at
        the integer network's format (``spec``: its bounds ``lo``, ``hi`` and ``frac``)."""
        from flow.core.layout import signed_bits
        lo, hi, frac = spec["lo"], spec["hi"], spec["frac"]
        acc = signed_bits(lo * n, hi * n)
        node.types["accum_t"] = NamedType(f"layer{node.index}_accum_t",
                                          FixedPrecisionType(acc, acc - frac, signed=True))
        out = signed_bits(lo, hi)
        node.get_output_variable().type.precision = FixedPrecisionType(out, out - frac,
                                                                       signed=True)
        node.set_attr("hetq_layer", spec["name"])

    def is_avgpool(n) -> bool:
        return isinstance(n, Pooling2D) and n.get_attr("pool_op") == "Average"

    class HetqWeightWords(OptimizerPass):
        """See the module docstring."""

        def match(self, node) -> bool:
            return (not node.get_attr("hetq_done", False)
                    and (isinstance(node, (Dense, Conv2D, GlobalPooling2D))
                         or node.class_name in ("BatchNormalizationQuantizedTanh",
                                                "BatchNormalization", RPRELU)
                         or is_avgpool(node)
                         or node.get_attr("hetq_repeat", False)
                         or (node.class_name == "Merge" and node.get_attr("op") == "add"))
                    and bool(info(node.model)))

        def transform(self, model, node) -> bool:
            node.set_attr("hetq_done", True)
            if node.class_name == "BatchNormalizationQuantizedTanh":
                self._threshold(model, node)
            elif node.class_name == "BatchNormalization":
                self._affine(model, node)
            elif isinstance(node, GlobalPooling2D):
                self._pool(model, node)
            elif isinstance(node, Pooling2D):
                self._avgpool(model, node)
            elif node.class_name == RPRELU:
                self._rprelu(model, node)
            elif node.class_name == "Merge":
                self._add(node)
            elif node.get_attr("hetq_repeat", False):
                # the repeated channels keep their type (hls4ml gave the concatenation another)
                node.get_output_variable().type.precision = \
                    node.get_input_variable(node.inputs[0]).type.precision
            else:
                self._weights(model, node)
            return False

        @staticmethod
        def _pool(model, node) -> None:
            """A global average pool over H x W (a power of two, as the front end requires),
            exact (:func:`exact_mean`)."""
            spec = plan_spec(model, node, lambda n: isinstance(n, GlobalPooling2D), "pools",
                             "global pool")
            n = spec["scale"]
            if node.get_attr("in_height") * node.get_attr("in_width") != n:
                raise HlsError(f"hls: global pool '{node.name}' averages "
                               f"{node.get_attr('in_height')} x {node.get_attr('in_width')} "
                               f"pixels, the plan's '{spec['name']}' {n}")
            exact_mean(node, spec, n)

        @staticmethod
        def _avgpool(model, node) -> None:
            """A k x k average pool (a binary ResNet's shortcut), exact (:func:`exact_mean`)."""
            spec = plan_spec(model, node, is_avgpool, "avgpools", "average pool")
            exact_mean(node, spec, node.get_attr("pool_height") * node.get_attr("pool_width"))

        @staticmethod
        def _add(node) -> None:
            """A residual add typed again from its inputs' types as they are now (hls4ml
            typed it before this pass gave an input, such as an average-pool shortcut, its exact
            type): the exact sum, by hls4ml's own rule."""
            a, b = (node.get_input_variable(i).type.precision for i in node.inputs[:2])
            if not all(isinstance(t, FixedPrecisionType) for t in (a, b)):
                return
            signed = a.signed or b.signed
            integer = max(a.integer + (b.signed and not a.signed),
                          b.integer + (a.signed and not b.signed)) + 1
            node.get_output_variable().type.precision = FixedPrecisionType(
                integer + max(a.fractional, b.fractional), integer, signed)

        @staticmethod
        def _rprelu(model, node) -> None:
            """RPReLU with the integer network's parameters and exact types: the difference, the
            product and the result (rounded to the stream's codes by the Quant that follows)."""
            from flow.core.layout import signed_bits
            spec = plan_spec(model, node, lambda n: n.class_name == RPRELU, "rprelus", "RPReLU")
            for wname in ("gamma", "slope", "zeta"):
                exact_param(node, wname, spec[wname], spec[f"{wname}_bits"],
                            spec[f"{wname}_frac"], "RPReLU", spec["name"])
            gamma = np.asarray(spec["gamma"], dtype=np.int64)
            f, p = spec["in_frac"], spec["slope_frac"]
            u_lo, u_hi = spec["in_lo"] - int(gamma.max()), spec["in_hi"] - int(gamma.min())
            ub = signed_bits(u_lo, u_hi)
            node.types["shift_t"] = NamedType(f"layer{node.index}_shift_t",
                                              FixedPrecisionType(ub, ub - f, signed=True))
            slopes = np.asarray(spec["slope"], dtype=np.int64)
            ends = [u_lo * int(s) for s in slopes] + [u_hi * int(s) for s in slopes] + \
                [u_lo << p, u_hi << p]
            ab = signed_bits(min(ends), max(ends))
            node.types["accum_t"] = NamedType(f"layer{node.index}_accum_t",
                                              FixedPrecisionType(ab, ab - f - p, signed=True))
            ob = signed_bits(spec["out_lo"], spec["out_hi"])
            node.get_output_variable().type.precision = FixedPrecisionType(ob, ob - f - p,
                                                                           signed=True)
            node.set_attr("hetq_layer", spec["name"])

        def _weights(self, model, node) -> None:
            spec = plan_spec(model, node, lambda n: isinstance(n, (Dense, Conv2D)), "layers",
                             "weight layer")
            w = node.weights["weight"]
            if w.data.size != spec["size"]:
                raise HlsError(f"hls: layer '{node.name}' has {w.data.size} weights, the "
                               f"plan's '{spec['name']}' has {spec['size']}")
            node.set_attr("hetq_layer", spec["name"])
            self._reuse(model, node)
            if spec["binary"]:
                # hls4ml keeps binary weights as 0/1 (XnorPrecisionType) or -1/+1
                codes = np.where(w.data > 0, 1, -1)
                kind = "both_binary" if spec["binary_input"] else "weight_binary"
                # exact accumulator and result: the integer network's bound
                prec = FixedPrecisionType(spec["acc_bits"], spec["acc_bits"] - spec["acc_frac"],
                                          signed=True)
                node.get_output_variable().type.precision = prec
                node.types["accum_t"] = NamedType(f"layer{node.index}_accum_t", prec)
            else:
                codes = np.round(w.data * 2.0 ** spec["frac"]).astype(np.int64)
                kind = "mult"
            if spec["protected"]:
                w.data = _words(codes, spec["bits"], spec["binary"]).reshape(w.data.shape)
                w.update_precision(IntegerPrecisionType(spec["bits"] + 2, signed=False))
                node.set_attr("hetq_tmr", {"kind": kind, "n": spec["bits"],
                                           "i": spec["bits"] - spec["frac"]})
            elif not spec["binary"]:
                # wrap-around: a flipped MSB reads as -2^(n-1), as the stored word means
                w.update_precision(FixedPrecisionType(spec["bits"], spec["bits"] - spec["frac"],
                                                      signed=True))

        @staticmethod
        def _reuse(model, node) -> None:
            """The smallest reuse factor in hls4ml's valid list that is at least the config's
            (the target), so that the weights are read from a memory over several cycles;
            hls4ml's own rule takes the closest valid one, which is often 1 (fully parallel:
            the weights become logic). Only 1 is valid when the layer has a single product."""
            backend = model.config.backend
            n_in, n_out = (int(v) for v in backend.get_layer_mult_size(node))
            valid = backend.get_valid_reuse_factors(n_in, n_out)
            target = int(model.config.get_reuse_factor(node))
            used = int(next((rf for rf in valid if rf >= target), valid[-1]))
            node.set_attr("reuse_factor", used)
            node.set_attr("hetq_reuse", {"target": target, "used": used, "n_in": n_in,
                                         "n_out": n_out, "fully_parallel": used == 1})

        def _threshold(self, model, node) -> None:
            spec = plan_spec(model, node,
                             lambda n: n.class_name == "BatchNormalizationQuantizedTanh",
                             "thresholds", "threshold layer")
            thr = np.asarray(spec["threshold"], dtype=np.float64) * 2.0 ** -spec["frac"]
            t = node.weights["threshold"]
            if t.data.size != thr.size:
                raise HlsError(f"hls: threshold layer '{node.name}' has {t.data.size} channels, "
                               f"the plan's '{spec['name']}' has {thr.size}")
            t.data = thr.reshape(t.data.shape)
            t.update_precision(node.get_input_variable().type.precision)
            node.add_weights_variable(name="direction", var_name="d{index}",
                                      data=np.asarray(spec["direction"], dtype=np.int64),
                                      precision=IntegerPrecisionType(1, signed=False))
            node.set_attr("hetq_layer", spec["name"])
            if info(model).get("signed_signs"):
                # -1/+1, so that the next convolution's zero padding reads as 0, not as -1
                signed = IntegerPrecisionType(2, signed=True)
                node.get_output_variable().type.precision = signed
                nxt = node.get_output_nodes()
                while len(nxt) == 1 and nxt[0].class_name in ("ZeroPadding2D", "Pooling2D"):
                    nxt[0].get_output_variable().type.precision = signed
                    if "accum_t" in nxt[0].types:        # a max-pool compares in its accum_t
                        nxt[0].types["accum_t"].precision = signed
                    nxt = nxt[0].get_output_nodes()

        @staticmethod
        def _affine(model, node) -> None:
            """A batch-norm that feeds no sign: the integer network's per-channel affine
            ``acc * scale + offset`` with exact types, rounded half to even to the requant's
            bits (the executor's requant; it saturates, as hls4ml's result type does)."""
            if not info(model).get("affines"):   # no affine in the plan: hls4ml's as is
                return
            spec = plan_spec(model, node, lambda n: n.class_name == "BatchNormalization",
                             "affines", "batch-norm")
            for wname, key in (("scale", "scale"), ("bias", "offset")):
                exact_param(node, wname, spec[key], spec[f"{key}_bits"], spec[f"{key}_frac"],
                            "batch-norm", spec["name"])
            out = spec["out_bits"]
            node.get_output_variable().type.precision = FixedPrecisionType(
                out, out - spec["out_frac"], signed=True, rounding_mode="RND_CONV",
                saturation_mode="SAT")
            node.set_attr("hetq_layer", spec["name"])

    return HetqWeightWords


def _make_templates():
    from hls4ml.backends.template import FunctionCallTemplate, LayerConfigTemplate
    from hls4ml.backends.vivado.passes.bn_quant import (
        BatchNormalizationQuantizedTanhFunctionTemplate,
        bn_include_list,
    )
    from hls4ml.backends.vivado.passes.convolution_templates import (
        Conv2DConfigTemplate,
        Conv2DFunctionTemplate,
        conv2d_include_list,
    )
    from hls4ml.backends.vivado.passes.core_templates import (
        DenseConfigTemplate,
        DenseFunctionTemplate,
        dense_include_list,
    )
    from hls4ml.backends.vivado.passes.pointwise import (
        PointwiseConv2DConfigTemplate,
        PointwiseConv2DFunctionTemplate,
        sepconv2d_include_list,
    )

    def tmr_product(node, text: str) -> str:
        tmr = node.get_attr("hetq_tmr")
        if not tmr:
            return text
        mine = {"mult": f"hetq_tmr_mult<x_T, y_T, {tmr['n']}, {tmr['i']}>",
                "weight_binary": "hetq_tmr_weight_binary<x_T, y_T>",
                "both_binary": "hetq_tmr_both_binary<x_T, y_T>"}[tmr["kind"]]
        new, n = re.subn(r"using product = nnet::product::\w+<x_T, y_T>;",
                         f"using product = nnet::product::{mine};", text)
        if n != 1:
            raise HlsError(f"hls: unexpected product in the config of '{node.name}'")
        return new

    def renamed(cls):
        """A distinct name, so hls4ml registers the subclass beside the template it overrides
        (templates registered later are applied later and win)."""
        init = cls.__init__

        def __init__(self):
            init(self)
            self.name = f"hetq_{self.name}"
        cls.__init__ = __init__
        return cls

    @renamed
    class HetqDenseConfig(DenseConfigTemplate):
        def format(self, node):
            return tmr_product(node, super().format(node))

    @renamed
    class HetqConv2DConfig(Conv2DConfigTemplate):
        def format(self, node):
            return tmr_product(node, super().format(node))

    @renamed
    class HetqPointwiseConv2DConfig(PointwiseConv2DConfigTemplate):
        """1x1 convolutions: hls4ml turns them into PointwiseConv2D, with its own template."""

        def format(self, node):
            return tmr_product(node, super().format(node))

    @renamed
    class HetqDenseFunction(DenseFunctionTemplate):
        def __init__(self):
            super().__init__()
            self.include_header = [*dense_include_list, f"nnet_utils/{HEADER}"]

    @renamed
    class HetqConv2DFunction(Conv2DFunctionTemplate):
        def __init__(self):
            super().__init__()
            self.include_header = [*conv2d_include_list, f"nnet_utils/{HEADER}"]

    @renamed
    class HetqPointwiseConv2DFunction(PointwiseConv2DFunctionTemplate):
        def __init__(self):
            super().__init__()
            self.include_header = [*sepconv2d_include_list, f"nnet_utils/{HEADER}"]

    @renamed
    class HetqThresholdFunction(BatchNormalizationQuantizedTanhFunctionTemplate):
        def __init__(self):
            super().__init__()
            self.include_header = [*bn_include_list, f"nnet_utils/{HEADER}"]

        def format(self, node):
            if "direction" not in node.weights:
                return super().format(node)
            p = self._default_function_params(node)
            t, d = node.get_weights("threshold"), node.get_weights("direction")
            if node.model.config.get_config_value("IOType") == "io_stream":
                return (f"nnet::hetq_threshold_stream<{p['input_t']}, {p['output_t']}, "
                        f"{t.type.name}, {d.type.name}, {p['config']}>({p['input']}, "
                        f"{p['output']}, {t.name}, {d.name});")
            return (f"nnet::hetq_threshold<{p['input_t']}, {t.type.name}, {d.type.name}, "
                    f"{p['config']}>({p['input']}, {p['output']}, {t.name}, {d.name});")

    class HetqRPReLUConfig(LayerConfigTemplate):
        def __init__(self):
            super().__init__(_rprelu_layer())

        def format(self, node):
            p = self._default_config_params(node)
            return (f"struct config{p['index']} {{\n"
                    f"    static const unsigned n_in = {node.get_attr('n_in')};\n"
                    f"    static const unsigned n_chan = {node.get_attr('n_chan')};\n"
                    f"    typedef {node.types['shift_t'].name} shift_t;\n"
                    f"    typedef {node.types['accum_t'].name} accum_t;\n}};\n")

    class HetqRPReLUFunction(FunctionCallTemplate):
        def __init__(self):
            super().__init__(_rprelu_layer(), include_header=[f"nnet_utils/{HEADER}"])

        def format(self, node):
            if node.model.config.get_config_value("IOType") != "io_stream":
                raise HlsError(f"hls: RPReLU '{node.name}' needs io_stream")
            p = self._default_function_params(node)
            w = [node.get_weights(k) for k in ("gamma", "slope", "zeta")]
            return (f"nnet::hetq_rprelu_stream<{p['input_t']}, {p['output_t']}, "
                    f"{', '.join(v.type.name for v in w)}, {p['config']}>({p['input']}, "
                    f"{p['output']}, {', '.join(v.name for v in w)});")

    return [HetqDenseConfig, HetqConv2DConfig, HetqPointwiseConv2DConfig, HetqDenseFunction,
            HetqConv2DFunction, HetqPointwiseConv2DFunction, HetqThresholdFunction,
            HetqRPReLUConfig, HetqRPReLUFunction]


POOL_OP = "GlobalAveragePoolNHWC"


def _global_pool_layer(node, input_names, input_shapes, graph) -> dict:
    """hls4ml's layer for hetq's ``GlobalAveragePoolNHWC`` ONNX node (see
    :func:`flow.hw.hls.global_pools`): hls4ml's own global average pool, over the H x W of an
    NHWC tensor (hls4ml's ``GlobalAveragePool`` handler reads NCHW shapes)."""
    _, h, w, c = input_shapes[0]
    return {"name": node.name, "class_name": "GlobalAveragePooling2D",
            "inputs": list(input_names[:1]), "outputs": list(node.output),
            "data_format": "channels_last", "n_out": 1, "pad_left": 0, "pad_right": 0,
            "stride": 0, "n_filt": c, "in_height": h, "in_width": w}


RPRELU = "HetqRPReLU"
REPEAT = "HetqRepeat"


@functools.cache
def _rprelu_layer():
    """hls4ml's layer class for hetq's RPReLU (made once: hls4ml keys templates by class)."""
    from hls4ml.model.attributes import Attribute, TypeAttribute, WeightAttribute
    from hls4ml.model.layers import Layer

    class HetqRPReLU(Layer):
        """``y = prelu(x - gamma, slope) + zeta`` per channel (a binary ResNet's RPReLU)."""

        _expected_attributes = [
            Attribute("n_in"), Attribute("n_chan"),
            WeightAttribute("gamma"), WeightAttribute("slope"), WeightAttribute("zeta"),
            TypeAttribute("gamma"), TypeAttribute("slope"), TypeAttribute("zeta"),
        ]

        def initialize(self) -> None:
            inp = self.get_input_variable()
            self.add_output_variable(inp.shape)
            for name, var in (("gamma", "g"), ("slope", "sl"), ("zeta", "z")):
                self.add_weights_variable(name=name, var_name=f"{var}{{index}}",
                                          data=np.asarray(self.get_attr(f"{name}_data")))

    return HetqRPReLU


def _rprelu_handler(node, input_names, input_shapes, graph) -> dict:
    """hls4ml's layer for hetq's ``HetqRPReLU`` ONNX node (NHWC, after
    :func:`flow.hw.hls.nhwc_chains`; its parameters are tensor attributes there)."""
    from onnx import numpy_helper
    attrs = {a.name: a for a in node.attribute}
    if attrs.get("data_layout") is None or attrs["data_layout"].s != b"NHWC":
        raise HlsError(f"hls: RPReLU '{node.name}' is not channels-last")
    layer = {"name": node.name, "class_name": RPRELU, "inputs": list(input_names[:1]),
             "outputs": list(node.output), "n_in": int(np.prod(input_shapes[0][1:])),
             "n_chan": int(input_shapes[0][-1])}
    for name in ("gamma", "slope", "zeta"):
        layer[f"{name}_data"] = numpy_helper.to_array(attrs[name].t).astype(np.float64)
    return layer


def _repeat_handler(node, input_names, input_shapes, graph) -> dict:
    """hls4ml's concatenation of a tensor with itself for hetq's ``HetqRepeat`` node (twice,
    channels last)."""
    times = next(a.i for a in node.attribute if a.name == "times")
    layout = next((a.s for a in node.attribute if a.name == "data_layout"), b"NCHW")
    if times != 2 or layout != b"NHWC":
        raise HlsError(f"hls: channel repetition '{node.name}' x{times} ({layout.decode()}): "
                       f"hls4ml concatenates two channels-last tensors only")
    return {"name": node.name, "class_name": "Concatenate", "op": "concatenate3d",
            "inputs": [input_names[0]] * 2, "outputs": list(node.output), "axis": 3,
            "hetq_repeat": True}


def register() -> None:
    """Register the pass, templates, header and the ONNX handler of hetq's global average pool
    with hls4ml (once)."""
    import hls4ml
    from hls4ml.converters.onnx_to_hls import (
        get_supported_onnx_layers,
        register_onnx_layer_handler,
    )
    from hls4ml.model.layers import register_layer
    for op, handler in ((POOL_OP, _global_pool_layer), (RPRELU, _rprelu_handler),
                        (REPEAT, _repeat_handler)):
        if op not in get_supported_onnx_layers():
            register_onnx_layer_handler(op, handler)
    register_layer(RPRELU, _rprelu_layer())
    backend = hls4ml.backends.get_backend("Vivado")
    if getattr(backend, "_hetq_registered", False):
        return
    backend.register_pass(PASS, _make_pass(), flow="vivado:optimize")
    for t in _make_templates():
        backend.register_template(t)
    for name in ("Vivado", "Vitis"):    # each backend's writer copies its own sources
        hls4ml.backends.get_backend(name).register_source(header_path())
    backend._hetq_registered = True
