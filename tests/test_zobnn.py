"""ZOBNN selective quantization (flow.zobnn.quant) on trained digits BNNs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from flow.core.errors import ConfigError
from flow.nn.data import load_dataset
from flow.nn.train import accuracy
from flow.reliability.campaign import CampaignSpec, run_campaign
from flow.reliability.faults import FaultMap, Injector
from flow.zobnn.bnn import build_bnn, train_bnn
from flow.zobnn.floatimage import FloatImage, TorchExecutor
from flow.zobnn.quant import zobnn


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits", None, seed=0, val_fraction=0.1, test_fraction=0.2, limit=None)


@pytest.fixture(scope="module", params=["breact", "bdorefa"])
def trained(request, data):
    torch.set_num_threads(1)
    m = build_bnn(request.param, data.input_shape, data.num_classes, width=0.5, seed=0)
    train_bnn(m, data, epochs=6, seed=0, progress=False)
    return m


def _count(model) -> int:
    return sum(p.tensor.numel() for p in model.stored_parameters())


def test_16_bit_zobnn_keeps_the_accuracy_and_adds_nothing(trained, data):
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    q, info = zobnn(trained, 16)
    for k, v in trained.state_dict().items():                  # the original is untouched
        assert torch.equal(v, before[k]), k
    base = accuracy(trained, data.test.x, data.test.y)
    acc = accuracy(q, data.test.x, data.test.y)
    assert abs(acc - base) <= 0.01
    assert _count(q) == _count(trained)                        # no parameter added
    assert len(list(q.modules())) == len(list(trained.modules()))
    assert info.delta == pytest.approx(info.max_abs / (2 ** 15 - 1))
    for p in q.stored_parameters():
        if p.name in info.quantized:
            t = p.tensor
            assert torch.equal(t, torch.round(t)) and t.abs().max() <= 2 ** 15 - 1, p.name


def test_the_image_stores_codes_and_a_flip_stays_bounded(trained, data):
    q, info = zobnn(trained, 8)
    image = FloatImage.from_model(q)
    widths = {m.name: m.width for m in image.memories.values()}
    assert all(widths[n] == 8 for n in info.quantized)
    assert all(widths[n] == 32 for n in info.float32 + info.accumulator)
    ex = TorchExecutor(q, image)
    name = info.quantized[0]
    clean = {n: image.values(n).copy() for n in image.memories}
    fmap = FaultMap(np.array([name] * 8), np.zeros(8, np.int64), np.arange(8),
                    np.array(["flip"] * 8))
    with Injector(image, ex).injected(fmap):
        v = q.get_parameter(name) if name in dict(q.named_parameters()) else q.get_buffer(name)
        x = float(v.detach().view(-1)[0])
        assert -128 <= x <= 127 and x != clean[name][0]
    for n in image.memories:
        assert np.array_equal(image.values(n), clean[n])


def test_zobnn_refuses_bad_bits_and_float_networks(data):
    f = build_bnn("breact_float", data.input_shape, data.num_classes, width=0.25, seed=0)
    with pytest.raises(ConfigError, match="has no binary layer"):
        zobnn(f, 16)
    b = build_bnn("breact", data.input_shape, data.num_classes, width=0.25, seed=0)
    with pytest.raises(ConfigError, match="zobnn.bits: 20"):
        zobnn(b, 20)


def test_zobnn_survives_faults_that_break_the_float_parameters(trained, data, tmp_path):
    """Same seeded maps over each network's own stored bits at fault rate 1e-3."""
    res = {}
    for name, model in (("bnn", trained), ("zobnn", zobnn(trained, 16)[0])):
        image = FloatImage.from_model(model)
        spec = CampaignSpec(bers=(1e-3,), trials=30, seed=0, kinds=image.KINDS)
        r = run_campaign(TorchExecutor(model, image), image, data.test.x, data.test.y, spec,
                         tmp_path / f"{name}.sqlite", progress=False)
        res[name] = r["summary"][0]
    assert res["zobnn"]["accuracy_low"] > res["bnn"]["accuracy_high"]


@pytest.mark.slow
def test_hetq_zobnn_writes_the_study(tmp_path):
    from conftest import hetq_inproc, write_config
    # no Yosys here (zobnn.synth; about half of this test's time): binary designs are
    # synthesized by test_byo_flow.py's binary MLP, through the same cached synthesis
    cfg = write_config(tmp_path / "z.yaml", {"seed": 0, "zobnn": {
        "archs": ["bdorefa"], "width": 0.5, "epochs": 2, "bits": [16, 8],
        "bers": [1e-4, 1e-3], "trials": 4, "timing_repeats": 2, "rtl_images": 20,
        "rtl_trials": 2, "rtl_target_cycles": 18432, "synth": False}})
    r = hetq_inproc(None, "zobnn", cfg, "--out", tmp_path / "run", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    import json
    res = json.loads(r.stdout)["archs"]["bdorefa"]
    t1 = {row["bits"]: row for row in res["table1"]}
    assert t1[16]["stored_bits"] < t1[32]["stored_bits"] and t1[8]["stored_bits"] < t1[16][
        "stored_bits"]
    assert {row["network"] for row in res["faults"]} == {"float", "bnn", "zobnn", "zobnn_integer"}
    assert set(res["timing_s"]) == {"bnn", "conventional", "zobnn"}
    for f in ("study.md", "result.json", "fig3_bdorefa.png", "fig4_bdorefa.png",
              "faults_bdorefa.csv", "table1_bdorefa.csv", "hw_bdorefa/hardware.json",
              "hw_bdorefa/rtl/manifest.json"):
        assert (tmp_path / "run" / "zobnn" / f).is_file()
    assert not (tmp_path / "run" / "zobnn" / "hw_bdorefa" / "synth").exists()
    hw = res["hardware"]
    assert hw["lowered"] and hw["agreement"]["prediction_agreement"] >= 0.99
    assert hw["rtl"]["bit_exact"] and hw["rtl"]["maps"] == 2 * 2
    assert hw["rtl"]["maps_scores_equal"] == hw["rtl"]["maps"]
    assert set(hw["campaign"]["summary"][0]) >= {"ber", "accuracy_mean"}
    c = hw["csim"]               # hls4ml C-sim of the same network, with weight faults
    assert c["bit_exact"] and c["images"] == 359
    assert c["maps"] == 2 * 2 and c["maps_scores_equal"] == c["maps"]
    assert "synth" not in hw
    study = (tmp_path / "run" / "zobnn" / "study.md").read_text()
    assert "RTL (Verilator, 20 images): class scores bit-exact" in study
    assert "hls4ml C-sim (pynq-z2, 359 images): class scores bit-exact" in study
    bad = write_config(tmp_path / "bad.yaml", {"zobnn": {"bits": [20]}})
    r = hetq_inproc(None, "zobnn", bad, "--out", tmp_path / "bad")
    assert r.returncode == 2 and "zobnn.bits" in r.stderr and not (tmp_path / "bad").exists()
    bad = write_config(tmp_path / "bad2.yaml", {"hls": {"board": "nope"}})
    r = hetq_inproc(None, "zobnn", bad, "--out", tmp_path / "bad2")
    assert r.returncode == 2 and "hls.board" in r.stderr and not (tmp_path / "bad2").exists()
