"""Campaign trials' random streams, without building a generator per trial.

:func:`flow.reliability.faults.trial_rng` defines a trial's stream: NumPy's PCG64 seeded by a
``SeedSequence`` of the seed with the spawn key (BER's bits, trial index). Building that
generator takes about 9 us back to back, and 70-140 us inside a campaign, where each trial's
forward pass has evicted NumPy's code and data from the CPU caches: on small networks the
dearest fixed cost of a trial. :class:`TrialStreams` gives a generator in exactly the same
state with a few Python integer operations: the ``SeedSequence`` entropy pool after the seed's
and the BER's words is computed once per (seed, BER), the trial index's words are mixed in, the
PCG64 state is derived as PCG64 seeds itself, and one generator is re-seeded in place.

The arithmetic is NumPy's (``SeedSequence`` after M. O'Neill's ``seed_seq_fe``; PCG64's
``pcg_setseq_128_srandom_r``), whose output NumPy keeps stable; a :class:`TrialStreams` checks
itself against :func:`~flow.reliability.faults.trial_rng` when built and falls back to it if
the installed NumPy ever differs.
"""
from __future__ import annotations

import numpy as np

from flow.reliability.faults import ber_key, trial_rng

_M32 = 0xFFFFFFFF
_M128 = (1 << 128) - 1
_INIT_A, _MULT_A = 0x43B0D7E5, 0x931E8875          # SeedSequence's pool hashing
_INIT_B, _MULT_B = 0x8B51F9DD, 0x58F38DED          # ... and its output hashing
_MIX_L, _MIX_R = 0xCA01F9DD, 0x4973F715
_PCG_MULT = 0x2360ED051FC65DA44385DF649FCCF645     # PCG64's 128-bit LCG multiplier
_POOL = 4                                          # SeedSequence's default pool size (words)


def _words(n: int) -> list[int]:
    """A non-negative integer as 32-bit words, least significant first (0 -> [0])."""
    out = [n & _M32]
    n >>= 32
    while n:
        out.append(n & _M32)
        n >>= 32
    return out


def _hash(v: int, h: int, mult: int) -> tuple[int, int]:
    """One hashing step: (hashed value, next hash constant)."""
    v ^= h
    h = (h * mult) & _M32
    v = (v * h) & _M32
    return v ^ (v >> 16), h


def _blend(x: int, v: int) -> int:
    """A pool word ``x`` with the hashed value ``v`` mixed in."""
    r = (_MIX_L * x - _MIX_R * v) & _M32
    return r ^ (r >> 16)


def _mix(pool: list[int], word: int, h: int) -> int:
    """Mix ``word`` into every word of ``pool`` (in place); returns the next hash constant."""
    for d in range(_POOL):
        v, h = _hash(word, h, _MULT_A)
        pool[d] = _blend(pool[d], v)
    return h


class TrialStreams:
    """One generator, re-seeded for each trial as :func:`~flow.reliability.faults.trial_rng`
    seeds a new one. The generator :meth:`rng` returns is the same object each time: draw a
    trial's numbers before asking for the next trial's."""

    def __init__(self) -> None:
        self._bits = np.random.PCG64(0)
        self._gen = np.random.Generator(self._bits)
        self._prefix: dict[tuple[int, int], tuple[list[int], int]] = {}
        self._exact = True
        probe = (0, 1e-3, 1 << 33)          # a trial index of two words
        self._exact = (self.rng(*probe).bit_generator.state
                       == trial_rng(*probe).bit_generator.state)

    def _pool(self, seed: int, ber_bits: int) -> tuple[list[int], int]:
        """The entropy pool and hash constant after the seed's and the BER's words."""
        key = (seed, ber_bits)
        if key not in self._prefix:
            run = _words(seed)
            # a spawn key follows: the seed's words are padded with zeros to the pool size
            entropy = run + [0] * max(0, _POOL - len(run)) + _words(ber_bits)
            h, pool = _INIT_A, []
            for i in range(_POOL):
                v, h = _hash(entropy[i], h, _MULT_A)
                pool.append(v)
            for s in range(_POOL):            # every word affects every other
                for d in range(_POOL):
                    if s != d:
                        v, h = _hash(pool[s], h, _MULT_A)
                        pool[d] = _blend(pool[d], v)
            for word in entropy[_POOL:]:
                h = _mix(pool, word, h)
            self._prefix[key] = (pool, h)
        return self._prefix[key]

    def rng(self, seed: int, ber: float, trial: int) -> np.random.Generator:
        """The generator of trial ``trial`` at ``ber`` under ``seed``: the state
        ``trial_rng(seed, ber, trial)`` starts in (seed and trial: non-negative integers)."""
        if not self._exact:
            return trial_rng(seed, ber, trial)
        pool, h = self._pool(int(seed), ber_key(ber))
        pool = list(pool)
        for word in _words(int(trial)):
            h = _mix(pool, word, h)
        out, h = [], _INIT_B
        for i in range(8):                    # generate_state(4, uint64): 8 words
            v, h = _hash(pool[i % _POOL], h, _MULT_B)
            out.append(v)
        state = (out[1] << 96) | (out[0] << 64) | (out[3] << 32) | out[2]
        seq = (out[5] << 96) | (out[4] << 64) | (out[7] << 32) | out[6]
        inc = ((seq << 1) | 1) & _M128
        s = ((inc + state) * _PCG_MULT + inc) & _M128   # two LCG steps from 0, state added
        self._bits.state = {"bit_generator": "PCG64", "state": {"state": s, "inc": inc},
                            "has_uint32": 0, "uinteger": 0}
        return self._gen
