"""Exact int8 kernels for the integer executor (CPU).

A conv or dense layer whose weight codes fit 8 bits (every code its format can hold, so faulty
weights included) and whose input codes span at most 256 values runs as one int8 x int8 -> int32
matrix product (``torch._int_mm``, oneDNN's integer GEMM; AMX or VNNI where the CPU has them):
the products and every partial sum are exact integers, so no fan-in chunking is needed below
2**31. Inputs outside [-128, 127] (unsigned 8-bit activations) are shifted by an offset into
int8; the product then lacks ``offset * sum(weights)`` per output, which :class:`Int8Weights`
keeps word by word beside its int8 copy of the weights. A convolution is an im2col matrix
product over the input in channels-last order, the weight matrix laid out as (output, kernel
row, kernel column, channel), built in blocks of :data:`BLOCK_BYTES`.

:func:`int8_matmul_exact` checks once per process that the kernel is exact on worst-case codes
(oneDNN's int8 kernels on CPUs without VNNI may scale weights to avoid int16 saturation): where
it is not, or where ``torch._int_mm`` is missing, the executor keeps its float32 kernels.
"""
from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from flow.core.arrays import column_major
from flow.core.ir import IntNetwork, Node

INT32_LIMIT = 1 << 31
# where the int8 kernel beats the float32 one on this project's 2-core machine (the kernel
# grid of `hetq bench clean`, timed as `hetq bench fi` times: each call after a garbage
# collection, so with cold caches, where every extra kernel call costs ~0.1 ms): at least this
# many outputs, this fan-in and this fan-in x outputs
MIN_OUTPUTS = {"conv": 64, "dense": 64}
MIN_FAN_IN = {"conv": 288, "dense": 256}
MIN_WORK = {"conv": 1 << 15, "dense": 1 << 17}


@functools.cache
def int8_matmul_exact() -> bool:
    """Whether ``torch._int_mm`` exists here and gives exact int32 products on worst-case and
    random int8 codes, in the operand layouts the executor uses (checked once per process)."""
    mm = getattr(torch, "_int_mm", None)
    if mm is None:
        return False
    gen = torch.Generator().manual_seed(0)
    for m, k, n in ((1, 9, 1), (7, 37, 23), (129, 2304, 64), (600, 4608, 40)):
        a = torch.randint(-128, 128, (m, k), generator=gen, dtype=torch.int16).to(torch.int8)
        w = torch.randint(-128, 128, (n, k), generator=gen, dtype=torch.int16).to(torch.int8)
        a[0], w[0] = -128, -128                     # the largest products, all of one sign
        if m > 2 and n > 2:
            a[1], w[1] = 127, 127
            a[2], w[2] = -128, 127                  # the most negative sums
        try:
            got = mm(a, w.t())
        except RuntimeError:
            return False
        if not torch.equal(got.to(torch.int64), a.to(torch.int64) @ w.to(torch.int64).t()):
            return False
    return True


@dataclass(frozen=True)
class Int8Layer:
    """How one conv or dense layer runs on int8 codes: ``offset`` is subtracted from the input
    codes (0 when they fit int8 already; 128 for codes 0..255, ``unsigned``); ``k``, ``stride``,
    ``pad``: the convolution's square kernel, stride and zero padding (dense: 1, 1, 0)."""

    op: str
    offset: int
    unsigned: bool = False
    k: int = 1
    stride: int = 1
    pad: int = 0


def plan_int8(net: IntNetwork, node: Node, *, small: bool = False) -> Int8Layer | None:
    """The int8 form of the conv or dense ``node``, or None where its codes do not fit: weights
    of more than 8 bits, inputs that are not clamped to their range or span more than 256 codes
    (the padding's zero included), a fan-in of one, or a worst-case accumulator (input offset,
    correction and bias included) that reaches 2**31. Unless ``small``, also None for a layer
    too small for the int8 kernel to be faster (:func:`gains`)."""
    if node.op not in ("conv", "dense"):
        return None
    a = node.attrs
    fmt = net.params[a["weight"]].fmt
    if fmt.bipolar:
        w_mag = 1
    elif fmt.signed and fmt.bits <= 8:
        w_mag = 1 << (fmt.bits - 1)               # a faulty word reaches the most negative code
    elif not fmt.signed and fmt.bits <= 7:
        w_mag = (1 << fmt.bits) - 1
    else:
        return None
    src = net.node(node.inputs[0])
    if not _clamped(net, src):
        return None
    lo, hi = min(src.lo, 0), max(src.hi, 0)
    if hi - lo > 255:
        return None
    offset = 0 if lo >= -128 and hi <= 127 else lo + 128
    shape = net.params[a["weight"]].codes.shape
    fan_in = int(np.prod(shape[1:]))
    if fan_in < 2:                                # oneDNN misreads a K = 1 operand's strides
        return None
    if not small and not gains(node.op, fan_in, shape[0]):
        return None
    x_mag = max(abs(lo - offset), abs(hi - offset))
    bias = a.get("bias")
    b_mag = 0
    if bias:
        bf = net.params[bias].fmt
        b_mag = max(abs(bf.min()), abs(bf.max()), 1 << (bf.bits - 1) if bf.signed else 0)
    if fan_in * w_mag * (x_mag + abs(offset)) + b_mag >= INT32_LIMIT:
        return None
    unsigned = offset == 128 and lo == 0
    if node.op == "conv":
        if shape[2] != shape[3]:
            return None
        return Int8Layer("conv", offset, unsigned, int(shape[2]), int(a["stride"]),
                         int(a["pad"]))
    return Int8Layer("dense", offset, unsigned)


def gains(op: str, fan_in: int, outputs: int) -> bool:
    """The size rule: whether a ``conv`` or ``dense`` layer of this fan-in and output count is
    large enough for the int8 kernel to beat float32 (:data:`MIN_OUTPUTS`, :data:`MIN_FAN_IN`,
    :data:`MIN_WORK`)."""
    return (outputs >= MIN_OUTPUTS[op] and fan_in >= MIN_FAN_IN[op]
            and fan_in * outputs >= MIN_WORK[op])


def _clamped(net: IntNetwork, node: Node) -> bool:
    """Whether every code ``node`` outputs lies in its [lo, hi], faults or not: the input
    quantizer, a requant and a threshold clamp or choose; max-pool, flatten and channel
    repetition pass their input's codes on."""
    while node.op in ("maxpool", "flatten", "repeat"):
        node = net.node(node.inputs[0])
    return node.op in ("input", "requant", "threshold")


def weight_matrix(w: torch.Tensor) -> torch.Tensor:
    """Weight codes (float, dense (O, K) or conv (O, C, k, k)) as the int8 (O, K) matrix of
    :meth:`Int8Kernel.run`: a conv's columns in (kernel row, kernel column, channel) order."""
    if w.dim() == 4:
        w = w.permute(0, 2, 3, 1)
    return w.reshape(w.shape[0], -1).to(torch.int8).contiguous()


class Int8Weights:
    """One layer's int8 :func:`weight_matrix` and each output's sum of weight codes (the
    offset's correction), kept in step with the executor's weights word by word."""

    def __init__(self, w: torch.Tensor) -> None:
        """``w``: the layer's weight codes (float, PyTorch's layout)."""
        self.shape = tuple(w.shape)
        self.matrix = weight_matrix(w)
        self.rowsum = self.matrix.sum(1, dtype=torch.int32)
        self._flat = self.matrix.numpy().reshape(-1)
        self._rows = self.rowsum.numpy()

    def layout(self) -> tuple[np.ndarray, np.ndarray, int, int, int]:
        """What :func:`flow.core.flips.swap8` reads: the flat matrix, the per-output sums, the
        codes per output, and a conv's channels and kernel positions (dense: 0, 1)."""
        c, kk = (self.shape[1], self.shape[2] * self.shape[3]) if len(self.shape) == 4 else (0, 1)
        return self._flat, self._rows, self._flat.size // self._rows.size, c, kk

    def swap(self, words: np.ndarray, new: np.ndarray) -> np.ndarray:
        """Set the weights at flat indices ``words`` (PyTorch's layout) to the codes ``new``;
        returns their previous codes (int8)."""
        from flow.core import flips  # numba: loaded by the first fault
        u = np.asarray(words, dtype=np.int64)
        old = np.empty(u.size, np.int8)
        flips.swap8(u, np.asarray(new), *self.layout(), old)
        return old

    def to_float(self, w: torch.Tensor) -> None:
        """Write the int8 weights into ``w`` (float codes, PyTorch's layout)."""
        m = self.matrix
        if len(self.shape) == 4:
            o, c, kh, kw = self.shape
            m = m.view(o, kh, kw, c).permute(0, 3, 1, 2)
        w.copy_(m.view(self.shape))


BLOCK_BYTES = 32 << 20          # a conv's patch matrix is built this many bytes at a time
KEEP_BYTES = 64 << 20           # the largest patch matrix of a remembered input kept whole


class Int8Kernel:
    """Runs one :class:`Int8Layer`; keeps its work buffers (padded input, patch matrix, int32
    products) from one call to the next, so a campaign's repeated inferences allocate only
    their outputs."""

    def __init__(self, layer: Int8Layer) -> None:
        self.layer = layer
        self._work: dict[tuple, torch.Tensor] = {}
        # the patch matrix (conv) or int8 copy (dense) of one unchanging input (a remembered
        # clean activation): the input itself (held, so its storage is not reused), its
        # version, the int8 matrix
        self._kept: tuple[torch.Tensor, int, torch.Tensor] | None = None

    def _buffer(self, key: tuple, shape: tuple[int, ...], dtype: torch.dtype,
                fill: int | None = None) -> torch.Tensor:
        buf = self._work.get(key)
        if buf is None or buf.shape != shape:
            buf = torch.empty(shape, dtype=dtype) if fill is None else \
                torch.full(shape, fill, dtype=dtype)
            self._work[key] = buf
        return buf

    def to_int8(self, dst: torch.Tensor, x: torch.Tensor) -> None:
        """``dst`` (int8) = input codes ``x`` (float) minus the offset."""
        off = self.layer.offset
        if off == 0:
            dst.copy_(x)
        elif self.layer.unsigned:               # v - 128 is v with its top bit flipped
            dst.view(torch.uint8).copy_(x)
            dst.bitwise_xor_(-128)
        else:
            dst.copy_(x - off)

    def _patches(self, xn: torch.Tensor, xp: torch.Tensor, cols: torch.Tensor) -> None:
        """Write the patch matrix of the channels-last input codes ``xn`` (nb, h, w, c) into
        ``cols`` (int8), through ``xp``: the padded int8 input, its border already holding the
        shifted zero."""
        k, s, p = self.layer.k, self.layer.stride, self.layer.pad
        nb, h, w, c = xn.shape
        ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        self.to_int8(xp[:, p:p + h, p:p + w, :], xn)
        st = xp.stride()
        window = xp.as_strided((nb, ho, wo, k, k, c),
                               (st[0], s * st[1], s * st[2], st[1], st[2], 1))
        cols.view(nb, ho, wo, k, k, c).copy_(window)

    def _dense_input(self, x: torch.Tensor, keep: bool) -> torch.Tensor:
        """A dense layer's input codes ``x`` as int8 minus the offset (N, features), in a work
        buffer; with ``keep``, kept for this tensor while it does not change (a campaign's
        trials recompute a few outputs on the same remembered input)."""
        if keep:
            kept = self._kept
            if kept is None or kept[0] is not x or kept[1] != x._version:
                a = torch.empty((x.shape[0], x[0].numel()), dtype=torch.int8)
                self.to_int8(a, x.reshape(x.shape[0], -1))
                kept = self._kept = (x, x._version, a)
            return kept[2]
        x = x.reshape(x.shape[0], -1)
        a = self._buffer(("a",), tuple(x.shape), torch.int8)
        self.to_int8(a, x)
        return a

    def _patch_blocks(self, x: torch.Tensor, ho: int, wo: int, keep: bool
                      ) -> Iterator[tuple[int, int, torch.Tensor]]:
        """(first image, images, patch matrix) of the input codes ``x`` (N, C, H, W) block by
        block (:data:`BLOCK_BYTES`, in reused work buffers); with ``keep``, one block: the whole
        matrix, kept for this tensor while it does not change."""
        n, c, h, w = x.shape
        k, p, off = self.layer.k, self.layer.pad, self.layer.offset
        xn = x.permute(0, 2, 3, 1)              # channels last (a view for NHWC storage)
        if keep:
            kept = self._kept
            if kept is None or kept[0] is not x or kept[1] != x._version:
                cols = torch.empty((n * ho * wo, k * k * c), dtype=torch.int8)
                self._patches(xn, torch.full((n, h + 2 * p, w + 2 * p, c), -off,
                                             dtype=torch.int8), cols)
                kept = self._kept = (x, x._version, cols)
            yield 0, n, kept[2]
            return
        block = max(1, min(n, BLOCK_BYTES // (ho * wo * k * k * c)))
        for i in range(0, n, block):
            nb = min(block, n - i)
            # the padded input: the border holds the shifted zero, written once
            xp = self._buffer(("xp", nb), (nb, h + 2 * p, w + 2 * p, c), torch.int8, -off)
            cols = self._buffer(("cols", nb), (nb * ho * wo, k * k * c), torch.int8)
            self._patches(xn[i:i + nb], xp, cols)
            yield i, nb, cols

    def run(self, x: torch.Tensor, weights: Int8Weights, bias: torch.Tensor | None,
            dtype: torch.dtype, rows: torch.Tensor | None = None, keep: bool = False
            ) -> torch.Tensor:
        """The exact accumulator (bias included) in ``dtype`` (float32 where every value the
        caller keeps stays below 2**24, else float64): dense (N, O), conv (N, O, Ho, Wo) as a
        channels-last view. ``x``: input codes (float, any strides); ``bias``: its codes (any
        dtype) or None; ``rows``: only these outputs (sorted indices), in that order;
        ``keep``: ``x`` will not change (a remembered activation): a conv keeps its patch matrix,
        a dense layer its int8 input (up to :data:`KEEP_BYTES`), for the next call on the same
        tensor."""
        lay = self.layer
        w8, rowsum = weights.matrix, weights.rowsum
        if rows is not None:
            w8, rowsum = w8.index_select(0, rows), rowsum.index_select(0, rows)
            bias = None if bias is None else bias.index_select(0, rows)
        wt = w8.t()
        corr = None
        if lay.offset:                          # offset * each output's sum of weights
            corr = rowsum * lay.offset
        if bias is not None:
            b = bias.to(torch.int32)
            corr = b if corr is None else corr.add_(b)
        if lay.op == "dense" and rows is None and not keep and column_major(x):
            # an input stored column by column (delta's sparse form): the transposed product,
            # (O, K) x (K, N), reads it in storage order; the result is the transpose of (O, N)
            at = self._buffer(("at",), (x.shape[1], x.shape[0]), torch.int8)
            self.to_int8(at, x.t())
            g = torch._int_mm(w8, at)
            if corr is not None:
                g.add_(corr[:, None])
            return g.to(dtype).t()
        if lay.op == "dense":
            a = self._dense_input(x, keep and x.numel() <= KEEP_BYTES)
            g = torch._int_mm(a, wt, out=self._buffer(("g", rows is None),
                                                      (x.shape[0], w8.shape[0]), torch.int32))
            if corr is not None:
                g.add_(corr)
            return g.to(dtype)
        n, c, h, w = x.shape
        k, s, p = lay.k, lay.stride, lay.pad
        ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        out = torch.empty((n, ho, wo, w8.shape[0]), dtype=dtype)
        per_image = ho * wo * k * k * c
        for i, nb, cols in self._patch_blocks(x, ho, wo, keep and n * per_image <= KEEP_BYTES):
            g = torch._int_mm(cols, wt, out=self._buffer(("g", nb, rows is None),
                                                         (nb * ho * wo, w8.shape[0]), torch.int32))
            if corr is not None:
                g.add_(corr)
            out[i:i + nb].view(-1, w8.shape[0]).copy_(g)
        return out.permute(0, 3, 1, 2)
