"""Brevitas -> QONNX -> hls4ml: the HLS project of a run, its C simulation and fault replay.

It reads the run's QONNX graph (the Brevitas export of a trained run, or an imported file) and
follows the recipe that gives bit-exact C-sim (see FACTS.md): qonnx ``cleanup_model`` ->
``GemmToMatMul`` -> ``cleanup_model``, and ``ConvertToChannelsLastAndClean`` for convolutional
networks. hls4ml converts it with the
Resource strategy (weights in memories, reuse factor from the config), ``io_parallel`` for dense
networks and ``io_stream`` for convolutional ones, for the board's part and clock, with hetq's
extension (:mod:`flow.hw.hls_ext`) storing protected layers' weights as (n+2)-bit TMR words.

C-sim fault replay: a fault map changes stored words; the changed layers' ``weights/*.txt``
files are rewritten and the compiled library is reloaded (the C-sim loads the weights from the
text files when the library starts), so no recompilation is needed.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flow.core.errors import ConfigError
from flow.core.image import MemoryImage, decode
from flow.core.ir import IntNetwork
from flow.core.layout import signed_bits
from flow.hw.hls_ext import HlsError, register
from flow.hw.rtl import design
from flow.reliability.faults import FaultMap

BACKENDS = ("Vitis", "Vivado")


def hls_graph(qonnx_path: Path, path: Path, channels_last: bool):
    """The run's QONNX graph in the form hls4ml reads (FACTS.md): qonnx ``cleanup_model`` ->
    ``GemmToMatMul`` -> ``cleanup_model``, channels last for convolutional networks (then
    :func:`nhwc_chains`, :func:`rprelu_params`, :func:`global_pools`, :func:`bipolar_signs`);
    saved at ``path`` and returned as a ModelWrapper."""
    from qonnx.transformation.channels_last import ConvertToChannelsLastAndClean
    from qonnx.transformation.gemm_to_matmul import GemmToMatMul
    from qonnx.util.cleanup import cleanup_model

    from flow.nn.qonnx_graph import load
    m = cleanup_model(load(qonnx_path, "checkpoint"))
    with warnings.catch_warnings():     # harmless: Brevitas' Gemm nodes are plain version-9 ones
        warnings.filterwarnings("ignore", "The GemmToMatMul transformation only offers")
        m = cleanup_model(m.transform(GemmToMatMul()))
    if channels_last:
        m = cleanup_model(m.transform(ConvertToChannelsLastAndClean()))
        nhwc_chains(m)
        rprelu_params(m)
        global_pools(m)
        bipolar_signs(m)
    m.save(str(path))
    return m


TO_NCHW, TO_NHWC = [0, 3, 1, 2], [0, 2, 3, 1]
LAYOUT_OPS = ("HetqRPReLU", "HetqRepeat")      # hetq's operations with a data_layout


def _perm(node) -> list[int]:
    """A Transpose node's permutation."""
    from onnx import helper
    return list(next((helper.get_attribute_value(a) for a in node.attribute
                      if a.name == "perm"), []))


def global_pools(m) -> int:
    """Rewrite each global average pool of a channels-last graph in place. qonnx leaves
    ``Transpose(NHWC -> NCHW)`` before it, then ``ReduceMean`` over (H, W) (``x.mean((2, 3))``),
    which hls4ml 1.3.0 cannot convert, or ``GlobalAveragePool -> Flatten``
    (``nn.AdaptiveAvgPool2d(1)``), whose hls4ml layer reads NCHW shapes and averages with
    hls4ml's own types (not bit-exact). Either becomes one ``GlobalAveragePoolNHWC`` node
    (domain ``hetq``) from the NHWC tensor to the vector of channel means, which
    :mod:`flow.hw.hls_ext` registers with hls4ml's ONNX front end and computes exactly.
    Returns the number of pools rewritten."""
    from onnx import helper

    def attr(node, name, default):
        return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name),
                    default)

    def sole(tensor: str):
        users = m.find_consumers(tensor)
        return users[0] if len(users) == 1 else None

    count = 0
    for node in list(m.graph.node):
        tr = m.find_producer(node.input[0]) if node.input else None
        if tr is None or tr.op_type != "Transpose" or _perm(tr) != TO_NCHW:
            continue
        gone = [node]
        if node.op_type == "ReduceMean":
            axes = m.get_initializer(node.input[1]) if len(node.input) > 1 else None
            if axes is None or sorted(axes.tolist()) != [2, 3] or attr(node, "keepdims", 1):
                continue
            out = node.output[0]
        elif node.op_type == "GlobalAveragePool":
            flat = sole(node.output[0])
            if flat is None or flat.op_type != "Flatten" or attr(flat, "axis", 1) != 1:
                continue
            gone.append(flat)
            out = flat.output[0]
        else:
            continue
        at = list(m.graph.node).index(node)
        for g in gone:
            m.graph.node.remove(g)
        m.graph.node.insert(at, helper.make_node("GlobalAveragePoolNHWC", [tr.input[0]], [out],
                                                 name=node.name, domain="hetq"))
        if not m.find_consumers(tr.output[0]):
            m.graph.node.remove(tr)
        for name in node.input[1:]:
            if not m.find_consumers(name):
                m.graph.initializer.remove(next(i for i in m.graph.initializer
                                                if i.name == name))
        count += 1
    return count


def nhwc_chains(m) -> int:
    """Move each ``Transpose(NHWC -> NCHW)`` that qonnx's channels-last conversion leaves before
    operations it does not convert downstream through them, in place, so that they run on the
    channels-last tensor: hetq's own operations (``data_layout`` becomes ``NHWC``), ``Quant``
    with scalar parameters, and ``AveragePool`` (becomes the channels-last form hls4ml's front end
    reads). A transpose that meets a ``Transpose(NCHW -> NHWC)`` cancels with it; one that meets
    anything else stays before it (a global average pool: :func:`global_pools`). Returns the
    number of operations moved."""
    from onnx import helper

    def scalar_quant(node) -> bool:
        return node.op_type == "Quant" and all(
            m.get_initializer(i) is not None and m.get_initializer(i).size == 1
            for i in node.input[1:])

    def layout(node) -> bytes:
        return next((a.s for a in node.attribute if a.name == "data_layout"), b"NCHW")

    def movable(node) -> bool:
        return ((node.op_type in LAYOUT_OPS and layout(node) == b"NCHW")
                or scalar_quant(node)
                or (node.op_type == "AveragePool" and node.domain == "")
                or (node.op_type == "Transpose" and _perm(node) == TO_NHWC))

    moved, changed = 0, True
    while changed:
        changed = False
        for tr in list(m.graph.node):
            if tr.op_type != "Transpose" or _perm(tr) != TO_NCHW:
                continue
            users = m.find_consumers(tr.output[0])
            outputs = {o.name for o in m.graph.output}
            if not users or tr.output[0] in outputs or not all(movable(u) for u in users):
                continue
            x = tr.input[0]
            for u in users:
                if u.op_type == "Transpose":             # NHWC -> NCHW -> NHWC: nothing
                    for v in m.find_consumers(u.output[0]):
                        v.input[list(v.input).index(u.output[0])] = x
                    m.graph.node.remove(u)
                    continue
                n, c, h, w = m.get_tensor_shape(u.output[0])
                nhwc = f"{u.output[0]}_nhwc"
                m.set_tensor_shape(nhwc, [n, h, w, c])
                u.input[0] = x
                out = u.output[0]
                u.output[0] = nhwc
                if u.op_type in LAYOUT_OPS:
                    for a in [a for a in u.attribute if a.name == "data_layout"]:
                        u.attribute.remove(a)
                    u.attribute.append(helper.make_attribute("data_layout", "NHWC"))
                elif u.op_type == "AveragePool":
                    u.domain = "qonnx.custom_op.channels_last"
                back = helper.make_node("Transpose", [nhwc], [out], name=f"{u.name}_nchw",
                                        perm=TO_NCHW)
                m.graph.node.insert(list(m.graph.node).index(u) + 1, back)
                moved += 1
            m.graph.node.remove(tr)
            changed = True
    return moved


def rprelu_params(m) -> int:
    """Make the parameters of each ``HetqRPReLU`` node tensor attributes (``gamma``, ``slope``,
    ``zeta``) instead of initializer inputs, in place: hls4ml's front end turns every initializer
    into a layer of its own. Returns the number of nodes changed."""
    from onnx import helper, numpy_helper
    count = 0
    for node in m.graph.node:
        if node.op_type != "HetqRPReLU" or len(node.input) != 4:
            continue
        for key, name in zip(("gamma", "slope", "zeta"), list(node.input[1:])):
            node.attribute.append(helper.make_attribute(
                key, numpy_helper.from_array(m.get_initializer(name), key)))
        names = list(node.input[1:])
        del node.input[1:]
        for name in names:
            if not m.find_consumers(name):
                m.graph.initializer.remove(next(i for i in m.graph.initializer
                                                if i.name == name))
        count += 1
    return count


def bipolar_signs(m) -> int:
    """Move each sign (``BipolarQuant``) of a channels-last graph out from between the two
    transposes qonnx leaves around it (qonnx moves transposes through ``Quant`` but not through
    ``BipolarQuant``), in place, so that hls4ml sees batch-norm -> sign and merges them into its
    binary threshold layer. Returns the number of signs moved."""
    count = 0
    for node in list(m.graph.node):
        if node.op_type != "BipolarQuant" or m.get_initializer(node.input[0]) is not None:
            continue
        first, users = m.find_producer(node.input[0]), m.find_consumers(node.output[0])
        if (first is None or first.op_type != "Transpose" or _perm(first) != TO_NCHW
                or len(users) != 1 or users[0].op_type != "Transpose"
                or _perm(users[0]) != TO_NHWC):
            continue
        node.input[0], node.output[0] = first.input[0], users[0].output[0]
        m.graph.node.remove(users[0])
        if not m.find_consumers(first.output[0]):
            m.graph.node.remove(first)
        count += 1
    return count


def is_conv(net: IntNetwork) -> bool:
    """True if the network has convolutions (then hls4ml streams, channels last)."""
    return any(n.op == "conv" for n in net.nodes)


def hetq_info(net: IntNetwork, image: MemoryImage) -> dict:
    """What :mod:`flow.hw.hls_ext`'s pass needs: weight layers, binary thresholds, affine
    batch-norms and global average pools, each in network order. In a convolutional network the
    signs are streamed as -1/+1 (``signed_signs``), so that zero padding stays 0."""
    layers, thresholds, affines, pools, avgpools, rprelus = [], [], [], [], [], []
    conv = is_conv(net)
    prev_bipolar = False
    for node in net.nodes:
        if node.op == "sumpool":
            src = net.node(node.inputs[0])
            pools.append({"name": node.name, "lo": node.lo, "hi": node.hi, "frac": node.frac,
                          "scale": 2 ** (node.frac - src.frac)})
        if node.op in ("conv", "dense"):
            m = image.memory(node.attrs["weight"])
            layers.append({"name": m.layer, "size": m.depth, "bits": m.fmt.bits,
                           "frac": m.fmt.frac, "binary": bool(m.fmt.bipolar),
                           "binary_input": prev_bipolar and not conv,
                           "protected": m.protected,
                           "acc_bits": signed_bits(node.lo, node.hi), "acc_frac": node.frac})
        elif node.op == "threshold":
            t, d = image.memory(node.attrs["threshold"]), image.memory(node.attrs["direction"])
            thr, dirs = image.codes(t.name), image.codes(d.name)
            thresholds.append({"name": t.layer, "threshold": thr.tolist(),
                               "direction": dirs.tolist(), "frac": t.fmt.frac})
        elif node.op == "affine":
            sc, off = image.memory(node.attrs["scale"]), image.memory(node.attrs["offset"])
            out = next(n for n in net.nodes if n.inputs == [node.name])
            affines.append({"name": sc.layer, "scale": image.codes(sc.name).tolist(),
                            "scale_bits": sc.fmt.bits, "scale_frac": sc.fmt.frac,
                            "offset": image.codes(off.name).tolist(),
                            "offset_bits": off.fmt.bits, "offset_frac": off.fmt.frac,
                            "out_bits": int(out.attrs["bits"]), "out_frac": out.frac})
        elif node.op == "avgpool":
            avgpools.append({"name": node.name, "lo": node.lo, "hi": node.hi,
                             "frac": node.frac})
        elif node.op == "rprelu":
            src = net.node(node.inputs[0])
            spec = {"name": node.name, "in_lo": src.lo, "in_hi": src.hi, "in_frac": src.frac,
                    "out_lo": node.lo, "out_hi": node.hi}
            for name, key in (("gamma", "shift"), ("slope", "slope"), ("zeta", "offset")):
                mem = image.memory(node.attrs[key])
                spec |= {name: image.codes(mem.name).tolist(), f"{name}_bits": mem.fmt.bits,
                         f"{name}_frac": mem.fmt.frac}
            rprelus.append(spec)
        if node.op != "flatten":
            prev_bipolar = node.bipolar
    return {"layers": layers, "thresholds": thresholds, "affines": affines, "pools": pools,
            "avgpools": avgpools, "rprelus": rprelus, "signed_signs": conv}


def hls_config(qonnx_model, net: IntNetwork, image: MemoryImage, backend: str,
               reuse_factor: int) -> dict:
    """hls4ml config: per-layer names, Resource strategy, reuse factor, hetq's layer table."""
    import hls4ml
    cfg = hls4ml.utils.config.config_from_onnx_model(qonnx_model, granularity="name",
                                                     backend=backend)
    cfg["Model"]["Strategy"] = "Resource"
    cfg["Model"]["ReuseFactor"] = reuse_factor
    cfg["Model"]["Hetq"] = hetq_info(net, image)
    for entry in cfg.get("LayerName", {}).values():
        if "ReuseFactor" in entry:
            entry["ReuseFactor"] = reuse_factor
    return cfg


def without_binary_requant():
    """hls4ml 1.3.0 bug work-around, as a context: its ``vivado:quantize_dense_output`` pass
    re-quantizes binary weights that are already binary, so a binary Dense after batch-norm +
    sign gets all-ones weights. The pass is taken out of the quantization flow while converting
    and put back afterwards."""
    import contextlib

    from hls4ml.model.flow import get_flow

    @contextlib.contextmanager
    def ctx():
        flow = get_flow("vivado:quantization")
        name = "vivado:quantize_dense_output"
        saved = list(flow._optimizers)
        flow._optimizers = [o for o in saved if o != name]
        try:
            yield
        finally:
            flow._optimizers = saved
    return ctx()


@contextlib.contextmanager
def _unsupported() -> Iterator[None]:
    """hls4ml raises bare Exceptions for operations it cannot convert: one line instead."""
    import hls4ml
    try:
        yield
    except HlsError:
        raise
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise HlsError(f"hls: hls4ml {hls4ml.__version__} cannot convert this network: "
                       f"{first}") from None


@dataclass
class HlsProject:
    """A converted hls4ml model with what C-sim replay needs."""

    graph: object
    net: IntNetwork
    image: MemoryImage
    folder: Path
    conv: bool
    layouts: dict          # image memory -> (txt path, position of each image word, kind)
    dirty: set = field(default_factory=set)   # memories whose weight files hold faults
    reuse: dict = field(default_factory=dict)  # layer -> reuse factor target, used, n_in, n_out

    # -- inputs and outputs ---------------------------------------------------------------------
    def inputs(self, codes: np.ndarray) -> np.ndarray:
        """Input codes (N, C, H, W) -> float values on the input grid, one flat row per image."""
        x = np.asarray(codes, dtype=np.float64) * 2.0 ** -self.net.nodes[0].frac
        # channels-last conversion puts a Transpose at the model input: hls4ml takes NCHW
        return np.ascontiguousarray(x.reshape(x.shape[0], -1))

    def scores(self, x: np.ndarray) -> np.ndarray:
        """C-sim class scores as integer codes (N, classes)."""
        y = np.asarray(self.graph.predict(x), dtype=np.float64).reshape(x.shape[0], -1)
        codes = y * 2.0 ** self.net.node(self.net.output).frac
        r = np.round(codes)
        if not np.array_equal(r, codes):
            raise HlsError("hls: C-sim scores are not on the output grid")
        return r.astype(np.int64)

    # -- fault replay ---------------------------------------------------------------------------
    def _write_weights(self, memory: str, words: np.ndarray) -> None:
        path, pos, kind, zero_one = self.layouts[memory]
        m = self.image.memory(memory)
        if kind == "words":
            vals = words
            text = ",".join(str(int(v)) for v in vals[np.argsort(pos)])
        else:
            codes = decode(words, m.fmt, m.protected)
            if kind == "binary":
                vals = (codes > 0).astype(np.int64) if zero_one else codes
                text = ",".join(str(int(v)) for v in vals[np.argsort(pos)])
            else:
                vals = codes * 2.0 ** -m.fmt.frac
                text = ",".join(repr(float(v)) for v in vals[np.argsort(pos)])
        path.write_text(text + "\n")

    def reload(self) -> None:
        """Unload and load the compiled library again: it re-reads the weight files."""
        g = self.graph
        lib = g._top_function_lib
        if lib is None:
            raise HlsError("hls: the project is not compiled")
        path = lib._name
        dlclose = ctypes.CDLL(ctypes.util.find_library("dl") or "libdl.so.2").dlclose
        dlclose.argtypes = [ctypes.c_void_p]
        dlclose(lib._handle)
        g._top_function_lib = ctypes.cdll.LoadLibrary(path)

    def check_maps(self, maps, codes, clean: np.ndarray, executor) -> dict:
        """Replay each fault map of ``maps`` in C-sim and in the integer executor on the input
        codes ``codes`` (clean executor scores ``clean``); count the maps whose C-sim scores equal
        the executor's and those that change a prediction, and time the replay and the C-sim
        classification. The fault-free weights are restored at the end."""
        from flow.reliability.faults import Injector
        inj = Injector(self.image, executor)
        x = self.inputs(np.asarray(codes))
        n = equal = changed = 0
        t_replay = t_predict = 0.0
        for fmap in maps:
            t0 = time.perf_counter()
            self.replay(fmap)
            t1 = time.perf_counter()
            got = self.scores(x)
            t_predict += time.perf_counter() - t1
            t_replay += t1 - t0
            ref = inj.scores(fmap, codes)
            n += 1
            equal += int(np.array_equal(got, ref))
            changed += int((ref.argmax(1) != clean.argmax(1)).any())
        self.replay(FaultMap((), (), (), ()))
        return {"maps": n, "equal": equal, "maps_changing_predictions": changed,
                "replay_ms": 1e3 * t_replay / max(n, 1),
                "csim_predict_ms": 1e3 * t_predict / max(n, 1)}

    def replay(self, fmap: FaultMap) -> None:
        """Write the weights of ``fmap`` (flips in weight memories) and reload; an empty map
        restores the fault-free weights."""
        touched = set(np.unique(fmap.memory).tolist()) if len(fmap) else set()
        bad = [m for m in touched if m not in self.layouts]
        if bad:
            raise HlsError(f"hls: fault map touches '{bad[0]}'; C-sim replay covers weight "
                           f"memories only")
        if len(fmap) and set(np.unique(fmap.kind)) != {"flip"}:
            raise HlsError("hls: only bit flips can be replayed in C-sim")
        # only files this map changes, or the previous one left changed, are rewritten
        for name in touched | self.dirty:
            words = self.image.memory(name).words.copy()
            sel = fmap.memory == name
            if sel.any():
                np.bitwise_xor.at(words, fmap.word[sel], np.int64(1) << fmap.bit[sel])
            self._write_weights(name, words)
        self.dirty = touched
        self.reload()


def _layout(node, m, perm: np.ndarray, folder: Path) -> tuple:
    """Where each image word of weight memory ``m`` sits in hls4ml layer ``node``'s txt file."""
    w = node.weights["weight"]
    data = np.asarray(w.data).reshape(-1)
    out = m.shape[0]
    fanin = int(math.prod(m.shape[1:]))
    idx = np.arange(m.depth)
    o, i = idx // fanin, idx % fanin
    inv = np.empty_like(perm)
    inv[perm] = np.arange(perm.size)
    j = inv[i]
    if m.protected:
        kind, want, zero_one = "words", m.words, False
    elif m.fmt.bipolar:
        codes = decode(m.words, m.fmt, False)
        zero_one = bool(data.min() >= 0)
        kind, want = "binary", (codes > 0).astype(np.int64) if zero_one else codes
    else:
        kind, want, zero_one = "fixed", decode(m.words, m.fmt, False) * 2.0 ** -m.fmt.frac, False
    for pos in (j * out + o, o * fanin + j):
        if np.array_equal(data[pos], want):
            return folder / "firmware" / "weights" / f"{w.name}.txt", pos, kind, zero_one
    raise HlsError(f"hls: the weights of '{node.name}' are not a known layout of "
                   f"'{m.name}'")


def build(qonnx_path: Path, net: IntNetwork, image: MemoryImage, folder: Path, *, part: str,
          clock_mhz: float, backend: str = "Vitis", reuse_factor: int = 4,
          workaround: bool = True, stamp: dict | None = None, compile: bool = True,
          replayable: bool = True) -> HlsProject:
    """Convert, write and compile the hls4ml project of the QONNX graph at ``qonnx_path`` into
    ``folder``
    (with ``compile=False`` only write it; ``replayable`` locates every image word in the weight
    files, which also checks that hls4ml holds exactly the image's weights)."""
    import hls4ml
    if backend not in BACKENDS:
        raise ConfigError(f"hls.backend: unknown backend '{backend}' (known: Vitis, Vivado)")
    register()
    folder.mkdir(parents=True, exist_ok=True)
    conv = is_conv(net)
    qm = hls_graph(qonnx_path, folder / "model.qonnx.onnx", channels_last=conv)
    with _unsupported():
        cfg = hls_config(qm, net, image, backend, reuse_factor)
    kwargs = dict(hls_config=cfg, output_dir=str(folder / "prj"), backend=backend, part=part,
                  clock_period=round(1000.0 / clock_mhz, 3),
                  io_type="io_stream" if conv else "io_parallel")
    binary = any(m.fmt.bipolar for m in image.memories.values())
    with without_binary_requant() if (binary and workaround) else contextlib.nullcontext():
        with _unsupported():
            g = hls4ml.converters.convert_from_onnx_model(qm, **kwargs)
    g.compile() if compile else g.write()
    if stamp is not None:
        _stamp(folder / "prj", stamp)
    reuse = {n.get_attr("hetq_layer"): n.get_attr("hetq_reuse") for n in g.get_layers()
             if n.get_attr("hetq_reuse")}
    if not (compile and replayable):
        return HlsProject(g, net, image, folder / "prj", conv, {}, reuse=reuse)
    perms = {name: lay.perm for name, lay in design(net, image).layouts.items()
             if lay.kind == "weight"}
    layouts = {}
    for node in g.get_layers():
        name = node.get_attr("hetq_layer")
        if name and "weight" in node.weights:
            mname = f"{name}.weight"
            layouts[mname] = _layout(node, image.memory(mname), perms[mname], folder / "prj")
    return HlsProject(g, net, image, folder / "prj", conv, layouts, reuse=reuse)


def _stamp(prj: Path, stamp: dict) -> None:
    """Write ``firmware/hetq_plan.h`` with the plan's identity (a header the project ships)."""
    lines = ["// Generated by hetq: the plan this project implements. Do not edit.",
             "#ifndef HETQ_PLAN_H_", "#define HETQ_PLAN_H_"]
    for k, v in stamp.items():
        lines.append(f'#define HETQ_{k.upper()} "{v}"')
    lines.append("#endif")
    (prj / "firmware" / "hetq_plan.h").write_text("\n".join(lines) + "\n")
