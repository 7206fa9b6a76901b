"""The RTL accelerator of an integer network: its dataflow stages, folding and weight layout.

:func:`design` turns the integer network (:mod:`flow.core.ir`) and its memory image into a list of
stages, one per library module of ``rtl/`` (``mvu``, ``requant``, ``threshold_unit``,
``affine_unit``, ``maxpool``), connected by valid/ready streams. Feature maps stream in (row,
column, channel) order, so a convolution's fan-in is walked as (kernel row, kernel column,
channel) and a dense layer after a flatten sees (row, column, channel) instead of PyTorch's
(channel, row, column):
the weight layout absorbs both permutations, and :class:`Layout` records them so any stored bit of
the software image can be located in RTL (and back).

A matrix-vector unit with PE x SIMD lanes keeps its weights in one memory of NF x SF words,
NF = out / PE, SF = fan-in / SIMD; word ``nf * SF + sf`` holds, in lane ``pe * SIMD + s``, the
weight of output ``nf * PE + pe`` and RTL fan-in position ``sf * SIMD + s``, each lane the image's
stored word verbatim (n bits, or n+2 with the MSB triplicated). Biases, thresholds and threshold
directions, and the multipliers and offsets of an affine batch-norm, live in NF words of PE lanes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from flow.core.config import FoldConfig, RtlConfig
from flow.core.errors import ConfigError, PlanError
from flow.core.image import MemoryImage
from flow.core.ir import IntNetwork, Node
from flow.core.layout import Layout, signed_bits


@dataclass
class Stage:
    """One module instance of the accelerator top level."""

    name: str                 # instance name
    module: str               # rtl/ module
    params: dict              # SystemVerilog parameters (ints, or strings for files)
    in_bits: int              # stream element bits in and out, lanes in and out
    in_lanes: int
    out_bits: int
    out_lanes: int
    layer: str | None = None
    cycles: int = 0           # engine cycles per image (mvu only)
    info: dict = field(default_factory=dict)


@dataclass
class Design:
    """The whole accelerator: stages in stream order, memory layouts, and its I/O formats."""

    arch: str
    stages: list[Stage]
    layouts: dict[str, Layout]
    in_elems: int
    in_bits: int
    num_classes: int
    out_bits: int
    out_lanes: int

    def analytic(self) -> dict:
        """Analytic cycles: latency = input fill + sum of layer cycles + 2 per layer, II = max."""
        cyc = {s.layer: s.cycles for s in self.stages if s.module == "mvu"}
        fill = self.in_elems + 2 * len(cyc)
        return {"layer_cycles": cyc, "fill_cycles": fill,
                "latency_cycles": fill + sum(cyc.values()),
                "ii_cycles": max([self.in_elems, *cyc.values()])}


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def choose_folding(out: int, cin: int, k: int, pixels: int, target: int) -> tuple[int, int]:
    """Smallest PE x SIMD (PE | out, SIMD | cin) whose cycles meet ``target``; else the fastest.

    Ties go to more SIMD (input parallelism first, as FINN folds).
    """
    best = None
    for pe in _divisors(out):
        for simd in _divisors(cin):
            cyc = pixels * (out // pe) * (k * k * cin // simd)
            key = (cyc > target, pe * simd if cyc <= target else -pe * simd, -simd)
            if best is None or key < best[0]:
                best = (key, pe, simd)
    return best[1], best[2]


def _check_fold(layer: str, f: FoldConfig, out: int, cin: int) -> None:
    """Check the folding ``f`` of ``layer``: PE must divide its ``out`` output channels and SIMD
    its ``cin`` input channels, else ConfigError naming ``rtl.folding.<layer>.pe`` or ``.simd``."""
    if out % f.pe:
        raise ConfigError(f"rtl.folding.{layer}.pe: {f.pe} does not divide the layer's "
                          f"{out} output channels")
    if cin % f.simd:
        raise ConfigError(f"rtl.folding.{layer}.simd: {f.simd} does not divide the layer's "
                          f"{cin} input channels")


def check_folding(cfg: RtlConfig, net: IntNetwork) -> None:
    """Check ``cfg.folding`` against ``net`` without building the design (so also for networks
    the RTL generator does not support): every named layer exists, and its PE divides the
    layer's output channels and its SIMD the input channels (a conv's channels, a dense layer's
    fan-in). Raises :class:`~flow.core.errors.ConfigError` naming ``rtl.folding.<layer>.pe`` or
    ``.simd`` and the value, or the unknown layer."""
    known = net.layers()
    for name in cfg.folding:
        if name not in known:
            raise ConfigError(f"rtl.folding: unknown layer '{name}' "
                              f"(layers: {', '.join(known)})")
    for node in net.nodes:
        if node.op in ("conv", "dense"):
            w = net.params[node.attrs["weight"]]
            f = cfg.folding.get(w.layer)
            if f is not None:           # weights (out, in[, kh, kw]); groups = 1
                _check_fold(w.layer, f, int(w.codes.shape[0]), int(w.codes.shape[1]))


class _Builder:
    def __init__(self, net: IntNetwork, image: MemoryImage, cfg: RtlConfig) -> None:
        self.net, self.image, self.cfg = net, image, cfg
        self.stages: list[Stage] = []
        self.layouts: dict[str, Layout] = {}
        c, h, w = net.input_shape
        self.shape = (h, w, c)            # current feature map (H, W, C)
        self.flat_from: tuple[int, int, int] | None = None   # (C, H, W) before a flatten
        inp = net.nodes[0]
        self.bits, self.signed, self.bipolar = inp.attrs["bits"], inp.attrs["signed"], False
        self.lanes = 1
        self.frac = inp.frac
        self.acc: Node | None = None
        self.mvu_stage: Stage | None = None
        check_folding(cfg, net)

    def build(self) -> Design:
        for node in self.net.nodes[1:]:
            handler = getattr(self, f"_op_{node.op}", None)
            if handler is None:
                raise PlanError(f"rtl: node '{node.name}' ({node.op}) has no RTL module; the RTL "
                                f"generator supports conv, dense, requant, threshold, affine, "
                                f"maxpool and flatten (networks mlp, cnn, bmlp, ZOBNN bdorefa "
                                f"and their like)")
            handler(node)
        last = self.stages[-1]
        c, h, w = self.net.input_shape
        return Design(self.net.arch, self.stages, self.layouts, c * h * w,
                      self.net.nodes[0].attrs["bits"], self.net.num_classes, last.out_bits,
                      last.out_lanes)

    # -- ops ------------------------------------------------------------------------------------
    def _op_flatten(self, node: Node) -> None:
        h, w, c = self.shape
        if h * w > 1:
            self.flat_from = (c, h, w)
        self.shape = (1, 1, h * w * c)

    def _op_conv(self, node: Node) -> None:
        self._mvu(node)

    def _op_dense(self, node: Node) -> None:
        self._mvu(node)

    def _mvu(self, node: Node) -> None:
        a = node.attrs
        wmem = self.image.memory(a["weight"])
        wfmt = wmem.fmt
        out = wmem.shape[0]
        h, w, c = self.shape
        if node.op == "conv":
            k, stride, pad = a["k"], a["stride"], a["pad"]
            oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
            cin = wmem.shape[1]
            # RTL fan-in (kh, kw, c) -> PyTorch (c, kh, kw)
            kh, kw, cc = np.meshgrid(np.arange(k), np.arange(k), np.arange(cin), indexing="ij")
            perm = (cc * k * k + kh * k + kw).reshape(-1)
        else:
            k, stride, pad, oh, ow = 1, 1, 0, 1, 1
            cin = h * w * c
            if self.flat_from is not None:
                fc, fh, fw = self.flat_from
                hh, ww, ch = np.meshgrid(np.arange(fh), np.arange(fw), np.arange(fc),
                                         indexing="ij")
                perm = (ch * fh * fw + hh * fw + ww).reshape(-1)
            else:
                perm = np.arange(cin)
            h, w, c = 1, 1, cin
        fanin = k * k * cin
        if fanin != int(math.prod(wmem.shape[1:])):
            raise PlanError(f"rtl: layer '{wmem.layer}' fan-in {fanin} does not match its "
                            f"weights {wmem.shape}")
        pe, simd = self._folding(wmem.layer, out, c, k, oh * ow)
        nf, sf = out // pe, fanin // simd
        if wfmt.bipolar and self.bipolar:
            mode = 2
        elif wfmt.bipolar:
            mode = 1
        elif self.bipolar:
            raise PlanError(f"rtl: layer '{wmem.layer}' has bipolar inputs but fixed-point "
                            f"weights, which no RTL module computes")
        else:
            mode = 0
        acc_bits = signed_bits(node.lo, node.hi)
        inst = f"u_{wmem.layer.replace('.', '_')}"
        params = dict(H=h, W=w, C=c, K=k, STRIDE=stride, PAD=pad, OH=oh, OW=ow, OUT=out, PE=pe,
                      SIMD=simd, IN_LANES=self.lanes, ABITS=self.bits,
                      ASIGNED=int(self.signed), WBITS=wfmt.bits, TMR=int(wmem.protected),
                      MODE=mode, ACCBITS=acc_bits, HAS_BIAS=0, BBITS=16,
                      WEIGHT_FILE=f"mem/{wmem.name}.mem", BIAS_FILE="")
        self.layouts[wmem.name] = Layout(wmem.name, wmem.layer, "weight", f"{inst}.u_wmem.mem",
                                         nf * sf, pe * simd, wmem.width, pe, simd, sf, fanin,
                                         perm)
        if a.get("bias"):
            bmem = self.image.memory(a["bias"])
            params.update(HAS_BIAS=1, BBITS=bmem.width, BIAS_FILE=f"mem/{bmem.name}.mem")
            self.layouts[bmem.name] = Layout(bmem.name, bmem.layer, "bias",
                                             f"{inst}.g_bias.u_bias.mem", nf, pe, bmem.width,
                                             pe, 1, 1, 1)
        cycles = oh * ow * nf * sf
        st = Stage(inst, "mvu", params, self.bits, self.lanes, acc_bits, pe, wmem.layer, cycles,
                   {"macs": oh * ow * out * fanin, "pixels": oh * ow, "nf": nf, "sf": sf,
                    "pe": pe, "simd": simd, "mode": ("int", "binary-weight", "xnor")[mode]})
        self.stages.append(st)
        self.mvu_stage = st
        self.shape = (oh, ow, out)
        self.flat_from = None
        self.bits, self.signed, self.bipolar, self.lanes = acc_bits, True, False, pe
        self.acc = node

    def _op_requant(self, node: Node) -> None:
        src = self.net.node(node.inputs[0])
        shift = node.frac - src.frac
        out_bits = node.attrs["bits"]
        inst = f"{self.mvu_stage.name}_rq"
        params = dict(LANES=self.lanes, INBITS=self.bits, OUTBITS=out_bits, SHIFT=shift,
                      LO=node.lo, HI=node.hi)
        self.stages.append(Stage(inst, "requant", params, self.bits, self.lanes, out_bits,
                                 self.lanes, self.mvu_stage.layer))
        self.bits, self.signed = out_bits, bool(node.attrs["signed"])

    def _op_threshold(self, node: Node) -> None:
        a = node.attrs
        tmem, dmem = self.image.memory(a["threshold"]), self.image.memory(a["direction"])
        pe = self.lanes
        nf = tmem.depth // pe
        inst = f"{self.mvu_stage.name}_thr"
        params = dict(LANES=pe, NF=nf, ACCBITS=self.bits, TBITS=tmem.width,
                      THR_FILE=f"mem/{tmem.name}.mem", DIR_FILE=f"mem/{dmem.name}.mem")
        for m, sub in ((tmem, "u_thr"), (dmem, "u_dir")):
            self.layouts[m.name] = Layout(m.name, m.layer, m.kind, f"{inst}.{sub}.mem", nf, pe,
                                          m.width, pe, 1, 1, 1)
        self.stages.append(Stage(inst, "threshold_unit", params, self.bits, pe, 1, pe,
                                 self.mvu_stage.layer))
        self.bits, self.signed, self.bipolar = 1, False, True

    def _op_affine(self, node: Node) -> None:
        a = node.attrs
        smem, omem = self.image.memory(a["scale"]), self.image.memory(a["offset"])
        pe = self.lanes
        nf = smem.depth // pe
        out_bits = signed_bits(node.lo, node.hi)
        inst = f"{self.mvu_stage.name}_aff"
        params = dict(LANES=pe, NF=nf, INBITS=self.bits, MBITS=smem.width, OBITS=omem.width,
                      OUTBITS=out_bits, SCALE_FILE=f"mem/{smem.name}.mem",
                      OFFSET_FILE=f"mem/{omem.name}.mem")
        for m, sub in ((smem, "u_scale"), (omem, "u_offset")):
            self.layouts[m.name] = Layout(m.name, m.layer, m.kind, f"{inst}.{sub}.mem", nf, pe,
                                          m.width, pe, 1, 1, 1)
        self.stages.append(Stage(inst, "affine_unit", params, self.bits, pe, out_bits, pe,
                                 self.mvu_stage.layer))
        self.bits, self.signed = out_bits, True

    def _op_maxpool(self, node: Node) -> None:
        h, w, c = self.shape
        k = node.attrs["k"]
        inst = f"{self.mvu_stage.name}_pool"
        params = dict(H=h, W=w, C=c, K=k, LANES=self.lanes, BITS=self.bits,
                      SIGNED=int(self.signed))
        self.stages.append(Stage(inst, "maxpool", params, self.bits, self.lanes, self.bits,
                                 self.lanes, self.mvu_stage.layer))
        self.shape = (h // k, w // k, c)

    # -- folding --------------------------------------------------------------------------------
    def _folding(self, layer: str, out: int, cin: int, k: int, pixels: int) -> tuple[int, int]:
        f = self.cfg.folding.get(layer)
        if f is None:
            return choose_folding(out, cin, k, pixels, self.cfg.target_cycles)
        _check_fold(layer, f, out, cin)
        return f.pe, f.simd


def design(net: IntNetwork, image: MemoryImage, cfg: RtlConfig | None = None) -> Design:
    """The accelerator for ``net`` storing the words of ``image`` (protection included)."""
    return _Builder(net, image, cfg or RtlConfig()).build()
