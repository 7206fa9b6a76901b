"""Small NumPy and PyTorch helpers shared by fault injection, the executor and its kernels."""
from __future__ import annotations

import numpy as np
import torch


def unique_ints(a: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an int array (sort-based: numpy 2.4's hash-based np.unique is
    about 10x slower on the few-hundred-element arrays of a trial)."""
    s = np.sort(a)
    return s[np.concatenate(([True], s[1:] != s[:-1]))] if s.size else s


def column_major(x: torch.Tensor) -> bool:
    """Whether ``x`` is a matrix stored column by column (the transpose of a contiguous one, as
    :mod:`flow.core.delta`'s sparse form makes): elementwise work and the int8 product read it
    in storage order, several times faster than across the strides."""
    return x.dim() == 2 and x.shape[0] > 1 and x.shape[1] > 1 and x.stride() == (1, x.shape[0])
