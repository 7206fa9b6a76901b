"""hls4ml projects of the zoo networks, compiled with g++ and checked in C simulation.

For the MLP, the small CNN and the binary MLP, with the plan's protection and without: class
scores bit-exact against the integer executor on the whole test set. With protection: 50 SEU
maps replayed in C-sim (weight files rewritten, library reloaded, no recompilation) give the
executor's scores; every single flip of an MSB copy is masked and every double flip is not. The
generated C++ of a protected layer has (n+2)-bit words and the voter; an unprotected one neither.
Every board yields a project whose Tcl sets its part. The binary work-around is shown necessary.
"""
from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from conftest import hetq_inproc, hls_reuse_factors

from flow.core.executor import Executor
from flow.core.image import MemoryImage
from flow.hw.boards import load_boards
from flow.hw.hls import build
from flow.pipeline.session import open_session
from flow.reliability.faults import FaultMap, Injector, SeuSampler, trial_rng

# one worker runs this module under pytest-xdist: its simulations are cached per process
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("hls")]

MAPS = 25
# C-sim of the streaming CNN takes ~18 ms per image: replay on the first 20 test images
REPLAY_IMAGES = {"mlp": None, "cnn": 20, "bmlp": None}

_cache: dict = {}


def project(request, tmp_path_factory, net: str, variant: str):
    """(session, image, executor, HlsProject) of ``net`` with its plan's protection or none."""
    key = (net, variant)
    if key not in _cache:
        s = open_session(request.getfixturevalue(f"{net}_run"), "cpu")
        prot = [n for n, e in s.plan["layers"].items() if e["protected"]] \
            if variant == "plan" else []
        image = MemoryImage.build(s.net, prot)
        ex = Executor(s.net, image, "cpu")
        prj = build(s.qonnx, s.net, image, tmp_path_factory.mktemp(f"hls_{net}_{variant}"),
                    part="xc7z020clg400-1", clock_mhz=100)
        _cache[key] = (s, image, ex, prj, prot)
    return _cache[key]


@pytest.mark.parametrize("net, variant", [("mlp", "plan"), ("cnn", "plan"), ("bmlp", "plan"),
                                          ("cnn", "unprotected")])
def test_csim_bit_exact_on_test_set(request, tmp_path_factory, net, variant):
    s, image, ex, prj, prot = project(request, tmp_path_factory, net, variant)
    assert (variant == "plan") == bool(prot)
    codes = ex.quantize_input(s.data.test.x)
    ref = ex.run(codes, quantized=True).numpy().astype(np.int64)
    hls = prj.scores(prj.inputs(codes.numpy()))
    assert hls.shape == ref.shape == (len(s.data.test.y), 10)
    assert np.array_equal(hls, ref)
    assert len(np.unique(ref.argmax(1))) > 5
    assert (prj.folder.parent / "model.qonnx.onnx").is_file()
    onnx.checker.check_model(onnx.load(prj.folder.parent / "model.qonnx.onnx"))
    # the reuse factor hetq recorded is the one in the generated parameters.h, at least the
    # target (4) wherever hls4ml's valid list allows it
    layers = list(s.plan["layers"])
    used = [prj.reuse[n]["used"] for n in layers]
    assert hls_reuse_factors(prj.folder) == used
    assert all(u >= 4 or prj.reuse[n]["fully_parallel"] for n, u in zip(layers, used))


@pytest.mark.parametrize("net", ["mlp", "cnn", "bmlp"])
def test_fault_replay_matches_executor(request, tmp_path_factory, net):
    s, image, ex, prj, prot = project(request, tmp_path_factory, net, "plan")
    n = REPLAY_IMAGES[net]
    codes = ex.quantize_input(s.data.test.x[:n] if n else s.data.test.x)
    x = prj.inputs(codes.numpy())
    clean = ex.run(codes, quantized=True).numpy().astype(np.int64)
    sampler, inj = SeuSampler(image), Injector(image, ex)
    changed = 0
    try:
        for t in range(MAPS):
            fmap = sampler.sample(1e-2, trial_rng(3, 1e-2, t))
            prj.replay(fmap)
            with inj.injected(fmap):
                ref = ex.run(codes, quantized=True).numpy().astype(np.int64)
            assert np.array_equal(prj.scores(x), ref), f"map {t}"
            changed += int((ref.argmax(1) != clean.argmax(1)).any())
        # single copies of every protected word: masked; two copies: not
        for layer in prot:
            m = image.memory(f"{layer}.weight")
            words = np.arange(m.depth)
            for copy in m.msb_bits():
                prj.replay(FaultMap([m.name] * m.depth, words, [copy] * m.depth,
                                    ["flip"] * m.depth))
                assert np.array_equal(prj.scores(x), clean)
            for a, b in itertools.combinations(m.msb_bits(), 2):
                fmap = FaultMap([m.name] * 2 * m.depth, np.repeat(words, 2),
                                np.tile([a, b], m.depth), ["flip"] * 2 * m.depth)
                prj.replay(fmap)
                with inj.injected(fmap):
                    ref = ex.run(codes, quantized=True).numpy().astype(np.int64)
                got = prj.scores(x)
                assert np.array_equal(got, ref) and not np.array_equal(got, clean)
    finally:
        prj.replay(FaultMap((), (), (), ()))
    assert np.array_equal(prj.scores(x), clean)           # the clean weights are back
    assert changed >= MAPS // 2


@pytest.mark.parametrize("net", ["mlp", "bmlp"])
def test_generated_cpp_has_words_and_voter_only_where_protected(request, tmp_path_factory,
                                                               net):
    s, image, ex, prj, prot = project(request, tmp_path_factory, net, "plan")
    fw = prj.folder / "firmware"
    params, defines = (fw / "parameters.h").read_text(), (fw / "defines.h").read_text()
    assert "hetq_vote" in (fw / "nnet_utils" / "hetq_nnet.h").read_text()
    for node in prj.graph.get_layers():
        layer = node.get_attr("hetq_layer")
        if not layer or "weight" not in node.weights:
            continue
        m = image.memory(f"{layer}.weight")
        wtype = node.weights["weight"].type.name
        decl = next(line for line in defines.splitlines() if f" {wtype};" in line)
        config = params.split(f"struct config{node.index} ")[1].split("};")[0]
        if m.protected:
            assert f"ap_uint<{m.fmt.bits + 2}>" in decl
            assert "nnet::product::hetq_tmr_" in config
        else:
            assert f"ap_uint<{m.fmt.bits + 2}>" not in decl
            assert "hetq_tmr" not in config


def test_binary_workaround_is_needed(request, tmp_path_factory, bmlp_run, tmp_path):
    s = open_session(bmlp_run, "cpu")
    codes = s.executor.quantize_input(s.data.test.x)
    ref = s.executor.run(codes, quantized=True).numpy().astype(np.int64)
    bad = build(s.qonnx, s.net, s.image, tmp_path, part="xc7z020clg400-1", clock_mhz=100,
                workaround=False, replayable=False)
    wrong = bad.scores(bad.inputs(codes.numpy()))
    assert (wrong != ref).any(axis=1).mean() > 0.5      # most images differ without it
    _, _, _, good, _ = project(request, tmp_path_factory, "bmlp", "plan")
    assert np.array_equal(good.scores(good.inputs(codes.numpy())), ref)


def test_every_board_gets_a_project(mlp_run, tmp_path):
    s = open_session(mlp_run, "cpu")
    for name, b in sorted(load_boards().items()):
        prj = build(s.qonnx, s.net, s.image, tmp_path / name, part=b.part,
                    clock_mhz=b.clock_mhz, compile=False,
                    stamp={"board": name, "checkpoint_sha256": s.checkpoint_sha256})
        assert f'set part "{b.part}"' in (prj.folder / "project.tcl").read_text()
        tcl = (prj.folder / "build_prj.tcl").read_text()
        assert "source [file join $tcldir project.tcl]" in tcl and "set_part $part" in tcl
        assert f"set clock_period {round(1000 / b.clock_mhz, 3)}" in \
            (prj.folder / "project.tcl").read_text()
        assert s.checkpoint_sha256 in (prj.folder / "firmware" / "hetq_plan.h").read_text()
    # the Vivado backend is selectable too
    prj = build(s.qonnx, s.net, s.image, tmp_path / "vivado", part="xc7z020clg400-1",
                clock_mhz=100, backend="Vivado", compile=False)
    assert 'set backend "vivado"' in (prj.folder / "project.tcl").read_text()



def test_hetq_hls_command(mlp_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(mlp_run, run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["hls"] = {"replay_maps": 5}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    r = hetq_inproc(None, "hls", str(run), "--board", "zcu104", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout)
    assert res["csim"]["bit_exact"] and res["replay"]["equal"] == 5
    assert res["board"]["part"] == "xczu7ev-ffvc1156-2-e" and res["protected"] == ["fc2"]
    assert (run / "hls" / "summary.json").is_file()
    assert "partial" not in (run / "hls" / "prj" / "hls4ml_config.yml").read_text()
    plan_sha = res["plan_sha256"]
    assert plan_sha in (run / "hls" / "prj" / "firmware" / "hetq_plan.h").read_text()
    bad = hetq_inproc(None, "hls", str(run), "--board", "zcu999")
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1
    assert "unknown board 'zcu999'" in bad.stderr and "pynq-z2" in bad.stderr
    boards = json.loads(hetq_inproc(None, "boards", "--json").stdout)["boards"]
    assert {b["name"] for b in boards} >= {"pynq-z2", "zcu102", "zcu104", "ultra96-v2",
                                           "kv260", "alveo-u50", "alveo-u250"}


def _cifar_form(arch: str, train_it: bool):
    """A width-1/8 network on 160 digits32 images (trained one epoch, or untrained), its QONNX
    graph, lowered network and data."""
    import torch

    from flow.core.config import RunConfig
    from flow.nn.lower import lower_graph
    from flow.nn.qonnx_graph import export_module
    from flow.nn.train import model_from_config, train
    from flow.pipeline.session import load_data
    cfg = RunConfig.model_validate({
        "seed": 1, "data": {"name": "digits32", "limit": 160},
        "model": {"arch": arch, "width": 0.125, "default_weight_bits": 4, "act_bits": 8},
        "train": {"epochs": 1}})
    ds = load_data(cfg)
    model = train(cfg, ds, torch.device("cpu"), progress=False)[0] if train_it else \
        model_from_config(cfg, ds.input_shape, ds.num_classes)
    graph = export_module(model, ds.input_shape)
    return graph, lower_graph(graph, arch), ds


@pytest.mark.parametrize("arch", ["vgg11"])
def test_cifar_form_networks(arch, tmp_path):
    """VGG-11 (width 1/8, digits32: eight 3x3 convs, four max-pools, three dense layers) is
    bit-exact in C-sim. The zoo builds the CIFAR-form AlexNet with the same conv-stack builder
    (five convs), so it adds no layer type."""
    from flow.nn.qonnx_graph import save
    graph, net, ds = _cifar_form(arch, train_it=True)
    save(graph, tmp_path / "model.onnx")
    image = MemoryImage.build(net, [net.layers()[1]])        # one layer protected
    ex = Executor(net, image, "cpu")
    prj = build(tmp_path / "model.onnx", net, image, tmp_path / "hls",
                part="xczu7ev-ffvc1156-2-e", clock_mhz=100)
    codes = ex.quantize_input(ds.test.x[:40])
    ref = ex.run(codes, quantized=True).numpy().astype(np.int64)
    assert np.array_equal(prj.scores(prj.inputs(codes.numpy())), ref)
    assert ref.std() > 0
    assert hls_reuse_factors(prj.folder) == [prj.reuse[n]["used"] for n in net.layers()]


@pytest.mark.parametrize("arch", ["mean_pool", "residual_gap"])
def test_global_pools_and_residual_adds_bit_exact(arch, tmp_path):
    """Two user networks hetq did not make: a mean over the map (``x.mean((2, 3))``, exported as
    ``ReduceMean``, which hls4ml 1.3.0 cannot convert) and a residual block with
    ``nn.AdaptiveAvgPool2d(1)`` (``GlobalAveragePool``, which hls4ml averages with its own types:
    640 of 640 scores differed before hetq's rewrite). Both global pools become hetq's exact NHWC
    pool: C-sim gives the executor's scores, clean and under SEU maps, one layer protected."""
    import torch

    from flow.core.config import RunConfig
    from flow.hw.hls import global_pools, hls_graph
    from flow.nn.lower import lower_graph
    from flow.nn.qonnx_graph import export_module, save
    from flow.nn.train import model_from_config
    torch.manual_seed(0)
    nets = Path(__file__).with_name("user_nets.py")
    cfg = RunConfig.model_validate({"seed": 0, "model": {"arch": f"{nets}:{arch}"}})
    graph = export_module(model_from_config(cfg, (1, 8, 8), 10), (1, 8, 8))
    save(graph, tmp_path / "model.onnx")
    net = lower_graph(graph, arch)
    assert {"sumpool"} <= {n.op for n in net.nodes}
    hm = hls_graph(tmp_path / "model.onnx", tmp_path / "hls.onnx", channels_last=True)
    ops = {n.op_type for n in hm.graph.node}
    assert "GlobalAveragePoolNHWC" in ops and not ops & {"ReduceMean", "GlobalAveragePool"}
    assert global_pools(hm) == 0                             # nothing left to rewrite
    image = MemoryImage.build(net, [net.layers()[0]])
    ex = Executor(net, image, "cpu")
    prj = build(tmp_path / "model.onnx", net, image, tmp_path / "hls",
                part="xc7z020clg400-1", clock_mhz=100)
    codes = ex.quantize_input(torch.rand(48, 1, 8, 8, generator=torch.Generator().manual_seed(1)))
    inj = Injector(image, ex)
    ref = ex.run(codes, quantized=True).numpy().astype(np.int64)
    assert ref.std() > 0 and np.array_equal(prj.scores(prj.inputs(codes.numpy())), ref)
    sampler = SeuSampler(image)
    changed = 0
    for t in range(5):
        fmap = sampler.sample(1e-2, trial_rng(0, 1e-2, t))
        prj.replay(fmap)
        soft = inj.scores(fmap, codes)
        assert np.array_equal(prj.scores(prj.inputs(codes.numpy())), soft), f"map {t}"
        changed += not np.array_equal(soft, ref)
    assert changed >= 3


def test_hetq_header_compiles_on_its_own(tmp_path):
    """hls_templates/hetq_nnet.h needs only hls4ml's ap_types (as its README says)."""
    import subprocess

    import hls4ml

    from flow.hw.hls_ext import header_path
    ap = Path(hls4ml.__file__).parent / "templates" / "vivado" / "ap_types"
    src = tmp_path / "t.cpp"
    src.write_text('#include "hetq_nnet.h"\nint main() { return 0; }\n')
    r = subprocess.run(["g++", "-std=c++14", "-fsyntax-only", f"-I{ap}",
                        f"-I{header_path().parent}", str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
