"""An experiment, not part of hetq: a compiled forward pass of a dense chain (dense, requant,
..., dense) from the codes a fault map changes, in exact integer arithmetic (numba), timed
against hetq's re-evaluation from what changed (:mod:`flow.core.delta`) and a clean inference,
one thread. Every trial's predictions are checked equal to hetq's, image by image.

numba is not a dependency of hetq. To run it (docs/results.md gives the figures):

    python3 -m venv /tmp/nbvenv && /tmp/nbvenv/bin/pip install numba==0.68.1
    .venv/bin/python -c "import site; print(site.getsitepackages()[0])" \
        > "$(/tmp/nbvenv/bin/python -c 'import site; print(site.getsitepackages()[0])')/hetq.pth"
    PYTHONPATH=. /tmp/nbvenv/bin/python docs/experiments/compiled_delta.py mlp 4 1e-5 1e-4 1e-3

Arguments: the bench network (``mlp`` and its width, trained as ``hetq bench fi`` trains it),
then BERs. Per BER: 300 trials (seed 1), medians: reading the map's changed words (hetq's
``delta._changes``), the compiled forward, hetq's forward from the remembered activations, and
a clean inference of a second executor
then the compiled forward layer by layer at the last
BER (the changed input codes each layer reads and the changed output codes it passes on).
Part 2 compiles a whole trial: the map drawn by hetq's streams and NumPy draws (the same map as
hetq's trial), flipped into the stored words and decoded into each layer's code changes by one
compiled function, the compiled forward, the words restored; per BER 100 trials checked equal
to hetq's (flips, correct images), then 300 timed against hetq's trial and a clean inference.
Plain (unprotected) two's complement weight memories only.

What it does per layer: each changed input code adds its change times a row of the transposed
clean weights to its image's accumulator row
each changed weight or bias adds its change times
its input column (column-major copies) to a per-column buffer, and the changed weights on the
changed input codes their cross terms
the requant then runs on the rows of changed images and
on the changed columns of the others, and passes on the codes that differ from the clean ones;
the last layer's argmax runs on the rows that changed.
"""
import collections
import gc
import statistics
import sys
import time

import numba as nb
import numpy as np
import torch

import flow.core.delta as D
from flow.core.config import BenchSize, load_config
from flow.core.executor import Executor
from flow.core.image import MemoryImage
from flow.pipeline.bench_clean import train_size
from flow.reliability.faults import WEIGHT_KINDS
from flow.reliability.parallel import FaultWorker

torch.set_num_threads(1)
net, data = train_size(load_config(None), BenchSize(arch=sys.argv[1], width=float(sys.argv[2])))
x, y = data.test.x, data.test.y
own = MemoryImage.build(net)
w = FaultWorker(Executor(net, own, "cpu"), own, x, y)
ex = w.ex
ref = Executor(net, MemoryImage.build(net), "cpu")
xq = ref.quantize_input(x)
memo = ex._memo[ex._key(w.xq, True)][1]
dense = [n for n in net.nodes if n.op == "dense"]
if [n.op for n in net.nodes[2:]] != ["dense", "requant"] * (len(dense) - 1) + ["dense"]:
    raise SystemExit("a dense chain only (input, flatten, dense, requant, ..., dense)")
rq = {n.inputs[0]: n for n in net.nodes if n.op == "requant"}
n_img = x.shape[0]
L = len(dense)


def i32(t):
    return np.ascontiguousarray(t.cpu().numpy().astype(np.int32))


X0 = i32(memo[dense[0].inputs[0]])
A = [i32(memo[d.name]) for d in dense]
R = [i32(memo[rq[d.name].name]) for d in dense[:-1]]
WT = [np.ascontiguousarray(ex._clean[d.attrs["weight"]].reshape(
    net.params[d.attrs["weight"]].codes.shape).T.astype(np.int32)) for d in dense]
shift = [int(ex._fr[d.name] - rq[d.name].frac) for d in dense[:-1]]
if min(shift) <= 0:
    raise SystemExit("a requant that shifts left: not in this experiment")
lo = [rq[d.name].lo for d in dense[:-1]]
hi = [rq[d.name].hi for d in dense[:-1]]
clean_arg = A[-1].argmax(1)
pred = np.zeros(n_img, np.int64)


@nb.njit(cache=False, inline="always")
def requant(v, k, lo, hi):
    q = (v + ((1 << (k - 1)) - 1) + ((v >> k) & 1)) >> k   # k > 0 here: round half to even
    return min(max(q, lo), hi)

@nb.njit(cache=False, inline="always")
def _slot(r, colq, cols, ncol):
    """Give output ``r`` a column buffer (its index in ``colq``) unless it has one; the count."""
    if colq[r] < 0:
        colq[r] = ncol
        cols[ncol] = r
        ncol += 1
    return ncol


@nb.njit(cache=False, fastmath=False)
def layer(XT, A, AT, R, RT, WT, ci, cj, cd, nc, wrow, wcol, dw, brow, db,
          dA, rowflag, colq, dCT, last, sh, lo, hi, oi, oj, od, y, clean_arg):
    """One dense layer (and its requant) from changed input codes (ci, cj, cd) and changed
    weights and biases: the number of changed output codes (in oi, oj, od)
    the last layer
    writes each image's predicted class into ``y`` instead."""
    n, out = A.shape
    rows = np.empty(n, np.int64)
    nr = 0
    for k in range(nc):                                  # changed input codes: row updates
        i, j, d = ci[k], cj[k], cd[k]
        row = WT[j]
        dai = dA[i]
        for o in range(out):
            dai[o] += d * row[o]
        if not rowflag[i]:
            rowflag[i] = True
            rows[nr] = i
            nr += 1
    # changed weights and biases: per changed column, x'_c * dw over all images (column-major)
    cols = np.empty(out, np.int64)
    ncol = 0
    for k in range(wrow.size):
        ncol = _slot(wrow[k], colq, cols, ncol)
    for k in range(brow.size):
        ncol = _slot(brow[k], colq, cols, ncol)
    for q in range(ncol):
        dq = dCT[q]
        for i in range(n):
            dq[i] = 0
    for k in range(wrow.size):
        dq = dCT[colq[wrow[k]]]
        xc = XT[wcol[k]]
        dd = dw[k]
        for i in range(n):
            dq[i] += xc[i] * dd
    for k in range(brow.size):
        dq = dCT[colq[brow[k]]]
        b = db[k]
        for i in range(n):
            dq[i] += b
    if ncol and nc:                # the weight changes on the changed input codes
        fan_in = WT.shape[0]
        start = np.zeros(fan_in + 1, np.int64)          # the changes by input column
        for t in range(wrow.size):
            start[wcol[t] + 1] += 1
        for c in range(fan_in):
            start[c + 1] += start[c]
        fill = start[:-1].copy()
        order = np.empty(wrow.size, np.int64)
        for t in range(wrow.size):
            order[fill[wcol[t]]] = t
            fill[wcol[t]] += 1
        for k in range(nc):
            i, j, d = ci[k], cj[k], cd[k]
            for u in range(start[j], start[j + 1]):
                t = order[u]
                dCT[colq[wrow[t]], i] += d * dw[t]
    m = 0
    if last:
        for i in range(n):
            if rowflag[i] or ncol:
                best = 0
                bv = A[i, 0] + dA[i, 0] + (dCT[colq[0], i] if colq[0] >= 0 else 0)
                for o in range(1, out):
                    v = A[i, o] + dA[i, o] + (dCT[colq[o], i] if colq[o] >= 0 else 0)
                    if v > bv:
                        bv = v
                        best = o
                p = best
            else:
                p = clean_arg[i]
            y[i] = p
        for q in range(nr):
            i = rows[q]
            for o in range(out):
                dA[i, o] = 0
            rowflag[i] = False
        for q in range(ncol):
            colq[cols[q]] = -1
        return 0
    tmp = np.empty(out, np.int32)
    for q in range(nr):                                   # rows with changed inputs: whole
        i = rows[q]
        ai = A[i]
        dai = dA[i]
        ri = R[i]
        for t in range(ncol):
            dai[cols[t]] += dCT[t, i]
        for o in range(out):                              # vectorized: no branch
            tmp[o] = requant(ai[o] + dai[o], sh, lo, hi) - ri[o]
            dai[o] = 0
        for o in range(out):
            if tmp[o] != 0:
                oi[m] = i
                oj[m] = o
                od[m] = tmp[o]
                m += 1
    for q in range(ncol):                                 # changed columns, other rows
        o = cols[q]
        at = AT[o]
        rt = RT[o]
        dq = dCT[q]
        for i in range(n):
            if rowflag[i]:
                continue
            dv = requant(at[i] + dq[i], sh, lo, hi) - rt[i]
            if dv != 0:
                oi[m] = i
                oj[m] = o
                od[m] = dv
                m += 1
    for q in range(nr):
        rowflag[rows[q]] = False
    for q in range(ncol):
        colq[cols[q]] = -1
    return m

@nb.njit(cache=False)
def clear(dX, xflag, oi, oj, m):
    for k in range(m):
        dX[oi[k], oj[k]] = 0

# scratch
XT = [np.ascontiguousarray(X0.T)] + [np.ascontiguousarray(r.T) for r in R]
AT = [np.ascontiguousarray(a.T) for a in A]
RT = [np.ascontiguousarray(r.T) for r in R] + [AT[-1]]
RR = R + [A[-1]]
dA = [np.zeros_like(a) for a in A]
rowf = [np.zeros(n_img, np.bool_) for _ in A]
colq = [np.full(a.shape[1], -1, np.int64) for a in A]
dCT = [np.zeros((a.shape[1], n_img), np.int32) for a in A]
cells = [(np.zeros(a.size, np.int64), np.zeros(a.size, np.int64), np.zeros(a.size, np.int32))
         for a in A]
E = np.zeros(0, np.int64)
E32 = np.zeros(0, np.int32)


def changes(d):
    ch = D._changes(ex, d)
    if ch is None or (ch.dw.size == 0 and ch.db.size == 0):
        return E, E, E32, E, E32
    return (ch.wrow.astype(np.int64), ch.wcol.astype(np.int64), ch.dw.astype(np.int32),
            ch.brow.astype(np.int64), ch.db.astype(np.int32))


def compiled_forward(times=None):
    ci = cj = E
    cd = E32
    nc = 0
    for li, d in enumerate(dense):
        wrow, wcol, dw, brow, db = changes(d)
        last = li == L - 1
        oi, oj, od = cells[li]
        t0 = time.perf_counter()
        m = layer(XT[li], A[li], AT[li], RR[li], RT[li], WT[li], ci, cj, cd, nc, wrow, wcol, dw,
                  brow, db, dA[li], rowf[li], colq[li], dCT[li], last,
                  shift[li] if not last else 0, lo[li] if not last else 0,
                  hi[li] if not last else 0, oi, oj, od, pred, clean_arg)
        if times is not None:
            times[li].append(time.perf_counter() - t0)
            times[("in", li)].append(nc)
            times[("out", li)].append(m)
        ci, cj, cd, nc = oi, oj, od, m
    return pred


s = w.sampler(WEIGHT_KINDS, None, None)
gc.collect()
gc.freeze()
for ber in [float(b) for b in sys.argv[3:]]:
    T = {k: [] for k in ("chg", "nb", "delta", "clean")}
    for t in range(300):
        fmap = s.sample(ber, w._streams.rng(1, ber, t))
        w.inj.apply(fmap)
        t0 = time.perf_counter()
        [changes(d) for d in dense]
        t1 = time.perf_counter()
        p1 = compiled_forward()
        t2 = time.perf_counter()
        p2 = ex.predict(w.xq, quantized=True)
        t3 = time.perf_counter()
        w.inj.undo()
        if not np.array_equal(p1, p2.numpy()):
            raise SystemExit(f"trial {t}: predictions differ")
        t4 = time.perf_counter()
        ref.predict(xq, quantized=True)
        t5 = time.perf_counter()
        for k, v in zip(T, (t1 - t0, t2 - t1 - (t1 - t0), t3 - t2, t5 - t4)):
            T[k].append(v)
    m = {k: statistics.median(v) * 1e6 for k, v in T.items()}
    print(f"{ber:g}: {len(fmap)} flips in the last map; changed words read {m['chg']:.0f} us, "
          f"compiled forward {m['nb']:.0f} us, hetq's forward {m['delta']:.0f} us, "
          f"clean inference {m['clean']:.0f} us; predictions equal in 300 trials", flush=True)

TL = collections.defaultdict(list)
for t in range(300):
    fmap = s.sample(ber, w._streams.rng(1, ber, t))
    w.inj.apply(fmap)
    compiled_forward(TL)
    w.inj.undo()
for li in range(L):
    print(f"  {dense[li].name}: {statistics.median(TL[li]) * 1e6:.0f} us, changed input codes "
          f"{statistics.median(TL[('in', li)]):.0f}, changed output codes "
          f"{statistics.median(TL[('out', li)]):.0f}")


# ---- Part 2: a whole trial compiled (the map's draw kept in NumPy, as hetq draws it) ----------
from flow.core.image import decode  # noqa: E402

mems = [own.memory(str(nm)) for nm in s.names]
layer_of = {d.attrs["weight"]: (li, 0) for li, d in enumerate(dense)}
layer_of.update({d.attrs["bias"]: (li, 1) for li, d in enumerate(dense) if d.attrs.get("bias")})
for m in mems:
    if m.protected or m.name not in layer_of or not m.fmt.signed:
        raise SystemExit(f"{m.name}: plain signed weight or bias memories only")
    every = np.arange(1 << m.width)
    ours = np.where(every >> (m.width - 1) & 1, every - (1 << m.width), every)
    if not np.array_equal(np.asarray(decode(every, m.fmt, False)), ours):
        raise SystemExit(f"{m.name}: not two's complement")
cum = s._cum.astype(np.int64)
width = np.array([m.width for m in mems], np.int64)
woff = np.concatenate([[0], np.cumsum([m.depth for m in mems])]).astype(np.int64)
mem_layer = np.array([layer_of[m.name][0] for m in mems], np.int64)
mem_bias = np.array([layer_of[m.name][1] for m in mems], np.int64)
fan_in = np.array([net.params[dense[li].attrs["weight"]].codes.shape[1] for li in mem_layer],
                  np.int64)
words = np.concatenate([m.words.astype(np.int64) for m in mems])
CAP = 1 << 18
wbuf = np.zeros((L, 3, CAP), np.int64)          # per layer: output, input, code change
bbuf = np.zeros((L, 2, CAP), np.int64)
wcnt = np.zeros(L, np.int64)
bcnt = np.zeros(L, np.int64)
undo_gw = np.zeros(CAP, np.int64)
undo_old = np.zeros(CAP, np.int64)


@nb.njit(cache=False)
def c_apply(pos, cum, width, woff, mem_layer, mem_bias, fan_in, words, wbuf, bbuf, wcnt, bcnt,
            undo_gw, undo_old):
    """Flip the sorted positions ``pos`` in ``words``; each changed word's code change goes to
    its layer's weight or bias list; returns the number of words to restore."""
    for li in range(wcnt.size):
        wcnt[li] = 0
        bcnt[li] = 0
    i = 0
    n = 0
    k = 0
    while k < pos.size:
        p = pos[k]
        while p >= cum[i + 1]:
            i += 1
        wd = width[i]
        local = p - cum[i]
        word = local // wd
        mask = np.int64(1) << (local - word * wd)
        k += 1
        while k < pos.size and pos[k] < cum[i + 1] and (pos[k] - cum[i]) // wd == word:
            mask ^= np.int64(1) << (pos[k] - cum[i] - word * wd)
            k += 1
        gw = woff[i] + word
        old = words[gw]
        new = old ^ mask
        words[gw] = new
        undo_gw[n] = gw
        undo_old[n] = old
        n += 1
        top = np.int64(1) << (wd - 1)
        dv = ((new ^ top) - top) - ((old ^ top) - top)        # two's complement codes
        li = mem_layer[i]
        if mem_bias[i]:
            c = bcnt[li]
            bbuf[li, 0, c] = word
            bbuf[li, 1, c] = dv
            bcnt[li] = c + 1
        else:
            c = wcnt[li]
            wbuf[li, 0, c] = word // fan_in[i]
            wbuf[li, 1, c] = word - (word // fan_in[i]) * fan_in[i]
            wbuf[li, 2, c] = dv
            wcnt[li] = c + 1
    return n


@nb.njit(cache=False)
def c_undo(n, words, undo_gw, undo_old):
    for k in range(n - 1, -1, -1):
        words[undo_gw[k]] = undo_old[k]


def compiled_trial(ber, t):
    rng = w._streams.rng(1, ber, t)                 # hetq's stream and draws: the same map
    n = int(rng.binomial(s.total_bits, ber))
    pos = (np.sort(rng.choice(s.total_bits, size=n, replace=False, shuffle=False)) if n
           else np.zeros(0, np.int64))
    k = c_apply(pos, cum, width, woff, mem_layer, mem_bias, fan_in, words, wbuf, bbuf, wcnt,
                bcnt, undo_gw, undo_old)
    ci = cj = E
    cd = E32
    nc = 0
    for li in range(L):
        nw, nb_ = wcnt[li], bcnt[li]
        last = li == L - 1
        oi, oj, od = cells[li]
        nc = layer(XT[li], A[li], AT[li], RR[li], RT[li], WT[li], ci, cj, cd, nc,
                   wbuf[li, 0, :nw], wbuf[li, 1, :nw], wbuf[li, 2, :nw].astype(np.int32),
                   bbuf[li, 0, :nb_], bbuf[li, 1, :nb_].astype(np.int32), dA[li], rowf[li],
                   colq[li], dCT[li], last, shift[li] if not last else 0,
                   lo[li] if not last else 0, hi[li] if not last else 0, oi, oj, od, pred,
                   clean_arg)
        ci, cj, cd = oi, oj, od
    c_undo(k, words, undo_gw, undo_old)
    return n, int((pred == yv).sum())


yv = y.numpy().astype(np.int64)
compiled_trial(1e-3, 0)                               # compile
gc.collect()
for ber in [float(b) for b in sys.argv[3:]]:
    for t in range(100):                              # the same results as hetq's trials
        if compiled_trial(ber, t) != w.trial(1, ber, t, WEIGHT_KINDS, None, None, "flip")[:2]:
            raise SystemExit(f"BER {ber:g} trial {t}: not hetq's result")
    T = {k: [] for k in ("compiled", "hetq", "clean")}
    for t in range(100, 400):
        t0 = time.perf_counter()
        compiled_trial(ber, t)
        t1 = time.perf_counter()
        w.trial(1, ber, t, WEIGHT_KINDS, None, None, "flip")
        t2 = time.perf_counter()
        ref.predict(xq, quantized=True)
        t3 = time.perf_counter()
        for key, v in zip(T, (t1 - t0, t2 - t1, t3 - t2)):
            T[key].append(v)
    m = {key: statistics.median(v) * 1e6 for key, v in T.items()}
    print(f"{ber:g}: whole trial compiled {m['compiled']:.0f} us "
          f"({m['clean'] / m['compiled']:.2f}x a clean inference), hetq's trial "
          f"{m['hetq']:.0f} us ({m['clean'] / m['hetq']:.2f}x), clean inference "
          f"{m['clean']:.0f} us; the same flips and correct images in 100 trials", flush=True)
