"""``hetq search``: Algorithm 1 of the paper (base bit-width q, then protect vulnerable layers).

1. Start at q = ``search.start_bits`` (8). Quantize every weight layer to q bits and fine-tune
   (QAT from the trained weights); measure the accuracy and the accuracy drop at ``search.ber``
   (``search.trials`` fault maps). If accuracy > a and drop < r, try q - q/2, else q + q/2
   (the paper's binary-search rule), until the next q was tried already or leaves 2..16.
2. The base q is the smallest q tried whose accuracy exceeds a: the cheapest accurate network,
   the one most exposed to faults.
3. Rank its layers by the GA (LVF), then protect l = 1, 2, ... most vulnerable layers (n+2-bit
   words, MSB triplicated) until the drop at the BER is <= r (or every layer is protected).

Writes ``search/q<q>.pt`` for every q tried, ``search/result.json`` (every step with its
figures) and replaces ``plan.json`` (weight bits, protection and LVF per layer, the checkpoint it
belongs to and its SHA-256).
"""
from __future__ import annotations

import sys
import time

from flow.campaign import CampaignSpec, run_campaign
from flow.config import RunConfig
from flow.errors import RunDirError
from flow.executor import Executor
from flow.ga import rank_layers_ga
from flow.image import MemoryImage
from flow.lower import lower
from flow.plan import make_plan, save_plan
from flow.rank import ga_config
from flow.rundir import RunDir, sha256_file, write_json
from flow.session import load_data, resolve_device
from flow.train import accuracy, load_checkpoint, save_checkpoint, train
from flow.zoo import ARCHS


def _finetune(cfg: RunConfig, data, device, state: dict, q: int, progress: bool):
    obj = cfg.model_dump(mode="json")
    obj["model"].update(default_weight_bits=q, weight_bits={})
    obj["train"].update(epochs=cfg.search.finetune_epochs,
                        lr=cfg.train.lr * cfg.search.finetune_lr_scale)
    qcfg = RunConfig.model_validate(obj)
    model, _ = train(qcfg, data, device, progress=progress, init_state=state,
                     desc=f"fine-tune q={q}")
    return model


def _drop(model, protected: list[str], cfg: RunConfig, data, device, store, tag: dict) -> dict:
    net = lower(model)
    image = MemoryImage.build(net, protected)
    ex = Executor(net, image, device)
    s = cfg.search
    spec = CampaignSpec(bers=(s.ber,), trials=s.trials, seed=cfg.seed,
                        extra={**tag, "protected": sorted(protected)})
    res = run_campaign(ex, image, data.test.x, data.test.y, spec, store, progress=False)
    row = res["summary"][0]
    return {"accuracy": res["clean_accuracy"], "drop": row["drop_mean"],
            "drop_low": row["drop_low"], "drop_high": row["drop_high"],
            "weight_bits": image.size_bits(("weight",))["total"], "campaign": res["campaign"]}


def search(run: RunDir, progress: bool = True) -> dict:
    """Run Algorithm 1 on a trained run; returns what ``hetq search --json`` prints."""
    t0 = time.time()
    cfg = run.config()
    if ARCHS[cfg.model.arch].binary:
        raise RunDirError(f"search: model '{cfg.model.arch}' is binary; Algorithm 1 searches "
                          f"the bit-width of fixed-point networks")
    if not run.step_done("train"):
        raise RunDirError(f"run_dir: '{run.path}' has no finished train step (run 'hetq train')")
    s = cfg.search
    device = resolve_device(cfg.device)
    data = load_data(cfg)
    base_state = load_checkpoint(run / "train" / "model.pt")["state_dict"]
    folder = run / "search"
    folder.mkdir(exist_ok=True)
    store = folder / "campaigns.sqlite"
    tried: dict[int, dict] = {}
    models = {}
    q = s.start_bits
    while 2 <= q <= 16 and q not in tried:
        model = _finetune(cfg, data, device, base_state, q, progress)
        save_checkpoint(model, folder / f"q{q}.pt", {"arch": cfg.model.arch, "q": q})
        sha = sha256_file(folder / f"q{q}.pt")
        ev = _drop(model, [], cfg, data, device, store, {"q": q, "checkpoint_sha256": sha})
        tried[q] = {"q": q, "accuracy": ev["accuracy"], "drop": ev["drop"],
                    "drop_low": ev["drop_low"], "drop_high": ev["drop_high"],
                    "weight_bits": ev["weight_bits"], "checkpoint_sha256": sha,
                    "brevitas_accuracy": accuracy(model, data.test.x, data.test.y)}
        models[q] = model
        if progress:
            print(f"  q={q}: accuracy {ev['accuracy']:.4f}, drop at BER {s.ber:g} "
                  f"{ev['drop']:.4f}", flush=True, file=sys.stderr)
        good = ev["accuracy"] > s.accuracy_threshold and ev["drop"] < s.drop_threshold
        q = q - q // 2 if good else q + q // 2
    accurate = [r for r in tried.values() if r["accuracy"] > s.accuracy_threshold]
    if not accurate:
        raise RunDirError(f"search.accuracy_threshold: no bit-width tried reaches accuracy "
                          f"{s.accuracy_threshold} (tried {sorted(tried)}); lower it or train "
                          f"longer")
    base = min(accurate, key=lambda r: r["q"])
    q = base["q"]
    model = models[q]
    net = lower(model)
    plain = MemoryImage.build(net)
    ga = rank_layers_ga(Executor(net, plain, device), plain, data.test.x, data.test.y,
                        ga_config(cfg.rank), cfg.seed)
    steps = [{"protected": [], "drop": base["drop"], "drop_low": base["drop_low"],
              "drop_high": base["drop_high"], "weight_bits": base["weight_bits"]}]
    protected: list[str] = []
    while steps[-1]["drop"] > s.drop_threshold and len(protected) < len(ga.ranking):
        protected = ga.ranking[:len(protected) + 1]
        ev = _drop(model, protected, cfg, data, device, store,
                   {"q": q, "checkpoint_sha256": base["checkpoint_sha256"]})
        steps.append({"protected": list(protected), "drop": ev["drop"],
                      "drop_low": ev["drop_low"], "drop_high": ev["drop_high"],
                      "weight_bits": ev["weight_bits"]})
    lvf = {r["layer"]: r["lvf"] for r in ga.layers}
    plan = make_plan(arch=cfg.model.arch, layers=net.layers(),
                     weight_bits={n: q for n in net.layers()}, act_bits=cfg.model.act_bits,
                     protected=protected, checkpoint_sha256=base["checkpoint_sha256"],
                     source="search")
    plan["checkpoint"] = f"search/q{q}.pt"
    for name, entry in plan["layers"].items():
        entry["vulnerability"] = lvf[name]
    save_plan(run / "plan.json", plan)
    result = {"q": q, "protected": protected, "tried": [tried[k] for k in tried],
              "ranking": ga.ranking, "layers": ga.layers, "ga_inferences": ga.inferences,
              "protection_steps": steps, "met_drop_threshold": steps[-1]["drop"] <= s.drop_threshold,
              "thresholds": {"accuracy": s.accuracy_threshold, "drop": s.drop_threshold,
                             "ber": s.ber, "trials": s.trials},
              "seconds": round(time.time() - t0, 3)}
    write_json(folder / "result.json", result)
    return result
