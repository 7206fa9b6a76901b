"""The flow's steps. One step, one signature: ``step(run, cfg, progress) -> result dict``.

Steps read the run directory's artifacts and write new ones; ``STEPS`` lists them in flow order,
so ``hetq run`` reads top to bottom and resumes after the last finished step.
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable

from flow.campaign import CampaignSpec, default_trials, run_campaign
from flow.config import RunConfig
from flow.errors import ConfigError
from flow.executor import Executor
from flow.image import MemoryImage
from flow.lower import lower
from flow.plan import make_plan, save_plan
from flow.rundir import RunDir, sha256_file, write_json
from flow.session import load_data, open_session, resolve_device
from flow.store import export_csv, export_json
from flow.train import accuracy, model_from_config, save_checkpoint, train


def data_hash(data) -> str:
    """SHA-256 over the images and labels of all three splits (traces a run to its data)."""
    h = hashlib.sha256()
    for split in (data.train, data.val, data.test):
        h.update(split.x.numpy().tobytes())
        h.update(split.y.numpy().tobytes())
    return h.hexdigest()


def step_train(run: RunDir, cfg: RunConfig, progress: bool = True) -> dict:
    """Train, save ``train/model.pt`` and ``train/history.json``, write the first plan.json."""
    t0 = time.time()
    dev = resolve_device(cfg.device)
    data = load_data(cfg)
    run.record_step("train", status="running", started=t0)
    model, history = train(cfg, data, dev, progress=progress)
    net = lower(model)
    layers = net.layers()
    wbits = {n: net.params[f"{n}.weight"].fmt.bits for n in layers}
    image = MemoryImage.build(net, cfg.model.protected)
    ex = Executor(net, image, dev)
    test_acc = accuracy(model, data.test.x, data.test.y)
    int_acc = ex.correct(data.test.x, data.test.y) / len(data.test.y)
    with run.step_folder("train") as folder:
        save_checkpoint(model, folder / "model.pt",
                        {"arch": cfg.model.arch, "input_shape": list(data.input_shape),
                         "num_classes": data.num_classes})
        write_json(folder / "history.json", history)
        sha = sha256_file(folder / "model.pt")
        plan = make_plan(arch=cfg.model.arch, layers=layers, weight_bits=wbits,
                         act_bits=cfg.model.act_bits, protected=list(cfg.model.protected),
                         checkpoint_sha256=sha, source="config")
    save_plan(run / "plan.json", plan)
    result = {"status": "done", "seconds": round(time.time() - t0, 3),
              "checkpoint_sha256": sha, "data_sha256": data_hash(data), "val_accuracy": max(h["val_accuracy"] for h in history)
              if history else None, "test_accuracy_brevitas": test_acc,
              "test_accuracy_integer": int_acc, "memory_bits": image.size_bits()["total"]}
    run.record_step("train", **result)
    return result


def validate(cfg: RunConfig) -> None:
    """Check everything a run needs before anything is written: boards, data, model, layers."""
    from flow.boards import config_board_dirs, get_board
    extra = config_board_dirs(cfg)
    get_board(cfg.hls.board, extra, "hls.board")
    for b in cfg.report.boards:
        get_board(b, extra, "report.boards")
    resolve_device(cfg.device)
    data = load_data(cfg)
    names = model_from_config(cfg, data.input_shape, data.num_classes).layer_names()
    for key, given in (("model.protected", cfg.model.protected),
                       ("campaign.layers", cfg.campaign.layers or [])):
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise ConfigError(f"{key}: unknown layer '{unknown[0]}' (layers: {', '.join(names)})")


def campaign_spec(cfg: RunConfig) -> CampaignSpec:
    """The campaign the config asks for."""
    c = cfg.campaign
    return CampaignSpec(bers=tuple(c.bers), trials=default_trials(c.trials, c.margin, c.confidence),
                        seed=cfg.seed, fault=c.fault, kinds=tuple(c.kinds),
                        layers=None if c.layers is None else tuple(c.layers),
                        bits=None if c.bits is None else tuple(c.bits))


def inject(run: RunDir, spec: CampaignSpec, progress: bool = True,
           device: str | None = None, executor: str = "local", address: str | None = None,
           workers: int | None = None, protected: list[str] | None = None) -> dict:
    """Run a campaign on a trained run; write ``inject/<id>/`` (CSV, JSON, PNG).

    ``executor`` is ``local`` (in this process) or ``ray`` (actors on the Ray cluster at
    ``address``, or a local Ray instance); the results are the same. ``protected`` replaces the
    plan's protected layers (``[]``: the unprotected baseline of the same network).
    """
    from flow.parallel import make_pool
    t0 = time.time()
    s = open_session(run.path, device)
    image, ex = s.image, s.executor
    if protected is None:
        prot = sorted(n for n, e in s.plan["layers"].items() if e["protected"])
    else:
        prot = sorted(protected)
        image = MemoryImage.build(s.net, prot)
        ex = Executor(s.net, image, s.executor.device)
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
    from flow.plots import plot_accuracy_vs_ber   # matplotlib only when a plot is drawn
    plot_accuracy_vs_ber({s.cfg.model.arch: res["summary"]}, out / "accuracy_vs_ber.png",
                         title=f"{s.cfg.model.arch}: accuracy vs BER ({spec.trials} trials/point)",
                         clean={s.cfg.model.arch: res["clean_accuracy"]})
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
    from flow.rank import rank
    run.record_step("rank", status="running", started=time.time())
    res = rank(run, progress=progress)
    run.record_step("rank", status="done", seconds=res["seconds"], ranking=res["ranking"],
                    inferences=res["inferences"])
    return res


def step_search(run: RunDir, cfg: RunConfig, progress: bool = True) -> dict:
    """Algorithm 1 (base bit-width, protected layers; replaces plan.json), as a flow step."""
    from flow.search import search
    run.record_step("search", status="running", started=time.time())
    res = search(run, progress=progress)
    run.record_step("search", status="done", seconds=res["seconds"], q=res["q"],
                    protected=res["protected"])
    return res


def step_hls(run: RunDir, cfg: RunConfig, progress: bool = True) -> dict:
    """hls4ml project for ``hls.board``, C-sim bit-exactness and fault replay, as a flow step."""
    from flow.hlsstep import hls
    run.record_step("hls", status="running", started=time.time())
    return hls(run, progress=progress)


def step_rtl(run: RunDir, cfg: RunConfig, progress: bool = True) -> dict:
    """The RTL project (and its unprotected baseline), as a flow step."""
    from flow.hwsteps import generate
    run.record_step("rtl", status="running", started=time.time())
    return generate(run, progress=progress)


def step_sim(run: RunDir, cfg: RunConfig, progress: bool = True) -> dict:
    """Verilator: bit-exactness, cycles and the ``sim`` section's RTL campaign, as a flow step."""
    from flow.hwsteps import simulate
    run.record_step("sim", status="running", started=time.time())
    return simulate(run, list(cfg.sim.bers or cfg.campaign.bers), cfg.sim.trials, cfg.seed,
                    limit=cfg.sim.images, progress=progress)


def step_synth(run: RunDir, cfg: RunConfig, progress: bool = True) -> dict:
    """Yosys for every board of ``report.boards`` and every design, as a flow step."""
    from flow.synth import synthesize_run
    run.record_step("synth", status="running", started=time.time())
    return synthesize_run(run, cfg, progress=progress)


def step_report(run: RunDir, cfg: RunConfig, progress: bool = True) -> dict:
    """report.json, report.md and report.html, as a flow step."""
    from flow.report import write_report
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
