"""Quantization-aware training of the config's Brevitas network, seeded, with a progress bar.

The checkpoint is a plain dict of tensors and primitives (``state_dict`` and ``meta``), so it
loads with ``torch.load(path, weights_only=True)``. The weights of the epoch with the best
validation accuracy are kept.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from flow.core.config import RunConfig
from flow.core.errors import ConfigError, RunDirError
from flow.core.modelsource import parse_arch
from flow.nn.data import Dataset
from flow.nn.models import call_factory, set_weight_bits


def model_from_config(cfg: RunConfig, input_shape: tuple[int, int, int],
                      num_classes: int) -> torch.nn.Module:
    """Build the (untrained) network the config describes: call its factory, then set the
    config's weight bit-widths on its layers (:mod:`flow.nn.models`)."""
    m = cfg.model
    src = parse_arch(m.arch)
    if not src.trainable:
        raise ConfigError(f"model.arch: '{src.text}' is a trained QONNX file; hetq cannot "
                          f"build or retrain it")
    net = call_factory(src, m.kwargs, input_shape, num_classes,
                       {"width": m.width, "act_bits": m.act_bits, "input_bits": m.input_bits})
    set_weight_bits(net, m.weight_bits, m.default_weight_bits)
    return net


def logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The network's float class scores (a QuantTensor output gives its value)."""
    y = model(x)
    return y.value if hasattr(y, "value") else y


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> float:
    """Top-1 accuracy (fraction) of ``model`` in eval mode."""
    model.eval()
    dev = next(model.parameters()).device
    correct = 0
    for i in range(0, len(x), batch):
        correct += int((logits(model, x[i:i + batch].to(dev)).argmax(1).cpu()
                         == y[i:i + batch]).sum())
    return correct / max(1, len(x))


def fit(model: torch.nn.Module, data: Dataset, *, epochs: int, lr: float, batch_size: int,
        seed: int, weight_decay: float = 0.0, progress: bool = True, desc: str = "train",
        after_epoch: Callable[[], object] | None = None) -> list[dict]:
    """hetq's one training loop: train ``model`` in place on ``data`` and keep its best epoch.

    Adam with a cosine learning rate, batches drawn in a seeded order (deterministic on one CPU
    for a given initial model and ``seed``). ``after_epoch`` runs before each validation (ZOBNN
    networks re-quantize their parameters there). The weights of the epoch with the best
    validation accuracy are kept and the model ends in eval mode. Returns one dict per epoch:
    ``epoch``, ``loss`` (mean train cross-entropy) and ``val_accuracy``.
    """
    dev = next(model.parameters()).device
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    gen = torch.Generator().manual_seed(seed)
    x, y = data.train.x, data.train.y
    history: list[dict] = []
    best, best_acc = copy.deepcopy(model.state_dict()), -1.0
    bar = tqdm(range(epochs), desc=desc, unit="epoch", disable=not progress or None)
    for epoch in bar:
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(logits(model, x[idx].to(dev)), y[idx].to(dev))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        if after_epoch is not None:
            after_epoch()
        val = accuracy(model, data.val.x, data.val.y)
        history.append({"epoch": epoch + 1, "loss": total / len(x), "val_accuracy": val})
        bar.set_postfix(loss=f"{total / len(x):.3f}", val=f"{val:.3f}")
        if val > best_acc:
            best, best_acc = copy.deepcopy(model.state_dict()), val
    model.load_state_dict(best)
    if after_epoch is not None:
        after_epoch()
    model.eval()
    return history


def train(cfg: RunConfig, data: Dataset, device: torch.device, *, progress: bool = True,
          init_state: dict | None = None, desc: str | None = None
          ) -> tuple[torch.nn.Module, list[dict]]:
    """Train the config's model on ``data``; returns the best-validation model and the history.

    ``init_state`` (a state dict of the same architecture, any bit-widths) starts the training
    from trained weights: fine-tuning after a bit-width change.
    """
    torch.manual_seed(cfg.seed)
    model = model_from_config(cfg, data.input_shape, data.num_classes).to(device)
    if init_state is not None:
        model.load_state_dict(init_state)
    t = cfg.train
    history = fit(model, data, epochs=t.epochs, lr=t.lr, batch_size=t.batch_size, seed=cfg.seed,
                  weight_decay=t.weight_decay, progress=progress,
                  desc=desc or f"train {parse_arch(cfg.model.arch).label}")
    return model, history


def finetune(cfg: RunConfig, data: Dataset, device: torch.device, state: dict, bits: int,
             progress: bool = True) -> torch.nn.Module:
    """Set every fixed-point layer to ``bits`` and fine-tune from ``state`` for
    ``search.finetune_epochs`` at ``train.lr`` x ``search.finetune_lr_scale`` (Algorithm 1 and
    the paper's table)."""
    obj = cfg.model_dump(mode="json")
    obj["model"].update(default_weight_bits=bits, weight_bits={})
    obj["train"].update(epochs=cfg.search.finetune_epochs,
                        lr=cfg.train.lr * cfg.search.finetune_lr_scale)
    model, _ = train(RunConfig.model_validate(obj), data, device, progress=progress,
                     init_state=state, desc=f"fine-tune q={bits}")
    return model


def save_checkpoint(model: torch.nn.Module, path: Path, meta: dict) -> None:
    """Save the model's state dict and ``meta`` (primitives only) for weights-only loading."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "meta": meta}, path)


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint with ``weights_only=True``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RunDirError(f"checkpoint: '{path}' does not exist (run 'hetq train' first)") from None
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise RunDirError(f"checkpoint: '{path}' cannot be loaded ({type(e).__name__})") from None
