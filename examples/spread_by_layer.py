"""Accuracy drop under two fault models with the same flips per map: spread over the stored
bits (hetq's SEU model: a layer takes flips in proportion to its size) or spread equally over
the layers (the model of the first paper's public code). A diagnostic for docs/scale.md.

    python examples/spread_by_layer.py RUN_DIR [--ber 1e-4] [--maps 100] [--seed 0]

RUN_DIR is a trained hetq run (``hetq train``). Prints the mean drop with its 95 % CI per model.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from flow.pipeline.session import open_session
from flow.reliability.faults import FaultMap, Injector, SeuSampler
from flow.reliability.stats import mean_ci


def drops(run: str, ber: float, maps: int, seed: int) -> dict[str, tuple[float, float, float]]:
    """Mean accuracy drop and its 95 % CI, per fault model, over ``maps`` seeded maps."""
    s = open_session(run, "cpu")
    ex, y = s.executor, s.data.test.y
    xq = ex.quantize_input(s.data.test.x)
    clean = float((ex.predict(xq, quantized=True) == y).float().mean())
    layers = [m.layer for m in s.image.targets()]
    samplers = [SeuSampler(s.image, layers=[name]) for name in layers]
    bits = np.array([sm.total_bits for sm in samplers], dtype=float)
    inj = Injector(s.image, ex)
    out = {}
    for model, share in (("stored bits", bits / bits.sum()),
                         ("layers", np.full(len(layers), 1 / len(layers)))):
        rng = np.random.default_rng(seed)
        d = []
        for _ in range(maps):
            per = rng.multinomial(rng.poisson(ber * bits.sum()), share)
            parts = [sm.faults_at(rng.choice(sm.total_bits, size=min(n, sm.total_bits),
                                             replace=False))
                     for sm, n in zip(samplers, per) if n]
            fmap = FaultMap(*(np.concatenate([getattr(p, f) for p in parts]) if parts else []
                              for f in ("memory", "word", "bit", "kind")))
            with inj.injected(fmap):
                d.append(clean - float((ex.predict(xq, quantized=True) == y).float().mean()))
        ci = mean_ci(d, 0.95)
        out[model] = (ci.mean, ci.low, ci.high)
    return out


def main() -> None:
    """Command line."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--ber", type=float, default=1e-4)
    ap.add_argument("--maps", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    for model, (m, lo, hi) in drops(a.run_dir, a.ber, a.maps, a.seed).items():
        print(f"flips spread over {model}: drop {100 * m:.2f} % [{100 * lo:.2f}, {100 * hi:.2f}] "
              f"({a.maps} maps at BER {a.ber:g})")


if __name__ == "__main__":
    main()
