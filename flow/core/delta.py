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
- a dense layer whose input is clean may instead add each changed weight's product with its
  input feature to its clean accumulator, ``x_j (w'_j - w_j)`` (a sparse product over the
  transposed input, :data:`SPARSE_MAC`; on any kernel, split and float64 ones included): a
  few changed words per row cost a few axpys, not the row's whole fan-in. Its result is stored
  column by column (the transpose of a contiguous (outputs, N) tensor); a requant works on it
  in storage order and an int8 dense layer reading it takes the transposed product;
- a dense layer whose input changed in the features ``C`` adds ``(x' - x)[:, C] W'[:, C]^T`` to
  the accumulator of its clean input at its current weights (the clean one with its faulty
  rows recomputed on the new input afterwards, or with its weight changes' products on the
  clean input added first, or, after a single product of the differences, added last), in
  float32: as one product of the differences while the clean peak plus what it can
  move stays below 2**24, else as ``- x[:, C] W'[:, C]^T + x'[:, C] W'[:, C]^T`` (every
  intermediate the accumulator of an input mixing old and new codes, so as exact as the full
  layer). An int8 layer whose worst case passes 2**24 (float64 accumulators) takes this form
  only in the first case; ``W'[:, C]`` comes from a transposed copy of the clean weights plus
  the changed words in those columns;
- a conv on an exact kernel whose input is clean may likewise add its changed weights'
  products to its faulty channels' clean accumulators, over the patch matrix of its clean
  input (made once per remembered batch, up to :data:`PATCH_BYTES`; :data:`CONV_SPARSE_MAC`);
  a float32 conv recomputes its faulty channels as one product with that matrix;
- a conv whose input changed in the channels ``C`` adds ``conv((x' - x)[:, C], W'[:, C])`` to
  its clean accumulator in float32, while every partial sum stays below 2**24 and at most a
  quarter of its channels are faulty (those recomputed on the new input, or their weight
  changes' products added);
- a requant, a max-pool and a flatten pass the changed channels on (a requant of dense
  features only those whose codes still differ from the clean ones, :data:`PRUNE_MAX`: a
  node that reads nothing changed is skipped);
- any other node, and a layer where the changed part costs more than the whole, runs whole
  (:meth:`Executor._node`) on its inputs made whole (a conv or dense layer on a float kernel:
  on the remembered clean codes with the changed channels written in for the call, and the
  clean ones written back after, :func:`_on_patched`).

Where the nodes from the first faulty one to the output are a chain of dense layers, the
compiled engine of :mod:`flow.core.chain` runs them first, from the codes that changed, and
hands on to the forms above where a layer's product is cheaper.

The results are the codes a full forward pass computes, bit for bit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from flow.core.arrays import column_major, unique_ints
from flow.core.ir import Node

if TYPE_CHECKING:                                   # pragma: no cover
    from flow.core.executor import Executor

# Each form of a layer is costed in multiply-accumulates, plus CALL_COST for each PyTorch call
# it makes beyond one (on this project's 2-core machine, timed as a campaign runs, with the heap
# frozen, a call costs about as much as 256k float32 MACs of a small layer: a few microseconds;
# 1<<18 against 1<<22, 1<<20 and 1<<16 in trial / clean ratios of the bench networks: best or
# within noise everywhere), an int8 MAC as 1/INT8_SPEEDUP of a float32 one; the cheapest form
# runs. Small layers therefore run whole.
CALL_COST = 1 << 18
INT8_SPEEDUP = 3
# A dense layer on a clean input recomputes its faulty rows only while they are at most this
# share of its outputs (and a conv adds its changed input channels only while its faulty
# channels are: digits CNN x14 at BER 1e-4, 369 of conv2's 448 faulty: trial 1.06x -> 0.40x of
# clean without this bound): beyond it, the changed features' index operations downstream (a partial
# requant, the next layer's input made whole) cost more than the rows saved (mnist5k's 1.9M
# weight MLP at BER 1e-4, about 470 of fc1's 1024 rows faulty: trial 0.80x -> 0.98x of clean).
DENSE_PART_MAX = 0.25
# A dense layer's changed weights on its clean input: each change adds x_j (w'_j - w_j) to its
# output's clean accumulator, one scaled row of the transposed input (torch.sparse.addmm, an
# axpy per change), costed as this many float32 MACs per image (measured: 516 changes of a
# 256 -> 256 layer over 359 images 67 us against 310 us whole; 6,370 of a 784 -> 1024 one over
# 1,000 images 1.2 ms against 9.4 ms).
SPARSE_MAC = 16
# The sparse form's result is stored column by column; over all outputs its readers pay for
# that (an int8 layer's transposed product, strided elementwise work): costed as this many
# float32 MACs per element, about a transposing copy (359 x 1024 float32 codes: 410 us, as
# long as the 23.5M-MAC layer producing them; an int8 1024 -> 1024 layer reading them: +300 us).
TRANSPOSED_COST = 64
# A requant's changed features (dense layers' outputs) are compared with the clean codes (to
# drop those a fault left clean) while they hold at most this many codes; a conv's channels are
# not: there the compare costs more than it saves (digits CNN x1 at BER 1e-3: 140 us a trial
# on 22 of 32 channels of 359 x 8 x 8 codes, 100 us on 1 to 3 of 16 channels).
PRUNE_MAX = 1 << 16
# A conv's weight change adds its change times a row of the clean input's patch matrix to its
# output channel: memory-bound, costed as this many float32 MACs per output value (37 changes
# over 359 x 8 x 8 outputs: 675 us, a whole 106M-MAC layer 1.8 ms); the changed-input form of
# a conv makes about six passes over its whole output (copy, add), costed as OUT_PASSES MACs
# per output value.
CONV_SPARSE_MAC = 48
OUT_PASSES = 64
# The largest patch matrix of a conv's remembered clean input kept for its weight changes'
# products (once per remembered batch).
PATCH_BYTES = 128 << 20


@dataclass
class Part:
    """A node's codes: the remembered clean ones except in the channels ``cols`` (dim 1,
    increasing), whose codes are ``vals``; with ``cols`` None, ``vals`` is the whole tensor."""

    cols: torch.Tensor | None
    vals: torch.Tensor


@dataclass
class _Change:
    """The words of a dense layer's weights and bias whose codes differ from the clean ones."""

    rows: np.ndarray        # the outputs they touch, sorted, distinct
    wrow: np.ndarray        # each changed weight's output and input feature (increasing)
    wcol: np.ndarray
    dw: np.ndarray          # its code now minus its clean code (float64)
    brow: np.ndarray        # each changed bias's output, its change
    db: np.ndarray
    moved: float | None = None      # :func:`_moved`


def _whole(memo: dict[str, torch.Tensor], parts: dict[str, Part], name: str) -> torch.Tensor:
    """The codes of ``name`` as one tensor (the clean ones if nothing changed: not a copy)."""
    p = parts.get(name)
    if p is None:
        return memo[name]
    if p.cols is None:
        return p.vals
    t = memo[name].clone()
    return t.index_copy_(1, p.cols, p.vals.to(t.dtype))


def _contiguous(memo: dict[str, torch.Tensor], side: dict, name: str) -> torch.Tensor:
    """The remembered codes of ``name``, contiguous: a tensor stored channels last (an int8
    conv's output) is copied once per remembered batch (``side``); gathering channels across
    its strides took 8 ms, from the copy 0.2 ms (359 x 128 x 8 x 8 codes)."""
    t = memo[name]
    if t.is_contiguous():
        return t
    key = ("contiguous", name)
    if key not in side:
        side[key] = t.contiguous()
    return side[key]


def _channels(memo: dict[str, torch.Tensor], side: dict, name: str, cols: torch.Tensor
              ) -> torch.Tensor:
    """The remembered codes of ``name`` in the channels ``cols`` (dim 1), as a new tensor."""
    return _contiguous(memo, side, name).index_select(1, cols)


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


@dataclass
class _Info:
    """What choosing a form of one conv or dense layer needs (made once per remembered batch)."""

    n: int                  # images
    outputs: int
    per_row: float          # float32 MACs of one output over the batch (int8: a third)
    exact: bool             # one exact kernel (:func:`_exact_kernel`)
    in_mag: int             # bound of the input codes
    w_mag: int              # bound of the weight codes
    peak: float             # largest |clean accumulator| over the batch
    spatial: int            # output positions per channel (1: dense)
    c_in: int               # input channels (features)


def _info(ex: Executor, node: Node, memo: dict[str, torch.Tensor], side: dict) -> _Info:
    """The :class:`_Info` of ``node``."""
    key = ("info", node.name)
    if key not in side:
        acc, w = memo[node.name], ex.net.params[node.attrs["weight"]]
        src = ex.net.node(node.inputs[0])
        speed = INT8_SPEEDUP if node.name in ex._int8 else 1
        side[key] = _Info(acc.shape[0], acc.shape[1],
                          acc.shape[0] * w.codes[0].size * acc[0, 0].numel() / speed,
                          _exact_kernel(ex, node), max(abs(src.lo), abs(src.hi)),
                          max(abs(w.fmt.min()), abs(w.fmt.max())), float(acc.abs().max()),
                          acc[0, 0].numel(), w.codes.shape[1])
    return side[key]


def _changes(ex: Executor, node: Node) -> _Change | None:
    """The weight and bias words of a conv or dense ``node`` whose codes differ from the clean
    ones now, read from host memory (None on another device); a weight's column is its index
    in its output's row (a conv's: channel, kernel row, kernel column)."""
    if not ex._flat:
        return None
    from flow.core import flips  # numba: loaded by the first fault
    a, empty = node.attrs, np.zeros(0, np.int64)

    def differ(name: str, per_row: int) -> tuple[np.ndarray, ...]:
        """(output, index in its row, change) of each word of ``name`` off its clean code, and
        their distinct outputs in order."""
        words = ex._dirty_words(name)
        if words is None:
            return empty, empty, np.zeros(0), empty
        rows, cols, d, outs = (np.empty(words.size, np.int64), np.empty(words.size, np.int64),
                               np.empty(words.size), np.empty(words.size, np.int64))
        if name in ex._w8:                      # int8 weights: their matrix (a conv's
            values, _, _, c, kk = ex._w8[name].layout()     # channels last)
        else:
            values, c, kk = ex._flat[name], 0, 1
        n, no = flips.changes(words, values, c, kk, ex._clean[name], per_row, rows, cols, d,
                              outs)
        return rows[:n], cols[:n], d[:n], outs[:no]

    wn = a["weight"]
    wrow, wcol, dw, rows = differ(wn, ex.net.params[wn].codes[0].size)
    brow, _, db, _ = differ(a["bias"], 1) if a.get("bias") else (empty, empty, np.zeros(0),
                                                                  empty)
    if brow.size:
        rows = unique_ints(np.concatenate([rows, brow]))
    return _Change(rows, wrow, wcol, dw, brow, db)


def _moved(ch: _Change, in_mag: int) -> float:
    """How far the changed weights and bias can move one output's accumulator, partial sum by
    partial sum: the largest sum of an output's |weight code changes| times the input's bound,
    plus the largest |bias change| (worked out once per change)."""
    if ch.moved is None:
        rows = float(np.bincount(ch.wrow, np.abs(ch.dw)).max()) * in_mag if ch.dw.size else 0.0
        ch.moved = rows + (float(np.abs(ch.db).max()) if ch.db.size else 0.0)
    return ch.moved


def _transposed(memo: dict[str, torch.Tensor], side: dict, name: str, dtype: torch.dtype
                ) -> torch.Tensor:
    """The remembered codes of ``name`` as a contiguous (features, N) tensor of ``dtype``,
    made once per remembered batch (``side``)."""
    key = (name, dtype)
    if key not in side:
        t = memo[name]
        side[key] = t.reshape(t.shape[0], -1).t().to(dtype).contiguous()
    return side[key]


def _sparse_dtype(ex: Executor, node: Node, memo: dict[str, torch.Tensor], side: dict,
                  ch: _Change) -> torch.dtype | None:
    """The dtype in which the weight-change products of a dense ``node`` keep every partial
    sum an exact integer, whatever order the sparse product adds them in: float32 while the
    largest |clean accumulator| plus :func:`_moved` stays below 2**24; else float64 if the
    accumulator is float64; else None."""
    info = _info(ex, node, memo, side)
    if info.peak + _moved(ch, info.in_mag) < 1 << 24:
        return torch.float32
    return torch.float64 if memo[node.name].dtype == torch.float64 else None


def _change_products(ch: _Change, rhs: torch.Tensor, outputs: int | None,
                     base: torch.Tensor | None = None) -> torch.Tensor:
    """What the changed weights and biases of ``ch`` add to their outputs' accumulators, in
    ``rhs``'s dtype: a COO matrix of the weight changes (outputs x fan-in) times ``rhs`` (the
    clean input transposed, or its patch matrix; ``torch.sparse.mm``, one scaled row of ``rhs``
    per change), then each bias change. ``outputs``: every output, in its own row; None: only
    ``ch.rows``, in that order. With ``base`` (that many rows), added to a copy of it."""
    dtype = rhs.dtype
    if outputs is None:
        outputs = ch.rows.size
        wrow, brow = np.searchsorted(ch.rows, ch.wrow), np.searchsorted(ch.rows, ch.brow)
    else:
        wrow, brow = ch.wrow, ch.brow
    s = torch.sparse_coo_tensor(torch.from_numpy(np.stack([wrow, ch.wcol])),
                                torch.from_numpy(ch.dw).to(dtype), (outputs, rhs.shape[0]),
                                is_coalesced=True, check_invariants=False)
    # a new tensor either way: ``base`` stays as it is
    out = torch.sparse.mm(s, rhs) if base is None else torch.sparse.addmm(base, s, rhs)
    if ch.db.size:
        db = np.zeros(outputs)
        db[brow] = ch.db
        out.add_(torch.from_numpy(db).to(dtype)[:, None])
    return out


def _weight_delta(ex: Executor, node: Node, memo: dict[str, torch.Tensor], side: dict,
                  ch: _Change, rows: torch.Tensor | None, dtype: torch.dtype,
                  clean: bool = True) -> torch.Tensor:
    """The accumulator of a dense ``node`` on its clean input with its current weights and
    bias, transposed, in ``dtype`` (:func:`_sparse_dtype`): the outputs ``ch.rows`` (``rows``,
    that tensor) or, with ``rows`` None, all of them, as (outputs, N): its clean accumulator
    plus :func:`_change_products` on the transposed clean input. Without ``clean``: only what
    the changes add, (len(rows), N)."""
    xt = _transposed(memo, side, node.inputs[0], dtype)
    if rows is None:
        acct = _transposed(memo, side, node.name, dtype)
        return _change_products(ch, xt, acct.shape[0], acct)
    # the transposed accumulator is made (and kept for the batch) only when it is read
    base = _transposed(memo, side, node.name, dtype).index_select(0, rows) if clean else None
    return _change_products(ch, xt, None, base)


def _weight_columns(ex: Executor, node: Node, side: dict, ch: _Change | None,
                    cols: torch.Tensor) -> torch.Tensor:
    """``W'[:, cols]^T`` of a dense ``node`` in float32, (len(cols), outputs): rows of a
    transposed copy of the clean weights (made once per remembered batch: gathering columns
    across the weight matrix costs more than the products) plus the changed words in those
    columns; without ``ch`` (not on the host), the current weights' columns."""
    w = node.attrs["weight"]
    if ch is None:
        if node.name in ex._int8:
            return ex._w8[w].matrix.index_select(1, cols).t().to(torch.float32)
        return ex._tensors[w].index_select(1, cols).t()
    key = ("wt", node.name)
    if key not in side:
        clean = ex._clean[w].reshape(ex.net.params[w].codes.shape[0], -1)
        side[key] = np.ascontiguousarray(clean.T, dtype=np.float32)
    c = cols.numpy()
    wt = side[key][c]                   # a copy (on the host, as ``ch``: NumPy's calls are cheaper)
    if ch.dw.size:
        pos = np.searchsorted(c, ch.wcol)                # each change's row of wt, if any
        hit = np.flatnonzero(c[np.minimum(pos, c.size - 1)] == ch.wcol)
        # distinct changed words: distinct (row, output) pairs, so a plain indexed add
        wt[pos[hit], ch.wrow[hit]] += ch.dw[hit]
    return torch.from_numpy(wt)


def _dense_delta(acc: torch.Tensor, new: torch.Tensor, old: torch.Tensor, wt: torch.Tensor,
                 single: bool) -> None:
    """``acc`` (float32, a copy) += (new - old) ``wt``, exactly, by the GEMM itself into
    ``acc`` (no product tensor). ``single``: one product of the differences (every partial sum
    is in range, :func:`_dense` checked); else the old products are taken out first, then the
    new ones added: every intermediate is the accumulator of an input mixing old and new codes,
    within the layer's worst case."""
    new = new if new.dtype == torch.float32 else new.to(torch.float32)
    old = old if old.dtype == torch.float32 else old.to(torch.float32)
    if single:
        acc.addmm_(new - old, wt)
    else:
        acc.addmm_(old, wt, alpha=-1).addmm_(new, wt)


def _patch_matrix(memo: dict[str, torch.Tensor], side: dict, node: Node, k: int,
                  dtype: torch.dtype) -> torch.Tensor | None:
    """The patch matrix of a conv ``node``'s (kernel ``k``) remembered clean input,
    (C k k, N Ho Wo) in ``dtype`` (rows in the order of a weight row: channel, kernel row,
    kernel column), made once per remembered batch; None when it would pass
    :data:`PATCH_BYTES`."""
    key = ("patches", node.name, dtype)
    if key not in side:
        x, acc, a = memo[node.inputs[0]], memo[node.name], node.attrs
        rows, cols = x.shape[1] * k * k, acc.shape[0] * acc[0, 0].numel()
        if rows * cols * torch.finfo(dtype).bits // 8 > PATCH_BYTES:
            side[key] = None
        else:
            p = F.unfold(x.to(dtype), k, padding=a["pad"], stride=a["stride"])
            side[key] = p.permute(1, 0, 2).reshape(rows, cols)
    return side[key]


def _as_channels(m: torch.Tensor, memo: dict[str, torch.Tensor], node: Node) -> torch.Tensor:
    """A product over a conv ``node``'s patch matrix, (R, N Ho Wo), as its output channels
    (N, R, Ho, Wo): a view across the strides."""
    n, _, ho, wo = memo[node.name].shape
    return m.view(m.shape[0], n, ho, wo).permute(1, 0, 2, 3)


def _conv_weight_delta(memo: dict[str, torch.Tensor], side: dict, node: Node,
                       patches: torch.Tensor, ch: _Change, rows: torch.Tensor,
                       clean: bool = True) -> torch.Tensor:
    """The accumulator of a conv ``node``'s outputs ``ch.rows`` (``rows``, that tensor) on its
    clean input with its current weights and bias, (N, R, Ho, Wo) in the dtype of the clean
    input's ``patches`` (:func:`_patch_matrix`): its clean accumulator plus
    :func:`_change_products` on them; without ``clean``, only what the changes add (a view
    across the strides)."""
    d = _as_channels(_change_products(ch, patches, None), memo, node)
    return _channels(memo, side, node.name, rows).to(d.dtype).add_(d) if clean else d


def _conv_rows(ex: Executor, node: Node, memo: dict[str, torch.Tensor], patches: torch.Tensor,
               rows: torch.Tensor) -> torch.Tensor:
    """The accumulator of a float32 conv ``node``'s outputs ``rows`` on its clean input, (N, R,
    Ho, Wo): those weight rows times the clean input's float32 ``patches`` (one matrix product;
    ``F.conv2d`` of 1 to 3 output channels took 170 us on the digits CNN's first layer, the
    product 15 us)."""
    a = node.attrs
    w = ex._tensors[a["weight"]].index_select(0, rows)
    out = w.reshape(rows.numel(), -1) @ patches
    if a.get("bias"):
        out.add_(ex._tensors[a["bias"]].index_select(0, rows).to(out.dtype)[:, None])
    return _as_channels(out, memo, node).contiguous()


def _conv(ex: Executor, node: Node, memo: dict[str, torch.Tensor], parts: dict[str, Part],
          side: dict) -> Part | None:
    """A conv ``node`` on an exact kernel from its changed part, or None to run it whole.
    Clean input: its faulty output channels, recomputed (a float32 conv: by one product with
    the clean input's patch matrix) or as the clean ones plus the weight changes' products on
    that matrix. Input channels ``C`` changed: the clean accumulator plus
    ``conv((x' - x)[:, C], W'[:, C])``, in float32 while every partial sum stays below 2**24
    (the clean peak, what the weight changes move, and ``2 |C| k k`` times the input's and
    weights' bounds) and at most a quarter of its channels are faulty, those then recomputed
    on the new input or their weight changes' products added."""
    src = node.inputs[0]
    p = parts.get(src)
    info = _info(ex, node, memo, side)
    if not info.exact or (p is not None and p.cols is None):
        return None
    n, outputs, per_row = info.n, info.outputs, info.per_row
    whole = per_row * outputs + (2 * CALL_COST if p is not None else 0)
    if whole <= 3 * CALL_COST:
        return None
    ch = _changes(ex, node)
    r = _faulty_rows(ex, node) if ch is None else ch.rows
    if p is not None and r.size > DENSE_PART_MAX * outputs:
        return None                         # most channels faulty: about a whole layer again
    rows_cost = per_row * r.size + 3 * CALL_COST
    k = ex.net.params[node.attrs["weight"]].codes.shape[-1]
    least = (ch.dw.size * n * info.spatial * CONV_SPARSE_MAC + 4 * CALL_COST if ch is not None
             and ch.dw.size else math.inf)
    dtype = (_sparse_dtype(ex, node, memo, side, ch)
             if least < min(whole, rows_cost + 2 * CALL_COST) else None)
    patches = None if dtype is None else _patch_matrix(memo, side, node, k, dtype)
    sparse = (math.inf if patches is None else ch.dw.size * n * info.spatial * CONV_SPARSE_MAC
              * (1 if dtype == torch.float32 else 2) + 6 * CALL_COST)
    if p is None:
        if min(rows_cost, sparse) >= whole:
            return None
        rows = torch.from_numpy(r).to(ex.device)
        if sparse < rows_cost:
            return Part(rows, _conv_weight_delta(memo, side, node, patches, ch, rows))
        if node.name not in ex._int8 and (
                p32 := _patch_matrix(memo, side, node, k, torch.float32)) is not None:
            return Part(rows, _conv_rows(ex, node, memo, p32, rows))
        return Part(rows, _rows(ex, node, memo[src], rows, clean=True))
    moved = _moved(ch, info.in_mag) if r.size and ch is not None else 0.0
    cols = p.cols
    if info.peak + moved + 2 * cols.numel() * k * k * info.in_mag * info.w_mag >= 1 << 24:
        return None
    fixes = {"rows": rows_cost + 2 * CALL_COST,
             "last": sparse - 2 * CALL_COST if dtype == torch.float32 else math.inf
             } if r.size else {None: 0.0}
    fix = min(fixes, key=fixes.__getitem__)
    passes = n * outputs * info.spatial * OUT_PASSES
    if per_row * outputs * cols.numel() / info.c_in + passes + fixes[fix] + 6 * CALL_COST \
            >= whole:
        return None
    a = node.attrs
    w = ex.tensors[a["weight"]].index_select(1, cols)   # current weights (int8: brought up)
    new = p.vals if p.vals.dtype == torch.float32 else p.vals.to(torch.float32)
    acc = F.conv2d(new - _channels(memo, side, src, cols).to(torch.float32), w, None,
                   stride=a["stride"], padding=a["pad"])
    acc.add_(_contiguous(memo, side, node.name))   # clean accumulator: every sum below 2**24
    if fix is not None:
        rows = torch.from_numpy(r).to(ex.device)
        if fix == "rows":
            acc.index_copy_(1, rows, _rows(ex, node, _whole(memo, parts, src), rows).to(
                acc.dtype))
        else:
            acc.index_add_(1, rows, _conv_weight_delta(memo, side, node, patches, ch, rows,
                                                       clean=False))
    return Part(None, acc)


def _dense(ex: Executor, node: Node, memo: dict[str, torch.Tensor], parts: dict[str, Part],
           side: dict) -> Part | None:
    """A dense ``node`` from its changed part, or None to run it whole (when that is the
    cheapest form, see :data:`CALL_COST`)."""
    src = node.inputs[0]
    p = parts.get(src)
    if p is not None and p.cols is None:
        return None
    info = _info(ex, node, memo, side)
    f32 = ex._dtype[node.name] == torch.float32
    # a changed input: added on an exact kernel's float32 accumulator (an int8 layer's float64
    # one too while every intermediate stays below 2**24, below; on a float64 kernel the extra
    # passes cost more than the products they save)
    if p is not None and not (info.exact and (f32 or node.name in ex._int8)):
        return None
    n, outputs, per_row = info.n, info.outputs, info.per_row
    # split or float64 kernels: about twice a float32 one
    whole = per_row * outputs * (1 if info.exact else 2) + (2 * CALL_COST if p is not None else 0)
    if whole <= 3 * CALL_COST:              # too small for any other form to gain
        return None
    ch = _changes(ex, node)
    r = _faulty_rows(ex, node) if ch is None else ch.rows
    rows_cost = per_row * r.size + 3 * CALL_COST if info.exact else math.inf
    # the products' dtype (a bincount over the changes) only where they could win on cost
    least = ch.dw.size * n * SPARSE_MAC + 4 * CALL_COST if ch is not None else math.inf
    rows_ok = p is not None or r.size <= DENSE_PART_MAX * outputs
    dtype = (_sparse_dtype(ex, node, memo, side, ch) if least < whole
             and not (rows_ok and least >= rows_cost + 2 * CALL_COST) else None)
    sparse = (math.inf if dtype is None else ch.dw.size * n * SPARSE_MAC
              * (1 if dtype == torch.float32 else 2) + 6 * CALL_COST)
    transposed = n * outputs * TRANSPOSED_COST      # a whole result column by column
    if p is None:                           # clean input: only the faulty rows change
        alone = r.size <= DENSE_PART_MAX * outputs
        if alone and min(rows_cost, sparse) < whole:
            rows = torch.as_tensor(r, device=ex.device)
            if sparse < rows_cost:
                return Part(rows, _weight_delta(ex, node, memo, side, ch, rows, dtype).t())
            return Part(rows, _rows(ex, node, memo[src], rows, clean=True))
        if not alone and sparse + transposed < whole:
            return Part(None, _weight_delta(ex, node, memo, side, ch, None, dtype).t())
        return None
    # the input changed in the features p.cols: the clean input's accumulator at the current
    # weights (its faulty rows recomputed on the new input after, or the weight changes'
    # products added first), plus the features' change times the weights
    if dtype != torch.float32:              # the sums below are float32
        sparse = math.inf
    # the faulty rows' final values, recomputed or moved by the products, lie within it too
    moved = _moved(ch, info.in_mag) if r.size and ch is not None else 0.0
    fits = info.peak + moved + 2 * p.cols.numel() * info.in_mag * info.w_mag < 1 << 24
    if not (f32 or fits):
        return None
    # the faulty rows: recomputed on the new input made whole ("rows"); or the accumulator
    # of the clean input at the current weights taken first, whole and column by column
    # ("first"); or, while one product of the differences is exact, their weight changes'
    # products on the clean input added last ("last": every partial sum of a faulty row is
    # then within the clean peak plus both moves, below 2**24)
    last = fits and r.size <= DENSE_PART_MAX * outputs  # (many: adding them costs more)
    fixes = {"rows": rows_cost + 2 * CALL_COST, "last": sparse - 2 * CALL_COST if last
             else math.inf, "first": sparse + transposed} if r.size else {None: 0.0}
    fix = min(fixes, key=fixes.__getitem__)
    if (1 if fits else 2) * p.cols.numel() * n * outputs + fixes[fix] + 6 * CALL_COST >= whole:
        return None
    if fix == "first":
        acc = _weight_delta(ex, node, memo, side, ch, None, torch.float32).t()
    else:
        acc = memo[node.name]
        acc = acc.clone() if acc.dtype == torch.float32 else acc.to(torch.float32)
    _dense_delta(acc, p.vals, _channels(memo, side, src, p.cols),
                 _weight_columns(ex, node, side, ch, p.cols), fits)
    if fix is not None and fix != "first":
        rows = torch.from_numpy(r).to(ex.device)
        if fix == "rows":
            acc.index_copy_(1, rows, _rows(ex, node, _whole(memo, parts, src), rows).to(
                acc.dtype))
        else:
            acc.index_add_(1, rows, _weight_delta(ex, node, memo, side, ch, rows, torch.float32,
                                                  clean=False).t())
    return Part(None, acc)


def _changed(memo: dict[str, torch.Tensor], side: dict, name: str, part: Part) -> Part:
    """``part`` (``cols`` not None, (N, features)) of node ``name`` without the features whose
    codes all equal the clean ones (most faults in a low weight bit vanish in the requant; the
    layers after then add fewer changed features, or none). On the host, in NumPy (a few
    microseconds a call where PyTorch's take tens), against rows of the transposed clean codes
    (made once per remembered batch): gathering a few columns of the (N, features) clean codes,
    which the trial's other work has pushed out of the caches, reads a cache line per image
    (digits MLP x4 at BER 1e-4: 72 against 45 us a call)."""
    v, cpu = part.vals, part.vals.device.type == "cpu"
    axis = 1 if column_major(v) else 0
    if cpu:
        old = _transposed(memo, side, name, v.dtype).numpy()[part.cols.numpy()]   # (R, N)
        per = np.not_equal(v.numpy().T, old).any(1)
        if per.all():
            return part
        keep = torch.from_numpy(np.flatnonzero(per))
    else:
        if axis:
            new, old = v.t(), _transposed(memo, side, name, v.dtype).index_select(0, part.cols)
        else:
            new, old = v, memo[name].index_select(1, part.cols)
        per = (new != old).any(axis)
        keep = per.nonzero().squeeze(1)
        if keep.numel() == per.numel():
            return part
    vals = v.t().index_select(0, keep).t() if axis else v.index_select(1, keep)
    return Part(part.cols.index_select(0, keep), vals)


def _step(ex: Executor, node: Node, memo: dict[str, torch.Tensor], parts: dict[str, Part],
          side: dict) -> Part:
    """``node``'s codes, given that some of its inputs or parameters changed."""
    src = node.inputs[0]
    p = parts.get(src)
    if node.op in ("conv", "dense"):
        part = (_conv if node.op == "conv" else _dense)(ex, node, memo, parts, side)
        if part is not None:
            return part
    elif p is not None and p.cols is not None and len(node.inputs) == 1 \
            and not ex._params_of[node.name]:
        if node.op in ("requant", "maxpool"):       # per channel: on the changed ones only
            vals = p.vals if ex._sole[node.name] else p.vals.clone()
            part = Part(p.cols, ex._node(node, {src: vals}, inplace=True))
            return (_changed(memo, side, node.name, part) if node.op == "requant"
                    and vals.dim() == 2 and vals.numel() <= PRUNE_MAX else part)
        if node.op == "flatten" and ex._sole[node.name]:
            if p.vals.dim() == 2:
                return p
            per = int(np.prod(p.vals.shape[2:]))
            cols = (p.cols[:, None] * per + torch.arange(per, device=p.cols.device)).reshape(-1)
            return Part(cols, p.vals.flatten(1))
    if node.op in ("conv", "dense") and node.name not in ex._int8 and p is not None \
            and p.cols is not None and len(node.inputs) == 1:
        return Part(None, _on_patched(ex, node, memo, p))
    ins = {i: _whole(memo, parts, i) for i in node.inputs}
    inplace = p is not None and ex._sole[node.name]     # our own tensor, read only here
    return Part(None, ex._node(node, ins, inplace))


def _on_patched(ex: Executor, node: Node, memo: dict[str, torch.Tensor], p: Part
                ) -> torch.Tensor:
    """A float-kernel conv or dense ``node`` run whole on its input ``p`` (changed channels):
    the changed channels are written into the remembered clean codes for the call and the
    clean ones written back after, where making the input whole would copy all of it (digits
    CNN x1's second conv at BER 1e-3, 359 x 16 x 16 x 16 codes: the trial 0.93x -> 0.95x of a
    clean inference). The layer's kernel only reads its input; the clean codes are back before
    anything else reads them, an exception included (an int8 kernel that keeps a matrix of a
    remembered input sees the write by its version and makes it again)."""
    t = memo[node.inputs[0]]
    old = t.index_select(1, p.cols)
    t.index_copy_(1, p.cols, p.vals.to(t.dtype))
    try:
        return ex._node(node, {node.inputs[0]: t}, False)
    finally:
        t.index_copy_(1, p.cols, old)


def forward(ex: Executor, memo: dict[str, torch.Tensor], side: dict, start: int
            ) -> torch.Tensor:
    """The class-score codes of a remembered batch (``memo``: its clean codes by node;
    ``side``: what this module derives from them once, such as transposed copies) under the
    executor's current parameters, whose first faulty reader is node ``start``."""
    from flow.core import chain  # numba: imported on the first faulty run
    parts: dict[str, Part] = {}
    if (got := chain.forward(ex, memo, side, start)) is not None:
        start, name, cols, codes = got      # compiled up to node start: name's codes
        if start >= len(ex.net.nodes) and cols is None:
            return codes                    # the whole chain ran: the output's codes
        parts[name] = Part(cols, codes)
    dirty = {m for m, count in ex._ndiff.items() if count}
    for node in ex.net.nodes[start:]:
        if not any(i in parts for i in node.inputs) and dirty.isdisjoint(
                ex._params_of[node.name]):
            continue                                # reads nothing that changed
        part = _step(ex, node, memo, parts, side)
        if part.cols is None or part.cols.numel():
            parts[node.name] = part             # (else: every code is the clean one)
    out = ex.net.output
    return memo[out].clone() if out not in parts else _whole(memo, parts, out)
