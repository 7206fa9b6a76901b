"""A compiled re-evaluation of a dense chain from the codes that changed (numba).

A campaign's trial on a multilayer perceptron at a low bit error rate changes a few weights,
and those change a few codes of a few images: the changes are sparse in the images, not in the
features, which :mod:`flow.core.delta`'s form (the clean codes plus the changed features) cannot
carry, and each of its PyTorch calls costs tens of microseconds on such small layers. Here a
chain of dense layers (``dense, requant, dense, ..., dense``, to the network's output) runs in
exact integer arithmetic from the codes that changed, one compiled function per layer:

- each changed input code ``(i, j, d)`` adds ``d`` times row ``j`` of the transposed clean
  weights to image ``i``'s accumulator row;
- each changed weight ``(o, j, dw)`` adds ``dw`` times input column ``j`` (all images) to
  output ``o``'s column buffer, each changed bias its change, and a changed weight on a changed
  input code the cross term ``d * dw``;
- the requant (round half to even, clamp; none after the last layer) runs on the changed images'
  rows and on the changed outputs' columns, and passes on the codes that differ from the clean
  ones.

The accumulators are int32 where a layer's worst-case bound (its node's ``lo``/``hi``, over every
weight code its words can hold) is below :data:`INT32_SAFE`, so that every partial sum of the
changes (at most eight times the bound) stays within int32; int64 otherwise. So the codes are
the ones a full forward pass computes, bit for bit.

Where many codes change (high bit error rates), a layer's product is cheaper: a layer runs
compiled while its cost (:data:`COMPILED_COST`) is below its product's, and passes its changes
on while the next layer's could be; else the chain hands its codes to :mod:`flow.core.delta`:
the changed columns whole where the layer's input was clean and they are few
(:data:`COLUMNS_MAX`, the form that module carries), else all of them. Two more forms: a
layer's changed columns on a clean input feed the next layer by one float32 GEMM where that
costs less than its compiled form (:func:`_gemm_operands`, :func:`_fed`; :data:`FED_MAX`,
:data:`FED_ELEMENT`), and a small last layer runs whole after a layer handed on whole
(:data:`TAIL_MAX`). The kernels take their tunables as arguments: numba freezes a global's value
into its on-disk cache.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numba as nb
import numpy as np
import torch

from flow.core.executor import EXACT_F32
from flow.core.ir import IntNetwork, Node

if TYPE_CHECKING:                                   # pragma: no cover
    from flow.core.delta import _Change
    from flow.core.executor import Executor

# A layer runs compiled while its work (a row of outputs per changed input code and per changed
# image, a column of images per changed weight and output) costs less than the whole layer's
# product, an element of it costed as this many float32 multiply-accumulates of a BLAS product
# (an int8 one as 1/INT8_FASTER of that): on digits mlp x4's 256 -> 256 layer, 1,424 changed
# input codes in 330 images took 157 us compiled against 380 us for the float32 product and
# requant; 137 changed weights of its 64 -> 256 layer 74 us against 139 us; on mlp x16's
# 1024 -> 1024 int8 layer, 1,641 changed codes 1.36 ms against 1.18 ms (AMX: 2.7 ps a
# multiply-accumulate, against 14.4 ps for float32).
COMPILED_COST = 40
INT8_FASTER = 5
# A layer's changed outputs on a clean input are passed on as whole columns (the form that
# flow.core.delta carries) while they are at most this share of its outputs; else its codes
# whole (a PyTorch index_copy of 397 of 1,024 columns for 359 images took 0.8 ms).
COLUMNS_MAX = 0.25
# Accumulators below this bound run in int32 (the changes' partial sums stay within 8 bounds).
INT32_SAFE = 1 << 28
# The largest change list the last layer keeps (else its codes are passed on whole).
LAST_CAP = 1 << 20
# A layer is fed by a GEMM of its input's changed columns while they are at most this share of
# its inputs (a fifth of that for an int8 layer); the GEMM's share of the whole product's work
# (digits mlp x4 at 1e-3: 0.40, 0.75 and 1.0 gave trial / clean 0.70, 0.72-0.73 and 0.72)
FED_MAX = 0.75
# A GEMM-fed layer's cost per element of its output beyond its product's (its requant pass), as
# float32 multiply-accumulates of the product: a layer's changed columns (on a clean input) feed
# the next layer's GEMM where that costs less than its compiled form (trial / clean at 1e-5 /
# 1e-4: digits mlp x4 1.52 / 1.07 without this choice, 1.43 / 1.20 at 60, 1.49 / 1.13 at 160;
# mlp x16 2.42-2.51 / 0.96 without, 2.43 / 1.17-1.20 at 60)
FED_ELEMENT = 60
# The largest last layer (multiply-accumulates) run whole after a layer passed on whole
TAIL_MAX = 4 << 20
_NO_CLAMP = 1 << 62


@nb.njit(cache=True, inline="always")
def _requant(v, k, lo, hi):
    """The requant of accumulator ``v``: shifted right by ``k`` rounding half to even (left by
    ``-k``), clamped to ``[lo, hi]``; as the executor's ``round(v * 2**-k)``."""
    if k > 0:
        v = (v + ((np.int64(1) << (k - 1)) - 1) + ((v >> k) & 1)) >> k
    elif k < 0:
        v = v << (-k)
    return min(max(v, lo), hi)


@nb.njit(cache=True, inline="always")
def _row_changes(i, yi, ri, oi, oj, od, m):
    """Line ``i``'s codes ``yi`` that differ from the clean ``ri``, appended to the changes
    ``oi, oj, od`` (``i``, the position in the line, output minus clean) after their first
    ``m``; returns their number. An image's row fills (image, output); an output's column of
    images, with ``oj, oi`` passed in that order, fills the same."""
    for o in range(yi.size):
        if yi[o] != ri[o]:
            oi[m] = i
            oj[m] = o
            od[m] = yi[o] - ri[o]
            m += 1
    return m


@nb.njit(cache=True)
def _by_key(keys, n, size):
    """The first ``n`` entries of ``keys`` (each in ``0..size-1``) grouped by key, a counting
    sort: ``order[start[k]:start[k + 1]]`` are key ``k``'s entries, in their order."""
    start = np.zeros(size + 1, np.int64)
    for t in range(n):
        start[keys[t] + 1] += 1
    for k in range(size):
        start[k + 1] += start[k]
    fill = start[:-1].copy()
    order = np.empty(n, np.int64)
    for t in range(n):
        order[fill[keys[t]]] = t
        fill[keys[t]] += 1
    return start, order


@nb.njit(cache=True)
def _weight_columns(XT, wrow, wcol, dw, brow, db, colq, dCT, cols):
    """The changed weights ``(wrow, wcol, dw)`` and biases ``(brow, db)`` of a layer on its
    clean input ``XT`` (features, images): each changed output's accumulator change, a row of
    ``dCT`` (``colq``: an output's row there, ``cols``: the outputs in order); returns their
    number."""
    n = XT.shape[1]
    ncol = 0
    for t in range(wrow.size):
        if colq[wrow[t]] < 0:
            colq[wrow[t]] = ncol
            cols[ncol] = wrow[t]
            ncol += 1
    for t in range(brow.size):
        if colq[brow[t]] < 0:
            colq[brow[t]] = ncol
            cols[ncol] = brow[t]
            ncol += 1
    for q in range(ncol):
        dCT[q, :] = 0
    for t in range(wrow.size):
        dq = dCT[colq[wrow[t]]]
        xc = XT[wcol[t]]
        dd = dw[t]
        for i in range(n):
            dq[i] += xc[i] * dd
    for t in range(brow.size):
        dq = dCT[colq[brow[t]]]
        b = db[t]
        for i in range(n):
            dq[i] += b
    return ncol


@nb.njit(cache=True)
def _gemm_operands(dCT, RT, cols, ncol, WTf, inq, wrow, wcol, dw, DT, Wc):
    """The operands of a layer's accumulator change when its input changed in whole columns
    (the previous layer's outputs ``cols[:ncol]`` on a clean input, their new codes in
    ``dCT[:ncol]``, the clean ones in ``RT``): ``DT`` (columns, images), the new minus the clean
    codes of the columns where some code changed, and ``Wc`` (columns, outputs), the layer's
    current weights from those inputs: its clean ones (``WTf``, float32) plus its changed words
    there (``inq``: scratch, left clear). Returns the number of those columns (a changed weight
    of the layer before often moves no code of its column: on digits mlp x4 at 1e-3, a median
    of 29 of 103 columns, 200 trials).
    ``DT``'s rows may be longer than the images (padding, left as it is)."""
    n = RT.shape[1]
    kept = 0
    for q in range(ncol):
        c = cols[q]
        dq = dCT[q]
        rc = RT[c]
        dt = DT[kept]
        moved = 0
        for i in range(n):
            d = dq[i] - rc[i]
            dt[i] = d
            moved |= d
        if moved != 0:
            inq[c] = kept
            Wc[kept, :] = WTf[c]
            kept += 1
    for t in range(wrow.size):
        q = inq[wcol[t]]
        if q >= 0:
            Wc[q, wrow[t]] += dw[t]
    for q in range(ncol):
        inq[cols[q]] = -1
    return kept


@nb.njit(cache=True)
def _fed(AT, dAT, RT, XT, wrow, wcol, dw, brow, db, k, lo, hi, YT, dims, oi, oj, od):
    """A layer whose input changed in whole columns, every accumulator by ``dAT`` (outputs,
    images; float32 exact integers, from :func:`_gemm_operands`' product), and by its changed
    weights and biases on its clean input: its requant on every image, written output by
    output into ``YT`` (outputs, images: the clean accumulators ``AT`` and codes ``RT`` are
    read along their rows, so the pass is a vector loop; an output's weight changes are summed
    in a row of images that stays in cache). Where the codes that changed fit ``oi``, they are
    written to ``oi, oj, od`` too and their number is returned, else -1. ``dims``: as
    :func:`_layer`'s (every image's row changed, the outputs with changed weights or
    biases)."""
    out, n = AT.shape
    start, order = _by_key(wrow, wrow.size, out)      # the weight changes by output
    bias = np.zeros(out, np.int64)
    for t in range(brow.size):
        bias[brow[t]] += db[t]
    buf = np.empty(n, np.int64)
    count = 0
    ncol = 0
    for o in range(out):
        at = AT[o]
        dat = dAT[o]
        rt = RT[o]
        yt = YT[o]
        if start[o + 1] > start[o] or bias[o] != 0:      # its weights or bias changed
            ncol += 1
            buf[:] = bias[o]
            for u in range(start[o], start[o + 1]):
                t = order[u]
                xc = XT[wcol[t]]
                d = np.int64(dw[t])
                for i in range(n):
                    buf[i] += xc[i] * d
            for i in range(n):
                v = _requant(np.int64(at[i]) + np.int64(dat[i]) + buf[i], k, lo, hi)
                yt[i] = v
                count += v != rt[i]
        else:
            for i in range(n):
                v = _requant(np.int64(at[i]) + np.int64(dat[i]), k, lo, hi)
                yt[i] = v
                count += v != rt[i]
    dims[0] = n
    dims[1] = ncol
    if count > oi.size:
        return -1
    m = 0
    for o in range(out):                      # (output, image) pairs: oj, oi swapped
        m = _row_changes(o, YT[o], RT[o], oj, oi, od, m)
    return m


@nb.njit(cache=True)
def _layer(XT, A, AT, R, RT, WT, ci, cj, cd, nc, wrow, wcol, dw, brow, db,
           dA, rowflag, colq, dCT, rows, cols, k, lo, hi, Y, dims, oi, oj, od, max_cols,
           fed_cols, fed_cost):
    """One dense layer and its requant from its changed input codes ``(ci, cj, cd)[:nc]`` and its
    changed weights ``(wrow, wcol, dw)`` and biases ``(brow, db)`` (the changed images' rows
    ``rows[:dims[0]]``, the changed outputs' columns ``cols[:dims[1]]``). Returns:

    - -2, with no changed input code, at most ``fed_cols`` changed columns (the next layer's
      GEMM takes that many; 0: it has none) and that GEMM cheaper than the next layer's
      compiled form on the changed codes (``fed_cost``: :data:`COMPILED_COST` and
      :data:`FED_ELEMENT`, given rather than read as globals, which numba would freeze into
      its on-disk cache): the output codes of those columns are in ``dCT[:dims[1]]``;
    - else, where the codes that changed fit ``oi``, their number: they are written to ``oi,
      oj, od`` (output minus clean);
    - else, with no changed input code and at most ``max_cols`` changed columns, -2 as above;
    - else -1: every output code is written into ``Y`` (floats; the clean codes are ``R``).

    ``Y`` is scratch otherwise: no run reads what an earlier one left there. The scratch
    (``dA``, ``rowflag``, ``colq``) is left clear."""
    n, out = A.shape
    nr = 0
    start, order = _by_key(ci, nc, n)         # the changed input codes by image
    for i in range(n):                        # image by image: a row of weights per change
        if start[i + 1] == start[i]:
            continue
        rowflag[i] = True
        rows[nr] = i
        nr += 1
        dai = dA[i]
        for u in range(start[i], start[i + 1]):
            t = order[u]
            row = WT[cj[t]]
            d = cd[t]
            for o in range(out):
                dai[o] += d * row[o]
    ncol = _weight_columns(XT, wrow, wcol, dw, brow, db, colq, dCT, cols)
    if ncol and nc:                    # the changed weights on the changed input codes
        wstart, worder = _by_key(wcol, wcol.size, WT.shape[0])   # the weight changes by input
        for t in range(nc):
            i, j, d = ci[t], cj[t], cd[t]
            for u in range(wstart[j], wstart[j + 1]):
                s = worder[u]
                dCT[colq[wrow[s]], i] += d * dw[s]
    count = 0                                 # the output codes that changed
    for q in range(nr):                       # the changed images' rows: into Y
        i = rows[q]
        ai = A[i]
        dai = dA[i]
        ri = R[i]
        yi = Y[i]
        for t in range(ncol):
            dai[cols[t]] += dCT[t, i]
        for o in range(out):
            v = _requant(ai[o] + dai[o], k, lo, hi)
            yi[o] = v
            count += v != ri[o]
            dai[o] = 0
    for q in range(ncol):                     # the changed outputs' columns: into dCT
        o = cols[q]
        at = AT[o]
        rt = RT[o]
        dq = dCT[q]
        for i in range(n):
            dq[i] = _requant(at[i] + dq[i], k, lo, hi)
        for i in range(n):
            count += dq[i] != rt[i]
        for q2 in range(nr):                  # (the changed images' codes are in Y)
            count -= dq[rows[q2]] != rt[rows[q2]]
    dims[0] = nr
    dims[1] = ncol
    m = 0
    if nr == 0 and 0 < ncol <= fed_cols and fed_cost[0] * (count + min(count, n)) > (
            ncol + fed_cost[1]) * n:          # the next layer fed by a GEMM of the columns
        for q in range(ncol):                 # costs less than its compiled form
            colq[cols[q]] = -1
        return -2
    if count <= oi.size:                      # passed on as changes
        for q in range(nr):
            m = _row_changes(rows[q], Y[rows[q]], R[rows[q]], oi, oj, od, m)
        for q in range(ncol):
            o = cols[q]
            rt = RT[o]
            dq = dCT[q]
            for i in range(n):
                if dq[i] != rt[i] and not rowflag[i]:
                    oi[m] = i
                    oj[m] = o
                    od[m] = dq[i] - rt[i]
                    m += 1
    elif nr == 0 and ncol <= max_cols:                 # passed on as whole columns (in dCT)
        for q in range(ncol):
            colq[cols[q]] = -1
        return -2
    else:                                     # passed on whole: every code of Y written
        for i in range(n):                    # (no run needs Y clean before it)
            if not rowflag[i]:
                yi = Y[i]
                ri = R[i]
                for o in range(out):
                    yi[o] = ri[o]
                for q in range(ncol):
                    yi[cols[q]] = dCT[q, i]
    for q in range(nr):                       # the scratch cleared
        rowflag[rows[q]] = False
    for q in range(ncol):
        colq[cols[q]] = -1
    return m if count <= oi.size else -1


@nb.njit(cache=True)
def _requant_t(accT, b, k, lo, hi, out):
    """The codes ``out`` (images, outputs) of the accumulators ``accT`` (outputs, images; float32
    exact integers) plus the bias ``b``, requantized."""
    fout, n = out.shape[1], out.shape[0]
    for o in range(fout):
        ao = accT[o]
        bo = np.int64(b[o])
        for i in range(n):
            out[i, o] = _requant(np.int64(ao[i]) + bo, k, lo, hi)


@nb.njit(cache=True)
def _scatter(flat, width, oi, oj, od, m):
    """Add the changes ``(oi, oj, od)[:m]`` to ``flat``, a row-major (images, ``width``) array."""
    for t in range(m):
        flat[oi[t] * width + oj[t]] += od[t]


def _narrowest(a: np.ndarray, dt: type) -> np.ndarray:
    """``a``'s integers as a contiguous array of the narrowest of int8, uint8, int16 and ``dt``
    that holds them all."""
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    t = next(t for t in (np.int8, np.uint8, np.int16, dt)
             if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max)
    return np.ascontiguousarray(a.astype(t, copy=False))


def _int(t: torch.Tensor, dtype: type) -> np.ndarray:
    """A tensor of exact integer codes as a contiguous integer array."""
    return np.ascontiguousarray(t.detach().cpu().numpy().astype(dtype))


@dataclass
class _Layer:
    """One dense layer of a chain (and the requant after it, if any): its clean codes, clean
    weights and scratch, derived once per remembered batch."""

    node: Node
    name: str                   # the node whose codes it passes on (its requant, or itself)
    end: int                    # the index of that node
    XT: np.ndarray              # the clean input codes, transposed (features, images)
    A: np.ndarray               # the clean accumulator (images, outputs) and its transpose
    AT: np.ndarray
    R: np.ndarray               # the clean codes passed on and their transpose
    RT: np.ndarray
    WT: np.ndarray              # the clean weight codes, transposed (inputs, outputs), in the
                                # smallest integer type that holds them (less to read per row)
    k: int                      # the requant's right shift; its clamp
    lo: int
    hi: int
    Y: torch.Tensor             # the codes passed on whole (written whole by each run)
    whole: float                # the cost of its product (float32 multiply-accumulates)
    scratch: dict = field(default_factory=dict)
    fed: dict | None = None     # the GEMM's operands when whole columns of its input can feed it

    def cost(self, nc: int, ch: _Change | None) -> float:
        """The compiled form's cost for ``nc`` changed input codes and the changes ``ch``."""
        n, out = self.A.shape
        cols = 0 if ch is None else ch.rows.size
        return COMPILED_COST * ((nc + min(nc, n)) * out
                                + (0 if ch is None else ch.dw.size + ch.db.size + cols) * n)


def _changed(ch: _Change | None, dt: type) -> tuple[np.ndarray, ...]:
    """A layer's changed weights ``(wrow, wcol, dw)`` and biases ``(brow, db)`` as its kernels
    take them, the changes in its accumulator type ``dt`` (none where ``ch`` is None)."""
    if ch is None:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0, dt), empty, np.zeros(0, dt)
    return ch.wrow, ch.wcol, ch.dw.astype(dt), ch.brow, ch.db.astype(dt)


def links(net: IntNetwork, start: int) -> list[tuple[int, int | None]] | None:
    """The dense chain from node ``start`` to the output: (dense node, its requant or None) per
    layer, or None if the nodes from ``start`` on are not ``dense, requant, ..., dense[,
    requant]`` each reading the one before."""
    nodes, out = net.nodes, []
    i = start
    while i < len(nodes):
        d = nodes[i]
        if d.op != "dense" or len(d.inputs) != 1 or (
                i > start and d.inputs[0] != nodes[i - 1].name):
            return None
        rq = None
        if i + 1 < len(nodes) and nodes[i + 1].op == "requant" and nodes[i + 1].inputs == [d.name]:
            rq = i + 1
        out.append((i, rq))
        i = (rq if rq is not None else i) + 1
        if i < len(nodes) and rq is None:
            return None
    return out if out and nodes[-1].name == net.output else None


class Chain:
    """The compiled form of a remembered batch's dense chain (``chain``: :func:`links` from its
    first dense layer), runnable from any of its dense layers."""

    def __init__(self, ex: Executor, memo: dict[str, torch.Tensor],
                 chain: list[tuple[int, int | None]]) -> None:
        self.ex = ex
        self.memo = memo
        self.layers: list[_Layer] = []
        self._at: dict[int, int] = {}           # each layer's index by its dense node's
        nodes = ex.net.nodes
        for di, ri in chain:
            d = nodes[di]
            rq = nodes[ri] if ri is not None else None
            bound = max(abs(d.lo), abs(d.hi), abs(rq.lo) if rq else 0, abs(rq.hi) if rq else 0)
            dt = np.int32 if bound < INT32_SAFE else np.int64
            out = rq or d
            A = _int(memo[d.name], dt)
            # the clean codes read (not accumulated into) in their narrowest integer type:
            # less to read per row
            R = _narrowest(_int(memo[out.name], dt), dt) if rq else A
            WT = _narrowest(ex._clean[d.attrs["weight"]].reshape(
                ex.net.params[d.attrs["weight"]].codes.shape[0], -1).T, dt)
            n, outs = A.shape
            whole = n * WT.shape[0] * outs / (INT8_FASTER if d.name in ex._int8 else 1)
            self._at[di] = len(self.layers)
            self.layers.append(_Layer(
                d, out.name, ri if rq else di, _narrowest(_int(memo[d.inputs[0]], dt).T, dt),
                A, np.ascontiguousarray(A.T), R, np.ascontiguousarray(R.T), WT,
                int(ex._fr[d.name] - rq.frac) if rq else 0,
                rq.lo if rq else -_NO_CLAMP, rq.hi if rq else _NO_CLAMP,
                memo[out.name].clone().contiguous(), whole))
        for li, layer in enumerate(self.layers[1:], 1):
            # fed by whole columns of the layer before (on its clean input): one float32 GEMM
            # of the code changes on the current weights, exact while every partial sum of
            # |change| <= the input's span times |weight| <= the format's largest stays below
            # 2**24 (so for at most `most` columns); cheaper than the whole product while at
            # most FED_MAX of the inputs (an int8 product's cost: a fifth of that)
            prev, w = self.layers[li - 1], layer.node.attrs["weight"]
            fmt = ex.image.memories[w].fmt
            fan_in = layer.WT.shape[0]
            most = min((EXACT_F32 - 1) // ((prev.hi - prev.lo) * max(abs(fmt.min()),
                                                                     abs(fmt.max()))),
                       int(FED_MAX * fan_in / (INT8_FASTER if layer.node.name in ex._int8
                                               else 1)))
            if most >= 1:
                n = layer.A.shape[0]
                layer.fed = dict(most=most, WTf=layer.WT.astype(np.float32),
                                 inq=np.full(fan_in, -1, np.int64),
                                 # images padded to 16 (a product's row of whole vectors:
                                 # 126 -> 116 us for 100 columns of 359 images)
                                 DT=np.zeros((fan_in, -(-n // 16) * 16), np.float32),
                                 Wc=np.zeros((fan_in, layer.A.shape[1]), np.float32),
                                 YT=np.zeros(layer.AT.shape, layer.Y.numpy().dtype))
        self._last = self._last_params()
        for li, layer in enumerate(self.layers):
            n, outs = layer.A.shape
            # the changes passed on: while the next layer's compiled form could cost less than
            # its product (a changed code costs a row of its outputs); all of the last's
            nxt = self.layers[li + 1] if li + 1 < len(self.layers) else None
            cap = (int(nxt.whole / (COMPILED_COST * nxt.A.shape[1])) if nxt
                   else min(n * outs, LAST_CAP))
            layer.scratch = dict(
                dA=np.zeros_like(layer.A), rowflag=np.zeros(n, np.bool_),
                colq=np.full(outs, -1, np.int64), dCT=np.zeros((outs, n), layer.A.dtype),
                rows=np.zeros(n, np.int64), cols=np.zeros(outs, np.int64),
                dims=np.zeros(2, np.int64),
                oi=np.zeros(cap, np.int64), oj=np.zeros(cap, np.int64),
                od=np.zeros(cap, layer.A.dtype))

    def _scattered(self, layer: _Layer, ci: np.ndarray, cj: np.ndarray, cd: np.ndarray,
                   nc: int) -> torch.Tensor:
        """``layer``'s codes: the clean ones plus the changes ``(ci, cj, cd)[:nc]``."""
        t = self.memo[layer.name].clone()
        _scatter(t.numpy().reshape(-1), t.shape[1], ci, cj, cd, nc)
        return t

    @staticmethod
    def _columns(layer: _Layer) -> tuple[torch.Tensor, torch.Tensor]:
        """The output codes of the columns ``layer``'s last run changed, on a clean input (the
        kernel leaves them in its column buffer), in increasing order."""
        s = layer.scratch
        ncol = s["dims"][1]
        order = np.argsort(s["cols"][:ncol])
        return (torch.from_numpy(s["cols"][:ncol][order]),
                torch.from_numpy(s["dCT"][:ncol][order].T).to(layer.Y.dtype))

    def _handed(self, layer: _Layer, ci: np.ndarray, cj: np.ndarray, cd: np.ndarray, nc: int
                ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``layer``'s codes with the changes ``(ci, cj, cd)[:nc]`` as flow.core.delta carries
        them: the changed columns whole while they are few (:data:`COLUMNS_MAX`), else all."""
        s = layer.scratch
        if s["dims"][0] == 0 and s["dims"][1] <= COLUMNS_MAX * layer.A.shape[1]:
            return self._columns(layer)         # a clean input: its changed columns
        cols = np.unique(cj[:nc])
        if cols.size > COLUMNS_MAX * layer.A.shape[1]:
            return None, self._scattered(layer, ci, cj, cd, nc)
        vals = layer.R[:, cols].astype(layer.A.dtype)
        _scatter(vals.reshape(-1), cols.size, ci, np.searchsorted(cols, cj[:nc]), cd, nc)
        return torch.from_numpy(cols), torch.from_numpy(vals).to(layer.Y.dtype)

    def _last_weights(self, layer: _Layer) -> tuple[np.ndarray, np.ndarray] | None:
        """The last layer's current weights (outputs, inputs) and bias, float32, where it is
        ``layer``'s next, small and exact in float32 at any weights and ``layer``'s codes are
        float32 (so it runs whole on them after ``layer``); else None."""
        if len(self.layers) < 2 or self.layers[-2] is not layer \
                or layer.Y.dtype != torch.float32:
            return None
        return self._last

    def _last_params(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The last layer's weights (outputs, inputs) and bias as views of the executor's
        parameters (so always the current ones) where it is small and exact in float32 at any
        weights (float32 kernels); else None. Made once: the executor keeps its arrays."""
        last = self.layers[-1]
        ex, d = self.ex, last.node
        if last.whole > TAIL_MAX or ex._dtype[d.name] != torch.float32 or d.name in ex._absum \
                or d.name in ex._int8:
            return None
        w = ex._flat[d.attrs["weight"]].reshape(last.A.shape[1], -1)
        b = ex._flat[d.attrs["bias"]] if d.attrs.get("bias") else np.zeros(w.shape[0], w.dtype)
        return w, b

    def _tail(self, layer: _Layer, YT: torch.Tensor | None = None
              ) -> tuple[int, str, None, torch.Tensor] | None:
        """The last layer run whole on ``layer``'s codes (its next; ``YT``: given as (features,
        images), else ``layer.Y``) where :meth:`_last_weights` allows: one float32 product
        (exact in any order), its requant compiled; else None."""
        if (wb := self._last_weights(layer)) is None:
            return None
        last = self.layers[-1]
        out = torch.empty(last.A.shape, dtype=torch.float32)
        accT = torch.from_numpy(wb[0]).mm(layer.Y.t() if YT is None else YT).numpy()
        _requant_t(accT, wb[1], last.k, last.lo, last.hi, out.numpy())
        return len(self.ex.net.nodes), last.name, None, out

    def forward(self, start: int) -> tuple[int, str, torch.Tensor | None, torch.Tensor] | None:
        """Run the chain from its dense node ``start`` under the executor's current parameters:
        (the index of the node to go on from, the node whose codes are given, the channels they
        are given in (None: all), those codes): past the output when the whole chain ran; else
        after the last layer that ran compiled (its codes whole, or its changed outputs' columns
        when its input was clean). None when its first layer costs more compiled than its
        product."""
        from flow.core.delta import _changes
        empty = np.zeros(0, np.int64)
        ci = cj = cd = empty
        nc = 0
        prev: _Layer | None = None
        last = self.layers[-1]
        li = self._at[start]
        while li < len(self.layers):
            layer = self.layers[li]
            ch = _changes(self.ex, layer.node)
            if layer.cost(nc, ch) >= layer.whole:
                if prev is None:
                    return None
                return (prev.end + 1, prev.name) + self._handed(prev, ci, cj, cd, nc)
            dt = layer.A.dtype
            wrow, wcol, dw, brow, db = _changed(ch, dt)
            s = layer.scratch
            nxt = self.layers[li + 1] if layer is not last else None
            most = 0 if nxt is None else int(COLUMNS_MAX * layer.A.shape[1])
            if nxt is not None and nxt.fed is not None:
                most = max(most, nxt.fed["most"])
            m = _layer(layer.XT, layer.A, layer.AT, layer.R, layer.RT, layer.WT,
                       ci, cj, cd.astype(dt, copy=False), nc, wrow, wcol, dw, brow, db,
                       s["dA"], s["rowflag"], s["colq"], s["dCT"], s["rows"], s["cols"],
                       layer.k, layer.lo, layer.hi, layer.Y.numpy(), s["dims"],
                       s["oi"], s["oj"], s["od"], most,
                       nxt.fed["most"] if nxt is not None and nxt.fed is not None else 0,
                       (float(COMPILED_COST), float(FED_ELEMENT)))
            if m == -2 and nxt is not None and nxt.fed is not None \
                    and s["dims"][1] <= nxt.fed["most"]:
                # its changed outputs' columns feed the next layer's GEMM
                m, tail = self._feed(layer, nxt, _changes(self.ex, nxt.node))
                layer, s, li = nxt, nxt.scratch, li + 1
                if tail is not None:            # the last layer ran with it
                    return tail
                if m == -1:                     # its codes whole, output by output
                    layer.Y.numpy()[:] = layer.fed["YT"].T
            if m == -2:                         # its changed outputs' columns
                return (layer.end + 1, layer.name) + self._columns(layer)
            if m == -1:                         # many changed: the codes whole
                if layer is last:
                    return layer.end + 1, layer.name, None, layer.Y.clone()
                if (tail := self._tail(layer)) is not None:
                    return tail
                return layer.end + 1, layer.name, None, layer.Y
            ci, cj, cd, nc = s["oi"], s["oj"], s["od"], m
            prev = layer
            li += 1
        return len(self.ex.net.nodes), last.name, None, self._scattered(last, ci, cj, cd, nc)

    def _feed(self, layer: _Layer, nxt: _Layer, ch: _Change | None
              ) -> tuple[int, tuple[int, str, None, torch.Tensor] | None]:
        """Run ``nxt`` on ``layer``'s output, changed in whole columns on a clean input (as
        its kernel left them): the changes of those codes times ``nxt``'s current weights from
        them by one float32 GEMM, then its own changed weights and biases on its clean input
        and its requant, compiled; then the last layer where that is its next and small
        (:meth:`_last_weights`) and ``nxt``'s codes are passed on whole. Returns what
        :func:`_fed` returns and what :meth:`forward` returns where the last layer ran (else
        None)."""
        f, s = nxt.fed, nxt.scratch
        ncol = int(layer.scratch["dims"][1])
        wrow, wcol, dw, brow, db = _changed(ch, nxt.A.dtype)
        kept = _gemm_operands(layer.scratch["dCT"], layer.RT, layer.scratch["cols"], ncol,
                              f["WTf"], f["inq"], wrow, wcol, dw.astype(np.float32), f["DT"],
                              f["Wc"])
        dAT = torch.from_numpy(f["Wc"][:kept]).t().mm(        # (outputs, images)
            torch.from_numpy(f["DT"][:kept])).numpy()
        m = _fed(nxt.AT, dAT, nxt.RT, nxt.XT, wrow, wcol, dw, brow, db, nxt.k, nxt.lo, nxt.hi,
                 f["YT"], s["dims"], s["oi"], s["oj"], s["od"])
        return m, (self._tail(nxt, torch.from_numpy(f["YT"])) if m == -1 else None)


def forward(ex: Executor, memo: dict[str, torch.Tensor], side: dict, start: int
            ) -> tuple[int, str, torch.Tensor | None, torch.Tensor] | None:
    """:meth:`Chain.forward` of the remembered batch ``memo`` from node ``start``, or None
    where the nodes from ``start`` are not a dense chain to the output, the executor's
    parameters are not in host memory, or the first layer costs more compiled than its
    product. The chain is made once per remembered batch and kept in ``side``, from the first
    of the dense layers that lead to the output (a later start runs its end)."""
    c = side.get("chain")
    if c is None:
        if not ex._flat or (chain := links(ex.net, start)) is None:
            return None
        while start >= 2 and (longer := links(ex.net, start - 2)) is not None:
            start, chain = start - 2, longer        # the layers before it lead here too
        c = side["chain"] = Chain(ex, memo, chain)
    return c.forward(start) if start in c._at else None


def compiled(ex: Executor) -> bool:
    """Whether ``ex``'s network is a dense chain from its first layer with parameters (a
    multilayer perceptron on host memory): every faulty run of it starts on the compiled
    engine."""
    first = min(ex._reader.values(), default=None)
    return first is not None and bool(ex._flat) and links(ex.net, first) is not None
