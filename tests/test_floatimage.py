"""The float32 / binary parameter fault model (flow.zobnn.floatimage) with the campaign
machinery."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from flow.core.errors import FaultMapError
from flow.reliability.campaign import CampaignSpec, run_campaign
from flow.reliability.faults import FaultMap, Injector, SeuSampler
from flow.zobnn.floatimage import FloatImage, TorchExecutor, float_values, float_words


@dataclass(frozen=True)
class P:
    name: str
    layer: str
    kind: str
    tensor: torch.Tensor
    binary: bool


class Tiny(nn.Module):
    """A float first layer, a binary layer (reads the +-1 buffer wbin), batch-norm, float last."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.fc1 = nn.Linear(64, 32)
        self.register_buffer("wbin", torch.randint(0, 2, (16, 32), generator=g).float() * 2 - 1)
        self.bn = nn.BatchNorm1d(16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.sign(self.fc1(x.flatten(1)))
        return self.fc2(torch.relu(self.bn(h @ self.wbin.t())))

    def stored_parameters(self) -> list[P]:
        return [P("fc1.weight", "fc1", "weight", self.fc1.weight, False),
                P("fc1.bias", "fc1", "bias", self.fc1.bias, False),
                P("bin.weight", "bin", "weight", self.wbin, True),
                *[P(f"bn.{k}", "bn", "bn", getattr(self.bn, k), False)
                  for k in ("weight", "bias", "running_mean", "running_var")],
                P("fc2.weight", "fc2", "weight", self.fc2.weight, False),
                P("fc2.bias", "fc2", "bias", self.fc2.bias, False)]


@pytest.fixture()
def tiny():
    torch.manual_seed(0)
    model = Tiny().eval()
    image = FloatImage.from_model(model)
    x = torch.rand(200, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1)              # labels the clean model gets right
    return model, image, TorchExecutor(model, image), x, y


def test_binary32_patterns_round_trip_and_an_exponent_flip_blows_up():
    v = np.array([1.0, -2.5, 3e-38, 0.0], dtype=np.float32)
    w = float_words(v)
    assert w[0] == 0x3F800000 and np.array_equal(float_values(w).view(np.uint32), v.view(np.uint32))
    assert np.isinf(float_values(np.array([w[0] ^ (1 << 30)]))[0])     # 1.0 -> 2^128
    assert float_values(np.array([w[1] ^ (1 << 31)]))[0] == 2.5         # sign bit


def test_image_counts_32_bits_per_float_and_1_per_binary_weight(tiny):
    model, image, *_ = tiny
    floats = sum(p.tensor.numel() for p in model.stored_parameters() if not p.binary)
    assert image.size_bits(image.KINDS)["total"] == 32 * floats + 16 * 32
    assert SeuSampler(image, kinds=image.KINDS).total_bits == 32 * floats + 16 * 32
    with pytest.raises(FaultMapError, match="fault.kinds: unknown memory kind 'threshold'"):
        image.targets(("threshold",))


def test_flips_reach_the_tensors_the_forward_reads_and_undo_restores_them(tiny):
    model, image, ex, x, y = tiny
    clean = ex.run(x).clone()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inj = Injector(image, ex)
    # exponent MSB of one running variance: a huge variance silences that channel
    fmap = FaultMap(np.array(["bn.running_var", "bin.weight"]), np.array([3, 40]),
                    np.array([30, 0]), np.array(["flip", "flip"]))
    with inj.injected(fmap):
        assert model.bn.running_var[3] > 1e30
        assert model.wbin.view(-1)[40] == -before["wbin"].view(-1)[40]
        assert not torch.equal(ex.run(x), clean)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(ex.run(x), clean)


def test_campaign_is_seeded_and_float_faults_hurt(tiny, tmp_path):
    _, image, ex, x, y = tiny
    spec = CampaignSpec(bers=(1e-4, 1e-2), trials=6, seed=3, kinds=image.KINDS)
    a = run_campaign(ex, image, x, y, spec, tmp_path / "a.sqlite", progress=False)
    b = run_campaign(ex, image, x, y, spec, tmp_path / "b.sqlite", progress=False)
    assert a["summary"] == b["summary"] and a["clean_accuracy"] == 1.0
    hi = next(r for r in a["summary"] if r["ber"] == 1e-2)
    assert hi["accuracy_mean"] < 0.9          # ~40 flips among ~4k float32 bits
