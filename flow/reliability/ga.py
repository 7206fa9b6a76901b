"""Layer vulnerability by a genetic algorithm over stored-bit positions (Section II, Eq. 1).

An individual is a set of ``genes`` stored weight bits (positions in the image's target-bit
space); its fitness is the accuracy drop its flips cause, taken as the sum of the single-flip
drops of its genes (each gene is tested once, in a pool, see below). Tournament selection,
uniform crossover (genes swap between parents) and mutation drive the population towards bits
whose flips hurt; a mutation draws the new gene either in the same layer or, with probability
``move``, in a layer chosen uniformly, so genes move between layers and small layers are explored
as well as large ones. New genes are always drawn uniformly within their layer.

Each generation's untested genes are classified by group testing in pools of ``genes`` bits: a
pool whose flips change no prediction marks all its bits non-critical; a pool that changes some
is split in halves down to single bits, each judged by flipping it alone (critical: the accuracy
drops). A bit is tested once; its verdict and single-flip drop are remembered. So each
layer's tested bits are a uniform sample with exact single-flip verdicts, and

    LVF(l) = N_vulnerable(l) / N_total(l),   N_vulnerable(l) = N_total(l) * critical(l) / tested(l)

estimates the fraction of layer l's bits whose flip lowers the accuracy, the quantity
:mod:`flow.reliability.vulnerability` measures directly. The run stops when the layer ranking has
not changed
for ``patience`` generations (once every layer has ``min_tested`` tested bits), or at the
inference budget. The random stream is a numpy Generator from the seed: same seed, same result.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from flow.core.config import RankConfig
from flow.core.executor import Executor
from flow.core.image import MemoryImage
from flow.reliability.faults import SeuSampler


@dataclass
class GAResult:
    """Ranking, per-layer LVF and counts, generations and inferences used."""

    ranking: list[str]
    layers: list[dict]
    generations: int
    inferences: int
    history: list[list[str]] = field(default_factory=list)
    verdicts: dict[int, bool] = field(default_factory=dict)   # target-bit position -> critical


def rank_layers_ga(executor: Executor, image: MemoryImage, x: torch.Tensor, y: torch.Tensor,
                   cfg: RankConfig, seed: int,
                   on_generation: Callable[[int, list[str], int], None] | None = None,
                   pool=None) -> GAResult:
    """Run the GA on the image's weight memories and rank its layers by LVF (highest first).

    ``cfg`` is the run config's ``rank`` section (validated there). Pool tests run on ``pool``
    (a :mod:`flow.reliability.parallel` pool; default: in this process).
    """
    rng = np.random.default_rng(seed)
    sampler = SeuSampler(image)
    mems = image.targets()
    layer_names = [m.layer for m in mems]
    starts = sampler._cum[:-1]
    sizes = np.diff(sampler._cum)
    from flow.reliability.parallel import FaultWorker, LocalPool
    pool = pool or LocalPool(FaultWorker(executor, image, x, y))
    counter = {"inferences": 0}
    verdict: dict[int, bool] = {}          # position -> critical?

    def layer_of(pos: np.ndarray) -> np.ndarray:
        return np.searchsorted(sampler._cum, pos, side="right") - 1

    def draw(layer: int) -> int:
        return int(starts[layer] + rng.integers(sizes[layer]))

    def fresh_gene(layer: int, taken: set[int]) -> int:
        for _ in range(100):
            g = draw(layer)
            if g not in taken:
                return g
        return draw(layer)

    single_drop: dict[int, float] = {}      # position -> accuracy drop of its flip alone

    def test_generation(pop: list[np.ndarray]) -> list[float]:
        """Group-test the generation's untested genes in pools of ``genes`` bits (on the pool
        of workers); fitness of an individual is the sum of its genes' single-flip drops."""
        new = sorted({int(g) for ind in pop for g in ind} - verdict.keys())
        order = rng.permutation(len(new))            # pools mix layers and individuals
        groups = [([new[j] for j in order[i:i + cfg.genes]],)
                  for i in range(0, len(new), cfg.genes)]
        for _, (drops, count) in pool.imap("classify", groups):
            counter["inferences"] += count
            single_drop.update(drops)
            verdict.update((g, d > 0) for g, d in drops.items())
        return [float(sum(single_drop[int(g)] for g in ind)) for ind in pop]

    def lvf_table() -> list[dict]:
        pos = np.fromiter(verdict.keys(), dtype=np.int64, count=len(verdict))
        crit = np.fromiter(verdict.values(), dtype=bool, count=len(verdict))
        li = layer_of(pos) if pos.size else pos
        rows = []
        for i, name in enumerate(layer_names):
            tested = int((li == i).sum())
            critical = int(crit[li == i].sum())
            frac = critical / tested if tested else 0.0
            rows.append({"layer": name, "bits": int(sizes[i]), "tested": tested,
                         "critical": critical, "n_vulnerable": frac * int(sizes[i]),
                         "lvf": frac})
        return rows

    def ranking(rows: list[dict]) -> list[str]:
        order = sorted(range(len(rows)), key=lambda i: (-rows[i]["lvf"], i))
        return [rows[i]["layer"] for i in order]

    def new_individual() -> np.ndarray:
        taken: set[int] = set()
        for _ in range(cfg.genes):
            taken.add(fresh_gene(int(rng.integers(len(layer_names))), taken))
        return np.array(sorted(taken), dtype=np.int64)

    def mutate(ind: np.ndarray) -> np.ndarray:
        genes = set(int(g) for g in ind)
        out = []
        for g in ind:
            if rng.random() < cfg.mutation:
                layer = (int(rng.integers(len(layer_names))) if rng.random() < cfg.move
                         else int(layer_of(np.array([g]))[0]))
                g = fresh_gene(layer, genes)
                genes.add(g)
            out.append(int(g))
        return np.array(sorted(set(out)), dtype=np.int64)

    def crossover(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = min(len(a), len(b))
        a, b = a.copy(), b.copy()
        swap = rng.random(n) < 0.5
        a[:n][swap], b[:n][swap] = b[:n][swap], a[:n][swap].copy()
        return np.unique(a), np.unique(b)

    pop = [new_individual() for _ in range(cfg.population)]
    fit = test_generation(pop)
    history: list[list[str]] = []
    stable, gen = 0, 0
    for gen in range(1, cfg.max_generations + 1):
        rows = lvf_table()
        rank = ranking(rows)
        history.append(rank)
        if on_generation is not None:
            on_generation(gen, rank, counter["inferences"])
        enough = all(r["tested"] >= cfg.min_tested for r in rows)
        stable = stable + 1 if len(history) > 1 and history[-2] == rank else 0
        if (enough and stable >= cfg.patience) or (
                cfg.budget is not None and counter["inferences"] >= cfg.budget):
            break
        # tournament selection
        idx = [max(rng.choice(len(pop), cfg.tournament, replace=False), key=lambda i: fit[i])
               for _ in range(len(pop))]
        children = [pop[i].copy() for i in idx]
        for i in range(0, len(children) - 1, 2):
            if rng.random() < cfg.crossover:
                children[i], children[i + 1] = crossover(children[i], children[i + 1])
        pop = [mutate(c) for c in children]
        fit = test_generation(pop)
    rows = lvf_table()
    return GAResult(ranking(rows), rows, gen, counter["inferences"], history, dict(verdict))
