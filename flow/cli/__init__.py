"""The ``hetq`` command line. Every command takes ``--json`` and then prints one JSON document.

User mistakes end with one line ``hetq: error: ...`` on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from flow import __version__
from flow.core.errors import ConfigError, HetqError
from flow.core.image import ALL_KINDS


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        raise ConfigError(f"{self.prog}: {message}")


def _check_seed(seed: int | None) -> None:
    if seed is not None and seed < 0:
        raise ConfigError(f"--seed: {seed} must be >= 0")


def _check_workers(workers: int | None) -> None:
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers: {workers} must be >= 1")


def _check_unit(name: str, value: float | None) -> None:
    if value is not None and not 0.0 < value < 1.0:
        raise ConfigError(f"--{name}: {value} is not in (0, 1)")


def _check_out_file(out: str) -> None:
    if Path(out).is_dir():
        raise ConfigError(f"--out: '{out}' is a directory (expected a file name)")


def _emit(args: argparse.Namespace, obj: dict, text: str) -> None:
    print(json.dumps(obj, indent=2, default=str) if args.json else text)


def _pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def _summary_text(res: dict) -> str:
    lines = [f"campaign {res['campaign']}: clean accuracy {_pct(res['clean_accuracy'])}, "
             f"{res['bits']} target bits, {res['trials']} trials per BER",
             f"{'BER':>10} {'trials':>6} {'flips':>8} {'accuracy (95% CI)':>28} {'drop':>9}"]
    for r in res["summary"]:
        if r.get("ci_defined", True):
            ci = (f"{_pct(r['accuracy_mean'])} [{_pct(r['accuracy_low'])}, "
                  f"{_pct(r['accuracy_high'])}]" + ("*" if r.get("ci_clipped") else ""))
        else:
            ci = f"{_pct(r['accuracy_mean'])} (no CI: 1 trial)"
        lines.append(f"{r['ber']:>10.1e} {r['trials']:>6} {r['mean_faults']:>8.1f} {ci:>28} "
                     f"{_pct(r['drop_mean']):>9}")
    if any(r.get("ci_clipped") for r in res["summary"]):
        lines.append("* Student-t interval clipped to [0 %, 100 %]")
    if res.get("out_dir"):
        lines.append(f"results: {res['out_dir']}")
    return "\n".join(lines)


def cmd_train(args: argparse.Namespace) -> int:
    from flow.core.config import load_config, parse_config
    cfg = load_config(args.config)       # config mistakes surface before torch is imported
    if args.epochs is not None:
        obj = cfg.model_dump(mode="json")
        obj["train"]["epochs"] = args.epochs
        cfg = parse_config(obj, "--epochs")
    return _new_run(args, cfg, force=args.force)


def _new_run(args: argparse.Namespace, cfg, force: bool | None = None) -> int:
    """Validate ``cfg`` (nothing written on a mistake), create ``--out`` and run the train step
    (training, or the import of a QONNX file); print what ``hetq train`` prints.

    An ``--out`` run whose train step is finished is refused unless ``force`` (``hetq train
    --force``; None for a command without that option): then it is retrained and every later
    finished step is marked stale."""
    from flow.core.errors import RunDirError
    from flow.pipeline.rundir import RunDir
    from flow.pipeline.steps import STEPS, step_train, validate
    validate(cfg)
    run = RunDir(args.out)
    if run.exists() and run.step_done("train") and not force:
        run.init(cfg.to_yaml(), cfg.seed)        # another config: refused as such
        hint = ("a new --out folder" if force is None else
                "a new --out folder, or --force to retrain (later steps become stale)")
        raise RunDirError(f"--out: '{run.path}' already holds a finished train step; use {hint}")
    run.init(cfg.to_yaml(), cfg.seed)
    run.invalidate_after("train", list(STEPS))
    res = step_train(run, cfg, progress=not args.json)
    _emit(args, {"run_dir": str(run.path), **res}, _train_text(run, res))
    return 0


def _train_text(run, res: dict) -> str:
    """What ``hetq train`` and ``hetq import`` print."""
    q = res["checks"]["qonnx"]
    verb = "trained" if res["source"] == "train" else "imported"
    from flow.core.modelsource import parse_arch
    label = parse_arch(res["model"]).label
    lines = [f"{verb} {label} -> {run.path}: {len(res['layers'])} weight layers "
             f"({', '.join(res['layers'])}), test accuracy "
             f"{_pct(res['test_accuracy_integer'])} (integer executor), "
             f"{res['memory_bits']} memory bits",
             f"integer network = qonnx's executor on {q['images']} test images "
             f"({q['nodes_compared']} tensors compared)"]
    b = res["checks"].get("brevitas")
    if b:
        lines.append(f"integer network = Brevitas forward on {b['equal_images']} of "
                     f"{b['images']} test images")
    if res.get("data_layout") not in (None, "builtin"):
        lines.append(f"data layout: {res['data_layout']}")
    return "\n".join(lines)


def cmd_import(args: argparse.Namespace) -> int:
    from flow.core.config import load_config, parse_config
    base = load_config(args.config)
    obj = base.model_dump(mode="json", exclude_unset=False)
    model = Path(args.model).expanduser().resolve()
    if model.suffix.lower() != ".onnx":
        raise ConfigError(f"MODEL: '{args.model}' is not a .onnx file")
    obj["model"] = {"arch": str(model), "protected": obj["model"].get("protected", [])}
    data = Path(args.data).expanduser()
    if data.suffix.lower() == ".npz" or data.exists():
        obj["data"] = {**obj["data"], "name": "npz", "path": str(data.resolve()), "root": None}
    else:
        obj["data"] = {**obj["data"], "name": args.data, "path": None, "root": None}
    if args.seed is not None:
        _check_seed(args.seed)
        obj["seed"] = args.seed
    return _new_run(args, parse_config(obj, "hetq import"))


def cmd_info(args: argparse.Namespace) -> int:
    from flow.pipeline.session import open_session
    s = open_session(args.run_dir, "cpu")
    sizes = s.image.size_bits()
    layers = []
    for name, e in s.plan["layers"].items():
        layers.append({"layer": name, **e, "memory_bits": sizes.get(name, 0)})
    acc = s.executor.correct(s.data.test.x, s.data.test.y) / len(s.data.test.y)
    info = {"run_dir": str(s.run.path), "arch": s.net.arch, "model": s.cfg.model.arch,
            "data": s.cfg.data.name,
            "test_accuracy": acc, "layers": layers, "memory_bits": sizes["total"],
            "memories": s.image.summary(), "steps": s.run.manifest()["steps"],
            "checkpoint_sha256": s.checkpoint_sha256}
    rows = [f"{'layer':<22} {'w bits':>6} {'a bits':>6} {'prot':>5} {'mem bits':>10} {'LVF':>8}"]
    rows += [f"{x['layer']:<22} {x['weight_bits']:>6} {x['act_bits'] or '-':>6} "
             f"{'yes' if x['protected'] else 'no':>5} {x['memory_bits']:>10} "
             f"{'-' if x['vulnerability'] is None else format(x['vulnerability'], '.4f'):>8}"
             for x in layers]
    text = (f"{s.run.path}: {s.net.arch} on {s.cfg.data.name}, test accuracy {_pct(acc)}, "
            f"{sizes['total']} memory bits\n" + "\n".join(rows))
    _emit(args, info, text)
    return 0


def _replay_map(args: argparse.Namespace) -> int:
    from flow.pipeline.session import open_session
    from flow.reliability.faults import FaultMap, Injector
    fmap = FaultMap.load(args.map)
    s = open_session(args.run_dir, args.device)
    fmap.validate(s.image)
    with Injector(s.image, s.executor).injected(fmap):
        pred = s.executor.predict(s.data.test.x)
    correct, total = int((pred.cpu() == s.data.test.y).sum()), len(s.data.test.y)
    acc = correct / total
    _emit(args, {"map": str(args.map), "faults": len(fmap), "correct": correct, "total": total,
                 "accuracy": acc, "predictions": pred.cpu().tolist()},
          f"{len(fmap)} faults from {args.map}: test accuracy {_pct(acc)} "
          f"({correct}/{total} images)")
    return 0


def cmd_inject(args: argparse.Namespace) -> int:
    from flow.pipeline.rundir import RunDir
    from flow.reliability.faults import check_ber
    run = RunDir(args.run_dir)
    cfg = run.config()
    if args.map is not None:
        return _replay_map(args)
    bers = [check_ber(b) for b in (args.ber or cfg.campaign.bers)]
    if args.trials is not None and args.trials < 1:
        raise ConfigError(f"--trials: {args.trials} must be >= 1")
    _check_seed(args.seed)
    _check_workers(args.workers)
    _check_unit("margin", args.margin)
    _check_unit("confidence", args.confidence)
    from flow.pipeline.steps import inject
    from flow.reliability.campaign import CampaignSpec, default_trials
    c = cfg.campaign
    spec = CampaignSpec(
        bers=tuple(bers),
        trials=default_trials(args.trials if args.trials is not None else c.trials,
                              c.margin if args.margin is None else args.margin,
                              c.confidence if args.confidence is None else args.confidence),
        seed=cfg.seed if args.seed is None else args.seed,
        fault=args.fault or c.fault, kinds=tuple(args.kinds or c.kinds),
        layers=tuple(args.layers) if args.layers else (tuple(c.layers) if c.layers else None),
        bits=tuple(args.bits) if args.bits else (tuple(c.bits) if c.bits else None))
    fields = {k: f"--{k}" if getattr(args, k) else f"campaign.{k}"
              for k in ("kinds", "layers", "bits")}
    res = inject(run, spec, progress=not args.json, device=args.device,
                 executor=args.executor, address=args.ray_address, workers=args.workers,
                 fields=fields)
    _emit(args, res, _summary_text(res))
    return 0


def cmd_faultmap(args: argparse.Namespace) -> int:
    from flow.core.io import atomic_write
    from flow.pipeline.session import open_session
    from flow.reliability.faults import check_ber, check_targets, sample_seu, trial_rng
    _check_seed(args.seed)
    if args.trial < 0:
        raise ConfigError(f"--trial: {args.trial} must be >= 0")
    ber = check_ber(args.ber)
    _check_out_file(args.out)
    s = open_session(args.run_dir, "cpu")
    check_targets(s.image, kinds=args.kinds, layers=args.layers, bits=args.bits,
                  fields={"kinds": "--kinds", "layers": "--layers", "bits": "--bits"})
    fmap = sample_seu(s.image, ber, trial_rng(args.seed, args.ber, args.trial),
                      kinds=args.kinds, layers=args.layers, bits=args.bits, kind=args.fault)
    atomic_write(Path(args.out), json.dumps(fmap.to_json()))
    _emit(args, {"out": args.out, "faults": len(fmap)}, f"{len(fmap)} faults -> {args.out}")
    return 0


def _rank_text(res: dict) -> str:
    lines = [f"ranking (most vulnerable first): {' > '.join(res['ranking'])}",
             f"GA: {res['generations']} generations, {res['inferences']} inferences",
             f"{'layer':<22} {'bits':>8} {'tested':>7} {'critical':>8} {'LVF':>8}"]
    lines += [f"{r['layer']:<22} {r['bits']:>8} {r['tested']:>7} {r['critical']:>8} "
              f"{r['lvf']:>8.4f}" for r in res["layers"]]
    gt = res.get("ground_truth")
    if gt:
        lines.append(f"ground truth: {' > '.join(gt['ranking'])} ({gt['inferences']} "
                     f"inferences); Spearman {gt['spearman']:.3f}; GA used "
                     f"{100 * gt['ga_inference_ratio']:.1f} % of its inferences")
    return "\n".join(lines)


def cmd_rank(args: argparse.Namespace) -> int:
    from flow.pipeline.rundir import RunDir
    _check_seed(args.seed)
    _check_workers(args.workers)
    run = RunDir(args.run_dir)
    run.config()
    from flow.pipeline.rank import rank
    res = rank(run, ground_truth=args.ground_truth, seed=args.seed, progress=not args.json,
               device=args.device, executor=args.executor, address=args.ray_address,
               workers=args.workers)
    _emit(args, res, _rank_text(res))
    return 0


def _search_text(res: dict) -> str:
    t = res["thresholds"]
    lines = [f"Algorithm 1 (a = {t['accuracy']}, r = {t['drop']}, BER {t['ber']:g}, "
             f"{t['trials']} trials per evaluation)",
             f"{'q':>3} {'accuracy':>9} {'drop':>8} {'weight bits':>12}"]
    lines += [f"{r['q']:>3} {r['accuracy']:>9.4f} {r['drop']:>8.4f} {r['weight_bits']:>12}"
              for r in res["tried"]]
    if res.get("note"):
        lines.append(res["note"])
    base = f"base q = {res['q']}" if res["q"] is not None else "bit-widths kept"
    lines.append(f"{base}; ranking {' > '.join(res['ranking'])} "
                 f"({res['ga_inferences']} GA inferences)")
    for st in res["protection_steps"]:
        lines.append(f"  protect [{', '.join(st['protected'])}]: drop {st['drop']:.4f} "
                     f"[{st['drop_low']:.4f}, {st['drop_high']:.4f}], "
                     f"{st['weight_bits']} weight bits")
    missed = " (drop threshold NOT met with every layer protected)"
    lines.append("plan.json written" + ("" if res["met_drop_threshold"] else missed))
    return "\n".join(lines)


def cmd_search(args: argparse.Namespace) -> int:
    from flow.pipeline.rundir import RunDir
    run = RunDir(args.run_dir)
    run.config()
    from flow.pipeline.search import search
    res = search(run, progress=not args.json)
    _emit(args, res, _search_text(res))
    return 0


def _run_config(config: str | None, out: str):
    """The config of ``hetq run`` / ``hetq table``: CONFIG; without it the run's own config when
    ``out`` holds a run (an imported one, say), else the embedded digits default."""
    from flow.core.config import load_config
    from flow.pipeline.rundir import RunDir
    if config is None and RunDir(out).exists():
        return RunDir(out).config()
    return load_config(config)


def cmd_table(args: argparse.Namespace) -> int:
    cfg = _run_config(args.config, args.out)
    from flow.pipeline.rundir import RunDir
    from flow.pipeline.steps import step_train, validate
    run = RunDir(args.out)
    trained = run.exists() and run.step_done("train")
    validate(cfg, network=not trained)
    run.init(cfg.to_yaml(), cfg.seed)
    if not trained:
        step_train(run, cfg, progress=not args.json)
    from flow.pipeline.table import run_table
    res = run_table(run, progress=not args.json)
    text = (run / "table" / "table.md").read_text() + f"\nfiles: {run / 'table'}"
    _emit(args, {"run_dir": str(run.path), **res}, text)
    return 0


def _run_text(run, results: dict) -> str:
    """What ``hetq run`` prints at the end: one line per step that ran, and the report."""
    lines = []
    for name, res in results.items():
        if name == "train":
            lines.append(f"train: test accuracy {_pct(res['test_accuracy_integer'])}")
        elif name == "rank":
            lines.append(f"rank: {' > '.join(res['ranking'])} ({res['inferences']} inferences)")
        elif name == "search":
            q = "kept" if res["q"] is None else res["q"]
            lines.append(f"search: q = {q}, protected: {', '.join(res['protected']) or 'none'}")
        elif name == "inject":
            lines.append(_summary_text(res))
        elif name == "hls":
            lines.append("hls: C-sim " + ("bit-exact" if res["csim"]["bit_exact"] else "DIFFERS")
                         + f" on {res['csim']['images']} images; {res['replay']['equal']}/"
                         f"{res['replay']['maps']} fault maps equal")
        elif name == "sim":
            lines.append(_sim_text(res))
        elif name == "synth":
            for d, boards in res["designs"].items():
                for b, r in boards.items():
                    t = r["total"]
                    lines.append(f"synth {d} on {b}: {t['lut']} LUT, {t['ff']} FF, "
                                 f"{t['bram18']} BRAM18, {t['dsp']} DSP, "
                                 + ("fits" if r["fits"] else
                                    f"DOES NOT FIT ({', '.join(r['over_capacity'])})"))
        elif name == "report":
            lines.append(f"report: {res['report']}")
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _run_config(args.config, args.out)   # config mistakes surface before torch is imported
    from flow.pipeline.rundir import RunDir
    from flow.pipeline.steps import STEPS, validate
    names = list(STEPS)
    for opt, val in (("--from", args.from_step), ("--to", args.to_step)):
        if val is not None and val not in names:
            raise ConfigError(f"{opt}: unknown step '{val}' (steps: {', '.join(names)})")
    stop = names.index(args.to_step) if args.to_step else len(names) - 1
    run = RunDir(args.out)
    done = {n: run.exists() and run.step_done(n) for n in names}
    validate(cfg, network=not done["train"])
    if args.from_step is not None:
        start = names.index(args.from_step)
        missing = [n for n in names[:start] if not done[n]]
        if missing:
            raise ConfigError(f"--from: step '{args.from_step}' needs '{missing[0]}' finished "
                              f"first (run without --from to resume)")
        if start > stop:
            raise ConfigError(f"--to: step '{args.to_step}' comes before --from "
                              f"'{args.from_step}'")
    else:   # resume after the last finished step
        start = next((i for i, n in enumerate(names) if not done[n]), len(names))
    run.init(cfg.to_yaml(), cfg.seed)
    results = {}
    for i, name in enumerate(names[:stop + 1]):
        if i < start:
            if not args.json:
                print(f"[{i + 1}/{len(names)}] {name}: done, skipped", file=sys.stderr)
            continue
        if not args.json:
            print(f"[{i + 1}/{len(names)}] {name}", file=sys.stderr)
        run.invalidate_after(name, names)
        results[name] = STEPS[name](run, cfg, not args.json)
    text = _run_text(run, results) or f"every step up to '{names[stop]}' is done: {run.path}"
    _emit(args, {"run_dir": str(run.path), "steps": results}, text)
    return 0


def _rtl_text(res: dict) -> str:
    a = res["analytic"]
    lines = [f"{'stage':<16} {'module':<15} {'layer':<8} {'PE':>4} {'SIMD':>5} {'cycles':>8}"]
    lines += [f"{st['name']:<16} {st['module']:<15} {st['layer'] or '-':<8} "
              f"{st.get('pe', '-'):>4} {st.get('simd', '-'):>5} {st['cycles'] or '-':>8}"
              for st in res["stages"]]
    lines.append(f"analytic: latency {a['latency_cycles']} cycles, II {a['ii_cycles']} cycles")
    lines.append(f"{len(res['memories'])} memories; project: {res['project']}")
    return "\n".join(lines)


def cmd_rtl(args: argparse.Namespace) -> int:
    from flow.pipeline.rundir import RunDir
    run = RunDir(args.run_dir)
    run.config()
    from flow.pipeline.rtl_step import generate
    res = generate(run, progress=not args.json)
    _emit(args, res, _rtl_text(res))
    return 0


def _sim_text(res: dict) -> str:
    c = res["check"]
    m, a = c["measured"], c["analytic"]
    lines = [f"RTL vs integer executor on {c['images']} images: "
             + ("bit-exact" if c["bit_exact"] else f"{c['mismatched_images']} images DIFFER"),
             f"cycles: latency {m['latency_cycles']} (analytic {a['latency_cycles']}), "
             f"II {m['ii_cycles']:.1f} (analytic {a['ii_cycles']}); "
             f"{c['sim_cycles_per_s']:,.0f} simulated cycles/s",
             _summary_text(res)]
    if res["faulty_inferences_per_s"]:
        lines.append(f"{res['faulty_inferences_per_s']:,.0f} faulty inferences/s in Verilator")
    return "\n".join(lines)


def cmd_sim(args: argparse.Namespace) -> int:
    from flow.pipeline.rundir import RunDir
    from flow.reliability.faults import check_ber
    run = RunDir(args.run_dir)
    cfg = run.config()
    bers = [check_ber(b) for b in (args.ber or cfg.sim.bers or cfg.campaign.bers)]
    if args.trials is not None and args.trials < 1:
        raise ConfigError(f"--trials: {args.trials} must be >= 1")
    if args.images is not None and args.images < 1:
        raise ConfigError(f"--images: {args.images} must be >= 1")
    _check_seed(args.seed)
    from flow.pipeline.rtl_step import simulate
    res = simulate(run, bers, args.trials if args.trials is not None else cfg.sim.trials,
                   cfg.seed if args.seed is None else args.seed,
                   limit=args.images if args.images is not None else cfg.sim.images,
                   progress=not args.json)
    _emit(args, res, _sim_text(res))
    return 0 if res["check"]["bit_exact"] else 1


def cmd_boards(args: argparse.Namespace) -> int:
    from flow.hw.boards import load_boards
    boards = load_boards([Path(args.boards_dir)] if args.boards_dir else [])
    rows = [b.to_json() for b in sorted(boards.values(), key=lambda b: b.name)]
    head = f"{'board':<12} {'part':<24} {'family':<6} {'MHz':>5} {'LUT':>9} {'FF':>9} " \
           f"{'BRAM18':>7} {'DSP':>6} {'URAM':>5}"
    lines = [head] + [f"{r['name']:<12} {r['part']:<24} {r['family']:<6} {r['clock_mhz']:>5g} "
                      f"{r['capacity']['lut']:>9} {r['capacity']['ff']:>9} "
                      f"{r['capacity']['bram18']:>7} {r['capacity']['dsp']:>6} "
                      f"{r['capacity']['uram']:>5}" for r in rows]
    _emit(args, {"boards": rows}, "\n".join(lines))
    return 0


def _hls_text(res: dict) -> str:
    c, r, b = res["csim"], res["replay"], res["board"]
    return "\n".join([
        f"hls4ml {res['backend']} project for {b['name']} ({b['part']}, {b['clock_mhz']:g} MHz), "
        f"{res['io_type']}, reuse factor {res['reuse_factor']}: {res['project']}",
        f"protected layers: {', '.join(res['protected']) or 'none'}",
        f"C-sim vs integer executor on {c['images']} images: "
        + ("bit-exact" if c["bit_exact"] else f"{c['mismatched_images']} images DIFFER"),
        f"fault replay: {r['equal']}/{r['maps']} maps at BER {r['ber']:g} give the executor's "
        f"scores ({r['maps_changing_predictions']} change predictions); "
        f"{r['replay_ms']:.1f} ms per map to rewrite the weights and reload, "
        f"{r['csim_predict_ms']:.1f} ms to classify {r['images']} images"])


def _board(args: argparse.Namespace, cfg):
    """The board of ``--board`` / ``--boards-dir``, else of the config's ``hls`` section."""
    from flow.hw.boards import config_board_dirs, get_board
    return get_board(args.board or cfg.hls.board, config_board_dirs(cfg, args.boards_dir),
                     "--board" if args.board else "hls.board")


def cmd_hls(args: argparse.Namespace) -> int:
    from flow.pipeline.rundir import RunDir
    run = RunDir(args.run_dir)
    cfg = run.config()
    _board(args, cfg)                   # an unknown board fails before any work
    from flow.pipeline.hls_step import hls
    res = hls(run, board=args.board, backend=args.backend, boards_dir=args.boards_dir,
              progress=not args.json)
    _emit(args, res, _hls_text(res))
    ok = res["csim"]["bit_exact"] and res["replay"]["equal"] == res["replay"]["maps"]
    return 0 if ok else 1


def _synth_text(res: dict) -> str:
    t, u = res["total"], res["utilization"]
    lines = [f"Yosys synth_xilinx -family {res['family']} for {res['board']}: "
             f"{t['lut']} LUT ({t['lut_ram']} as RAM), {t['ff']} FF, {t['bram18']} BRAM18, "
             f"{t['dsp']} DSP",
             "utilization: " + ", ".join(f"{k} {100 * v:.1f} %" for k, v in u.items()
                                         if v is not None),
             "fits the board" if res["fits"] else
             f"DOES NOT FIT: {', '.join(res['over_capacity'])} over capacity",
             f"{'stage':<16} {'LUT':>7} {'FF':>7} {'BRAM18':>7} {'DSP':>5}"]
    lines += [f"{n:<16} {st['lut']:>7} {st['ff']:>7} {st['bram18']:>7} {st['dsp']:>5}"
              for n, st in res["stages"].items()]
    return "\n".join(lines)


def cmd_synth(args: argparse.Namespace) -> int:
    from flow.hw.boards import check_board_name
    from flow.pipeline.rundir import RunDir
    if args.board:
        check_board_name(args.board, "--board")
    run = RunDir(args.run_dir)
    cfg = run.config()
    if args.boards_dir:
        cfg = cfg.model_copy(update={"hls": cfg.hls.model_copy(
            update={"boards_dir": args.boards_dir})})
    boards = [args.board] if args.board else None
    from flow.pipeline.synth_step import synthesize_run  # checks every board first
    res = synthesize_run(run, cfg, boards=boards, progress=not args.json)
    text = "\n\n".join(f"[{d}]\n" + _synth_text(r) for d, v in res["designs"].items()
                         for r in v.values())
    _emit(args, res, text)
    return 0


def cmd_zobnn(args: argparse.Namespace) -> int:
    from flow.core.config import load_config
    cfg = load_config(args.config)
    if args.trials is not None:
        if args.trials < 2:
            raise ConfigError(f"--trials: {args.trials} must be >= 2")
        cfg = cfg.model_copy(update={"zobnn": cfg.zobnn.model_copy(
            update={"trials": args.trials})})
    from flow.pipeline.rundir import RunDir
    from flow.pipeline.session import load_data
    load_data(cfg)                            # a missing data folder fails before anything
    if cfg.zobnn.hardware and cfg.zobnn.synth:
        from flow.hw.boards import config_board_dirs, get_board
        get_board(cfg.hls.board, config_board_dirs(cfg), "hls.board")
    run = RunDir(args.out)
    run.init(cfg.to_yaml(), cfg.seed)
    from flow.pipeline.zobnn_study import run_study
    res = run_study(run, cfg, progress=not args.json)
    text = res.pop("markdown") + f"\nfiles: {run / 'zobnn'}"
    _emit(args, res, text)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from flow.pipeline.bench import bench_fi, bench_text
    res = bench_fi(repeats=args.repeats, seed=args.seed, epochs=args.epochs,
                   progress=not args.json)
    _emit(args, res, bench_text(res))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``hetq`` (documented in README.md)."""
    p = _Parser(prog="hetq", description="Reliability-aware FPGA accelerators for quantized "
                "neural networks: train, inject faults, rank layers by vulnerability, search "
                "bit-widths and protection, compare hom / het quantization.")
    p.add_argument("--version", action="version", version=f"hetq {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def common(sp):
        sp.add_argument("--json", action="store_true", help="print one JSON document on stdout")

    def board_args(sp):
        sp.add_argument("--board", help="target board (default: config hls.board, pynq-z2)")
        sp.add_argument("--boards-dir", help="extra folder of board YAML files")

    def scale_out(sp):
        sp.add_argument("--executor", choices=["local", "ray"], default="local",
                        help="where fault-injection tasks run: this process (default) or Ray")
        sp.add_argument("--ray-address", help="Ray cluster address (default: start a local "
                        "Ray instance)")
        sp.add_argument("--workers", type=int, help="Ray actors (default: one per CPU)")

    t = sub.add_parser("train", help="quantization-aware training of the config's model (a "
                       "config whose model.arch is a .onnx file imports it instead)")
    t.add_argument("config", help="run config (YAML); see docs/config.md")
    t.add_argument("--out", required=True, help="run directory to create")
    t.add_argument("--epochs", type=int, help="override train.epochs")
    t.add_argument("--force", action="store_true", help="retrain a run whose train step is "
                   "finished (same config); every later finished step is marked stale")
    common(t)
    t.set_defaults(func=cmd_train)

    im = sub.add_parser("import", help="make a run from a trained QONNX model (exported by "
                        "Brevitas, converted by qonnx, or written by hand); nothing is trained")
    im.add_argument("model", help="the QONNX file (.onnx)")
    im.add_argument("--data", required=True, help="an .npz file (x_train, y_train, x_test, "
                    "y_test, optionally x_val, y_val; see docs/byo.md) or a built-in data set "
                    "(digits, digits32, mnist5k)")
    im.add_argument("--out", required=True, help="run directory to create")
    im.add_argument("--config", help="run config (YAML) for the other sections (campaign, rtl, "
                    "hls, ...); its model and data are replaced (default: the digits default)")
    im.add_argument("--seed", type=int, help="the run's seed (default: the config's)")
    common(im)
    im.set_defaults(func=cmd_import)

    i = sub.add_parser("info", help="model, plan, memory sizes and accuracy of a run")
    i.add_argument("run_dir")
    common(i)
    i.set_defaults(func=cmd_info)

    j = sub.add_parser("inject", help="fault campaign (accuracy vs BER) or replay of a fault map")
    j.add_argument("run_dir")
    j.add_argument("--ber", type=float, nargs="+", help="bit error rates (default: config)")
    j.add_argument("--trials", type=int, help="trials per BER (default: config, else Leveugle)")
    j.add_argument("--seed", type=int, help="campaign seed (default: the run's seed)")
    j.add_argument("--margin", type=float, help="Leveugle error margin (default 0.05)")
    j.add_argument("--confidence", type=float, help="Leveugle confidence (default 0.95)")
    j.add_argument("--fault", choices=["flip", "stuck0", "stuck1"], help="fault model")
    j.add_argument("--kinds", nargs="+", choices=list(ALL_KINDS),
                   help="memory kinds to target (default: weight)")
    j.add_argument("--layers", nargs="+", help="only these layers' memories")
    j.add_argument("--bits", type=int, nargs="+", help="only these bit positions (0 = LSB)")
    j.add_argument("--map", type=Path, help="replay this JSON fault map instead of a campaign")
    j.add_argument("--device", choices=["cpu", "cuda"], help="override the config's device")
    scale_out(j)
    common(j)
    j.set_defaults(func=cmd_inject)

    f = sub.add_parser("faultmap", help="sample one SEU fault map and write it as JSON")
    f.add_argument("run_dir")
    f.add_argument("--ber", type=float, required=True)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--trial", type=int, default=0, help="trial index (same stream as inject)")
    f.add_argument("--layers", nargs="+")
    f.add_argument("--bits", type=int, nargs="+")
    f.add_argument("--fault", choices=["flip", "stuck0", "stuck1"], default="flip")
    f.add_argument("--kinds", nargs="+", choices=list(ALL_KINDS),
                   default=["weight"], help="memory kinds to target (default: weight)")
    f.add_argument("--out", required=True, help="JSON file to write")
    common(f)
    f.set_defaults(func=cmd_faultmap)

    k = sub.add_parser("rank", help="layer vulnerability (LVF) by the genetic algorithm")
    k.add_argument("run_dir")
    k.add_argument("--ground-truth", action="store_true",
                   help="also measure per-layer single-bit vulnerability and the Spearman "
                   "correlation of the two rankings")
    k.add_argument("--seed", type=int, help="GA seed (default: the run's seed)")
    k.add_argument("--device", choices=["cpu", "cuda"], help="override the config's device")
    scale_out(k)
    common(k)
    k.set_defaults(func=cmd_rank)

    se = sub.add_parser("search", help="Algorithm 1: base bit-width q and protected layers "
                        "(replaces plan.json)")
    se.add_argument("run_dir")
    common(se)
    se.set_defaults(func=cmd_search)

    tb = sub.add_parser("table", help="the paper's experiment: hom(n,-), hom(-,n+2), "
                        "het(n,n+2) for each n (Tables III-V, Figs. 3-6)")
    tb.add_argument("config", nargs="?", help="run config (YAML); its 'table' section sets n, "
                    "BERs, trials (default: the config of the run in --out)")
    tb.add_argument("--out", required=True, help="run directory (trained first if new); a run "
                    "that cannot be retrained (imported QONNX, binary) gets the protection "
                    "columns at its own bit-widths")
    common(tb)
    tb.set_defaults(func=cmd_table)

    rt = sub.add_parser("rtl", help="generate the SystemVerilog accelerator of a run "
                        "(RUN_DIR/rtl: top level, memory files, manifest)")
    rt.add_argument("run_dir")
    common(rt)
    rt.set_defaults(func=cmd_rtl)

    sm = sub.add_parser("sim", help="Verilator + cocotb: bit-exactness, cycles and an RTL "
                        "fault campaign (same fault maps as 'hetq inject')")
    sm.add_argument("run_dir")
    sm.add_argument("--ber", type=float, nargs="+",
                    help="bit error rates (default: sim.bers, else campaign.bers)")
    sm.add_argument("--trials", type=int, help="trials per BER (default: sim.trials, 20)")
    sm.add_argument("--seed", type=int, help="campaign seed (default: the run's seed)")
    sm.add_argument("--images", type=int,
                    help="first N test images only (default: sim.images, else all)")
    common(sm)
    sm.set_defaults(func=cmd_sim)

    bo = sub.add_parser("boards", help="list the target boards (part, clock, capacity)")
    bo.add_argument("--boards-dir", help="extra folder of board YAML files")
    common(bo)
    bo.set_defaults(func=cmd_boards)

    hl = sub.add_parser("hls", help="hls4ml project of a run for a board, checked bit-exact "
                        "in C-sim with fault replay")
    hl.add_argument("run_dir")
    board_args(hl)
    hl.add_argument("--backend", choices=["Vitis", "Vivado"],
                    help="hls4ml backend (default: config hls.backend, Vitis)")
    common(hl)
    hl.set_defaults(func=cmd_hls)

    sy = sub.add_parser("synth", help="Yosys synthesis of the run's RTL (and its unprotected "
                        "baseline) for --board, else every board of report.boards: LUT, FF, "
                        "BRAM, DSP per stage and in total, utilization, fit")
    sy.add_argument("run_dir")
    board_args(sy)
    common(sy)
    sy.set_defaults(func=cmd_synth)

    r = sub.add_parser("run", help="the whole flow on a config (default: embedded digits): "
                       "train, rank, search, inject, hls, rtl, sim, synth, report; a rerun "
                       "resumes after the last finished step")
    r.add_argument("config", nargs="?", help="run config (default: the config of the run in "
                   "--out if it exists, e.g. an imported one; else flow/configs/digits.yaml)")
    r.add_argument("--out", default="runs/digits", help="run directory (default: runs/digits)")
    r.add_argument("--from", dest="from_step", metavar="STEP",
                   help="rerun from STEP (earlier steps must be finished)")
    r.add_argument("--to", dest="to_step", metavar="STEP", help="stop after STEP")
    common(r)
    r.set_defaults(func=cmd_run)

    zb = sub.add_parser("zobnn", help="the ZOBNN study: binary networks with float parameters vs "
                        "deliberately quantized ones (Table I, Figs. 3-4, Table II) and the "
                        "ZOBNN network's integer hardware (RTL in Verilator, SEU maps)")
    zb.add_argument("config", nargs="?", help="run config with a zobnn section (default: "
                    "flow/configs/digits.yaml)")
    zb.add_argument("--out", default="runs/zobnn", help="run directory (default: runs/zobnn)")
    zb.add_argument("--trials", type=int, help="fault maps per fault rate (default: "
                    "zobnn.trials, 500)")
    common(zb)
    zb.set_defaults(func=cmd_zobnn)

    b = sub.add_parser("bench", help="benchmarks")
    bsub = b.add_subparsers(dest="bench", required=True, parser_class=_Parser)
    bf = bsub.add_parser("fi", help="fault-injection throughput vs clean inference and PyTorchFI")
    bf.add_argument("--repeats", type=int, default=5, help="repeats per measurement (median)")
    bf.add_argument("--seed", type=int, default=0)
    bf.add_argument("--epochs", type=int, default=5, help="training epochs of the bench model")
    common(bf)
    bf.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hetq`` console script."""
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except HetqError as e:
        print(f"hetq: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hetq: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
