"""Statistical fault-injection campaigns: accuracy versus BER, stored trial by trial.

Each (BER, trial) pair gets its own random stream derived from the campaign seed, the BER and
the trial index, so results do not depend on the order trials run in or on interruptions: an
interrupted campaign rerun with the same settings skips the trials already in the SQLite store and
ends with the same table as an uninterrupted one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from flow.core.executor import Executor
from flow.core.image import MemoryImage
from flow.reliability.faults import check_ber
from flow.reliability.stats import leveugle_sample_size
from flow.reliability.store import TrialStore


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


def run_campaign(executor: Executor, image: MemoryImage, x: torch.Tensor, y: torch.Tensor,
                 spec: CampaignSpec, store_path: Path, *, progress: bool = True,
                 pool=None, batch_maps: int = 1) -> dict:
    """Run (or resume) a campaign; every trial is committed to the store as it finishes.

    Trials run on ``pool`` (a :mod:`flow.reliability.parallel` pool; default: in this process on
    ``executor``), ``batch_maps`` fault maps per forward pass (the results do not depend on it).
    Returns ``{"campaign", "clean_accuracy", "bits", "summary": [...]}``.
    """
    from flow.reliability.parallel import FaultWorker, LocalPool
    for b in spec.bers:
        check_ber(b)
    worker = FaultWorker(executor, image, x, y)
    pool = pool or LocalPool(worker)
    clean = worker.clean / len(y)
    nbits = worker.sampler(spec.kinds, spec.layers, spec.bits).total_bits
    with TrialStore(store_path) as store:
        cid = store.open_campaign({**spec.to_json(), "clean_correct": worker.clean,
                                   "test_size": len(y)})
        done_sets = {b: store.done(cid, b) for b in spec.bers}
        todo = [(spec.seed, b, t, spec.kinds, spec.layers, spec.bits, spec.fault)
                for b in spec.bers for t in range(spec.trials) if t not in done_sets[b]]
        bar = tqdm(total=len(todo), desc="campaign", unit="trial", disable=not progress or None)
        groups = [(todo[i:i + batch_maps],) for i in range(0, len(todo), batch_maps)]
        for (tasks,), results in pool.imap("trials", groups):
            for task, (n_faults, correct, seconds) in zip(tasks, results):
                store.add(cid, task[1], task[2], n_faults=n_faults, correct=correct,
                          total=len(y), seconds=seconds)
                bar.update()
        bar.close()
        summary = store.summary(cid, clean_accuracy=clean)
    return {"campaign": cid, "clean_accuracy": clean, "bits": nbits, "trials": spec.trials,
            "summary": summary}
