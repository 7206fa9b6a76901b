"""How well a layer ranking agrees with the per-layer ground truth (issue 16 item 4).

Pure functions over the GA's per-layer counts (``tested``, ``critical``) and the ground truth's
(``trials``, ``critical``): the Spearman correlation with a bootstrap confidence interval, and the
pairs of layers the ranking orders against the truth, with how far apart the truth puts them.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties); nan if either side is constant."""
    from scipy.stats import spearmanr
    if len(a) < 2 or len(set(a)) < 2 or len(set(b)) < 2:
        return math.nan
    return float(spearmanr(a, b).statistic)


def spearman_bootstrap(est_n: list[int], est_k: list[int], true_n: list[int], true_k: list[int],
                       *, reps: int = 2000, confidence: float = 0.95, seed: int = 0
                       ) -> tuple[float, float]:
    """Percentile bootstrap interval of the Spearman correlation between two per-layer fractions.

    Each side is a per-layer sample of independent single-flip verdicts (``k`` critical of
    ``n``); a replicate redraws every layer's verdicts with replacement (binomially, with the
    layer's observed fraction) on both sides and recomputes the correlation. Replicates where a
    side is constant (the correlation is undefined) are left out; (nan, nan) if all are.
    """
    rng = np.random.default_rng(seed)
    en, ek = np.asarray(est_n), np.asarray(est_k)
    tn, tk = np.asarray(true_n), np.asarray(true_k)
    pe = np.divide(ek, en, out=np.zeros(len(en)), where=en > 0)
    pt = np.divide(tk, tn, out=np.zeros(len(tn)), where=tn > 0)
    vals = []
    for _ in range(reps):
        fe = rng.binomial(en, pe) / np.maximum(en, 1)
        ft = rng.binomial(tn, pt) / np.maximum(tn, 1)
        r = spearman(fe.tolist(), ft.tolist())
        if not math.isnan(r):
            vals.append(r)
    if not vals:
        return math.nan, math.nan
    a = (1 - confidence) / 2
    lo, hi = np.quantile(vals, [a, 1 - a])
    return float(lo), float(hi)


@dataclass(frozen=True)
class Misorder:
    """Two layers the ranking puts in the opposite order to the ground truth."""

    ranked_higher: str       # the layer the ranking calls more vulnerable
    ranked_lower: str
    est_higher: float        # the ranking's LVF of each
    est_lower: float
    truth_higher: float      # the ground truth's critical fraction of each
    truth_lower: float
    truth_gap: float         # truth_lower - truth_higher (> 0)
    truth_cis_overlap: bool  # the truth's intervals overlap: the truth itself cannot order them

    def to_json(self) -> dict:
        """Plain dict."""
        return asdict(self)


def misorders(layers: list[str], est: dict[str, float], truth: dict[str, float],
              truth_ci: dict[str, tuple[float, float]]) -> list[Misorder]:
    """Every pair (a, b) with est[a] > est[b] and truth[a] < truth[b], largest truth gap first."""
    out = []
    for i, a in enumerate(layers):
        for b in layers[i + 1:]:
            hi, lo = (a, b) if est[a] >= est[b] else (b, a)
            if est[hi] > est[lo] and truth[hi] < truth[lo]:
                overlap = truth_ci[hi][1] >= truth_ci[lo][0]
                out.append(Misorder(hi, lo, est[hi], est[lo], truth[hi], truth[lo],
                                    truth[lo] - truth[hi], bool(overlap)))
    return sorted(out, key=lambda m: -m.truth_gap)
