"""The flow's steps. One step, one signature: ``step(run, cfg, progress) -> result dict``.

Steps read the run directory's artifacts and write new ones; ``STEPS`` lists them in flow order,
so ``hetq run`` reads top to bottom and resumes after the last finished step.
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Mapping
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
from flow.pipeline.rundir import RunDir
from flow.pipeline.session import check_fit, load_data, open_session, resolve_device
from flow.reliability.campaign import CampaignSpec, default_trials, run_campaign
from flow.reliability.faults import check_targets
from flow.reliability.store import export_csv, export_json

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


def step_train(run: RunDir, cfg: RunConfig, progress: bool = True) -> dict:
    """Train the config's network (a QONNX file is imported instead: nothing is trained), save
    ``train/model.pt`` and its QONNX graph ``train/model.onnx`` (or only the imported graph),
    check the lowered network against qonnx's executor (and the Brevitas forward), and write the
    first plan.json."""
    t0 = time.time()
    dev = resolve_device(cfg.device)
    data = load_data(cfg)
    src = parse_arch(cfg.model.arch)
    run.record_step("train", status="running", started=t0)
    model, history = None, []
    if src.trainable:
        model, history = train(cfg, data, dev, progress=progress)
        graph = export_module(model, data.input_shape)
    else:
        graph = load(src.path)
    net = lower_graph(graph, src.label)
    check_fit(net, data)
    image = MemoryImage.build(net, cfg.model.protected)
    ex = Executor(net, image, dev)
    checks = {"qonnx": check_lowering(Executor(net, image, "cpu"), graph, data)}
    result = {"source": "train" if model is not None else "import", "model": src.text,
              "model_file_sha256": _source_sha(src)}
    if model is not None:
        model.to(dev)
        checks["brevitas"] = compare_brevitas(ex, model, data.test.x)
        result["test_accuracy_brevitas"] = accuracy(model, data.test.x, data.test.y)
    ckpt = "train/model.pt" if model is not None else "train/model.onnx"
    with run.step_folder("train") as folder:
        if model is not None:
            save_checkpoint(model, folder / "model.pt",
                            {"arch": cfg.model.arch, "input_shape": list(data.input_shape),
                             "num_classes": data.num_classes})
            write_json(folder / "history.json", history)
        save(graph, folder / "model.onnx")
    sha = sha256_file(run / ckpt)
    save_plan(run / "plan.json", plan_of_network(net, cfg.model.protected, sha, ckpt, "config"))
    int_acc = ex.correct(data.test.x, data.test.y) / len(data.test.y)
    result.update({"status": "done", "seconds": round(time.time() - t0, 3),
                   "checkpoint": ckpt, "checkpoint_sha256": sha, "data_sha256": data_hash(data),
                   "data_layout": getattr(data, "layout", None),
                   "val_accuracy": max(h["val_accuracy"] for h in history) if history else None,
                   "test_accuracy_integer": int_acc, "memory_bits": image.size_bits()["total"],
                   "layers": net.layers(), "checks": checks})
    run.record_step("train", **result)
    return result


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
                  bits=c.bits, fields=_CAMPAIGN_FIELDS)
    check_folding(cfg.rtl, net)
    check_lowering(Executor(net, MemoryImage.build(net), "cpu"), graph, data)
    return net


_CAMPAIGN_FIELDS = {"kinds": "campaign.kinds", "layers": "campaign.layers",
                    "bits": "campaign.bits"}


def campaign_spec(cfg: RunConfig) -> CampaignSpec:
    """The campaign the config asks for."""
    c = cfg.campaign
    return CampaignSpec(bers=tuple(c.bers), trials=default_trials(c.trials, c.margin, c.confidence),
                        seed=cfg.seed, fault=c.fault, kinds=tuple(c.kinds),
                        layers=None if c.layers is None else tuple(c.layers),
                        bits=None if c.bits is None else tuple(c.bits))


def inject(run: RunDir, spec: CampaignSpec, progress: bool = True,
           device: str | None = None, executor: str = "local", address: str | None = None,
           workers: int | None = None, protected: list[str] | None = None,
           fields: Mapping[str, str] | None = None) -> dict:
    """Run a campaign on a trained run; write ``inject/<id>/`` (CSV, JSON, PNG).

    ``executor`` is ``local`` (in this process) or ``ray`` (actors on the Ray cluster at
    ``address``, or a local Ray instance); the results are the same. ``protected`` replaces the
    plan's protected layers (``[]``: the unprotected baseline of the same network). The spec's
    fault targets are checked before anything is written
    (:func:`flow.reliability.faults.check_targets`;
    ``fields`` names its kinds, layers and bits in messages, default ``campaign.kinds``...).
    """
    from flow.reliability.parallel import make_pool
    t0 = time.time()
    s = open_session(run.path, device)
    image, ex = s.image, s.executor
    if protected is None:
        prot = sorted(n for n, e in s.plan["layers"].items() if e["protected"])
    else:
        prot = sorted(protected)
        image = MemoryImage.build(s.net, prot)
        ex = Executor(s.net, image, s.executor.device)
    check_targets(image, kinds=spec.kinds, layers=spec.layers, bits=spec.bits,
                  fields=fields or _CAMPAIGN_FIELDS)
    # The campaign id covers what the trials depend on: the checkpoint and the protection.
    spec = dataclasses.replace(spec, extra={**spec.extra, "checkpoint_sha256": s.checkpoint_sha256,
                                            "protected": prot})
    pool = make_pool(executor, ex, image, s.data.test.x, s.data.test.y,
                     address=address, workers=workers)
    try:
        res = run_campaign(ex, image, s.data.test.x, s.data.test.y, spec,
                           run / "campaigns.sqlite", progress=progress, pool=pool)
    finally:
        pool.close()
    out = run / "inject" / res["campaign"]
    out.mkdir(parents=True, exist_ok=True)
    export_csv(res["summary"], out / "summary.csv")
    export_json({**res, "spec": spec.to_json()}, out / "summary.json")
    from flow.pipeline.plots import plot_accuracy_vs_ber  # matplotlib only when a plot is drawn
    arch = s.net.arch
    plot_accuracy_vs_ber({arch: res["summary"]}, out / "accuracy_vs_ber.png",
                         title=f"{arch}: accuracy vs BER ({spec.trials} trials/point)",
                         clean={arch: res["clean_accuracy"]})
    res.update(out_dir=str(out), seconds=round(time.time() - t0, 3), protected=prot)
    return res


def step_inject(run: RunDir, cfg: RunConfig, progress: bool = True) -> dict:
    """The config's campaign on the plan, and (``report.baseline``) on the unprotected baseline."""
    t0 = time.time()
    run.record_step("inject", status="running", started=t0)
    res = inject(run, campaign_spec(cfg), progress)
    base = None
    if cfg.report.baseline and res["protected"]:
        base = inject(run, campaign_spec(cfg), progress, protected=[])
        res["baseline"] = base
    run.record_step("inject", status="done", seconds=round(time.time() - t0, 3),
                    campaign=res["campaign"], out_dir=res["out_dir"],
                    baseline_campaign=None if base is None else base["campaign"])
    return res


def step_rank(run: RunDir, cfg: RunConfig, progress: bool = True) -> dict:
    """GA layer-vulnerability ranking (no ground truth), as a flow step."""
    from flow.pipeline.rank import rank
    run.record_step("rank", status="running", started=time.time())
    res = rank(run, progress=progress)
    run.record_step("rank", status="done", seconds=res["seconds"], ranking=res["ranking"],
                    inferences=res["inferences"])
    return res


def step_search(run: RunDir, cfg: RunConfig, progress: bool = True) -> dict:
    """Algorithm 1 (base bit-width, protected layers; replaces plan.json), as a flow step."""
    from flow.pipeline.search import search
    run.record_step("search", status="running", started=time.time())
    res = search(run, progress=progress)
    run.record_step("search", status="done", seconds=res["seconds"], q=res["q"],
                    protected=res["protected"])
    return res


def step_hls(run: RunDir, cfg: RunConfig, progress: bool = True) -> dict:
    """hls4ml project for ``hls.board``, C-sim bit-exactness and fault replay, as a flow step."""
    from flow.pipeline.hls_step import hls
    run.record_step("hls", status="running", started=time.time())
    return hls(run, progress=progress)


def step_rtl(run: RunDir, cfg: RunConfig, progress: bool = True) -> dict:
    """The RTL project (and its unprotected baseline), as a flow step."""
    from flow.pipeline.rtl_step import generate
    run.record_step("rtl", status="running", started=time.time())
    return generate(run, progress=progress)


def step_sim(run: RunDir, cfg: RunConfig, progress: bool = True) -> dict:
    """Verilator: bit-exactness, cycles and the ``sim`` section's RTL campaign, as a flow step."""
    from flow.pipeline.rtl_step import simulate
    run.record_step("sim", status="running", started=time.time())
    return simulate(run, list(cfg.sim.bers or cfg.campaign.bers), cfg.sim.trials, cfg.seed,
                    limit=cfg.sim.images, progress=progress)


def step_synth(run: RunDir, cfg: RunConfig, progress: bool = True) -> dict:
    """Yosys for every board of ``report.boards`` and every design, as a flow step."""
    from flow.pipeline.synth_step import synthesize_run
    run.record_step("synth", status="running", started=time.time())
    return synthesize_run(run, cfg, progress=progress)


def step_report(run: RunDir, cfg: RunConfig, progress: bool = True) -> dict:
    """report.json, report.md and report.html, as a flow step."""
    from flow.pipeline.report import write_report
    run.record_step("report", status="running", started=time.time())
    return write_report(run)


STEPS: dict[str, Callable[[RunDir, RunConfig, bool], dict]] = {
    "train": step_train,
    "rank": step_rank,
    "search": step_search,
    "inject": step_inject,
    "hls": step_hls,
    "rtl": step_rtl,
    "sim": step_sim,
    "synth": step_synth,
    "report": step_report,
}
