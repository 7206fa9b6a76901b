"""Open a trained run: config, data, QONNX graph, integer network, memory image, executor.

Every run keeps its network as a QONNX file beside its checkpoint (``train/model.onnx``,
``search/q<q>.onnx``); a session lowers that file, so runs trained from a Brevitas module and runs
imported from a QONNX file open the same way, and a run opens even when the factory that built it
can no longer be imported.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from flow.core.config import RunConfig
from flow.core.errors import RunDirError
from flow.core.executor import Executor, default_device
from flow.core.image import MemoryImage, protected_layers
from flow.core.io import sha256_file
from flow.core.ir import IntNetwork
from flow.core.modelsource import parse_arch
from flow.core.plan import checkpoint_of, load_plan, verify_checkpoint
from flow.nn.data import Dataset, load_dataset
from flow.nn.lower import lower_graph
from flow.nn.qonnx_graph import ModelError, load
from flow.pipeline.rundir import RunDir


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return default_device()
    if name == "cuda" and not torch.cuda.is_available():
        raise RunDirError("device: 'cuda' requested but no CUDA device is present")
    return torch.device(name)


def load_data(cfg: RunConfig) -> Dataset:
    """The config's data set with its seeded split."""
    d = cfg.data
    return load_dataset(d.name, d.root, path=d.path, layout=d.layout, seed=cfg.seed,
                        val_fraction=d.val_fraction, test_fraction=d.test_fraction, limit=d.limit)


def check_fit(net: IntNetwork, data: Dataset) -> None:
    """The network takes the data's images and has an output for every class, else ModelError."""
    if tuple(net.input_shape) != tuple(data.input_shape):
        have = "x".join(map(str, net.input_shape))
        want = "x".join(map(str, data.input_shape))
        raise ModelError(f"model input: shape {have} does not match the data's {want} images "
                         f"(data.name '{data.name}')")
    if net.num_classes < data.num_classes:
        raise ModelError(f"model output: {net.num_classes} class scores, but the data has "
                         f"{data.num_classes} classes (labels 0..{data.num_classes - 1})")


def qonnx_of(checkpoint: Path) -> Path:
    """The QONNX file of a checkpoint (``model.pt`` -> ``model.onnx``; a ``.onnx`` is itself)."""
    return checkpoint.with_suffix(".onnx")


@dataclass
class Session:
    """Everything a step needs from a trained run."""

    run: RunDir
    cfg: RunConfig
    data: Dataset
    qonnx: Path
    net: IntNetwork
    image: MemoryImage
    executor: Executor
    plan: dict
    checkpoint_sha256: str


def open_session(path, device: str | None = None, data: Dataset | None = None) -> Session:
    """Load the run at ``path``: its plan's QONNX graph, lowered, with the plan's protection."""
    run = RunDir(path)
    cfg = run.config()
    if not run.step_done("train"):
        raise RunDirError(f"run_dir: '{run.path}' has no finished train step (run 'hetq train')")
    dev = resolve_device(device or cfg.device)
    data = data or load_data(cfg)
    plan = load_plan(run / "plan.json")
    ckpt_path = run / checkpoint_of(plan)
    if not ckpt_path.is_file():
        raise RunDirError(f"checkpoint: '{ckpt_path}' does not exist")
    sha = sha256_file(ckpt_path)
    verify_checkpoint(plan, sha, run / "plan.json")
    qpath = qonnx_of(ckpt_path)
    net = lower_graph(load(qpath, "checkpoint"), parse_arch(cfg.model.arch).label)
    check_fit(net, data)
    if sorted(plan["layers"]) != sorted(net.layers()):
        raise RunDirError(f"plan.layers: '{run / 'plan.json'}' names {sorted(plan['layers'])}, "
                          f"the network has {sorted(net.layers())}")
    image = MemoryImage.build(net, protected_layers(plan["layers"]))
    return Session(run, cfg, data, qpath, net, image, Executor(net, image, dev), plan, sha)
