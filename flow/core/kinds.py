"""The vocabularies of the fault model: which memories faults hit, and how a fault acts.

One definition each, used by the run config, the command line's choices, the weight-memory
image and the fault sampler.
"""
from __future__ import annotations

from enum import Enum


class MemoryKind(str, Enum):
    """What a memory of the weight-memory image holds."""

    WEIGHT = "weight"
    BIAS = "bias"
    THRESHOLD = "threshold"
    DIRECTION = "direction"
    SCALE = "scale"
    OFFSET = "offset"


class FaultModel(str, Enum):
    """How a fault changes a stored bit: an upset (flip) or a stuck-at value."""

    FLIP = "flip"
    STUCK0 = "stuck0"
    STUCK1 = "stuck1"


MEMORY_KINDS: tuple[str, ...] = tuple(k.value for k in MemoryKind)
FAULT_MODELS: tuple[str, ...] = tuple(f.value for f in FaultModel)
