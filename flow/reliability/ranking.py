"""Layer ranking by vulnerability, by the method of ``rank.method``.

- ``uniform``: a uniform sample of ``rank.flips`` single stored-bit flips per weight layer; each
  flip is judged alone (critical: the accuracy on the ranking images drops), so a layer's
  critical fraction estimates LVF (Eq. 1) directly, with a known cost (layers x flips
  inferences, each from the flipped layer on). Measured against the ground truth on VGG-11,
  ResNet-18 and the digits CNN it ranks as well as the GA for the same cost or less
  (docs/scale.md), so it is the default.
- ``ga``: the paper's genetic algorithm (:mod:`flow.reliability.ga`).

Both return a :class:`~flow.reliability.ga.GAResult`: ranking (most vulnerable first), per-layer
rows (``layer``, ``bits``, ``tested``, ``critical``, ``n_vulnerable``, ``lvf``), generations (0
for ``uniform``) and inferences.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from flow.core.config import RankConfig
from flow.core.executor import Executor
from flow.core.image import MemoryImage
from flow.reliability.ga import GAResult, rank_layers_ga
from flow.reliability.vulnerability import layer_ground_truth

UNIFORM_STREAM = (1,)   # the uniform ranking's random stream, independent of the ground truth's


def ranking_images(x: torch.Tensor, y: torch.Tensor, images: int | None, seed: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The test images the GA and its ground truth classify: all of them, or (``rank.images``)
    a seeded subset of ``images`` of them, kept in test-set order."""
    if images is None or images >= len(y):
        return x, y
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0x6a,)))
    idx = torch.from_numpy(np.sort(rng.choice(len(y), size=images, replace=False)))
    return x[idx], y[idx]


def rank_layers_uniform(executor: Executor, image: MemoryImage, x: torch.Tensor,
                        y: torch.Tensor, flips: int, seed: int, *, progress: bool = False
                        ) -> GAResult:
    """Rank layers by the critical fraction of ``flips`` uniformly drawn single-bit flips each
    (all of a layer's bits when it has fewer); ties keep network order."""
    sample = layer_ground_truth(executor, image, x, y, seed=seed, trials=flips,
                                progress=progress, stream=UNIFORM_STREAM,
                                label="rank")
    rows = [{"layer": t.layer, "bits": t.bits, "tested": t.trials, "critical": t.critical,
             "n_vulnerable": t.critical_fraction * t.bits, "lvf": t.critical_fraction}
            for t in sample]
    order = sorted(range(len(rows)), key=lambda i: (-rows[i]["lvf"], i))
    ranking = [rows[i]["layer"] for i in order]
    return GAResult(ranking, rows, 0, sum(t.trials for t in sample), [ranking])


def rank_layers(executor: Executor, image: MemoryImage, x: torch.Tensor, y: torch.Tensor,
                cfg: RankConfig, seed: int,
                on_generation: Callable[[int, list[str], int], None] | None = None,
                pool=None, progress: bool = False) -> GAResult:
    """Rank the image's weight layers by ``cfg.method`` (see the module docstring)."""
    if cfg.method == "ga":
        return rank_layers_ga(executor, image, x, y, cfg, seed, on_generation, pool=pool)
    return rank_layers_uniform(executor, image, x, y, cfg.flips, seed, progress=progress)
