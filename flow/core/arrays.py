"""Small NumPy helpers shared by fault injection and the executor."""
from __future__ import annotations

import numpy as np


def unique_ints(a: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an int array (sort-based: numpy 2.4's hash-based np.unique is
    about 10x slower on the few-hundred-element arrays of a trial)."""
    s = np.sort(a)
    return s[np.concatenate(([True], s[1:] != s[:-1]))] if s.size else s
