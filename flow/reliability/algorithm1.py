"""Algorithm 1 of the paper as pure functions: the bit-width rule, the base bit-width, protection.

The search is a function of two measurements it is given, so the rule is tested without training
(:mod:`flow.pipeline.search` supplies fine-tuning and fault campaigns):

1. From q = ``start``, measure accuracy and drop at q. If accuracy > a and drop < r, try
   q - q // 2, else q + q // 2 (the paper's binary-search rule), until the next q was tried
   already or leaves [lo, hi].
2. The base q is the smallest q tried whose accuracy exceeds a.
3. Protect the 1, 2, ... most vulnerable layers until the drop is <= r or every layer is
   protected.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Measured:
    """Accuracy and accuracy drop of one design at the search's BER."""

    accuracy: float
    drop: float


def next_bits(q: int, m: Measured, a: float, r: float) -> int:
    """The paper's rule: q - q // 2 when the design is accurate (> a) and robust (drop < r),
    else q + q // 2."""
    return q - q // 2 if (m.accuracy > a and m.drop < r) else q + q // 2


def search_bits(measure: Callable[[int], Measured], start: int, a: float, r: float,
                lo: int = 2, hi: int = 16) -> dict[int, Measured]:
    """Every bit-width the rule visits from ``start``, in order, with its measurement."""
    tried: dict[int, Measured] = {}
    q = start
    while lo <= q <= hi and q not in tried:
        tried[q] = measure(q)
        q = next_bits(q, tried[q], a, r)
    return tried


def base_bits(tried: dict[int, Measured], a: float) -> int | None:
    """The smallest bit-width tried whose accuracy exceeds ``a`` (None if none does)."""
    accurate = [q for q, m in tried.items() if m.accuracy > a]
    return min(accurate) if accurate else None


def protect(ranking: Sequence[str], drop_without: float,
            drop_with: Callable[[list[str]], float], r: float) -> list[tuple[list[str], float]]:
    """Protect the most vulnerable layers one more at a time while the drop exceeds ``r``.

    Returns every design evaluated, starting with the unprotected one: (protected layers, drop).
    """
    steps: list[tuple[list[str], float]] = [([], drop_without)]
    while steps[-1][1] > r and len(steps[-1][0]) < len(ranking):
        protected = list(ranking[:len(steps[-1][0]) + 1])
        steps.append((protected, drop_with(protected)))
    return steps
