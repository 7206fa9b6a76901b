"""What each ``hetq`` command does with its options (the command line only parses them).

A command turns its options into overrides of the run config, validated by the config's own
schema (:func:`flow.core.config.override`: a bad value is one line that names the option), runs
its steps through the :class:`~flow.pipeline.runner.Runner` (which records them in the
manifest), and returns a result with ``to_json()`` and ``summary()``. Overrides of a command on
an existing run apply to that command only; the run's ``config.yaml`` stays as it was made.
"""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from flow.core.config import RunConfig, load_config, override, parse_config, parse_set
from flow.core.errors import ConfigError, RunDirError
from flow.pipeline import steps as S
from flow.pipeline.rundir import RunDir
from flow.pipeline.runner import Runner, Step, StepResult

Values = dict[str, tuple[object, str]]


def _pct(x: float) -> str:
    return f"{100 * x:.2f} %"


@dataclass
class Console:
    """How a command talks: progress lines and bars (off with ``--json``), tool output (``-v``)."""

    progress: bool = True
    verbose: bool = False


def _configure(cfg: RunConfig, values: Values, sets: Sequence[str] | None) -> RunConfig:
    return override(cfg, {**values, **parse_set(list(sets or []))})


def _existing(run_dir: str | Path, values: Values, sets: Sequence[str] | None
              ) -> tuple[RunDir, RunConfig]:
    run = RunDir(run_dir)
    return run, _configure(run.config(), values, sets)


def _step(run: RunDir, cfg: RunConfig, step: Step, con: Console) -> StepResult:
    """One step on an existing run; when it finishes, the later steps of the flow are stale."""
    res = Runner(run, cfg, progress=con.progress, verbose=con.verbose).run_step(step)
    if step.name in S.STEPS:
        run.invalidate_after(step.name, list(S.STEPS))
    return res


def _fresh(cfg: RunConfig, out: str | Path, force: bool, what: str) -> RunDir:
    """Validate ``cfg`` (nothing is written on a mistake) and create the run directory."""
    from flow.pipeline.train_step import validate
    validate(cfg)
    run = RunDir(out)
    if run.exists():
        run.init(cfg.to_yaml(), cfg.seed)        # the same config, else a one-line refusal
    if run.exists() and run.step_done("train"):
        if not force:
            hint = ", or --force to retrain (later steps become stale)" if what == "train" else ""
            raise RunDirError(f"--out: '{run.path}' already holds a finished train step; use a "
                              f"new --out folder{hint}")
        run.invalidate_after("train", list(S.STEPS))
    run.init(cfg.to_yaml(), cfg.seed)
    return run


# -- new runs ------------------------------------------------------------------------------------
def train(config: str, out: str, *, epochs: int | None = None, sets=None, force: bool = False,
          con: Console = Console()) -> StepResult:
    """``hetq train``: QAT of the config's network into a new run (a .onnx model is imported)."""
    cfg = _configure(load_config(config), {"train.epochs": (epochs, "--epochs")}, sets)
    run = _fresh(cfg, out, force, "train")
    return Runner(run, cfg, progress=con.progress, verbose=con.verbose).run_step(S.TRAIN)


def import_model(model: str, data: str, out: str, *, config: str | None = None,
                 seed: int | None = None, sets=None, con: Console = Console()) -> StepResult:
    """``hetq import``: a run from a trained QONNX file and a data set (nothing is trained)."""
    obj = load_config(config).model_dump(mode="json")
    path = Path(model).expanduser().resolve()
    if path.suffix.lower() != ".onnx":
        raise ConfigError(f"MODEL: '{model}' is not a .onnx file")
    obj["model"] = {"arch": str(path), "protected": obj["model"].get("protected", [])}
    d = Path(data).expanduser()
    if d.suffix.lower() == ".npz" or d.exists():
        obj["data"] = {**obj["data"], "name": "npz", "path": str(d.resolve()), "root": None}
    else:
        obj["data"] = {**obj["data"], "name": data, "path": None, "root": None}
    cfg = _configure(parse_config(obj, "hetq import"), {"seed": (seed, "--seed")}, sets)
    run = _fresh(cfg, out, False, "import")
    return Runner(run, cfg, progress=con.progress, verbose=con.verbose).run_step(S.TRAIN)


@dataclass
class FlowResult(StepResult):
    """The steps a flow command ran, by name, with each step's seconds (from the manifest) and
    the whole command's."""

    run_dir: str
    steps: dict[str, StepResult] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    total_seconds: float = 0.0
    beside: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"run_dir": self.run_dir, "steps": {k: v.to_json() for k, v in self.steps.items()},
                "seconds": self.seconds, "total_seconds": self.total_seconds,
                "beside": self.beside}

    def summary(self) -> str:
        lines = [r.brief() for r in self.steps.values()]
        if not lines:
            return f"every step is done: {self.run_dir}"
        times = ", ".join(f"{k} {v:.0f} s" + (f" (beside {self.beside[k]})" if k in self.beside
                                               else "") for k, v in self.seconds.items())
        m, sec = divmod(round(self.total_seconds), 60)
        return "\n".join(lines + [f"time: {times}; total {m} min {sec} s"])

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.steps.values())


def _run_config(config: str | None, out: str) -> RunConfig:
    """CONFIG; without it the config of the run in ``out`` (an imported one, say), else the
    embedded digits default."""
    if config is None and RunDir(out).exists():
        return RunDir(out).config()
    return load_config(config)


def run_flow(config: str | None, out: str, *, from_step: str | None = None,
             to_step: str | None = None, sets=None, flow: Sequence[Step] = S.FLOW,
             con: Console = Console()) -> FlowResult:
    """``hetq run`` (and the step lists of ``table``, ``zobnn``, ``bench``): resume after the
    last finished step, or rerun from ``from_step``; stop after ``to_step``."""
    from flow.pipeline.train_step import validate
    cfg = _configure(_run_config(config, out), {}, sets)
    names = [s.name for s in flow]
    for opt, val in (("--from", from_step), ("--to", to_step)):
        if val is not None and val not in names:
            raise ConfigError(f"{opt}: unknown step '{val}' (steps: {', '.join(names)})")
    stop = names.index(to_step) if to_step else len(names) - 1
    run = RunDir(out)
    done = {n: run.exists() and run.step_done(n) for n in names}
    validate(cfg, network="train" in names and not done["train"])
    runner = Runner(run, cfg, progress=con.progress, verbose=con.verbose)
    if from_step is not None:
        start = names.index(from_step)
        missing = [n for n in names[:start] if not done[n]]
        if missing:
            raise ConfigError(f"--from: step '{from_step}' needs '{missing[0]}' finished first "
                              f"(run without --from to resume)")
        if start > stop:
            raise ConfigError(f"--to: step '{to_step}' comes before --from '{from_step}'")
    else:
        start = next((i for i, n in enumerate(names) if not done[n]), len(names))
    run.init(cfg.to_yaml(), cfg.seed)
    t0 = time.time()
    steps = runner.run_flow(flow, start, stop)
    rec = run.manifest().get("steps", {})
    return FlowResult(str(run.path), steps,
                      {k: float(rec[k].get("seconds", 0.0)) for k in steps if k in rec},
                      round(time.time() - t0, 3),
                      {k: rec[k]["beside"] for k in steps if rec.get(k, {}).get("beside")})


def table(config: str | None, out: str, *, sets=None, con: Console = Console()) -> StepResult:
    """``hetq table``: train if the run is new, then the paper's experiment."""
    res = run_flow(config, out, sets=sets, flow=S.TABLE_FLOW, con=con)
    run = RunDir(out)
    if "table" in res.steps:
        return res.steps["table"]
    return _step(run, _configure(run.config(), {}, sets), S.TABLE, con)


def zobnn(config: str | None, out: str, *, trials: int | None = None, sets=None,
          con: Console = Console()) -> StepResult:
    """``hetq zobnn``: the ZOBNN study into a run directory."""
    from flow.hw.boards import config_board_dirs, get_board
    from flow.pipeline.session import load_data
    cfg = _configure(load_config(config), {"zobnn.trials": (trials, "--trials")}, sets)
    load_data(cfg)                            # a missing data folder fails before anything
    if cfg.zobnn.hardware and cfg.zobnn.synth:
        get_board(cfg.hls.board, config_board_dirs(cfg), "hls.board")
    run = RunDir(out)
    run.init(cfg.to_yaml(), cfg.seed)
    return Runner(run, cfg, progress=con.progress, verbose=con.verbose).run_step(S.ZOBNN)


def bench(out: str, *, what: str = "fi", repeats: int | None = None, seed: int | None = None,
          epochs: int | None = None, sets=None, con: Console = Console()) -> StepResult:
    """``hetq bench fi``: fault-injection trials of hetq, PyTorchFI and MRFI by network size.
    ``hetq bench clean``: clean inference of the executor and the float twin by size. Both
    train each network of ``bench.sizes`` (``--epochs``: ``bench.epochs``) in ``out``."""
    key = "bench.clean_repeats" if what == "clean" else "bench.repeats"
    cfg = _configure(load_config(None), {key: (repeats, "--repeats"), "seed": (seed, "--seed"),
                                         "bench.epochs": (epochs, "--epochs")}, sets)
    run = RunDir(out)
    run.init(cfg.to_yaml(), cfg.seed)
    runner = Runner(run, cfg, progress=con.progress, verbose=con.verbose)
    flow = S.BENCH_CLEAN_FLOW if what == "clean" else S.BENCH_FLOW
    return runner.run_flow(flow)[flow[0].name]


# -- steps on an existing run ----------------------------------------------------------------------
def _fields(given: dict[str, object]) -> dict[str, str]:
    """Option names for fault-target messages (``--bits``), where the option was given."""
    names = {"kinds": "--kinds", "layers": "--layers", "bits": "--bits"}
    return {k: (names[k] if given.get(k) else f"campaign.{k}") for k in names}


def inject(run_dir: str, *, ber=None, trials=None, seed=None, margin=None, confidence=None,
           fault=None, kinds=None, layers=None, bits=None, device=None, executor=None,
           address=None, workers=None, sets=None, con: Console = Console()) -> StepResult:
    """``hetq inject``: a software fault campaign on the run's plan."""
    from flow.pipeline.inject_step import inject as run_inject
    run, cfg = _existing(run_dir, {
        "campaign.bers": (ber, "--ber"), "campaign.trials": (trials, "--trials"),
        "campaign.seed": (seed, "--seed"), "campaign.margin": (margin, "--margin"),
        "campaign.confidence": (confidence, "--confidence"), "campaign.fault": (fault, "--fault"),
        "campaign.kinds": (kinds, "--kinds"), "campaign.layers": (layers, "--layers"),
        "campaign.bits": (bits, "--bits"), "device": (device, "--device"),
        "parallel.executor": (executor, "--executor"),
        "parallel.address": (address, "--ray-address"), "parallel.workers": (workers, "--workers"),
    }, sets)
    fields = _fields({"kinds": kinds, "layers": layers, "bits": bits})
    step = Step("inject", lambda ctx: run_inject(ctx, fields=fields), folder=None)
    return Runner(run, cfg, progress=con.progress, verbose=con.verbose).run_step(step)


def rank(run_dir: str, *, ground_truth: bool = False, seed=None, device=None, executor=None,
         address=None, workers=None, sets=None, con: Console = Console()) -> StepResult:
    """``hetq rank``: the GA's layer ranking (and its ground truth)."""
    run, cfg = _existing(run_dir, {
        "rank.ground_truth": (ground_truth or None, "--ground-truth"),
        "rank.seed": (seed, "--seed"), "device": (device, "--device"),
        "parallel.executor": (executor, "--executor"),
        "parallel.address": (address, "--ray-address"), "parallel.workers": (workers, "--workers"),
    }, sets)
    return _step(run, cfg, S.RANK, con)


def search(run_dir: str, *, sets=None, con: Console = Console()) -> StepResult:
    """``hetq search``: Algorithm 1 (replaces plan.json)."""
    run, cfg = _existing(run_dir, {}, sets)
    if not run.step_done("train"):
        raise RunDirError(f"run_dir: '{run.path}' has no finished train step (run 'hetq train')")
    return _step(run, cfg, S.SEARCH, con)


def rtl(run_dir: str, *, sets=None, con: Console = Console()) -> StepResult:
    """``hetq rtl``: the SystemVerilog accelerator of the plan (and its baseline)."""
    return _step(*_existing(run_dir, {}, sets), S.RTL, con)


def sim(run_dir: str, *, ber=None, trials=None, seed=None, images=None, executor=None,
        address=None, workers=None, sets=None, con: Console = Console()) -> StepResult:
    """``hetq sim``: Verilator: bit-exactness, cycles, the RTL fault campaign (on local
    simulator processes, or Ray actors with ``--executor ray``; ``--workers``: how many)."""
    run, cfg = _existing(run_dir, {
        "sim.bers": (ber, "--ber"), "sim.trials": (trials, "--trials"),
        "campaign.seed": (seed, "--seed"), "sim.images": (images, "--images"),
        "parallel.executor": (executor, "--executor"),
        "parallel.address": (address, "--ray-address"),
        "sim.workers": (workers, "--workers")}, sets)
    return _step(run, cfg, S.SIM, con)


def hls(run_dir: str, *, board=None, backend=None, boards_dir=None, sets=None,
        con: Console = Console()) -> StepResult:
    """``hetq hls``: the hls4ml project, C-sim bit-exactness and fault replay."""
    from flow.hw.boards import check_board_name
    if board is not None:
        check_board_name(board, "--board")
    run, cfg = _existing(run_dir, {
        "hls.board": (board, "--board"), "hls.backend": (backend, "--backend"),
        "hls.boards_dir": (_abs(boards_dir), "--boards-dir")}, sets)
    return _step(run, cfg, S.HLS, con)


def synth(run_dir: str, *, board=None, boards_dir=None, sets=None,
          con: Console = Console()) -> StepResult:
    """``hetq synth``: Yosys for ``--board``, else every board of ``report.boards``."""
    from flow.hw.boards import check_board_name, config_board_dirs, get_board
    if board is not None:
        check_board_name(board, "--board")
    run, cfg = _existing(run_dir, {
        "report.boards": ([board] if board else None, "--board"),
        "hls.boards_dir": (_abs(boards_dir), "--boards-dir")}, sets)
    for b in cfg.report.boards:                        # every board before any work
        get_board(b, config_board_dirs(cfg), "--board" if board else "report.boards")
    return _step(run, cfg, S.SYNTH, con)


def _abs(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


# -- commands that run no step -----------------------------------------------------------------
@dataclass
class InfoResult(StepResult):
    """What a run holds: model, data, per-layer plan and memory bits, accuracy, steps."""

    run_dir: str
    arch: str
    model: str
    data: str
    test_accuracy: float
    layers: list[dict]
    memory_bits: int
    memories: list[dict]
    steps: dict
    checkpoint_sha256: str

    def summary(self) -> str:
        rows = [f"{'layer':<22} {'w bits':>6} {'a bits':>6} {'prot':>5} {'mem bits':>10} "
                f"{'LVF':>8}"]
        rows += [f"{x['layer']:<22} {x['weight_bits']:>6} {x['act_bits'] or '-':>6} "
                 f"{'yes' if x['protected'] else 'no':>5} {x['memory_bits']:>10} "
                 f"{'-' if x['vulnerability'] is None else format(x['vulnerability'], '.4f'):>8}"
                 for x in self.layers]
        steps = ", ".join(f"{k} {v.get('status')}" for k, v in self.steps.items())
        return (f"{self.run_dir}: {self.arch} on {self.data}, test accuracy "
                f"{_pct(self.test_accuracy)}, {self.memory_bits} memory bits\n"
                + "\n".join(rows) + f"\nsteps: {steps}")


def info(run_dir: str) -> InfoResult:
    """``hetq info``: the run's model, plan, memory sizes, accuracy and steps."""
    from flow.pipeline.session import open_session
    s = open_session(run_dir, "cpu")
    sizes = s.image.size_bits()
    layers = [{"layer": name, **e, "memory_bits": sizes.get(name, 0)}
              for name, e in s.plan["layers"].items()]
    acc = s.executor.correct(s.data.test.x, s.data.test.y) / len(s.data.test.y)
    return InfoResult(str(s.run.path), s.net.arch, s.cfg.model.arch, s.cfg.data.name, acc,
                      layers, sizes["total"], s.image.summary(), s.run.manifest()["steps"],
                      s.checkpoint_sha256)


@dataclass
class ReplayResult(StepResult):
    """One fault map replayed on the test set: exact counts and every prediction."""

    map: str
    faults: int
    correct: int
    total: int
    accuracy: float
    predictions: list[int]

    def summary(self) -> str:
        return (f"{self.faults} faults from {self.map}: test accuracy {_pct(self.accuracy)} "
                f"({self.correct}/{self.total} images)")


def replay(run_dir: str, map_path: str, *, device=None) -> ReplayResult:
    """``hetq inject --map``: replay one JSON fault map."""
    from flow.pipeline.session import open_session
    from flow.reliability.faults import FaultMap, Injector
    fmap = FaultMap.load(map_path)
    s = open_session(run_dir, device)
    fmap.validate(s.image)
    with Injector(s.image, s.executor).injected(fmap):
        pred = s.executor.predict(s.data.test.x)
    correct, total = int((pred.cpu() == s.data.test.y).sum()), len(s.data.test.y)
    return ReplayResult(str(map_path), len(fmap), correct, total, correct / total,
                        pred.cpu().tolist())


def replay_level(run_dir: str, map_path: str, level: str, *, images=None, sets=None,
                 con: Console = Console()) -> StepResult:
    """``hetq sim --map`` (``level`` rtl) and ``hetq hls --map`` (csim): one JSON fault map at
    that level beside the integer executor under the same map; the tools' output goes to
    ``RUN_DIR/sim_map.log`` or ``hls_map.log``."""
    from flow.pipeline import map_replay
    from flow.pipeline.console import tools_to_log
    run, cfg = _existing(run_dir, {"sim.images": (images, "--images")}, sets)
    with tools_to_log(run.path / f"{'sim' if level == 'rtl' else 'hls'}_map.log", con.verbose):
        if level == "rtl":
            return map_replay.replay_rtl(run, map_path, cfg.sim.images)
        return map_replay.replay_csim(run, cfg, map_path)


@dataclass
class FaultMapResult(StepResult):
    """Where a sampled fault map was written and how many faults it holds."""

    out: str
    faults: int

    def summary(self) -> str:
        return f"{self.faults} faults -> {self.out}"


def faultmap(run_dir: str, out: str, *, ber: float, seed=None, trial: int = 0, kinds=None,
             layers=None, bits=None, fault=None) -> FaultMapResult:
    """``hetq faultmap``: the map ``hetq inject`` draws for that seed, BER and trial."""
    from flow.core.io import atomic_write
    from flow.pipeline.session import open_session
    from flow.reliability.faults import check_targets, sample_seu, trial_rng
    if trial < 0:
        raise ConfigError(f"--trial: {trial} must be >= 0")
    if Path(out).is_dir():
        raise ConfigError(f"--out: '{out}' is a directory (expected a file name)")
    run, cfg = _existing(run_dir, {
        "campaign.bers": ([ber], "--ber"), "campaign.seed": (seed, "--seed"),
        "campaign.kinds": (kinds, "--kinds"), "campaign.layers": (layers, "--layers"),
        "campaign.bits": (bits, "--bits"), "campaign.fault": (fault, "--fault")}, None)
    c = cfg.campaign
    kinds_ = [k.value for k in c.kinds]
    s = open_session(run.path, "cpu")
    check_targets(s.image, kinds=kinds_, layers=c.layers, bits=c.bits,
                  fields=_fields({"kinds": kinds, "layers": layers, "bits": bits}))
    rng = trial_rng(cfg.seed if c.seed is None else c.seed, c.bers[0], trial)
    fmap = sample_seu(s.image, c.bers[0], rng, kinds=kinds_, layers=c.layers, bits=c.bits,
                      kind=c.fault.value)
    atomic_write(Path(out), json.dumps(fmap.to_json()))
    return FaultMapResult(str(out), len(fmap))


@dataclass
class BoardsResult(StepResult):
    """The target boards: part, family, clock, capacity."""

    boards: list[dict]

    def summary(self) -> str:
        head = (f"{'board':<12} {'part':<24} {'family':<6} {'MHz':>5} {'LUT':>9} {'FF':>9} "
                f"{'BRAM18':>7} {'DSP':>6} {'URAM':>5}")
        return "\n".join([head] + [
            f"{r['name']:<12} {r['part']:<24} {r['family']:<6} {r['clock_mhz']:>5g} "
            f"{r['capacity']['lut']:>9} {r['capacity']['ff']:>9} {r['capacity']['bram18']:>7} "
            f"{r['capacity']['dsp']:>6} {r['capacity']['uram']:>5}" for r in self.boards])


def boards(boards_dir: str | None = None) -> BoardsResult:
    """``hetq boards``: the shipped boards and those of ``boards_dir``."""
    from flow.hw.boards import load_boards
    found = load_boards([Path(boards_dir)] if boards_dir else [])
    return BoardsResult([b.to_json() for b in sorted(found.values(), key=lambda b: b.name)])
