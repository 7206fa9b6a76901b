"""The integer reference executor: runs the integer network from the weight-memory image.

It computes exactly what hardware computes: integer multiply-accumulate, power-of-two
requantization with round-half-to-even and saturation (as Brevitas' quantizers), max-pool,
threshold compare for binary layers, per-channel integer affine (a batch-norm that feeds no
sign). Integer tensors are carried in float32, so every value and every partial sum is an exact
integer and PyTorch's fast convolution and matrix kernels can be used, on CPU or CUDA.

On CPU, a conv or dense layer whose weight and input codes fit 8 bits and that is large enough to
gain runs on an exact int8 x int8 -> int32 matrix product instead (:mod:`flow.core.intkernels`;
AMX or VNNI where the CPU has them): 2 to 3 times faster than float32 on the 100k- and 1M-weight
digits networks. A fault in such a layer updates its int8 weights; their float32 copy in
:attr:`Executor.tensors` is brought up to date when read.

On float32 kernels, a layer whose worst-case accumulator (any input code times any weight code
the format can hold, so faulty weights included) reaches 2**24 is checked on its current weights
before each run: if every output's sum of |weight codes| times the input's bound (plus the bias
bound) stays below 2**24, no partial sum of any order can leave the exact integers of float32,
and one float32 kernel runs. Otherwise its fan-in is split into chunks whose worst-case partial
sums stay below 2**24; each chunk runs through the float32 kernel and the exact partials are
added in float64 (exact to 2**53). The sums of |weight codes| follow every fault injection
(:meth:`update`).

The executor keeps one decoded tensor per memory. Fault injection changes stored words in the
image and calls :meth:`Executor.update` with the touched words, so no copy of the model is made.
:meth:`Executor.remember` keeps the clean activations of a batch (a campaign's test set): a
later run of that batch starts at the first node whose parameters differ from the clean ones
and recomputes only what the faults change (:mod:`flow.core.delta`): the faulty rows of a layer
whose input is clean (or a dense layer's changed weights' products added to its clean
accumulator), the changed channels through requant, max-pool and flatten, a dense layer's
changed input features added to its clean accumulator.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from flow.core import delta
from flow.core.arrays import column_major, unique_ints
from flow.core.image import MemoryImage, decode
from flow.core.intkernels import Int8Kernel, Int8Weights, int8_matmul_exact, plan_int8
from flow.core.ir import PARAM_KEYS, IntNetwork, Node

EXACT_F32 = 1 << 24
KERNELS = ("auto", "int8", "float")


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextlib.contextmanager
def _exact_cuda() -> Iterator[None]:
    """Disable TF32 (which would round the integer products) while the executor runs on CUDA."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _maxpool(x: torch.Tensor, k: int) -> torch.Tensor:
    """k x k max-pool with stride k (floor mode), as an elementwise maximum of k*k strided views.

    Same result as ``F.max_pool2d(x, k)``; several times faster on CPU for small maps.
    """
    h, w = (x.shape[2] // k) * k, (x.shape[3] // k) * k
    out = None
    for i in range(k):
        for j in range(k):
            v = x[:, :, i:h:k, j:w:k]
            out = v.clone() if out is None else torch.maximum(out, v, out=out)
    return out


def _fanin_chunks(net: IntNetwork, node: Node) -> list[slice] | None:
    """Slices of the input channels (conv) or features (dense) of ``node`` whose worst-case
    partial sums stay below 2**24: input codes at the input's bound times weight codes at the
    format's largest magnitude, the bias left out (it is added in float64). None where a single
    input's products reach 2**24 (the layer then runs in float64)."""
    src = net.node(node.inputs[0])
    p = net.params[node.attrs["weight"]]
    fmt = p.fmt
    w_mag = 1 if fmt.bipolar else 1 << (fmt.bits - 1)
    per_input = int(np.prod(p.codes.shape[2:])) * max(abs(src.lo), abs(src.hi)) * w_mag
    n_in = p.codes.shape[1]
    step = max(1, (EXACT_F32 - 1) // max(1, per_input))
    if per_input >= EXACT_F32 or max(abs(src.lo), abs(src.hi)) >= EXACT_F32:
        return None                        # one input's products alone reach 2**24
    return [slice(i, min(i + step, n_in)) for i in range(0, n_in, step)]


def _colsum(w: torch.Tensor) -> np.ndarray:
    """Sums of |weight codes| per (output, input channel) of a conv or dense weight tensor."""
    a = w.abs()
    a = a.sum(dim=tuple(range(2, a.dim()))) if a.dim() > 2 else a
    return a.cpu().numpy().astype(np.int64)


def _add_sorted(target: np.ndarray, idx: np.ndarray, delta: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """``target[idx] += delta`` for a nondecreasing ``idx`` with repeats (one add per distinct
    index: a segmented sum, much faster than ``np.add.at``); returns the distinct indices and
    what was added to each."""
    if idx.size == 0:
        return idx, delta
    new = np.empty(idx.size, bool)
    new[0] = True
    np.not_equal(idx[1:], idx[:-1], out=new[1:])
    if new.all():                                         # distinct: a plain indexed add
        target[idx] += delta
        return idx, delta
    starts = np.flatnonzero(new)
    keys, sums = idx[starts], np.add.reduceat(delta, starts)
    target[keys] += sums
    return keys, sums


@dataclass
class _Undo:
    """What one :meth:`Executor.update` changed, to put back exactly (:meth:`Executor.restore`):
    the words' previous values, which of them differed from the clean ones, and what it added
    to a wide layer's sums per output and per chunk (with the chunk plan those belonged to)."""

    memory: str
    words: np.ndarray
    old: np.ndarray
    differs: tuple[np.ndarray, int] | None = None
    layer: str | None = None
    rows: tuple | None = None                         # (outputs, added) to the per-output sums
    plan: list | None = None
    chunk: tuple | None = None                        # (keys, added) in that plan's sums


def _chunks_for(colsum: np.ndarray, in_mag: int) -> list[slice]:
    """Consecutive input-channel slices, each as wide as keeps every output's sum of |weight
    codes| over the slice, times ``in_mag``, below 2**24 (one channel at least)."""
    cum = np.concatenate([np.zeros((colsum.shape[0], 1), np.int64), np.cumsum(colsum, 1)], 1)
    out, start, n = [], 0, colsum.shape[1]
    while start < n:
        span = (cum[:, start + 1:] - cum[:, start:start + 1]).max(0) * in_mag
        fits = np.flatnonzero(span < EXACT_F32)          # a prefix: the spans only grow
        end = start + 1 + (int(fits[-1]) if fits.size else 0)
        out.append(slice(start, end))
        start = end
    return out


class Executor:
    """Runs ``net`` with the parameters decoded from ``image`` on ``device``."""

    def __init__(self, net: IntNetwork, image: MemoryImage,
                 device: str | torch.device | None = None, kernels: str = "auto") -> None:
        """``kernels``: ``auto`` runs the conv and dense layers whose codes fit 8 bits and that
        are large enough to gain on exact int8 kernels where the CPU has them
        (:mod:`flow.core.intkernels`), the others on float32 kernels; ``int8``: every layer whose
        codes fit on int8 (tests); ``float``: float32 kernels for every layer. The results are
        the same."""
        if kernels not in KERNELS:
            raise ValueError(f"kernels: {kernels!r} is not one of {', '.join(KERNELS)}")
        self.net, self.image = net, image
        self.device = torch.device(device) if device is not None else default_device()
        self._tensors: dict[str, torch.Tensor] = {}
        self._stale: set[str] = set()      # int8 layers' weights whose float32 copy lags
        self._dtype: dict[str, torch.dtype] = {}
        self._fr = {n.name: n.frac for n in net.nodes}
        readers: dict[str, int] = {n.name: 0 for n in net.nodes}
        for n in net.nodes:
            for i in n.inputs:
                readers[i] += 1
        # a node may overwrite its input if it is that input's only reader (never the caller's x)
        self._sole = {n.name: bool(n.inputs) and n.inputs[0] != "input"
                      and readers[n.inputs[0]] == 1 for n in net.nodes}
        # accumulators read only by a requant: their few outputs past 2**24 may travel beside
        # a float32 tensor (exact float64, requantized by that node) instead of widening it
        self._to_requant = {n.inputs[0] for n in net.nodes
                            if n.op == "requant" and readers[n.inputs[0]] == 1}
        self._trace = False
        for node in net.nodes:
            wide = max(abs(node.lo), abs(node.hi)) >= EXACT_F32
            self._dtype[node.name] = torch.float64 if wide else torch.float32
        # int8 kernels: the layers whose codes fit (CPU, where the kernel is exact)
        self._int8: dict[str, Int8Kernel] = {}
        if kernels != "float" and self.device.type == "cpu" and int8_matmul_exact():
            for node in net.nodes:
                if (plan := plan_int8(net, node, small=kernels == "int8")) is not None:
                    self._int8[node.name] = Int8Kernel(plan)
        # an int8 accumulator read only by a requant may be handed over in float32 when the
        # requant's clamp hides float32's rounding: every value it rounds lies below 2**24
        self._f32_ok = {n.inputs[0] for n in net.nodes if n.op == "requant"
                        and n.inputs[0] in self._int8 and n.inputs[0] in self._to_requant
                        and (max(abs(n.lo), abs(n.hi)) + 1) * 2.0 ** (self._fr[n.inputs[0]]
                                                                      - n.frac) <= EXACT_F32}
        # fan-in chunks (input channels of a conv, input features of a dense layer) of the wide
        # layers on float kernels: slices whose worst-case partial sum stays below 2**24
        self._chunks: dict[str, list[slice]] = {}
        for node in net.nodes:
            if (node.op in ("conv", "dense") and self._dtype[node.name] == torch.float64
                    and node.name not in self._int8):
                chunks = _fanin_chunks(net, node)
                if chunks is not None:
                    self._chunks[node.name] = chunks
        for name in image.memories:
            self._tensors[name] = self._param_tensor(name)
        # On CPU, flat numpy views of the same storage: updates skip torch's dispatch.
        self._flat = ({n: t.numpy().reshape(-1) for n, t in self._tensors.items()}
                      if self.device.type == "cpu" else {})
        # the int8 weights of each int8 layer: faults update these; the float32 ones follow
        # when read (:attr:`tensors`)
        self._w8: dict[str, Int8Weights] = {}
        for name in self._int8:
            wname = net.node(name).attrs["weight"]
            self._w8[wname] = Int8Weights(self._tensors[wname])
        # the first node reading each memory; the clean activations of remembered batches, and
        # per memory which words differ from the clean values (once a batch is remembered)
        self._reader: dict[str, int] = {}
        self._params_of: dict[str, list[str]] = {}
        for i, node in enumerate(net.nodes):
            self._params_of[node.name] = [m for key in PARAM_KEYS
                                          if isinstance(m := node.attrs.get(key), str)
                                          and m in image.memories]
            for mem in self._params_of[node.name]:
                self._reader.setdefault(mem, i)
        # per remembered batch: the batch, its clean codes by node, what delta derives from them
        self._memo: dict[tuple, tuple[torch.Tensor, dict[str, torch.Tensor], dict]] = {}
        self._clean: dict[str, np.ndarray] = {}
        self._differs: dict[str, np.ndarray] = {}
        self._ndiff: dict[str, int] = {}
        self._touched: dict[str, list[np.ndarray]] = {}   # words updated since remembered
        # per wide layer: sums of |weight codes| per output, the input's bound, and the fan-in
        # chunks at the current weights (None: to be planned) with their sums per output
        self._plan: dict[str, list[slice] | None] = {}
        self._chunksum: dict[str, tuple[np.ndarray, np.ndarray]] = {}   # per output and chunk
        self._absum: dict[str, np.ndarray] = {}
        self._in_mag: dict[str, int] = {}
        self._bias_of: dict[str, str | None] = {}
        self._layer_of: dict[str, str] = {}
        for name in self._chunks:
            node = net.node(name)
            src = net.node(node.inputs[0])
            self._in_mag[name] = max(abs(src.lo), abs(src.hi))
            self._bias_of[name] = node.attrs.get("bias")
            self._layer_of[node.attrs["weight"]] = name
            w = self._tensors[node.attrs["weight"]]
            self._absum[name] = _colsum(w).sum(1)
            self._plan[name] = None

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        """The decoded parameters by memory name, in PyTorch's layout (weights as float32
        codes). A fault in an int8 layer updates only its int8 copy; its float32 weights are
        brought up to date here, when read."""
        for name in self._stale:
            self._w8[name].to_float(self._tensors[name])
        self._stale.clear()
        return self._tensors

    def _param_tensor(self, name: str) -> torch.Tensor:
        p = self.net.params[name]
        dtype = torch.float32              # weights: float32 always (codes below 2**16)
        for node in self.net.nodes:
            if name in (node.attrs.get("bias"), node.attrs.get("threshold"),
                        node.attrs.get("scale"), node.attrs.get("offset"),
                        node.attrs.get("shift"), node.attrs.get("slope")):
                dtype = self._dtype[node.name]
        codes = self.image.codes(name).reshape(p.codes.shape)
        return torch.as_tensor(codes, dtype=dtype, device=self.device).contiguous()

    def update(self, memory: str, words: np.ndarray, stored: np.ndarray | None = None
               ) -> _Undo:
        """Re-decode the given word indices of ``memory`` from the image into the executor;
        returns what :meth:`restore` needs to undo exactly this update. ``stored``: the words'
        stored values, when the caller has them (sorted, distinct ``words``): saves reading them
        from the image again.

        The cost grows with the number of words, not with the memory: a wide layer's sums of
        |weight codes| change by the touched words' differences, and its fan-in chunks are
        planned again only when a touched output's chunk sum no longer fits."""
        m = self.image.memories[memory]
        u = np.asarray(words, dtype=np.int64)
        if stored is not None and memory in self._clean and memory in self._flat \
                and memory not in self._layer_of:
            # a remembered batch's parameters on host memory: one compiled pass
            from flow.core import flips  # numba: loaded by the first update
            was = np.empty(u.size, bool)
            args = (stored, u, m.fmt.bits,
                    flips.decode_mode(m.fmt.signed, m.fmt.bipolar, m.protected))
            seen = (self._clean[memory], self._differs[memory])
            if memory in self._w8:          # an int8 layer: its float32 copy follows on demand
                old = np.empty(u.size, np.int8)
                dn = flips.update8(*args, *self._w8[memory].layout(), *seen, old, was)
                self._stale.add(memory)
            else:
                old = np.empty(u.size, self._flat[memory].dtype)
                dn = flips.update(*args, self._flat[memory], *seen, old, was)
            undo = _Undo(memory, u, old)
            undo.differs = (was, self._ndiff[memory])
            self._ndiff[memory] += dn
            self._touched[memory].append(u)
            return undo
        if stored is None and u.size > 1 and not (u[1:] > u[:-1]).all():
            u = np.unique(u)                    # an Injector passes them sorted, unique
        vals = np.asarray(decode(m.words[u] if stored is None else stored, m.fmt,
                                 m.protected))
        flat = self._flat.get(memory)
        layer = self._layer_of.get(memory)
        if memory in self._w8:              # an int8 layer: its float32 copy follows on demand
            old = self._w8[memory].swap(u, vals)
            self._stale.add(memory)
        elif flat is not None:
            old = flat[u]
            flat[u] = vals
        else:
            t = self._tensors[memory].view(-1)
            idx = torch.as_tensor(u, dtype=torch.long, device=self.device)
            old = t[idx].cpu().numpy()
            t[idx] = torch.as_tensor(vals, dtype=t.dtype, device=self.device)
        undo = _Undo(memory, u, old)
        if memory in self._clean:              # which words now differ from the clean values
            differs = self._differs[memory]
            was = differs[u]                            # a copy (fancy indexing)
            now = vals != self._clean[memory][u]
            undo.differs = (was, self._ndiff[memory])
            differs[u] = now
            self._ndiff[memory] += int(np.count_nonzero(now)) - int(np.count_nonzero(was))
            self._touched[memory].append(u)
        if layer is not None:
            self._retally(layer, u, np.abs(vals).astype(np.int64)
                          - np.abs(old).astype(np.int64), undo)
        return undo

    def restore(self, undo: _Undo) -> None:
        """Undo one :meth:`update` (the image's words must hold their values from before it
        again); updates are undone in reverse order."""
        layer = undo.layer
        plan = self._plan[layer] if layer is not None else None
        if plan is not None and plan is not undo.plan:
            # planned since the update: its sums hold the change; take it out again (the
            # difference from the current values, before they go back)
            rows, cols, delta = self._rows_cols(layer, undo.words, undo.old)
        flat = self._flat.get(undo.memory)
        if undo.memory in self._w8:
            self._w8[undo.memory].swap(undo.words, undo.old)
            self._stale.add(undo.memory)
        elif flat is not None:
            flat[undo.words] = undo.old
        else:
            t = self._tensors[undo.memory].view(-1)
            idx = torch.as_tensor(undo.words, dtype=torch.long, device=self.device)
            t[idx] = torch.as_tensor(undo.old, dtype=t.dtype, device=self.device)
        if undo.differs is not None:
            self._differs[undo.memory][undo.words] = undo.differs[0]
            self._ndiff[undo.memory] = undo.differs[1]
            self._touched[undo.memory].pop()
        if layer is None:
            return
        touched, added = undo.rows
        self._absum[layer][touched] -= added
        if plan is None:
            return
        sums, chunk_of = self._chunksum[layer]
        if plan is undo.plan:                  # the same sums: take back what was added
            keys, added = undo.chunk
            sums.reshape(-1)[keys] -= added
        else:
            _add_sorted(sums.reshape(-1), rows * sums.shape[1] + chunk_of[cols], delta)
        if touched.size and int(sums[touched].max()) * self._in_mag[layer] >= EXACT_F32:
            self._plan[layer] = None

    def _rows_cols(self, layer: str, u: np.ndarray, vals: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Output rows and input channels of the words ``u`` of ``layer``'s weights, and the
        change of their |codes| from the executor's current values to ``vals``."""
        w = self._tensors[self.net.node(layer).attrs["weight"]]
        per_row = w.numel() // w.shape[0]
        spatial = per_row // w.shape[1]
        cur = self._flat[self.net.node(layer).attrs["weight"]][u] if self._flat else \
            w.view(-1)[torch.as_tensor(u, device=self.device)].cpu().numpy()
        delta = np.abs(vals).astype(np.int64) - np.abs(cur).astype(np.int64)
        return u // per_row, (u % per_row) // spatial, delta

    def _retally(self, layer: str, u: np.ndarray, delta: np.ndarray, undo: _Undo) -> None:
        """Add the |weight code| changes ``delta`` of the words ``u`` to ``layer``'s sums; drop
        its chunk plan if a touched output's chunk no longer fits below 2**24. ``undo`` records
        what was added."""
        w = self._tensors[self.net.node(layer).attrs["weight"]]
        per_row = w.numel() // w.shape[0]
        rows = u // per_row
        undo.layer = layer
        touched, added = undo.rows = _add_sorted(self._absum[layer], rows, delta)
        if self._plan[layer] is not None:
            cols = (u % per_row) // (per_row // w.shape[1])
            sums, chunk_of = self._chunksum[layer]
            undo.plan = self._plan[layer]
            undo.chunk = _add_sorted(sums.reshape(-1), rows * sums.shape[1] + chunk_of[cols],
                                     delta)
            if int(sums[touched].max()) * self._in_mag[layer] >= EXACT_F32:
                self._plan[layer] = None

    def _chunks_now(self, name: str) -> list[slice]:
        """The fan-in chunks of ``name`` at its current weights: as few as keep every output's
        partial sum below 2**24 (never more than the worst-case plan). A plan stays while it
        fits (:meth:`update`)."""
        if self._plan[name] is None:
            colsum = _colsum(self._tensors[self.net.node(name).attrs["weight"]])
            plan = _chunks_for(colsum, self._in_mag[name])
            chunk_of = np.concatenate([np.full(c.stop - c.start, i)
                                       for i, c in enumerate(plan)])
            sums = np.stack([colsum[:, c].sum(1) for c in plan], 1)
            self._plan[name], self._chunksum[name] = plan, (sums, chunk_of)
        return self._plan[name]

    def wide_layers(self) -> list[str]:
        """The layers on float32 kernels whose worst-case accumulator reaches 2**24 and that can
        split their fan-in (see :meth:`split`)."""
        return list(self._chunks)

    def kernel(self, name: str) -> str:
        """How the conv or dense layer ``name`` runs now: ``int8`` (exact int8 kernel),
        ``float32``, ``float32 split`` (fan-in chunks, see :meth:`split`) or ``float64``."""
        if name in self._int8:
            return "int8"
        if self.split(name):
            return "float32 split"
        wide = self._dtype[name] == torch.float64
        return "float64" if wide and name not in self._chunks else "float32"

    def split(self, name: str) -> bool:
        """Whether the layer ``name`` runs with its fan-in split at its current weights and bias
        (some output's sum of |weight codes| times the input's bound, plus the largest |bias
        code|, reaches 2**24); False for a layer whose worst case stays below 2**24."""
        if name not in self._absum:
            return False
        bias = self._bias_of[name]
        b_mag = int(self._tensors[bias].abs().max()) if bias else 0
        return int(self._absum[name].max()) * self._in_mag[name] + b_mag >= EXACT_F32

    def _wide_outputs(self, name: str) -> np.ndarray:
        """The outputs of ``name`` whose sum of |weight codes| times the input's bound, plus
        their |bias code|, reach 2**24 at the current weights."""
        bound = self._absum[name] * self._in_mag[name]
        bias = self._bias_of[name]
        if bias:
            bound = bound + self._tensors[bias].abs().cpu().numpy().astype(np.int64)
        return np.flatnonzero(bound >= EXACT_F32)

    @staticmethod
    def _kernel(op: str, a: dict, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """One float32 conv or dense kernel, without bias."""
        if op == "conv":
            return F.conv2d(x, w, None, stride=a["stride"], padding=a["pad"])
        return F.linear(x, w)

    def _chunked(self, op: str, a: dict, x: torch.Tensor, w: torch.Tensor,
                 chunks: list[slice]) -> torch.Tensor:
        """Exact float32 partials over the fan-in ``chunks``, added exactly in float64."""
        acc = None
        for c in chunks:
            part = self._kernel(op, a, x[:, c], w[:, c])
            acc = part.to(torch.float64) if acc is None else acc.add_(part)
        return acc

    # -- running --------------------------------------------------------------------------------
    def _node(self, node: Node, vals: dict[str, torch.Tensor], inplace: bool) -> torch.Tensor:
        op, a = node.op, node.attrs
        dt = self._dtype[node.name]
        x = vals[node.inputs[0]] if node.inputs else None
        if op == "input":
            raise RuntimeError("input handled by run()")
        if op in ("conv", "dense") and node.name in self._int8:
            f32 = dt == torch.float32 or (node.name in self._f32_ok and not self._trace)
            return self._int8[node.name].run(x, self._w8[a["weight"]],
                                             self._tensors[a["bias"]] if a.get("bias") else None,
                                             torch.float32 if f32 else torch.float64)
        if op in ("conv", "dense"):
            w = self._tensors[a["weight"]]
            b = self._tensors[a["bias"]] if a.get("bias") else None
            chunks = self._chunks_now(node.name) if self.split(node.name) else None
            if chunks is None and dt == torch.float64 and node.name not in self._chunks:
                # inputs beyond float32 (no chunk plan): a float64 kernel, rare
                x, w = x.to(dt), w.to(dt)
            elif x.dtype != torch.float32:                   # codes below 2**24: exact
                x = x.to(torch.float32)
            if chunks is None:
                if b is not None and b.dtype != x.dtype:    # within the bound: exact
                    b = b.to(x.dtype)
                if op == "conv":
                    return F.conv2d(x, w, b, stride=a["stride"], padding=a["pad"])
                return F.linear(x, w, b)
            wide = self._wide_outputs(node.name)
            if 2 * wide.size < w.shape[0]:
                # few outputs reach 2**24: one float32 kernel is exact for all the others, and
                # the wide ones are computed again in chunks
                rows = torch.as_tensor(wide, dtype=torch.long, device=w.device)
                exact = self._chunked(op, a, x, w[rows], chunks)
                acc = self._kernel(op, a, x, w)
                if node.name in self._to_requant and not self._trace:
                    # float32 stays exact (|sum| + |bias| < 2**24) except on the wide outputs,
                    # which ride along in float64 for the requant that reads them
                    if b is not None:
                        acc.add_(b.to(acc.dtype).view((1, -1) + (1,) * (acc.dim() - 2)))
                        exact.add_(b[rows].to(torch.float64).view(
                            (1, -1) + (1,) * (exact.dim() - 2)))
                    acc.hetq_wide = (rows, exact)
                    return acc
                acc = acc.to(torch.float64)
                acc[:, rows] = exact
            else:
                acc = self._chunked(op, a, x, w, chunks)
            if b is not None:
                acc.add_(b.view((1, -1) + (1,) * (acc.dim() - 2)))
            return acc
        if op == "requant":
            if column_major(x):     # (N, O) stored as (O, N): the same work in storage order
                return self._node(node, {node.inputs[0]: x.t()}, inplace).t()
            shift = node.frac - self._fr[node.inputs[0]]
            wide = getattr(x, "hetq_wide", None)
            # in place unless the accumulator is kept for a trace
            y = x if inplace else x.clone()
            if shift:
                y.mul_(2.0 ** shift)
            y = y.round_().clamp_(node.lo, node.hi)
            y = y if y.dtype == torch.float32 else y.to(torch.float32)
            if wide is not None:                   # the outputs past 2**24, from float64
                rows, exact = wide
                del x.hetq_wide
                if shift:
                    exact.mul_(2.0 ** shift)
                y[:, rows] = exact.round_().clamp_(node.lo, node.hi).to(torch.float32)
            return y
        if op == "threshold":
            shape = (1, -1) + (1,) * (x.dim() - 2)
            thr = self._tensors[a["threshold"]].view(shape)
            d = self._tensors[a["direction"]].view(shape)
            pos = torch.where(d > 0, x >= thr, x <= thr)
            return pos.to(torch.float32) * 2 - 1
        if op == "affine":
            shape = (1, -1) + (1,) * (x.dim() - 2)
            m = self._tensors[a["scale"]].view(shape)
            return x.to(dt) * m + self._tensors[a["offset"]].view(shape)
        if op == "rprelu":
            shape = (1, -1) + (1,) * (x.dim() - 2)
            u = x.to(dt) - self._tensors[a["shift"]].view(shape)
            y = torch.where(u >= 0, u * 2.0 ** a["p"], u * self._tensors[a["slope"]].view(shape))
            return y.add_(self._tensors[a["offset"]].view(shape))
        if op == "avgpool":
            k = a["k"]
            n, c, h, w = x.shape
            return x.to(dt).reshape(n, c, h // k, k, w // k, k).sum(dim=(3, 5))
        if op == "repeat":
            return x.repeat(1, a["times"], 1, 1)
        if op == "maxpool":
            return _maxpool(x, a["k"])
        if op == "sumpool":
            return x.to(dt).sum(dim=(2, 3))
        if op == "flatten":
            return x.flatten(1)
        if op == "add":
            y = vals[node.inputs[1]]
            fa, fb = self._fr[node.inputs[0]], self._fr[node.inputs[1]]
            return x.to(dt) * (2.0 ** (node.frac - fa)) + y.to(dt) * (2.0 ** (node.frac - fb))
        raise ValueError(f"unknown op {op}")

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """Float pixels -> input codes (as a float tensor), exactly as the input quantizer."""
        n = self.net.nodes[0]
        return torch.round(x.to(self.device, torch.float32) * (2.0 ** n.frac)).clamp_(n.lo, n.hi)

    @staticmethod
    def _key(x: torch.Tensor, quantized: bool) -> tuple:
        """Identity of an input batch: its storage, shape, strides and version (an in-place
        change of the batch makes it another batch)."""
        return (x.device.type, x.data_ptr(), tuple(x.shape), tuple(x.stride()), x._version,
                quantized)

    @torch.no_grad()
    def remember(self, x: torch.Tensor, batch_size: int = 1024, *, quantized: bool = False
                 ) -> None:
        """Keep the clean activations of ``x``, batch by batch as :meth:`predict` splits it
        (a batch is known by its storage, shape, strides and version). Later runs of those
        batches start at the first node that reads a memory whose words differ from the clean
        ones. The parameters must be clean now."""
        if any(self._ndiff.values()):
            raise RuntimeError("remember(): faults are injected; remember the clean network")
        if not self._clean:
            for name, t in self.tensors.items():
                self._clean[name] = t.detach().cpu().numpy().reshape(-1).copy()
                self._differs[name] = np.zeros(t.numel(), bool)
                self._ndiff[name] = 0
                self._touched[name] = []
        for i in range(0, x.shape[0], batch_size):
            xb = x[i:i + batch_size]
            vals = self.run(xb, trace=True, quantized=quantized)
            self._memo[self._key(xb, quantized)] = (xb, vals, {})   # xb kept: storage stays ours

    def _dirty_words(self, memory: str) -> np.ndarray | None:
        """Sorted distinct words of ``memory`` updated since the batch was remembered, while
        some of its words differ from the clean values (else None)."""
        if not self._ndiff.get(memory):
            return None
        touched = self._touched[memory]
        return touched[0] if len(touched) == 1 else unique_ints(np.concatenate(touched))

    def _first_dirty(self) -> int | None:
        """Index of the first node that reads a memory with words off their clean values."""
        idx = [self._reader[m] for m, n in self._ndiff.items() if n and m in self._reader]
        return min(idx) if idx else None

    @torch.no_grad()
    def run(self, x: torch.Tensor, *, trace: bool = False, quantized: bool = False):
        """Run one batch of float inputs (or input codes if ``quantized``).

        Returns the class-score codes, or with ``trace`` every node's codes by node name.
        """
        return self._run(x, trace=trace, quantized=quantized)

    def _run(self, x: torch.Tensor, *, trace: bool, quantized: bool):
        """:meth:`run` (its caller holds ``torch.no_grad``)."""
        memo = None if trace or not self._memo else self._memo.get(self._key(x, quantized))
        if memo is not None:
            vals = memo[1]
            start = self._first_dirty()
            if start is None:
                return vals[self.net.output].clone()
            with _exact_cuda() if self.device.type == "cuda" else contextlib.nullcontext():
                return delta.forward(self, vals, memo[2], start)
        with _exact_cuda() if self.device.type == "cuda" else contextlib.nullcontext():
            xq = x.to(self.device, torch.float32) if quantized else self.quantize_input(x)
            vals = self._forward({"input": xq}, trace=trace)
        return vals if trace else vals[self.net.output]

    def _forward(self, vals: dict[str, torch.Tensor], *, trace: bool = False
                 ) -> dict[str, torch.Tensor]:
        """Run every node after the input on ``vals`` (which holds the input codes)."""
        self._trace = trace                        # a trace keeps every accumulator exact
        try:
            with _exact_cuda() if self.device.type == "cuda" else contextlib.nullcontext():
                for node in self.net.nodes[1:]:
                    inplace = not trace and self._sole[node.name]
                    vals[node.name] = self._node(node, vals, inplace)
        finally:
            self._trace = False
        return vals

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 1024, *, quantized: bool = False
                ) -> torch.Tensor:
        """Predicted class per image (argmax of the integer scores, first index on ties).

        With ``quantized``, ``x`` already holds input codes (see :meth:`quantize_input`):
        campaigns quantize the test set once and classify it many times.
        """
        if x.shape[0] <= batch_size:            # one batch: itself (as remembered)
            return self._run(x, trace=False, quantized=quantized).argmax(dim=1)
        return torch.cat([self._run(x[i:i + batch_size], trace=False, quantized=quantized)
                          .argmax(dim=1) for i in range(0, x.shape[0], batch_size)])

    @torch.no_grad()
    def correct(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> int:
        """Number of correctly classified images."""
        return int((self.predict(x, batch_size).cpu() == y.cpu()).sum())
