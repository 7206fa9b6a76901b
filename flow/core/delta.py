"""Re-evaluation of a remembered batch under faults, from what changed (:meth:`Executor.run`).

A campaign classifies the same test set under many fault maps, and most maps change few of a
layer's outputs: a layer with faulty weights in 5 of its 1024 output rows changes 5 output
columns, and the layer after it sees 5 changed input features. Starting from the clean
activations the executor remembers (:meth:`Executor.remember`), each node's codes are kept as
the clean ones plus the channels that changed (dim 1: a dense layer's features, a conv's
channels), and a node that reads nothing changed keeps its clean codes:

- a conv or dense layer whose input is clean recomputes only its outputs whose weights or bias
  differ from the clean ones (those rows of its weights, with the layer's own exact kernel; a
  dense layer while they are at most a quarter of its outputs, :data:`DENSE_PART_MAX`);
- a dense layer whose input changed in the features ``C`` adds ``(x' - x)[:, C] W'[:, C]^T`` to
  its clean accumulator, as ``- x[:, C] W'[:, C]^T + x'[:, C] W'[:, C]^T`` (each term an exact
  product, every intermediate a partial sum of codes the formats hold, so as exact as the full
  layer), then recomputes its faulty rows on the new input;
- a requant, a max-pool and a flatten pass the changed channels on;
- any other node, and a layer where the changed part costs more than the whole, runs whole
  (:meth:`Executor._node`) on its inputs made whole.

The results are the codes a full forward pass computes, bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from flow.core.arrays import unique_ints
from flow.core.ir import Node

if TYPE_CHECKING:                                   # pragma: no cover
    from flow.core.executor import Executor

# Each form of a layer is costed in multiply-accumulates, plus CALL_COST for each PyTorch call
# it makes beyond one (on this project's 2-core machine a call costs about as much as 4M float32
# MACs of a small layer: a few tens of microseconds), an int8 MAC as 1/INT8_SPEEDUP of a float32
# one; the cheapest form runs. Small layers therefore run whole.
CALL_COST = 1 << 22
INT8_SPEEDUP = 3
# A dense layer on a clean input recomputes its faulty rows only while they are at most this
# share of its outputs: beyond it, the changed features' index operations downstream (a partial
# requant, the next layer's input made whole) cost more than the rows saved (mnist5k's 1.9M
# weight MLP at BER 1e-4, about 470 of fc1's 1024 rows faulty: trial 0.80x -> 0.98x of clean).
DENSE_PART_MAX = 0.25


@dataclass
class Part:
    """A node's codes: the remembered clean ones except in the channels ``cols`` (dim 1,
    increasing), whose codes are ``vals``; with ``cols`` None, ``vals`` is the whole tensor."""

    cols: torch.Tensor | None
    vals: torch.Tensor


def _whole(memo: dict[str, torch.Tensor], parts: dict[str, Part], name: str) -> torch.Tensor:
    """The codes of ``name`` as one tensor (the clean ones if nothing changed: not a copy)."""
    p = parts.get(name)
    if p is None:
        return memo[name]
    if p.cols is None:
        return p.vals
    t = memo[name].clone()
    return t.index_copy_(1, p.cols, p.vals.to(t.dtype))


def _faulty_rows(ex: Executor, node: Node) -> np.ndarray:
    """Sorted distinct outputs of a conv or dense ``node`` whose weights or bias hold words
    that may differ from the clean ones."""
    a = node.attrs
    rows = []
    words = ex._dirty_words(a["weight"])
    if words is not None:
        w = ex.net.params[a["weight"]].codes
        rows.append(words // (w.size // w.shape[0]))
    if a.get("bias") and (words := ex._dirty_words(a["bias"])) is not None:
        rows.append(words)
    return unique_ints(np.concatenate(rows)) if rows else np.zeros(0, np.int64)


def _exact_kernel(ex: Executor, node: Node) -> bool:
    """Whether the layer runs on one exact kernel whose partial sums can be re-added: an int8
    layer, or a float32 layer whose worst case stays below 2**24 (not a split or float64 one)."""
    return node.name in ex._int8 or (ex._dtype[node.name] == torch.float32
                                     and node.name not in ex._chunks)


def _rows(ex: Executor, node: Node, x: torch.Tensor, rows: torch.Tensor, clean: bool = False
          ) -> torch.Tensor:
    """The accumulator of the outputs ``rows`` of ``node`` (bias included) on input ``x``, in
    the layer's exact dtype. ``clean``: ``x`` is a remembered clean activation (an int8 conv
    keeps its patch matrix from one trial to the next)."""
    a = node.attrs
    b = ex._tensors[a["bias"]] if a.get("bias") else None
    if node.name in ex._int8:
        return ex._int8[node.name].run(x, ex._w8[a["weight"]], b, ex._dtype[node.name], rows,
                                       keep=clean)
    w = ex._tensors[a["weight"]].index_select(0, rows)
    b = None if b is None else b.index_select(0, rows).to(torch.float32)
    x = x if x.dtype == torch.float32 else x.to(torch.float32)
    if node.op == "conv":
        return F.conv2d(x, w, b, stride=a["stride"], padding=a["pad"])
    return F.linear(x, w, b)


def _dense_delta(ex: Executor, node: Node, acc: torch.Tensor, new: torch.Tensor,
                 old: torch.Tensor, cols: torch.Tensor) -> None:
    """``acc`` (the clean accumulator, a copy) += (new - old) W'[:, cols]^T, exactly: the old
    products are taken out first (what is left sums codes in range), then the new ones added."""
    if node.name in ex._int8:
        n = new.shape[0]
        p = ex._int8[node.name].column_products(torch.cat([new, old]),
                                                 ex._w8[node.attrs["weight"]], cols)
        acc.sub_(p[n:].to(acc.dtype)).add_(p[:n].to(acc.dtype))
        return
    # float32: each product accumulated into acc by the GEMM itself (no product tensor);
    # every intermediate is the accumulator of some input mixing old and new codes
    wt = ex._tensors[node.attrs["weight"]].index_select(1, cols).t()
    acc.addmm_(old if old.dtype == torch.float32 else old.to(torch.float32), wt, alpha=-1)
    acc.addmm_(new if new.dtype == torch.float32 else new.to(torch.float32), wt)


def _layer(ex: Executor, node: Node, memo: dict[str, torch.Tensor], parts: dict[str, Part]
           ) -> Part | None:
    """A conv or dense ``node`` from its changed part, or None to run it whole (when that is
    the cheapest form, see :data:`CALL_COST`)."""
    if not _exact_kernel(ex, node):
        return None
    src = node.inputs[0]
    p = parts.get(src)
    # a changed input: only a dense layer on float32 accumulators adds the change (on float64
    # ones the extra passes cost more than the products they save)
    if p is not None and (node.op != "dense" or p.cols is None
                          or ex._dtype[node.name] != torch.float32):
        return None
    acc = memo[node.name]
    n, outputs = acc.shape[0], acc.shape[1]
    speed = INT8_SPEEDUP if node.name in ex._int8 else 1
    per_row = n * ex.net.params[node.attrs["weight"]].codes[0].size * acc[0, 0].numel() / speed
    whole = per_row * outputs + (2 * CALL_COST if p is not None else 0)
    if whole <= 3 * CALL_COST:              # too small for any other form to gain
        return None
    r = _faulty_rows(ex, node)
    if p is None:                           # clean input: only the faulty rows change
        if per_row * r.size + 3 * CALL_COST >= whole or (
                node.op == "dense" and r.size > DENSE_PART_MAX * outputs):
            return None
        rows = torch.as_tensor(r, device=ex.device)
        return Part(rows, _rows(ex, node, memo[src], rows, clean=True))
    cost = (2 * p.cols.numel() * n * outputs / speed + per_row * r.size
            + (6 + 5 * bool(r.size)) * CALL_COST)
    if cost >= whole:
        return None
    rows = torch.as_tensor(r, device=ex.device)
    acc = acc.clone()
    _dense_delta(ex, node, acc, p.vals, memo[src].index_select(1, p.cols), p.cols)
    if r.size:
        acc.index_copy_(1, rows, _rows(ex, node, _whole(memo, parts, src), rows).to(acc.dtype))
    return Part(None, acc)


def _step(ex: Executor, node: Node, memo: dict[str, torch.Tensor], parts: dict[str, Part]
          ) -> Part:
    """``node``'s codes, given that some of its inputs or parameters changed."""
    src = node.inputs[0]
    p = parts.get(src)
    if node.op in ("conv", "dense"):
        part = _layer(ex, node, memo, parts)
        if part is not None:
            return part
    elif p is not None and p.cols is not None and len(node.inputs) == 1 \
            and not ex._params_of[node.name]:
        if node.op in ("requant", "maxpool"):       # per channel: on the changed ones only
            vals = p.vals if ex._sole[node.name] else p.vals.clone()
            return Part(p.cols, ex._node(node, {src: vals}, inplace=True))
        if node.op == "flatten" and ex._sole[node.name]:
            if p.vals.dim() == 2:
                return p
            per = int(np.prod(p.vals.shape[2:]))
            cols = (p.cols[:, None] * per + torch.arange(per, device=p.cols.device)).reshape(-1)
            return Part(cols, p.vals.flatten(1))
    ins = {i: _whole(memo, parts, i) for i in node.inputs}
    inplace = p is not None and ex._sole[node.name]     # our own tensor, read only here
    return Part(None, ex._node(node, ins, inplace))


def forward(ex: Executor, memo: dict[str, torch.Tensor], start: int) -> torch.Tensor:
    """The class-score codes of a remembered batch (``memo``: its clean codes by node) under
    the executor's current parameters, whose first faulty reader is node ``start``."""
    parts: dict[str, Part] = {}
    dirty = {m for m, count in ex._ndiff.items() if count}
    for node in ex.net.nodes[start:]:
        if not any(i in parts for i in node.inputs) and dirty.isdisjoint(
                ex._params_of[node.name]):
            continue                                # reads nothing that changed
        parts[node.name] = _step(ex, node, memo, parts)
    out = ex.net.output
    return memo[out].clone() if out not in parts else _whole(memo, parts, out)
