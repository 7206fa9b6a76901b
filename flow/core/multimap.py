"""Several fault maps in one forward pass of the integer executor.

A campaign classifies the same test set under many fault maps. One map at a time, every trial
pays a forward pass from its first faulty node on, and PyTorch's per-operation overhead.
:func:`predict_maps` runs k maps at once. Maps are grouped by their first faulty node; before it
the executor's remembered clean activations are reused (:meth:`Executor.remember`). The first
faulty layer reads one input that every map shares, so it runs as one kernel with the maps'
weights side by side (k times the outputs). After it, the batch holds k copies of the images,
one per map. A layer with per-map weights then runs as a batched matrix product (dense) or one
convolution per map; per-map biases, thresholds and affine parameters broadcast; and a layer no
map touches runs once on the k copies with the clean parameters. Maps without faults take the
clean predictions.

Measured on this 2-core CPU (``hetq bench fi``, docs/results.md), one map at a time with
layer-local re-evaluation is as fast or faster on every network and BER of the benchmark, on
the digits and on mnist5k (16 maps a pass tied only on mnist5k's CNN at BER 1e-3), so campaigns
default to one map per pass (``campaign.batch_maps``). The batched form stays available and
exact; its speed on a GPU has not been measured here.

Every sum is the same integer sum as one map at a time, so the scores are equal bit for bit,
under the executor's rule: a layer whose per-map weights could push a partial sum to 2**24
(some map's sum of |weight codes| times the input's bound, plus its largest |bias|) is not
batched; :func:`predict_maps` then returns None and the caller runs those maps one at a time.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from flow.core.executor import EXACT_F32, Executor
from flow.core.ir import PARAM_KEYS, Node


@dataclass
class MapParams:
    """One map's parameters that differ from the clean ones: per memory, the flat word indices
    and their decoded values (as the executor holds them while the map is injected)."""

    words: dict[str, np.ndarray]
    values: dict[str, torch.Tensor]

    @classmethod
    def capture(cls, ex: Executor, memories: dict[str, np.ndarray]) -> "MapParams":
        """The executor's current values at ``memories`` (name -> touched word indices), read
        while a map is injected."""
        words, values = {}, {}
        for name, w in memories.items():
            uw = np.unique(np.asarray(w, dtype=np.int64))
            idx = torch.as_tensor(uw, dtype=torch.long, device=ex.device)
            words[name] = uw
            values[name] = ex.tensors[name].reshape(-1)[idx].clone()
        return cls(words, values)


def _stack(ex: Executor, name: str, maps: list[MapParams]) -> torch.Tensor:
    """(k, *shape) tensor of memory ``name``: the clean tensor, with each map's values."""
    clean = ex.tensors[name]
    out = clean.unsqueeze(0).repeat((len(maps),) + (1,) * clean.dim())
    flat = out.view(len(maps), -1)
    for j, m in enumerate(maps):
        if name in m.words:
            idx = torch.as_tensor(m.words[name], dtype=torch.long, device=ex.device)
            flat[j, idx] = m.values[name].to(flat.dtype)
    return out


def _param(ex: Executor, stacked: dict[str, torch.Tensor], name: str, k: int) -> torch.Tensor:
    """Memory ``name`` for k maps, (k, *shape): the per-map tensor if some map changes it, else
    the clean tensor repeated without a copy."""
    t = stacked.get(name)
    if t is not None:
        return t
    clean = ex.tensors[name]
    return clean.unsqueeze(0).expand((k,) + tuple(clean.shape))


def _exact(ex: Executor, node: Node, w: torch.Tensor, b: torch.Tensor | None) -> bool:
    """Whether every map's sums stay below 2**24 in one float32 kernel (``w``: (k, out, ...))."""
    src = ex.net.node(node.inputs[0])
    in_mag = max(abs(src.lo), abs(src.hi))
    absum = w.abs().reshape(w.shape[0], w.shape[1], -1).sum(2)       # (k, out)
    worst = int(absum.max()) * in_mag + (int(b.abs().max()) if b is not None else 0)
    return worst < EXACT_F32


def _per_map(x: torch.Tensor, k: int, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (k*B, C, ...) as (k, B, C, ...) and ``p`` (k, C) broadcastable against it."""
    xs = x.view((k, -1) + tuple(x.shape[1:]))
    return xs, p.reshape((k, 1, -1) + (1,) * (x.dim() - 2))


def _conv_dense(ex: Executor, node: Node, x: torch.Tensor, shared: bool, k: int,
                stacked: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """A conv or dense node with per-map weights or bias. Its input is ``shared`` (one batch,
    the same for every map: one kernel with the maps' weights side by side as k times the
    outputs) or per map (k*B rows: a batched matrix product, or one convolution per map)."""
    a = node.attrs
    w = _param(ex, stacked, a["weight"], k)
    b = _param(ex, stacked, a["bias"], k).reshape(k, -1) if a.get("bias") else None
    if x.dtype != torch.float32 or not _exact(ex, node, w, b):
        return None
    b = None if b is None else b.to(torch.float32)
    conv = node.op == "conv"
    if shared:
        wide = w.reshape((-1,) + tuple(w.shape[2:]))                    # (k*out, ...)
        bias = None if b is None else b.reshape(-1)
        y = (F.conv2d(x, wide, bias, stride=a["stride"], padding=a["pad"]) if conv
             else F.linear(x, wide, bias))
        y = y.view((y.shape[0], k, -1) + tuple(y.shape[2:])).transpose(0, 1)
        return y.reshape((-1,) + tuple(y.shape[2:]))
    xs = x.view((k, -1) + tuple(x.shape[1:]))
    if not conv:
        y = torch.bmm(xs, w.transpose(1, 2))
        if b is not None:
            y.add_(b.unsqueeze(1))
        return y.reshape(-1, y.shape[2])
    return torch.cat([F.conv2d(xs[j], w[j], None if b is None else b[j], stride=a["stride"],
                               padding=a["pad"]) for j in range(k)])


def _run_node(ex: Executor, node: Node, vals: dict[str, torch.Tensor], shared: set[str],
              k: int, stacked: dict[str, torch.Tensor]) -> tuple[torch.Tensor | None, bool]:
    """One node: (its codes, whether they are shared by every map). Shared activations hold one
    batch (B rows), per-map ones k batches (k*B rows, map-major). None: the node cannot be
    batched exactly."""
    a = node.attrs
    mine = [a.get(key) for key in PARAM_KEYS if isinstance(a.get(key), str)]
    per_map = any(m in stacked for m in mine)
    ins = {i: vals[i] for i in node.inputs}
    if not per_map and all(i in shared for i in node.inputs):
        return ex._node(node, ins, inplace=False), True      # e.g. a branch no map touches
    if node.op in ("conv", "dense") and per_map:
        i = node.inputs[0]
        return _conv_dense(ex, node, ins[i], i in shared, k, stacked), False
    for i in node.inputs:                                      # the maps' own copies
        if i in shared:
            ins[i] = ins[i].repeat((k,) + (1,) * (ins[i].dim() - 1))
    if not per_map:
        return ex._node(node, ins, inplace=ex._sole[node.name] and node.inputs[0] not in shared
                        ), False
    x = ins[node.inputs[0]]
    if node.op == "threshold":
        xs, thr = _per_map(x, k, _param(ex, stacked, a["threshold"], k))
        d = _param(ex, stacked, a["direction"], k).reshape(thr.shape)
        pos = torch.where(d > 0, xs >= thr, xs <= thr)
        return (pos.to(torch.float32) * 2 - 1).reshape(x.shape), False
    if node.op == "affine":
        xs, m = _per_map(x.to(ex._dtype[node.name]), k, _param(ex, stacked, a["scale"], k))
        o = _param(ex, stacked, a["offset"], k).reshape(m.shape)
        return (xs * m + o).reshape(x.shape), False
    if node.op == "rprelu":
        xs, g = _per_map(x.to(ex._dtype[node.name]), k, _param(ex, stacked, a["shift"], k))
        u = xs - g
        s = _param(ex, stacked, a["slope"], k).reshape(g.shape)
        o = _param(ex, stacked, a["offset"], k).reshape(g.shape)
        return (torch.where(u >= 0, u * 2.0 ** a["p"], u * s) + o).reshape(x.shape), False
    raise ValueError(f"batched maps: no per-map form of op '{node.op}'")   # pragma: no cover


def _forward(ex: Executor, vals: dict[str, torch.Tensor], start: int, k: int,
             stacked: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """Nodes ``start``.. for k maps of a batch whose clean activations are ``vals``; the class
    scores as (k, B, classes), or None."""
    nodes = ex.net.nodes
    shared = {n.name for n in nodes[:start]}
    vals = dict(vals)
    for node in nodes[start:]:
        y, same = _run_node(ex, node, vals, shared, k, stacked)
        if y is None:
            return None
        vals[node.name] = y
        if same:
            shared.add(node.name)
    scores = vals[ex.net.output]
    if ex.net.output in shared:                                # pragma: no cover (no map)
        scores = scores.repeat((k,) + (1,) * (scores.dim() - 1))
    return scores.view((k, -1) + tuple(scores.shape[1:]))


@torch.no_grad()
def predict_maps(ex: Executor, xq: torch.Tensor, maps: list[MapParams], *,
                 batch_size: int = 1024, max_rows: int = 1024) -> list[torch.Tensor] | None:
    """Predicted class per image of the quantized batch ``xq`` under each map; maps with the
    same first faulty node run together from that node, maps without faults take the clean
    predictions. None if some layer cannot be batched exactly (then run the maps one at a
    time). The executor must hold the clean parameters. ``xq`` is split as
    :meth:`Executor.predict` splits it (``batch_size``, so remembered activations are found),
    and each part into pieces of at most ``max_rows`` images times maps."""
    if ex._first_dirty() is not None:
        raise RuntimeError("predict_maps(): the executor holds faulty parameters")
    starts = [min((ex._reader[n] for n, w in m.words.items() if len(w)), default=None)
              for m in maps]
    out: list[torch.Tensor | None] = [None] * len(maps)
    if None in starts:                                  # maps without faults: the clean network
        clean = ex.predict(xq, batch_size, quantized=True)
        out = [clean.clone() if st is None else None for st in starts]
    for start in sorted({st for st in starts if st is not None}):
        idx = [j for j, st in enumerate(starts) if st == start]
        preds = _predict_group(ex, xq, [maps[j] for j in idx], start, batch_size, max_rows)
        if preds is None:
            return None
        for j, p in zip(idx, preds):
            out[j] = p
    return out


def _predict_group(ex: Executor, xq: torch.Tensor, maps: list[MapParams], start: int,
                   batch_size: int, max_rows: int) -> list[torch.Tensor] | None:
    """:func:`predict_maps` for maps whose first faulty node is ``start``."""
    k = len(maps)
    touched = sorted({n for m in maps for n in m.words if len(m.words[n])})
    stacked = {n: _stack(ex, n, maps) for n in touched}
    piece = max(1, max_rows // k)
    parts: list[torch.Tensor] = []
    for i in range(0, xq.shape[0], batch_size):
        xb = xq[i:i + batch_size]
        memo = ex._memo.get(ex._key(xb, True))
        for s in range(0, xb.shape[0], piece):
            if memo is not None:
                vals = {n: t[s:s + piece] for n, t in memo[1].items()}
            else:
                vals = ex.run(xb[s:s + piece], trace=True, quantized=True)
            scores = _forward(ex, vals, start, k, stacked)
            if scores is None:
                return None
            parts.append(scores.argmax(dim=2))
    return list(torch.cat(parts, dim=1).unbind(0))
