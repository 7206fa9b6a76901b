"""Compiled steps of a sampled map's injection: the fixed cost of every campaign trial.

A trial draws its fault positions, splits them by memory, flips the stored words and decodes the
touched ones into the executor's parameters. Done with NumPy calls, each step costs a few
microseconds per memory whatever the number of faults: on the digits MLP (84k weights) at BER
1e-4, splitting, applying and undoing a map took 0.23 ms a trial against a forward pass of
0.55 ms. Each function here does one step in one compiled pass (numba); the draws themselves
stay NumPy's, so a campaign's maps are the same.

The callers (:class:`flow.reliability.faults.SeuSampler`, :class:`flow.reliability.faults.Injector`,
:meth:`flow.core.executor.Executor.update`) import this module on first use: numba is loaded
only by a run that injects faults.
"""
from __future__ import annotations

import numba as nb
import numpy as np

# The decode of a stored word (flow.core.image.decode), by format
SIGNED, PROTECTED_SIGNED, UNSIGNED, PROTECTED_UNSIGNED, BIPOLAR, PROTECTED_BIPOLAR = range(6)


def decode_mode(signed: bool, bipolar: bool, protected: bool) -> int:
    """The :func:`update` mode of a word format."""
    if bipolar:
        return PROTECTED_BIPOLAR if protected else BIPOLAR
    if signed:
        return PROTECTED_SIGNED if protected else SIGNED
    return PROTECTED_UNSIGNED if protected else UNSIGNED


@nb.njit(cache=True)
def split(pos, cum, per_word, allowed, allowed_off, identity, words, bitpos, counts):
    """Global target-bit positions ``pos`` (increasing) -> each one's word and bit in its memory
    (``words``, ``bitpos``) and the number of positions in each memory (``counts``, added to):
    memory ``m`` holds positions ``cum[m]`` to ``cum[m + 1] - 1``, ``per_word[m]`` of them a
    word, at the bits ``allowed[allowed_off[m]:]`` (the bit itself where ``identity[m]``)."""
    m = 0
    for t in range(pos.size):
        p = pos[t]
        while p >= cum[m + 1]:
            m += 1
        local = p - cum[m]
        per = per_word[m]
        wd = local // per
        r = local - wd * per
        words[t] = wd
        bitpos[t] = r if identity[m] else allowed[allowed_off[m] + r]
        counts[m] += 1


@nb.njit(cache=True)
def flip(stored, w, b, uw, old, new):
    """Flip bits ``b`` of words ``w`` of ``stored`` (sorted, distinct (word, bit) pairs); the
    touched words, their previous and their new values go to ``uw``, ``old``, ``new``; returns
    their number."""
    nu = 0
    t = 0
    n = w.size
    while t < n:
        word = w[t]
        mask = 0
        while t < n and w[t] == word:
            mask |= 1 << b[t]                 # distinct bits: their XOR is their OR
            t += 1
        was = stored[word]
        now = was ^ mask
        stored[word] = now
        uw[nu] = word
        old[nu] = was
        new[nu] = now
        nu += 1
    return nu


@nb.njit(cache=True, inline="always")
def _decode(word, bits, mode):
    """One stored word's code (as flow.core.image.decode)."""
    if mode == SIGNED:
        half = np.int64(1) << (bits - 1)
        return ((np.int64(word) & ((half << 1) - 1)) ^ half) - half
    if mode % 2 == 1:                         # protected: the 2-of-3 vote of the MSB copies
        a = (word >> (bits + 1)) & 1
        c = (word >> bits) & 1
        d = (word >> (bits - 1)) & 1
        msb = np.int64((a & c) | (a & d) | (c & d))
    else:
        msb = np.int64((word >> (bits - 1)) & 1)
    low = np.int64(word) & ((np.int64(1) << (bits - 1)) - 1)
    if mode >= BIPOLAR:
        return np.int64(1) if msb == 1 else np.int64(-1)
    if mode == PROTECTED_SIGNED:
        return low - (msb << (bits - 1))
    return low | (msb << (bits - 1))


@nb.njit(cache=True, inline="always")
def _track(i, t, v, clean, differs, was):
    """Whether value ``i``, now ``v``, differs from ``clean`` goes into ``differs`` (its previous
    entry into ``was[t]``); returns the change in the number that differ."""
    was[t] = differs[i]
    now = v != clean[i]
    differs[i] = now
    return np.int64(now) - np.int64(was[t])


@nb.njit(cache=True)
def update(new, u, bits, mode, values, clean, differs, old, was):
    """Decode the stored words ``new`` at indices ``u`` into ``values`` (an executor's flat
    parameters), keeping their previous values in ``old``; ``differs`` (which values are off
    ``clean``) follows, its previous entries kept in ``was``. Returns the change in the number
    of values off ``clean``."""
    dn = 0
    for t in range(u.size):
        i = u[t]
        old[t] = values[i]
        values[i] = _decode(new[t], bits, mode)
        dn += _track(i, t, values[i], clean, differs, was)
    return dn


@nb.njit(cache=True, inline="always")
def _position(i, c, kk):
    """The position in an int8 weight matrix (flow.core.intkernels.weight_matrix) of flat
    weight index ``i`` in PyTorch's layout: a conv's (O, C, k, k) with ``c`` channels and
    ``kk`` kernel positions is stored (O, k, k, C); a dense layer's (``c`` 0) in place."""
    if c == 0:
        return i
    per = c * kk
    row = i // per
    rest = i - row * per
    ch = rest // kk
    return row * per + (rest - ch * kk) * c + ch


@nb.njit(cache=True, inline="always")
def _put8(i, t, v, m8, rows, per_row, c, kk, old):
    """Set int8 weight ``i`` (PyTorch's layout) of the matrix ``m8`` to ``v``, its previous code
    into ``old[t]``; its output's sum of codes (``rows``) follows."""
    p = _position(i, c, kk)
    old[t] = m8[p]
    m8[p] = v
    rows[i // per_row] += np.int32(v) - np.int32(old[t])


@nb.njit(cache=True)
def swap8(u, new, m8, rows, per_row, c, kk, old):
    """Set the int8 weights at flat indices ``u`` (PyTorch's layout) of the matrix ``m8`` to
    ``new``, their previous codes into ``old``; each output's sum of codes (``rows``) follows."""
    for t in range(u.size):
        _put8(u[t], t, new[t], m8, rows, per_row, c, kk, old)


@nb.njit(cache=True)
def update8(new, u, bits, mode, m8, rows, per_row, c, kk, clean, differs, old, was):
    """:func:`update` for an int8 layer's weights: decoded into its matrix ``m8`` (as
    :func:`swap8`); ``clean`` and ``differs`` in PyTorch's layout."""
    dn = 0
    for t in range(u.size):
        v = _decode(new[t], bits, mode)
        _put8(u[t], t, v, m8, rows, per_row, c, kk, old)
        dn += _track(u[t], t, v, clean, differs, was)
    return dn


@nb.njit(cache=True)
def changes(words, values, c, kk, clean, per_row, wrow, wcol, dw, outs):
    """The words ``words`` (flat indices in PyTorch's layout, increasing) whose current codes
    (``values``, at :func:`_position`) differ from ``clean``: each one's output (``wrow``), its
    index in its output's row (``wcol``) and the difference (``dw``), and their distinct
    outputs in order (``outs``); returns the numbers of both."""
    n = 0
    no = 0
    for t in range(words.size):
        i = words[t]
        d = np.float64(values[_position(i, c, kk)]) - np.float64(clean[i])
        if d != 0:
            r = i // per_row
            wrow[n] = r
            wcol[n] = i - r * per_row
            dw[n] = d
            n += 1
            if no == 0 or outs[no - 1] != r:
                outs[no] = r
                no += 1
    return n, no
