"""TrialStreams re-seeds one generator into exactly the state trial_rng builds a new one in."""
from __future__ import annotations

import numpy as np
import pytest

from flow.reliability import streams
from flow.reliability.faults import trial_rng
from flow.reliability.streams import TrialStreams

SEEDS = [0, 1, 7, 2**32 - 1, 2**32, 2**40 + 5, 2**64 + 3, 2**130 + 11]   # 1 to 5 words
BERS = [0.0, 1e-5, 3.7e-4, 1e-3, 0.5, 1.0]
TRIALS = [0, 1, 2, 99, 2**32 - 1, 2**32, 2**33 + 3, 10**12]


def test_every_state_equals_trial_rngs():
    s = TrialStreams()
    for seed in SEEDS:
        for ber in BERS:
            for t in TRIALS:
                assert (s.rng(seed, ber, t).bit_generator.state
                        == trial_rng(seed, ber, t).bit_generator.state), (seed, ber, t)


def test_the_draws_of_a_sampler_are_the_same_in_any_order():
    s = TrialStreams()
    rng = np.random.default_rng(5)
    for _ in range(40):                  # trials in a random order, as a resumed campaign
        seed, ber, t = int(rng.integers(0, 50)), float(rng.choice(BERS)), int(rng.integers(0, 500))
        a, b = s.rng(seed, ber, t), trial_rng(seed, ber, t)
        assert a.binomial(10**6, 1e-3) == b.binomial(10**6, 1e-3)
        assert np.array_equal(a.choice(10**6, 25, replace=False, shuffle=False),
                              b.choice(10**6, 25, replace=False, shuffle=False))
        assert a.random() == b.random()
        assert s.rng(seed, ber, t) is a                   # one generator, re-seeded


def test_a_numpy_that_seeds_otherwise_falls_back_to_trial_rng(monkeypatch):
    monkeypatch.setattr(streams, "_PCG_MULT", streams._PCG_MULT + 2)    # not NumPy's any more
    s = TrialStreams()
    assert not s._exact
    a, b = s.rng(3, 1e-4, 12), trial_rng(3, 1e-4, 12)
    assert a.bit_generator.state == b.bit_generator.state
    assert s.rng(3, 1e-4, 12) is not a                     # trial_rng's own generators


@pytest.mark.parametrize("t", [0, 5])
def test_the_generator_does_not_carry_a_trials_leftover_bits(t):
    """A 32-bit draw leaves half a 64-bit word buffered in the bit generator; the next trial
    must not start from it."""
    s = TrialStreams()
    s.rng(0, 1e-3, t).integers(0, 2**31, dtype=np.int32)     # buffers a uint32
    assert (s.rng(0, 1e-3, t + 1).integers(0, 2**31, size=3, dtype=np.int32).tolist()
            == trial_rng(0, 1e-3, t + 1).integers(0, 2**31, size=3, dtype=np.int32).tolist())
