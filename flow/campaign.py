"""Statistical fault-injection campaigns: accuracy versus BER, stored trial by trial.

Each (BER, trial) pair gets its own random stream derived from the campaign seed, the BER and
the trial index, so results do not depend on the order trials run in or on interruptions: an
interrupted campaign rerun with the same settings skips the trials already in the SQLite store and
ends with the same table as an uninterrupted one.
"""
from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from flow.executor import Executor
from flow.faults import Injector, SeuSampler, check_ber
from flow.image import MemoryImage
from flow.stats import leveugle_sample_size
from flow.store import TrialStore


@dataclass(frozen=True)
class CampaignSpec:
    """What a campaign injects: BER points, trials per point, seed and fault options."""

    bers: tuple[float, ...]
    trials: int
    seed: int
    fault: str = "flip"
    kinds: tuple[str, ...] = ("weight",)
    layers: tuple[str, ...] | None = None
    bits: tuple[int, ...] | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """Canonical dict (the store derives the campaign id from it)."""
        return {"bers": list(self.bers), "trials": self.trials, "seed": self.seed,
                "fault": self.fault, "kinds": list(self.kinds),
                "layers": None if self.layers is None else list(self.layers),
                "bits": None if self.bits is None else list(self.bits), **self.extra}


def default_trials(trials: int | None, margin: float, confidence: float) -> int:
    """Explicit trial count, or the Leveugle sample size for a whole random fault map."""
    return trials if trials is not None else leveugle_sample_size(margin, confidence)


def trial_rng(seed: int, ber: float, trial: int) -> np.random.Generator:
    """The random stream of one trial: a function of (seed, BER, trial index) only."""
    ber_key = struct.unpack("<Q", struct.pack("<d", float(ber)))[0]
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(ber_key, trial)))


def run_campaign(executor: Executor, image: MemoryImage, x: torch.Tensor, y: torch.Tensor,
                 spec: CampaignSpec, store_path: Path, *, progress: bool = True) -> dict:
    """Run (or resume) a campaign; every trial is committed to the store as it finishes.

    Returns ``{"campaign", "clean_accuracy", "bits", "summary": [...]}``.
    """
    for b in spec.bers:
        check_ber(b)
    injector = Injector(image, executor)
    xq = executor.quantize_input(x)
    yd = y.to(executor.device)
    clean_correct = int((executor.predict(xq, quantized=True) == yd).sum())
    clean = clean_correct / len(y)
    sampler = SeuSampler(image, kinds=spec.kinds, layers=spec.layers, bits=spec.bits)
    nbits = sampler.total_bits
    with TrialStore(store_path) as store:
        cid = store.open_campaign({**spec.to_json(), "clean_correct": clean_correct,
                                   "test_size": len(y)})
        done_sets = {b: store.done(cid, b) for b in spec.bers}
        todo = [(b, t) for b in spec.bers for t in range(spec.trials) if t not in done_sets[b]]
        bar = tqdm(todo, desc="campaign", unit="trial", disable=not progress or None)
        for ber, t in bar:
            t0 = time.perf_counter()
            fmap = sampler.sample(ber, trial_rng(spec.seed, ber, t), spec.fault)
            with injector.injected(fmap):
                correct = int((executor.predict(xq, quantized=True) == yd).sum())
            store.add(cid, ber, t, n_faults=len(fmap), correct=correct, total=len(y),
                      seconds=time.perf_counter() - t0)
        summary = store.summary(cid, clean_accuracy=clean)
    return {"campaign": cid, "clean_accuracy": clean, "bits": nbits, "trials": spec.trials,
            "summary": summary}
