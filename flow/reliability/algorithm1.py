"""Algorithm 1 of the paper as pure functions: the bit-width rule, the base bit-width, protection.

The search is a function of two measurements it is given, so the rule is tested without training
(:mod:`flow.pipeline.search` supplies fine-tuning and fault campaigns):

1. From q = ``start``, measure accuracy and drop at q. If accuracy > a and drop < r, try
   q - q // 2, else q + q // 2 (the paper's binary-search rule), until the next q was tried
   already or leaves [lo, hi].
2. The base q is the smallest q tried whose accuracy exceeds a.
3. Protect the 1, 2, ... most vulnerable layers until the drop is <= r or every layer is
   protected.

The paper's pick is the last design of step 3. It can be dominated: a larger q tried in step 1,
unprotected, may meet both thresholds with fewer weight bits. :func:`pareto_pick` chooses among
every design the search evaluated instead (hetq's default, ``search.mode: pareto``).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal


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


@dataclass(frozen=True)
class Design:
    """One design the search evaluated: base bit-width, protected layers, its measurements."""

    q: int | None
    protected: tuple[str, ...]
    accuracy: float
    drop: float
    bits: int
    cycles: int = 1
    extra: dict = field(default_factory=dict, compare=False, hash=False)


def dominates(b: Design, a: Design) -> bool:
    """True if ``b`` has no more weight bits and no more drop than ``a``, and less of one."""
    return b.bits <= a.bits and b.drop <= a.drop and (b.bits < a.bits or b.drop < a.drop)


def rap_of(d: Design, ref: Design) -> float:
    """Eq. 2 relative to ``ref``: drop (negative drops count as 0) x mem_ovh x perf_ovh."""
    return max(d.drop, 0.0) * (d.bits / ref.bits) * (d.cycles / ref.cycles)


def pareto_pick(designs: Sequence[Design], a: float, r: float,
                objective: Literal["bits", "rap"] = "bits") -> tuple[int, str]:
    """The design to build among ``designs``, as (index, one-line reason).

    Among the accurate designs (accuracy > ``a``; all designs if none is), those that meet
    ``r`` (drop <= r) compete on the objective: fewest weight bits, then lowest drop
    (``bits``), or lowest RAP relative to the first design, then fewest bits, then lowest drop
    (``rap``). When none meets ``r``, the lowest drop x bits wins (RAP at equal cycles). Each of
    these orders is monotone in bits and drop, so no evaluated accurate design dominates the
    pick.
    """
    if not designs:
        raise ValueError("pareto_pick: no design evaluated")
    accurate = [i for i, d in enumerate(designs) if d.accuracy > a]
    idx = accurate or list(range(len(designs)))
    ref = designs[0]
    meets = [i for i in idx if designs[i].drop <= r]

    def key(i: int) -> tuple:
        d = designs[i]
        if not meets:
            return (max(d.drop, 0.0) * d.bits, d.bits, d.drop)
        if objective == "rap":
            return (rap_of(d, ref), d.bits, d.drop)
        return (d.bits, d.drop)

    best = min(meets or idx, key=key)
    if meets:
        why = ("fewest weight bits" if objective == "bits" else "lowest RAP") + \
            f" of the {len(meets)} designs that meet a and r"
    elif accurate:
        why = f"no design meets r = {r}; lowest drop x weight bits of the accurate designs"
    else:
        why = f"no design reaches accuracy a = {a} or meets r = {r}; lowest drop x weight bits"
    return best, why
