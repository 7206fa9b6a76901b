"""Open a trained run: config, data, Brevitas model, integer network, memory image, executor."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from flow.config import RunConfig
from flow.data import Dataset, load_dataset
from flow.errors import RunDirError
from flow.executor import Executor, default_device
from flow.image import MemoryImage, protected_layers
from flow.ir import IntNetwork
from flow.lower import lower
from flow.plan import checkpoint_of, load_plan, verify_checkpoint
from flow.rundir import RunDir, sha256_file
from flow.train import load_checkpoint, model_from_config
from flow.zoo import ZooNet


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
    return load_dataset(d.name, d.root, seed=cfg.seed, val_fraction=d.val_fraction,
                        test_fraction=d.test_fraction, limit=d.limit)


@dataclass
class Session:
    """Everything a step needs from a trained run."""

    run: RunDir
    cfg: RunConfig
    data: Dataset
    model: ZooNet
    net: IntNetwork
    image: MemoryImage
    executor: Executor
    plan: dict
    checkpoint_sha256: str


def open_session(path, device: str | None = None, data: Dataset | None = None) -> Session:
    """Load the run at ``path``: model from its checkpoint, image with the plan's protection."""
    run = RunDir(path)
    cfg = run.config()
    if not run.step_done("train"):
        raise RunDirError(f"run_dir: '{run.path}' has no finished train step (run 'hetq train')")
    dev = resolve_device(device or cfg.device)
    data = data or load_data(cfg)
    plan = load_plan(run / "plan.json")
    ckpt_path = run / checkpoint_of(plan)
    ckpt = load_checkpoint(ckpt_path)
    sha = sha256_file(ckpt_path)
    verify_checkpoint(plan, sha, run / "plan.json")
    bits = {n: e["weight_bits"] for n, e in plan["layers"].items()}
    model = model_from_config(cfg, data.input_shape, data.num_classes, bits)
    model.load_state_dict(ckpt["state_dict"])
    model.to(dev).eval()
    net = lower(model)
    image = MemoryImage.build(net, protected_layers(plan["layers"]))
    return Session(run, cfg, data, model, net, image, Executor(net, image, dev), plan, sha)
