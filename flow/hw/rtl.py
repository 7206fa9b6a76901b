"""The RTL accelerator of an integer network: its dataflow stages, folding and weight layout.

:func:`design` turns the integer network (:mod:`flow.core.ir`) and its memory image into a list of
stages, one per library module of ``rtl/`` (``mvu``, ``requant``, ``threshold_unit``,
``affine_unit``, ``rprelu_unit``, ``pool2d`` (max or sum), ``channel_repeat``, ``residual_add``,
``sum_pool``; ``stream_fork``, ``frame_fifo`` and ``stream_lanes`` around residual blocks),
connected by valid/ready streams: a node that two nodes read feeds a fork, and the shorter branch
of a residual block waits in a FIFO of whole images. Feature maps stream in (row, column,
channel) order, so a convolution's fan-in is walked as (kernel row, kernel column, channel) and a
dense layer after a flatten sees (row, column, channel) instead of PyTorch's (channel, row,
column):
the weight layout absorbs both permutations, and :class:`Layout` records them so any stored bit of
the software image can be located in RTL (and back).

A matrix-vector unit with PE x SIMD lanes keeps its weights in one memory of NF x SF words,
NF = out / PE, SF = fan-in / SIMD; word ``nf * SF + sf`` holds, in lane ``pe * SIMD + s``, the
weight of output ``nf * PE + pe`` and RTL fan-in position ``sf * SIMD + s``, each lane the image's
stored word verbatim (n bits, or n+2 with the MSB triplicated). Biases, thresholds and threshold
directions, the multipliers and offsets of an affine batch-norm and an RPReLU's shift, slope and
offset live in NF words of PE lanes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

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
    ports: dict[str, str] = field(default_factory=dict)   # port prefix -> stream wire
    clocked: bool = True      # has clk and rst ports


@dataclass
class Design:
    """The whole accelerator: stages, the streams between them, memory layouts, I/O formats.

    ``streams`` maps each internal stream wire to its data width (the input stream is the top
    level's ``in`` port); ``out_stream`` is the wire the top level's output reads;
    ``critical_path`` lists the matrix-vector layers on the longest path from input to output
    (every layer for a chain; a residual block's shortcut runs beside its main path)."""

    arch: str
    stages: list[Stage]
    layouts: dict[str, Layout]
    in_elems: int
    in_bits: int
    num_classes: int
    out_bits: int
    out_lanes: int
    streams: dict[str, int] = field(default_factory=dict)
    out_stream: str = ""
    critical_path: list[str] = field(default_factory=list)

    def analytic(self) -> dict:
        """Analytic cycles: every layer buffers its whole input before it computes, so latency
        = input fill + the layer cycles along the critical path + 2 per layer there; II = the
        slowest stage."""
        cyc = {s.layer: s.cycles for s in self.stages if s.module == "mvu"}
        path = self.critical_path or list(cyc)
        fill = self.in_elems + 2 * len(path)
        return {"layer_cycles": cyc, "fill_cycles": fill,
                "latency_cycles": fill + sum(cyc[layer] for layer in path),
                "ii_cycles": max([self.in_elems, *cyc.values()]),
                "critical_path": path}


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


@dataclass
class _Stream:
    """A valid/ready stream of the top level as the builder follows it: wire, feature-map shape
    (H, W, C), element format, lanes per beat, and where it comes from."""

    wire: str
    shape: tuple[int, int, int]
    bits: int
    signed: bool
    bipolar: bool
    lanes: int
    owner: str                # instance-name stem of the stages that follow (last mvu or add)
    layer: str | None
    flat_from: tuple[int, int, int] | None = None   # (C, H, W) before a flatten
    path: tuple[str, ...] = ()      # mvu layers on the longest path from the input
    cost: int = 0                   # their cycles, + 2 each

    def beats(self) -> int:
        """Beats per image."""
        return math.prod(self.shape) // self.lanes


def _name(node: Node) -> str:
    return "u_" + node.name.replace(".", "_")


class _Builder:
    def __init__(self, net: IntNetwork, image: MemoryImage, cfg: RtlConfig) -> None:
        self.net, self.image, self.cfg = net, image, cfg
        self.stages: list[Stage] = []
        self.layouts: dict[str, Layout] = {}
        self.streams: dict[str, int] = {}
        self.readers = {n.name: 0 for n in net.nodes}
        for n in net.nodes:
            for i in n.inputs:
                self.readers[i] += 1
        self.pending: dict[str, list[_Stream]] = {}   # a node's output streams, per reader
        self.names: set[str] = set()
        check_folding(cfg, net)

    def build(self) -> Design:
        inp = self.net.nodes[0]
        c, h, w = self.net.input_shape
        self._publish(inp, _Stream("in", (h, w, c), inp.attrs["bits"], inp.attrs["signed"],
                                   False, 1, "u_input", None))
        for node in self.net.nodes[1:]:
            handler = getattr(self, f"_op_{node.op}", None)
            if handler is None:
                raise PlanError(f"rtl: node '{node.name}' ({node.op}) has no RTL module; the RTL "
                                f"generator supports conv, dense, requant, threshold, affine, "
                                f"rprelu, maxpool, avgpool, repeat, flatten, add and sumpool (for "
                                f"example the zoo's mlp, cnn, bmlp and resnet18, and ZOBNN "
                                f"bdorefa and breact)")
            self._publish(node, handler(node, self._take(node.inputs[0])))
        out = self.pending[self.net.nodes[-1].name][0]
        return Design(self.net.arch, self.stages, self.layouts, c * h * w, inp.attrs["bits"],
                      self.net.num_classes, out.bits, out.lanes, self.streams, out.wire,
                      list(out.path))

    # -- streams --------------------------------------------------------------------------------
    def _unique(self, name: str) -> str:
        k, base = 1, name
        while name in self.names:
            k += 1
            name = f"{base}{k}"
        self.names.add(name)
        return name

    def _stage(self, st: Stage, **outs: _Stream) -> None:
        """Append ``st``, declaring the stream wires of its outputs."""
        self.stages.append(st)
        for port, s in outs.items():
            st.ports[port] = s.wire
            self.streams[s.wire] = s.bits * s.lanes

    def _take(self, name: str) -> _Stream:
        """The next unread output stream of node ``name`` (one per reader, in reader order)."""
        return self.pending[name].pop(0)

    def _publish(self, node: Node, s: _Stream) -> None:
        """Make ``s`` the output of ``node``: forked into one stream per reader."""
        outs = [s]
        while len(outs) < max(1, self.readers[node.name]):
            src = outs.pop()
            inst = self._unique(f"{src.owner}_fork")
            a, b = replace(src, wire=f"{inst}_a"), replace(src, wire=f"{inst}_b")
            st = Stage(inst, "stream_fork", {"WIDTH": src.bits * src.lanes}, src.bits,
                       src.lanes, src.bits, src.lanes, src.layer, clocked=False,
                       ports={"in": src.wire})
            self._stage(st, a=a, b=b)
            outs += [a, b]
        self.pending[node.name] = outs

    def _through(self, s: _Stream, inst: str, module: str, params: dict, *, bits: int | None = None,
                 lanes: int | None = None, clocked: bool = True, **info) -> _Stream:
        """Stream ``s`` through a one-input, one-output stage; the stage's output stream."""
        out = replace(s, wire=f"{inst}_out", bits=s.bits if bits is None else bits,
                      lanes=s.lanes if lanes is None else lanes)
        st = Stage(inst, module, params, s.bits, s.lanes, out.bits, out.lanes, s.layer,
                   info=info, clocked=clocked, ports={"in": s.wire})
        self._stage(st, out=out)
        return out

    def _lanes(self, s: _Stream, lanes: int, stem: str) -> _Stream:
        """``s`` converted to ``lanes`` per beat (through their gcd if neither divides the
        other)."""
        for to in dict.fromkeys((math.gcd(s.lanes, lanes), lanes)):
            if s.lanes != to:
                s = self._through(s, self._unique(f"{stem}_lanes"), "stream_lanes",
                                  dict(IN_LANES=s.lanes, OUT_LANES=to, BITS=s.bits), lanes=to)
        return s

    # -- ops ------------------------------------------------------------------------------------
    def _op_flatten(self, node: Node, s: _Stream) -> _Stream:
        h, w, c = s.shape
        return replace(s, shape=(1, 1, h * w * c), flat_from=(c, h, w) if h * w > 1 else None)

    def _op_conv(self, node: Node, s: _Stream) -> _Stream:
        return self._mvu(node, s)

    def _op_dense(self, node: Node, s: _Stream) -> _Stream:
        return self._mvu(node, s)

    def _mvu(self, node: Node, s: _Stream) -> _Stream:
        a = node.attrs
        wmem = self.image.memory(a["weight"])
        wfmt = wmem.fmt
        out = wmem.shape[0]
        h, w, c = s.shape
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
            if s.flat_from is not None:
                fc, fh, fw = s.flat_from
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
        if wfmt.bipolar and s.bipolar:
            mode = 2
        elif wfmt.bipolar:
            mode = 1
        elif s.bipolar:
            raise PlanError(f"rtl: layer '{wmem.layer}' has bipolar inputs but fixed-point "
                            f"weights, which no RTL module computes")
        else:
            mode = 0
        acc_bits = signed_bits(node.lo, node.hi)
        inst = self._unique(f"u_{wmem.layer.replace('.', '_')}")
        params = dict(H=h, W=w, C=c, K=k, STRIDE=stride, PAD=pad, OH=oh, OW=ow, OUT=out, PE=pe,
                      SIMD=simd, IN_LANES=s.lanes, ABITS=s.bits,
                      ASIGNED=int(s.signed), WBITS=wfmt.bits, TMR=int(wmem.protected),
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
        res = _Stream(f"{inst}_out", (oh, ow, out), acc_bits, True, False, pe, inst, wmem.layer,
                      None, s.path + (wmem.layer,), s.cost + cycles + 2)
        st = Stage(inst, "mvu", params, s.bits, s.lanes, acc_bits, pe, wmem.layer, cycles,
                   {"macs": oh * ow * out * fanin, "pixels": oh * ow, "nf": nf, "sf": sf,
                    "pe": pe, "simd": simd, "mode": ("int", "binary-weight", "xnor")[mode]},
                   ports={"in": s.wire})
        self._stage(st, out=res)
        return res

    def _op_requant(self, node: Node, s: _Stream) -> _Stream:
        src = self.net.node(node.inputs[0])
        out_bits = node.attrs["bits"]
        params = dict(LANES=s.lanes, INBITS=s.bits, OUTBITS=out_bits,
                      SHIFT=node.frac - src.frac, LO=node.lo, HI=node.hi)
        out = self._through(s, self._unique(f"{s.owner}_rq"), "requant", params, bits=out_bits,
                            clocked=False)
        return replace(out, signed=bool(node.attrs["signed"]))

    def _op_threshold(self, node: Node, s: _Stream) -> _Stream:
        a = node.attrs
        tmem, dmem = self.image.memory(a["threshold"]), self.image.memory(a["direction"])
        pe = s.lanes
        nf = tmem.depth // pe
        inst = self._unique(f"{s.owner}_thr")
        params = dict(LANES=pe, NF=nf, ACCBITS=s.bits, TBITS=tmem.width,
                      THR_FILE=f"mem/{tmem.name}.mem", DIR_FILE=f"mem/{dmem.name}.mem")
        for m, sub in ((tmem, "u_thr"), (dmem, "u_dir")):
            self.layouts[m.name] = Layout(m.name, m.layer, m.kind, f"{inst}.{sub}.mem", nf, pe,
                                          m.width, pe, 1, 1, 1)
        out = self._through(s, inst, "threshold_unit", params, bits=1)
        return replace(out, signed=False, bipolar=True)

    def _op_affine(self, node: Node, s: _Stream) -> _Stream:
        a = node.attrs
        smem, omem = self.image.memory(a["scale"]), self.image.memory(a["offset"])
        pe = s.lanes
        nf = smem.depth // pe
        out_bits = signed_bits(node.lo, node.hi)
        inst = self._unique(f"{s.owner}_aff")
        params = dict(LANES=pe, NF=nf, INBITS=s.bits, MBITS=smem.width, OBITS=omem.width,
                      OUTBITS=out_bits, SCALE_FILE=f"mem/{smem.name}.mem",
                      OFFSET_FILE=f"mem/{omem.name}.mem")
        for m, sub in ((smem, "u_scale"), (omem, "u_offset")):
            self.layouts[m.name] = Layout(m.name, m.layer, m.kind, f"{inst}.{sub}.mem", nf, pe,
                                          m.width, pe, 1, 1, 1)
        out = self._through(s, inst, "affine_unit", params, bits=out_bits)
        return replace(out, signed=True)

    def _op_rprelu(self, node: Node, s: _Stream) -> _Stream:
        a = node.attrs
        mems = {key: self.image.memory(a[key]) for key in ("shift", "slope", "offset")}
        pe = s.lanes
        nf = mems["shift"].depth // pe
        out_bits = signed_bits(node.lo, node.hi)
        inst = self._unique(_name(node))
        params = dict(LANES=pe, NF=nf, INBITS=s.bits, GBITS=mems["shift"].width,
                      SBITS=mems["slope"].width, ZBITS=mems["offset"].width, P=a["p"],
                      OUTBITS=out_bits, SHIFT_FILE=f"mem/{mems['shift'].name}.mem",
                      SLOPE_FILE=f"mem/{mems['slope'].name}.mem",
                      OFFSET_FILE=f"mem/{mems['offset'].name}.mem")
        for key, m in mems.items():
            self.layouts[m.name] = Layout(m.name, m.layer, m.kind, f"{inst}.u_{key}.mem", nf,
                                          pe, m.width, pe, 1, 1, 1)
        out = self._through(s, inst, "rprelu_unit", params, bits=out_bits)
        return replace(out, signed=True)

    def _op_avgpool(self, node: Node, s: _Stream) -> _Stream:
        h, w, c = s.shape
        k = node.attrs["k"]
        out_bits = signed_bits(node.lo, node.hi)
        params = dict(H=h, W=w, C=c, K=k, LANES=s.lanes, BITS=s.bits, SIGNED=int(s.signed),
                      SUM=1, OUTBITS=out_bits)
        out = self._through(s, self._unique(_name(node)), "pool2d", params, bits=out_bits)
        return replace(out, shape=(h // k, w // k, c), signed=True)

    def _op_repeat(self, node: Node, s: _Stream) -> _Stream:
        h, w, c = s.shape
        t = node.attrs["times"]
        inst = self._unique(_name(node))
        out = replace(s, wire=f"{inst}_out", shape=(h, w, c * t))
        st = Stage(inst, "channel_repeat", dict(C=c, TIMES=t, LANES=s.lanes, BITS=s.bits),
                   s.bits, s.lanes, s.bits, s.lanes, s.layer, ports={"in": s.wire})
        self._stage(st, out=out)
        return out

    def _op_maxpool(self, node: Node, s: _Stream) -> _Stream:
        h, w, c = s.shape
        k = node.attrs["k"]
        params = dict(H=h, W=w, C=c, K=k, LANES=s.lanes, BITS=s.bits, SIGNED=int(s.signed))
        out = self._through(s, self._unique(f"{s.owner}_pool"), "pool2d", params)
        return replace(out, shape=(h // k, w // k, c))

    def _op_sumpool(self, node: Node, s: _Stream) -> _Stream:
        h, w, c = s.shape
        out_bits = signed_bits(node.lo, node.hi)
        inst = self._unique(_name(node))
        params = dict(H=h, W=w, C=c, LANES=s.lanes, INBITS=s.bits, SIGNED=int(s.signed),
                      OUTBITS=out_bits)
        out = self._through(s, inst, "sum_pool", params, bits=out_bits)
        return replace(out, shape=(1, 1, c), signed=True, owner=inst, flat_from=None)

    def _op_add(self, node: Node, a: _Stream) -> _Stream:
        b = self._take(node.inputs[1])
        inst = self._unique(_name(node))
        fa, fb = (self.net.node(i).frac for i in node.inputs)
        if a.shape != b.shape or a.bipolar or b.bipolar or node.frac < max(fa, fb):
            raise PlanError(f"rtl: add '{node.name}' of {a.shape} and {b.shape} maps (fraction "
                            f"bits {fa}, {fb} -> {node.frac}) has no RTL module; it adds two "
                            f"fixed-point maps of one shape, aligned by left shifts")
        # the branch that arrives first waits in a FIFO: one image, and one more per initiation
        # interval by which the other branch is longer (its images in flight); with the
        # slowest layer so far as the interval, since the design's is not known yet
        short, side = (a, "a") if a.cost < b.cost else (b, "b")
        ii = max([math.prod(self.net.input_shape), *(st.cycles for st in self.stages)])
        frames = 1 + abs(a.cost - b.cost) // ii
        fifo = self._through(short, self._unique(f"{inst}_{side}_fifo"), "frame_fifo",
                             dict(WIDTH=short.bits * short.lanes, DEPTH=frames * short.beats()),
                             frames=frames)
        if side == "a":
            a = fifo
        else:
            b = fifo
        b = self._lanes(b, a.lanes, inst)
        out_bits = signed_bits(node.lo, node.hi)
        params = dict(LANES=a.lanes, ABITS=a.bits, ASIGNED=int(a.signed), BBITS=b.bits,
                      BSIGNED=int(b.signed), ASHIFT=node.frac - fa, BSHIFT=node.frac - fb,
                      OUTBITS=out_bits)
        longest = a if a.cost >= b.cost else b
        out = _Stream(f"{inst}_out", a.shape, out_bits, True, False, a.lanes, inst, None, None,
                      longest.path, longest.cost)
        st = Stage(inst, "residual_add", params, a.bits, a.lanes, out_bits, a.lanes, None,
                   clocked=False, ports={"a": a.wire, "b": b.wire})
        self._stage(st, out=out)
        return out

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
