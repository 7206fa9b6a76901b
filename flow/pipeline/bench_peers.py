"""The benchmark's peers, each used the way its users use it, on the float twin of a network.

- :class:`FloatTwin`: plain ``Conv2d``/``Linear`` holding the dequantized weights, ReLU,
  ``MaxPool2d``: the model PyTorchFI and MRFI wrap (neither can see inside Brevitas modules).
- PyTorchFI 0.6.0 (:func:`pytorchfi_trial`): a fault count drawn for the BER, PyTorchFI's own
  location sampler (``random_weight_location``: a layer uniformly, then an index in it), and
  ``declare_weight_fi(function=...)`` with a bit-flip function on the value, since PyTorchFI has
  none built in: the value's code at the layer's fixed-point format, one random bit flipped.
- MRFI 2.1.0 (:func:`mrfi_model`): its weight fault injection with the BER-rate selector
  (``RandomPositionByRate``, Poisson count; its rate is per value, so rate = BER x bits) and
  either its integer bit flip (``IntRandomBitFlip``) after its ``SymmericQuantization`` at the
  layer's power-of-two range and bit-width, or its float32 bit flip (``FloatRandomBitFlip``).
  MRFI re-injects at every forward call; its golden run is its clean inference.

Both peers draw from global random states (``random``, ``numpy``, ``torch``):
:func:`seed_peers` seeds them once per benchmark.
"""
from __future__ import annotations

import contextlib
import gc
import random
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from flow.core.ir import IntNetwork


class FloatTwin(nn.Module):
    """Float twin of a fixed-point integer network: dequantized weights, ReLU, max-pool."""

    def __init__(self, net: IntNetwork) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        self.param_layers: list[str] = []
        for node in net.nodes[1:]:
            a = node.attrs
            if node.op in ("conv", "dense"):
                p = net.params[a["weight"]]
                w = torch.tensor(p.codes * 2.0 ** -p.fmt.frac, dtype=torch.float32)
                if node.op == "conv":
                    m = nn.Conv2d(w.shape[1], w.shape[0], a["k"], stride=a["stride"],
                                  padding=a["pad"], bias=a["bias"] is not None)
                else:
                    m = nn.Linear(w.shape[1], w.shape[0], bias=a["bias"] is not None)
                m.weight.data.copy_(w)
                if a["bias"]:
                    b = net.params[a["bias"]]
                    m.bias.data.copy_(torch.tensor(b.codes * 2.0 ** -b.fmt.frac))
                mods.append(m)
                self.param_layers.append(p.name)
            elif node.op == "requant":
                mods.append(nn.ReLU())
            elif node.op == "maxpool":
                mods.append(nn.MaxPool2d(a["k"]))
            elif node.op == "flatten":
                mods.append(nn.Flatten())
            else:
                raise ValueError(f"float twin: op {node.op} not supported")
        self.seq = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores of ``x`` (float)."""
        return self.seq(x)

    def weight_modules(self) -> list[tuple[str, nn.Module]]:
        """(module path, module) of every weight layer, in the order of ``param_layers``."""
        return [(n, m) for n, m in self.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Inside the block, the objects alive at its start are left out of garbage collection
    (``gc.freeze``), so that :func:`timed`'s collection before each call walks only what the
    timed calls made since (PyTorchFI's deep copies): a full collection walks every object of
    the process (about 180,000 with PyTorch, the peers and the networks loaded), evicts the
    CPU caches and makes the next call's first microseconds several times slower than in a
    campaign, which never collects between trials (``np.ones(10)`` right after one: 61 us,
    against 1 us with the heap frozen). Afterwards everything is collectable again, unless
    the process had frozen objects of its own before (then nothing is unfrozen)."""
    frozen_before = gc.get_freeze_count()
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        if not frozen_before:
            gc.unfreeze()


def timed(fn: Callable, *args) -> float:
    """Seconds one call takes, with the garbage collector off during the call (as ``timeit``).

    Without this, collections triggered by PyTorchFI's per-trial deep copies land in whichever
    call comes next. Call it inside :func:`frozen_heap`, so that the collection before the call
    is a small one.
    """
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        fn(*args)
        return time.perf_counter() - t0
    finally:
        gc.enable()


def seed_peers(seed: int) -> None:
    """Seed the global random states the peers draw from (``random``, NumPy, torch)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _formats(net: IntNetwork, twin: FloatTwin) -> list[tuple[int, int]]:
    """(bits, frac) of every weight layer of ``twin``, in its order."""
    return [(net.params[n].fmt.bits, net.params[n].fmt.frac) for n in twin.param_layers]


def flip_fixed_point(value: torch.Tensor, bits: int, frac: int) -> float:
    """``value`` as a ``bits``-bit two's-complement code at 2**-frac, one random bit flipped."""
    code = int(round(float(value) * 2.0 ** frac)) & ((1 << bits) - 1)
    code ^= 1 << random.randrange(bits)
    if code >= 1 << (bits - 1):
        code -= 1 << bits
    return code * 2.0 ** -frac


def pytorchfi_trial(net: IntNetwork, twin: FloatTwin, batch: int, input_shape: list[int]
                    ) -> Callable[[float, int], Callable[[torch.Tensor], torch.Tensor]]:
    """A function (BER, stored weight bits) -> PyTorchFI's corrupted model for one trial."""
    from pytorchfi.core import fault_injection
    from pytorchfi.weight_error_models import random_weight_location

    pfi = fault_injection(twin, batch, input_shape=input_shape,
                          layer_types=[nn.Conv2d, nn.Linear])
    fmts = _formats(net, twin)

    def trial(ber: float, total_bits: int) -> Callable[[torch.Tensor], torch.Tensor]:
        n = int(np.random.poisson(ber * total_bits))
        if n == 0:
            return twin
        # PyTorchFI applies the faults layer by layer, each layer's in list order, and hands
        # the function only the weight and index: sorted by layer, the formats follow in turn
        locs = sorted((random_weight_location(pfi) for _ in range(n)), key=lambda c: c[0][0])
        order = iter([fmts[c[0][0]] for c in locs])
        return pfi.declare_weight_fi(
            function=lambda w, idx: flip_fixed_point(w[idx], *next(order)),
            layer_num=[c[0][0] for c in locs], k=[c[1][0] for c in locs],
            dim1=[c[2][0] for c in locs], dim2=[c[3][0] for c in locs],
            dim3=[c[4][0] for c in locs])

    return trial


def mrfi_model(net: IntNetwork, twin: FloatTwin, ber: float, *, integer: bool) -> object:
    """MRFI's fault-injecting wrapper of a copy of ``twin`` at ``ber`` (per stored bit)."""
    import copy

    from mrfi import MRFI, EasyConfig

    entries = []
    for (path, _), (bits, frac) in zip(twin.weight_modules(), _formats(net, twin)):
        width = bits if integer else 32
        e: dict = {"type": "weight", "name": ["weight"], "enabled": True,
                   "module_fullname": [path],
                   "selector": {"method": "RandomPositionByRate", "poisson": True,
                                "rate": ber * width}}
        if integer:
            e["quantization"] = {"method": "SymmericQuantization", "bit_width": bits,
                                 "dynamic_range": 2.0 ** (bits - 1 - frac)}
            e["error_mode"] = {"method": "IntRandomBitFlip", "bit_width": bits}
        else:
            e["error_mode"] = {"method": "FloatRandomBitFlip", "floattype": "float32"}
        entries.append(e)
    return MRFI(copy.deepcopy(twin).eval(), EasyConfig({"faultinject": entries}))
