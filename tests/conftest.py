"""Shared fixtures: small trained runs, built once per test session in temporary folders."""
from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from flow.cli import main


def hetq_inproc(cwd: Path | None, *args: str) -> subprocess.CompletedProcess:
    """Run the ``hetq`` command line in this process (in ``cwd`` if given), as a subprocess would
    be seen: exit status, captured stdout and stderr. The fast way to test the CLI; a few
    contract tests in ``test_cli.py`` still start a real subprocess."""
    out, err = io.StringIO(), io.StringIO()
    where = contextlib.chdir(cwd) if cwd is not None else contextlib.nullcontext()
    with where, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:                  # argparse: --help, usage errors
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    return subprocess.CompletedProcess(["hetq", *map(str, args)], code, out.getvalue(),
                                       err.getvalue())


def assert_user_error(res: subprocess.CompletedProcess, field: str,
                      *values: str) -> str:
    """Exit 2, one ``hetq: error:`` line naming ``field`` and then each of ``values``; no traceback.

    A value must appear after the field as a whole token (``1`` does not match inside ``fc1``).
    Returns the message.
    """
    err = res.stderr
    assert "Traceback" not in err, err
    assert res.returncode == 2, (res.returncode, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    msg = lines[0]
    assert msg.startswith("hetq: error: "), msg
    assert field in msg, f"field {field!r} not in: {msg}"
    rest = msg[msg.index(field) + len(field):]
    for v in values:
        assert re.search(rf"(?<![\w.]){re.escape(v)}(?!\w)", rest), f"value {v!r} not in: {msg}"
    assert res.stdout == "", res.stdout
    return msg


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (relative path -> content)."""
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def board_doc(name: str, **over: object) -> dict:
    """A board YAML document of a test board (an Artix-7 35T's capacity), ``over`` replacing
    fields."""
    doc = {"name": name, "vendor_board": "Test Board", "part": "xc7a35tcpg236-1",
           "family": "xc7", "clock_mhz": 125,
           "capacity": {"lut": 20800, "ff": 41600, "bram18": 100, "dsp": 90, "uram": 0},
           "source": "Xilinx DS180 7 Series FPGAs Overview (XC7A35T)"}
    doc.update(over)
    return doc


def lowered_network(arch: str, name: str = "test"):
    """An untrained network (seed 0) of ``arch`` on the digits, lowered to the integer network,
    its weight-memory image with its second layer protected, and the data set."""
    import torch

    from flow.core.config import RunConfig
    from flow.core.image import MemoryImage
    from flow.nn.lower import lower_graph
    from flow.nn.qonnx_graph import export_module
    from flow.nn.train import model_from_config
    from flow.pipeline.session import load_data
    cfg = RunConfig.model_validate({"seed": 0, "model": {"arch": arch}})
    data = load_data(cfg)
    torch.manual_seed(0)
    model = model_from_config(cfg, data.input_shape, data.num_classes).eval()
    net = lower_graph(export_module(model, data.input_shape), name)
    return net, MemoryImage.build(net, net.layers()[1:2]), data


def same_scores(image, ex, fresh, x, fmaps) -> torch.Tensor:
    """Apply ``fmaps`` (stacked) to the remembering executor ``ex`` and to the fresh one in
    turn (the same image): their class scores must be equal, and ``ex`` clean again after.
    Returns the scores."""
    from flow.reliability.faults import Injector
    inj, inj_fresh = Injector(image, ex), Injector(image, fresh)
    for m in fmaps:
        inj.apply(m)
    got = ex.run(x, quantized=True)
    inj.undo()
    for m in fmaps:
        inj_fresh.apply(m)
    ref = fresh.run(x, quantized=True)
    inj_fresh.undo()
    assert torch.equal(got.double(), ref.double())
    assert ex._first_dirty() is None and not any(ex._touched.values())
    return got


def write_config(path: Path, obj: dict) -> Path:
    """Write a YAML config and return its path."""
    path.write_text(yaml.safe_dump(obj))
    return path


QUICK_MLP = {"seed": 0, "model": {"arch": "mlp", "default_weight_bits": 4, "act_bits": 4},
             "train": {"epochs": 4}, "campaign": {"bers": [1e-3, 1e-2], "trials": 10}}


@pytest.fixture(scope="session")
def mlp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained digits MLP run directory (4-bit weights, fc2 protected). Do not modify it."""
    root = tmp_path_factory.mktemp("mlp_run")
    cfg = write_config(root / "mlp.yaml",
                       {**QUICK_MLP, "model": {**QUICK_MLP["model"], "protected": ["fc2"]}})
    out = root / "run"
    assert main(["train", str(cfg), "--out", str(out), "--json"]) == 0
    return out


def _train(root: Path, name: str, cfg: dict) -> Path:
    out = root / "run"
    assert main(["train", str(write_config(root / f"{name}.yaml", cfg)), "--out", str(out),
                 "--json"]) == 0
    return out


@pytest.fixture(scope="session")
def cnn_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained digits CNN run (4-bit weights and activations, conv2 protected)."""
    return _train(tmp_path_factory.mktemp("cnn_run"), "cnn",
                  {"seed": 0, "model": {"arch": "cnn", "default_weight_bits": 4, "act_bits": 4,
                                        "protected": ["conv2"]},
                   "train": {"epochs": 3}, "campaign": {"bers": [1e-2], "trials": 10},
                   # 256 MAC lanes in conv2 instead of the default's 512: half the Verilator
                   # build time for the same simulated work
                   "rtl": {"target_cycles": 2048}})


@pytest.fixture(scope="session")
def bmlp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained binary MLP run (64 hidden, fc2 protected)."""
    return _train(tmp_path_factory.mktemp("bmlp_run"), "bmlp",
                  {"seed": 0, "model": {"arch": "bmlp", "width": 0.25, "protected": ["fc2"]},
                   "train": {"epochs": 3}, "campaign": {"bers": [1e-2], "trials": 10}})


@pytest.fixture(scope="session", autouse=True)
def shared_verilator_objects(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every plain Verilator build of the session (both pytest-xdist workers) shares the
    runtime's compiled objects in one folder beside the workers' (flow.hw.objcache): about
    16 of a build's 19 CPU-seconds."""
    from flow.hw.rtlsim import OBJECTS_ENV
    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "verilator_objects"
    os.environ[OBJECTS_ENV] = str(shared)
    return shared


def pytest_configure(config: pytest.Config) -> None:
    """In a pytest-xdist worker: one PyTorch (OpenMP) thread, here and in the processes it starts.

    Each worker is one of ``-n`` processes sharing the cores; PyTorch's default pool (a thread per
    core) then oversubscribes them, and its threads spin at every barrier waiting for a peer
    that is descheduled. Measured on this project's 2-core machine: two ResNet-18 trainings of
    the RTL test side by side took 585 s each with the default pool and 46 s each with one
    thread (35 s alone); one training beside a busy loop 119 s.
    """
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"     # simulators, Ray actors and subprocesses


# The longest modules first: pytest-xdist hands out work in collection order, so the slowest
# groups (one worker each) start at once and the short tests fill the gaps, not the tail.
_FIRST = ("test_hls.py", "test_flow_run.py", "test_rtl.py", "test_rtl_resnet.py",
          "test_byo_flow.py", "test_zobnn_hw.py", "test_zobnn.py", "test_rtl_lint.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order the session: the modules of ``_FIRST`` in that order, then the rest as collected."""
    rank = {name: i for i, name in enumerate(_FIRST)}
    items.sort(key=lambda it: rank.get(it.path.name, len(_FIRST)))


def hls_reuse_factors(prj: Path) -> list[int]:
    """The reuse factor of every dense/conv layer config in the generated ``parameters.h``, in
    the project's layer order (a convolution's inner ``_mult`` config is not a layer)."""
    text = (prj / "firmware" / "parameters.h").read_text()
    blocks = re.findall(r"struct config\d+ : nnet::(?:dense|conv2d|pointwise_conv2d)_config "
                        r"\{(.*?)\n\};", text, re.S)
    return [int(re.search(r"reuse_factor = (\d+);", b).group(1)) for b in blocks]
