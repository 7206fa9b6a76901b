"""The rtl/ library and generated tops lint clean with ``verilator --lint-only -Wall``; folding
and the manifest's weight layout are consistent; ``hetq rtl`` / ``hetq sim`` on the command line."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import hetq_inproc

from flow.core.config import RtlConfig
from flow.core.layout import memory_words
from flow.hw.rtl import choose_folding, design
from flow.hw.rtlgen import LIBRARY, RtlManifest, library_sources, manifest, write_project
from flow.hw.rtlsim import verilator_env
from flow.pipeline.session import open_session

# module -> parameter sets (besides the defaults) that exercise its other branches
VARIANTS = {
    "weight_mem": [["-GTMR=1", "-GLANES=4"], ["-GTMR=1", "-GWBITS=1"]],
    "mvu": [["-GMODE=1", "-GWBITS=1", "-GSIMD=4", "-GASIGNED=1"],
            ["-GMODE=2", "-GWBITS=1", "-GABITS=1", "-GTMR=1", "-GPE=4", "-GSIMD=8"],
            ["-GH=4", "-GW=4", "-GC=8", "-GK=3", "-GPAD=1", "-GOH=4", "-GOW=4", "-GMODE=2",
             "-GWBITS=1", "-GABITS=1", "-GPE=2", "-GSIMD=8"],
            ["-GH=8", "-GW=8", "-GC=4", "-GK=3", "-GPAD=1", "-GOH=8", "-GOW=8", "-GOUT=8",
             "-GPE=2", "-GSIMD=2", "-GIN_LANES=4", "-GHAS_BIAS=1", "-GTMR=1"]],
    "requant": [["-GSHIFT=-3", "-GLANES=2"], ["-GSHIFT=2"]],
    "pool2d": [["-GLANES=4", "-GSIGNED=1"], ["-GH=7", "-GW=7", "-GK=2"],
               ["-GSUM=1", "-GSIGNED=1", "-GBITS=8", "-GOUTBITS=10"]],
    "threshold_unit": [["-GLANES=4", "-GNF=3"]],
    "affine_unit": [["-GLANES=4", "-GNF=3", "-GMBITS=9", "-GOBITS=20", "-GOUTBITS=30"]],
    "frame_buffer": [["-GWLANES=4", "-GRLANES=2"], ["-GWLANES=2", "-GRLANES=8"],
                     ["-GN=24", "-GWLANES=6", "-GRLANES=4"], ["-GN=24", "-GWLANES=4", "-GRLANES=6"],
                     ["-GN=392", "-GBITS=8", "-GWLANES=2", "-GRLANES=8"]],
    "stream_lanes": [["-GIN_LANES=1", "-GOUT_LANES=4"], ["-GIN_LANES=8", "-GOUT_LANES=2"],
                     ["-GIN_LANES=3", "-GOUT_LANES=3"]],
    "residual_add": [["-GLANES=4", "-GASIGNED=0", "-GBSIGNED=1", "-GBSHIFT=2"]],
    "sum_pool": [["-GLANES=4", "-GSIGNED=1"], ["-GLANES=16", "-GC=16"]],
    "frame_fifo": [["-GDEPTH=1"], ["-GDEPTH=5", "-GWIDTH=3"]],
}


def _lint(files: list[Path], top: str, extra: list[str] = ()) -> subprocess.CompletedProcess:
    with verilator_env():
        return subprocess.run(["verilator", "--lint-only", "-Wall", "--timing",
                               "--top-module", top, *extra, *map(str, files)],
                              capture_output=True, text=True)


@pytest.mark.parametrize("module", LIBRARY)
def test_library_module_lints_clean(module):
    for extra in [[], *VARIANTS.get(module, [])]:
        r = _lint(library_sources(), module, extra)
        assert r.returncode == 0 and "%Warning" not in r.stderr, (extra, r.stderr)


@pytest.mark.parametrize("net", ["mlp", "cnn", "bmlp"])
def test_generated_top_lints_clean(request, tmp_path, net):
    s = open_session(request.getfixturevalue(f"{net}_run"), "cpu")
    write_project(tmp_path, design(s.net, s.image, s.cfg.rtl), s.image, s.checkpoint_sha256)
    files = [*sorted((tmp_path / "src").glob("*.sv")), tmp_path / "hetq_accel.sv",
             tmp_path / "hetq_harness.sv"]
    for top in ("hetq_accel", "hetq_harness"):
        r = _lint(files, top)
        assert r.returncode == 0 and "%Warning" not in r.stderr, r.stderr


def _cifar_form_design(arch: str):
    """An untrained width-1/8 CIFAR-form zoo network on digits32 (3x32x32), lowered, and its
    RTL design at a cycle target that folds every layer."""
    from flow.core.config import RunConfig
    from flow.core.image import MemoryImage
    from flow.nn.lower import lower_graph
    from flow.nn.qonnx_graph import export_module
    from flow.nn.train import model_from_config
    cfg = RunConfig.model_validate({"model": {"arch": arch, "width": 0.125,
                                              "default_weight_bits": 4, "act_bits": 8}})
    net = lower_graph(export_module(model_from_config(cfg, (3, 32, 32), 10), (3, 32, 32)), arch)
    image = MemoryImage.build(net)
    return net, image, design(net, image, RtlConfig(target_cycles=8192))


@pytest.mark.parametrize("arch", ["alexnet", "vgg11", "resnet18"])
def test_cifar_form_tops_lint_clean(tmp_path, arch):
    net, image, d = _cifar_form_design(arch)
    write_project(tmp_path, d, image, "0" * 64)
    files = [*sorted((tmp_path / "src").glob("*.sv")), tmp_path / "hetq_accel.sv",
             tmp_path / "hetq_harness.sv"]
    for top in ("hetq_accel", "hetq_harness"):
        r = _lint(files, top)
        assert r.returncode == 0 and "%Warning" not in r.stderr, r.stderr


def test_residual_blocks_buffer_the_shorter_branch():
    """ResNet-18: one fork per block input, one residual_add per block, a frame FIFO on the
    shorter branch of each (whole images: one, plus one per interval the longer branch adds),
    lane converters where the branches' lanes differ; the critical path runs through the main
    branches, not the 1x1 shortcuts."""
    net, image, d = _cifar_form_design("resnet18")
    by = {m: [s for s in d.stages if s.module == m] for m in {s.module for s in d.stages}}
    adds = [n for n in net.nodes if n.op == "add"]
    assert len(by["residual_add"]) == len(by["stream_fork"]) == len(by["frame_fifo"]) == 8
    assert len(adds) == 8 and len(by["sum_pool"]) == 1
    wires = {w for s in d.stages for w in s.ports.values()} | set(d.streams)
    produced = [w for s in d.stages for p, w in s.ports.items() if p not in ("in", "a", "b")
                or s.module == "stream_fork" and p != "in"]
    consumed = [w for s in d.stages for p, w in s.ports.items()
                if p == "in" or (p in ("a", "b") and s.module != "stream_fork")]
    # every stream has one producer and one consumer (the input and the output: the top's)
    assert sorted(produced) == sorted(set(produced)) and sorted(consumed) == sorted(set(consumed))
    assert set(produced) - set(consumed) == {d.out_stream} and "in" in consumed
    assert wires == set(produced) | {"in"}
    ana = d.analytic()
    assert not any("shortcut" in layer for layer in ana["critical_path"])
    assert len(ana["critical_path"]) == len(net.layers()) - 3
    ii = ana["ii_cycles"]
    costs = {layer: c + 2 for layer, c in ana["layer_cycles"].items()}
    for st in by["frame_fifo"]:
        block = st.name.split("_add_")[0].removeprefix("u_").replace("_", ".")
        main = costs[f"{block}.conv1"] + costs[f"{block}.conv2"]
        short = costs.get(f"{block}.shortcut", 0)
        frames = 1 + (main - short) // ii
        assert st.info["frames"] == frames
        conv2 = next(s for s in by["mvu"] if s.layer == f"{block}.conv2")
        assert st.params["DEPTH"] * st.in_lanes == frames * conv2.info["pixels"] * \
            conv2.params["OUT"]


def test_generated_project_is_self_contained(mlp_run, tmp_path):
    s = open_session(mlp_run, "cpu")
    man = write_project(tmp_path, design(s.net, s.image, s.cfg.rtl), s.image,
                        s.checkpoint_sha256)
    assert {p.name for p in (tmp_path / "src").iterdir()} == {f"{m}.sv" for m in LIBRARY}
    assert man["checkpoint_sha256"] == s.checkpoint_sha256
    assert s.checkpoint_sha256[:12] in (tmp_path / "hetq_accel.sv").read_text()
    names = {m["memory"] for m in man["memories"]}
    assert names == set(s.image.memories)              # every memory, biases included
    for m in man["memories"]:
        lines = (tmp_path / "mem" / f"{m['memory']}.mem").read_text().split()
        assert len(lines) == m["depth"]
        assert all(len(x) == (m["word_bits"] + 3) // 4 for x in lines)


def test_layout_places_every_word_once(cnn_run):
    s = open_session(cnn_run, "cpu")
    d = design(s.net, s.image, RtlConfig(target_cycles=1000))
    man = RtlManifest(json.loads(json.dumps(manifest(d, s.image, "x"))))  # as a user reads it
    for name, lay in man.layouts.items():
        m = s.image.memory(name)
        addr, lane = lay.place(np.arange(m.depth))
        slots = addr * lay.lanes + lane
        assert np.unique(slots).size == m.depth          # a bijection onto the RTL slots
        assert addr.max() < lay.depth and lane.max() < lay.lanes
        # the stored words come back out of the memory file contents
        rows = memory_words(lay, m.words)
        back = [(rows[a] >> (int(ln) * lay.lane_bits)) & ((1 << lay.lane_bits) - 1)
                for a, ln in zip(addr, lane)]
        assert np.array_equal(np.array(back), m.words)


def test_conv_fanin_order_is_kernel_row_column_channel(cnn_run):
    s = open_session(cnn_run, "cpu")
    lay = design(s.net, s.image).layouts["conv2.weight"]
    cin = s.image.memory("conv2.weight").shape[1]
    # RTL position 1 is (kh 0, kw 0, channel 1) = PyTorch index 1 * 9 + 0
    assert lay.perm[1] == 9 and lay.perm[cin] == 1       # position cin: (kh 0, kw 1, c 0)


def test_folding_meets_target_with_fewest_lanes():
    assert choose_folding(64, 64, 1, 1, 256) == (1, 16)
    assert choose_folding(64, 64, 1, 1, 4096) == (1, 1)
    assert choose_folding(16, 1, 3, 64, 10) == (16, 1)   # unreachable: the fastest folding
    pe, simd = choose_folding(32, 16, 3, 64, 1000)
    assert 32 % pe == 0 and 16 % simd == 0 and 64 * (32 // pe) * 9 * (16 // simd) <= 1000



def test_bad_folding_is_one_line_error(mlp_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(mlp_run, run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    for folding, field in (({"fc9": {"pe": 1, "simd": 1}}, "rtl.folding: unknown layer 'fc9'"),
                           ({"fc1": {"pe": 3, "simd": 1}}, "rtl.folding.fc1.pe: 3")):
        cfg["rtl"] = {"target_cycles": 256, "folding": folding}
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
        r = hetq_inproc(None, "rtl", str(run))
        assert r.returncode == 2 and field in r.stderr and len(r.stderr.splitlines()) == 1
        assert not (run / "rtl").exists()


def test_sim_without_project_is_one_line_error(mlp_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(mlp_run, run)
    r = hetq_inproc(None, "sim", str(run), "--trials", "2")
    assert r.returncode == 2 and "hetq rtl" in r.stderr and len(r.stderr.splitlines()) == 1
    r = hetq_inproc(None, "sim", str(run), "--trials", "0")
    assert r.returncode == 2 and "--trials: 0" in r.stderr
