"""The train step: train the config's network (or import its QONNX file), keep its QONNX
graph, check the lowering, write the first plan; and :func:`validate`, which checks a config
before anything is written.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from flow.core.config import RunConfig
from flow.core.errors import ConfigError
from flow.core.executor import Executor
from flow.core.image import MemoryImage
from flow.core.io import sha256_file, write_json
from flow.core.ir import IntNetwork
from flow.core.modelsource import parse_arch
from flow.core.plan import plan_of_network, save_plan
from flow.hw.rtl import check_folding
from flow.nn.lower import lower_graph
from flow.nn.oracle import compare_brevitas, compare_qonnx
from flow.nn.qonnx_graph import ModelError, export_module, load, save
from flow.nn.train import accuracy, model_from_config, save_checkpoint, train
from flow.pipeline.runner import StepContext, StepResult
from flow.pipeline.session import check_fit, load_data, resolve_device
from flow.reliability.faults import check_targets

CAMPAIGN_FIELDS = {"kinds": "campaign.kinds", "layers": "campaign.layers",
                   "bits": "campaign.bits"}


def _pct(x: float) -> str:
    return f"{100 * x:.2f} %"


@dataclass
class TrainResult(StepResult):
    """What the train step (or an import) made and checked."""

    source: str                    # "train" or "import"
    model: str                     # model.arch, resolved
    model_file_sha256: str | None
    checkpoint: str
    checkpoint_sha256: str
    data_sha256: str
    data_layout: str | None
    val_accuracy: float | None
    test_accuracy_brevitas: float | None
    test_accuracy_integer: float
    memory_bits: int
    layers: list[str]
    checks: dict = field(default_factory=dict)

    def summary(self) -> str:
        q = self.checks["qonnx"]
        verb = "trained" if self.source == "train" else "imported"
        lines = [f"{verb} {parse_arch(self.model).label}: {len(self.layers)} weight layers "
                 f"({', '.join(self.layers)}), test accuracy "
                 f"{_pct(self.test_accuracy_integer)} (integer executor), "
                 f"{self.memory_bits} memory bits",
                 f"integer network = qonnx's executor on {q['images']} test images "
                 f"({q['nodes_compared']} tensors compared)"]
        b = self.checks.get("brevitas")
        if b:
            lines.append(f"integer network = Brevitas forward on {b['equal_images']} of "
                         f"{b['images']} test images")
        if self.data_layout not in (None, "builtin"):
            lines.append(f"data layout: {self.data_layout}")
        return "\n".join(lines)

    def brief(self) -> str:
        return f"{self.source}: test accuracy {_pct(self.test_accuracy_integer)}"


CHECK_IMAGES = 64     # test images on which a new network is checked against qonnx's executor


def data_hash(data) -> str:
    """SHA-256 over the images and labels of all three splits (traces a run to its data)."""
    h = hashlib.sha256()
    for split in (data.train, data.val, data.test):
        h.update(split.x.numpy().tobytes())
        h.update(split.y.numpy().tobytes())
    return h.hexdigest()


def check_lowering(ex: Executor, graph, data) -> dict:
    """The lowered network against qonnx's executor on the first test images; a difference is a
    ModelError (the graph uses a semantic the lowering does not reproduce)."""
    res = compare_qonnx(ex, graph, data.test.x[:CHECK_IMAGES])
    if not res["exact"]:
        node, n = next(iter(res["differing_nodes"].items()))
        raise ModelError(f"model: the integer network differs from qonnx's executor at node "
                         f"'{node}' ({n} codes on {res['images']} test images); hetq cannot "
                         f"lower this graph exactly")
    return res


def _source_sha(src) -> str | None:
    """SHA-256 of the file the network comes from (a .py factory file or a QONNX file)."""
    path = src.path if src.kind == "qonnx" else (
        Path(src.module) if src.module.endswith(".py") else None)
    return sha256_file(path) if path is not None and path.is_file() else None


def run(ctx: StepContext) -> TrainResult:
    """Train the config's network (a QONNX file is imported instead: nothing is trained), save
    ``train/model.pt`` and its QONNX graph ``train/model.onnx`` (or only the imported graph),
    check the lowered network against qonnx's executor (and the Brevitas forward), and write the
    first plan.json."""
    run, cfg = ctx.run, ctx.cfg
    dev = resolve_device(cfg.device)
    data = load_data(cfg)
    src = parse_arch(cfg.model.arch)
    model, history = None, []
    if src.trainable:
        model, history = train(cfg, data, dev, progress=ctx.progress)
        graph = export_module(model, data.input_shape)
    else:
        graph = load(src.path)
    net = lower_graph(graph, src.label)
    check_fit(net, data)
    image = MemoryImage.build(net, cfg.model.protected)
    ex = Executor(net, image, dev)
    checks = {"qonnx": check_lowering(Executor(net, image, "cpu"), graph, data)}
    brevitas_acc = None
    if model is not None:
        model.to(dev)
        checks["brevitas"] = compare_brevitas(ex, model, data.test.x)
        brevitas_acc = accuracy(model, data.test.x, data.test.y)
    ckpt = "train/model.pt" if model is not None else "train/model.onnx"
    folder = ctx.out
    if model is not None:
        save_checkpoint(model, folder / "model.pt",
                        {"arch": cfg.model.arch, "input_shape": list(data.input_shape),
                         "num_classes": data.num_classes})
        write_json(folder / "history.json", history)
    save(graph, folder / "model.onnx")
    sha = sha256_file(folder / Path(ckpt).name)
    save_plan(run.plan_file, plan_of_network(net, cfg.model.protected, sha, ckpt, "config"))
    return TrainResult(
        source="train" if model is not None else "import", model=src.text,
        model_file_sha256=_source_sha(src), checkpoint=ckpt, checkpoint_sha256=sha,
        data_sha256=data_hash(data), data_layout=getattr(data, "layout", None),
        val_accuracy=max(h["val_accuracy"] for h in history) if history else None,
        test_accuracy_brevitas=brevitas_acc,
        test_accuracy_integer=ex.correct(data.test.x, data.test.y) / len(data.test.y),
        memory_bits=image.size_bits()["total"], layers=net.layers(), checks=checks)


def network_of(cfg: RunConfig, data) -> tuple[IntNetwork, object]:
    """The config's network, lowered (untrained for a factory), and its QONNX graph."""
    src = parse_arch(cfg.model.arch)
    if src.trainable:
        graph = export_module(model_from_config(cfg, data.input_shape, data.num_classes),
                              data.input_shape)
    else:
        graph = load(src.path)
    net = lower_graph(graph, src.label)
    check_fit(net, data)
    return net, graph


def validate(cfg: RunConfig, network: bool = True) -> IntNetwork | None:
    """Check everything a run needs before anything is written: boards, data and, with
    ``network``, the network (built, exported and lowered, checked against qonnx's executor), the
    layer names the config uses, the campaign's fault targets (``campaign.kinds``, ``layers``,
    ``bits`` against the memories of the config's protection) and ``rtl.folding``
    (:func:`flow.hw.rtl.check_folding`). Returns the lowered (untrained) network, if checked."""
    from flow.hw.boards import config_board_dirs, get_board
    extra = config_board_dirs(cfg)
    get_board(cfg.hls.board, extra, "hls.board")
    for b in cfg.report.boards:
        get_board(b, extra, "report.boards")
    resolve_device(cfg.device)
    data = load_data(cfg)
    if not network:
        return None
    net, graph = network_of(cfg, data)
    names = net.layers()
    for key, given in (("model.protected", cfg.model.protected),
                       ("campaign.layers", cfg.campaign.layers or [])):
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise ConfigError(f"{key}: unknown layer '{unknown[0]}' (layers: {', '.join(names)})")
    c = cfg.campaign
    check_targets(MemoryImage.build(net, cfg.model.protected), kinds=c.kinds, layers=c.layers,
                  bits=c.bits, fields=CAMPAIGN_FIELDS)
    check_folding(cfg.rtl, net)
    check_lowering(Executor(net, MemoryImage.build(net), "cpu"), graph, data)
    return net
