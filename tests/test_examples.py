"""examples/spread_by_layer.py, the fault-model diagnostic of docs/scale.md, on a trained run."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parents[1] / "examples"


def test_spread_by_layer_gives_both_models_with_ordered_cis(mlp_run):
    path = EXAMPLES / "spread_by_layer.py"
    spec = importlib.util.spec_from_file_location("spread_by_layer", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.drops(str(mlp_run), 1e-2, 4, 0)
    assert list(out) == ["stored bits", "layers"]
    for mean, low, high in out.values():
        assert low <= mean <= high and -1 <= mean <= 1
    assert mod.drops(str(mlp_run), 1e-2, 4, 0) == out            # seeded


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_every_example_config_validates(name):
    from flow.core.config import load_config
    cfg = load_config(EXAMPLES / name)
    assert cfg.seed == 0
