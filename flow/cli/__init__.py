"""The ``hetq`` command line: argument parsing only; :mod:`flow.pipeline.commands` does the work.

Every command takes ``--json`` (then it prints exactly one JSON document on stdout), ``-v``
(show the tools' output: hls4ml, qonnx, g++, Verilator, Yosys; otherwise it goes to the step's
log) and, where a config applies, ``--set key=value`` (any config key, validated like the file).
A mistake ends with one line ``hetq: error: ...`` on stderr and exit status 2; a failed check
(C-sim or RTL not bit-exact) with exit status 1.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from flow import __version__
from flow.core.errors import ConfigError, HetqError
from flow.core.kinds import FAULT_MODELS, MEMORY_KINDS


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        raise ConfigError(f"{self.prog}: {message}")


def _flags(sp, *names: str) -> None:
    """Add the shared options ``names`` to a sub-parser."""
    table = {
        "json": (["--json"], {"action": "store_true",
                              "help": "print one JSON document on stdout"}),
        "verbose": (["-v", "--verbose"], {"action": "store_true",
                                          "help": "show the tools' output (else: step log)"}),
        "set": (["--set"], {"action": "append", "metavar": "KEY=VALUE",
                            "help": "override a config key, e.g. --set campaign.trials=50"}),
        "board": (["--board"], {"help": "target board (default: the config's)"}),
        "boards_dir": (["--boards-dir"], {"help": "extra folder of board YAML files"}),
        "seed": (["--seed"], {"type": int, "help": "seed (default: the config's)"}),
        "device": (["--device"], {"choices": ["cpu", "cuda"], "help": "override device"}),
        "ber": (["--ber"], {"type": float, "nargs": "+", "help": "bit error rates"}),
        "trials": (["--trials"], {"type": int, "help": "trials (fault maps) per BER"}),
        "kinds": (["--kinds"], {"nargs": "+", "choices": list(MEMORY_KINDS),
                                "help": "memory kinds to target"}),
        "layers": (["--layers"], {"nargs": "+", "help": "only these layers' memories"}),
        "bits": (["--bits"], {"type": int, "nargs": "+",
                              "help": "only these bit positions (0 = LSB)"}),
        "fault": (["--fault"], {"choices": list(FAULT_MODELS), "help": "fault model"}),
        "parallel": None,
    }
    for name in names:
        if name == "parallel":
            sp.add_argument("--executor", choices=["local", "ray"],
                            help="where fault-injection tasks run (default: this process)")
            sp.add_argument("--ray-address", help="Ray cluster address (default: a local one)")
            sp.add_argument("--workers", type=int, help="Ray actors; for sim, simulators, local "
                            "or Ray (default: one per CPU)")
            continue
        args, kw = table[name]
        sp.add_argument(*args, **kw)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``hetq`` (documented in docs/cli.md)."""
    p = _Parser(prog="hetq", description="Reliability-aware FPGA accelerators for quantized "
                "neural networks: train, inject faults, rank layers by vulnerability, search "
                "bit-widths and protection, build and check the hardware.")
    p.add_argument("--version", action="version", version=f"hetq {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    common = ("json", "verbose")

    def cmd(name: str, help: str, *flags: str, run_dir: bool = False):
        sp = sub.add_parser(name, help=help, description=help)
        if run_dir:
            sp.add_argument("run_dir", help="a run directory")
        _flags(sp, *common, *flags)
        return sp

    sp = cmd("run", "the whole flow: train, rank, search, inject, hls, rtl, sim, synth, "
             "report; a rerun resumes after the last finished step", "set")
    sp.add_argument("config", nargs="?", help="run config (default: the run in --out, else "
                    "the embedded digits default)")
    sp.add_argument("--out", default="runs/digits", help="run directory (default: runs/digits)")
    sp.add_argument("--from", dest="from_step", metavar="STEP", help="rerun from STEP")
    sp.add_argument("--to", dest="to_step", metavar="STEP", help="stop after STEP")
    sp = cmd("train", "quantization-aware training of the config's network (a .onnx model "
             "is imported)", "set")
    sp.add_argument("config", help="run config (YAML); see docs/config.md")
    sp.add_argument("--out", required=True, help="run directory to create")
    sp.add_argument("--epochs", type=int, help="override train.epochs")
    sp.add_argument("--force", action="store_true",
                    help="retrain a finished run (its later steps become stale)")
    sp = cmd("import", "a run from a trained QONNX model (nothing is trained)", "set", "seed")
    sp.add_argument("model", help="the QONNX file (.onnx)")
    sp.add_argument("--data", required=True,
                    help="an .npz file or digits / digits32 / mnist5k / mnist5k32")
    sp.add_argument("--out", required=True, help="run directory to create")
    sp.add_argument("--config", help="run config for the other sections (default: digits)")
    cmd("info", "model, plan, memory sizes, accuracy and steps of a run", run_dir=True)
    sp = cmd("inject", "fault campaign (accuracy vs BER) or replay of a fault map", "set",
             "ber", "trials", "seed", "fault", "kinds", "layers", "bits", "device", "parallel",
             run_dir=True)
    sp.add_argument("--margin", type=float, help="Leveugle error margin (default 0.05)")
    sp.add_argument("--confidence", type=float, help="Leveugle confidence (default 0.95)")
    sp.add_argument("--map", help="replay this JSON fault map instead of a campaign")
    sp = cmd("faultmap", "sample one SEU fault map and write it as JSON", "seed", "kinds",
             "layers", "bits", "fault", run_dir=True)
    sp.add_argument("--ber", type=float, required=True, help="bit error rate")
    sp.add_argument("--trial", type=int, default=0, help="trial index (same stream as inject)")
    sp.add_argument("--out", required=True, help="JSON file to write")
    sp = cmd("rank", "layer vulnerability (LVF) by the genetic algorithm", "set", "seed",
             "device", "parallel", run_dir=True)
    sp.add_argument("--ground-truth", action="store_true",
                    help="also measure per-layer single-bit vulnerability and compare")
    cmd("search", "Algorithm 1: base bit-width q and protected layers (replaces plan.json)",
        "set", run_dir=True)
    sp = cmd("table", "the paper's experiment: hom(n,-), hom(-,n+2), het(n,n+2) for each n",
             "set")
    sp.add_argument("config", nargs="?", help="run config (default: the run in --out)")
    sp.add_argument("--out", required=True, help="run directory (trained first if new)")
    cmd("rtl", "the SystemVerilog accelerator of the plan (and its baseline)", "set",
        run_dir=True)
    sp = cmd("sim", "Verilator + cocotb: bit-exactness, cycles, RTL fault campaign", "set",
             "ber", "trials", "seed", "parallel", run_dir=True)
    sp.add_argument("--images", type=int, help="first N test images only")
    sp.add_argument("--map", help="replay this JSON fault map in RTL instead of a campaign")
    sp = cmd("hls", "hls4ml project for a board, checked bit-exact in C-sim with fault replay",
             "set", "board", "boards_dir", run_dir=True)
    sp.add_argument("--backend", choices=["Vitis", "Vivado"], help="hls4ml backend")
    sp.add_argument("--map", help="replay this JSON fault map in C-sim (project built before)")
    cmd("synth", "Yosys: LUT, FF, BRAM, DSP per stage, utilization and fit per board", "set",
        "board", "boards_dir", run_dir=True)
    sp = cmd("boards", "the target boards (part, clock, capacity)", "boards_dir")
    sp = cmd("zobnn", "the ZOBNN study and the ZOBNN network in hardware", "set")
    sp.add_argument("config", nargs="?", help="run config (default: the digits default)")
    sp.add_argument("--out", default="runs/zobnn", help="run directory (default: runs/zobnn)")
    sp.add_argument("--trials", type=int, help="fault maps per fault rate")
    sp = cmd("bench", "benchmarks: 'fi', fault-injection throughput; 'clean', clean inference "
             "of the executor and the float twin by network size", "set", "seed")
    sp.add_argument("what", choices=["fi", "clean"], help="the benchmark")
    sp.add_argument("--out", help="run directory (default: runs/bench, runs/bench-clean)")
    sp.add_argument("--repeats", type=int, help="repeats per measurement (median)")
    sp.add_argument("--epochs", type=int, help="training epochs of the bench network(s)")
    return p


def _dispatch(a: argparse.Namespace):
    """Call the command's function in :mod:`flow.pipeline.commands` with its options."""
    from flow.pipeline import commands as C
    con = C.Console(progress=not a.json, verbose=a.verbose)
    sets = getattr(a, "set", None)
    par = {"executor": getattr(a, "executor", None), "address": getattr(a, "ray_address", None),
           "workers": getattr(a, "workers", None)}
    fault = {"kinds": getattr(a, "kinds", None), "layers": getattr(a, "layers", None),
             "bits": getattr(a, "bits", None), "fault": getattr(a, "fault", None)}
    c = a.command
    if c == "run":
        return C.run_flow(a.config, a.out, from_step=a.from_step, to_step=a.to_step,
                          sets=sets, con=con)
    if c == "train":
        return C.train(a.config, a.out, epochs=a.epochs, sets=sets, force=a.force, con=con)
    if c == "import":
        return C.import_model(a.model, a.data, a.out, config=a.config, seed=a.seed, sets=sets,
                              con=con)
    if c == "info":
        return C.info(a.run_dir)
    if c == "inject" and a.map is not None:
        return C.replay(a.run_dir, a.map, device=a.device)
    if c == "inject":
        return C.inject(a.run_dir, ber=a.ber, trials=a.trials, seed=a.seed, margin=a.margin,
                        confidence=a.confidence, device=a.device, sets=sets, con=con, **par,
                        **fault)
    if c == "faultmap":
        return C.faultmap(a.run_dir, a.out, ber=a.ber, seed=a.seed, trial=a.trial, **fault)
    if c == "rank":
        return C.rank(a.run_dir, ground_truth=a.ground_truth, seed=a.seed, device=a.device,
                      sets=sets, con=con, **par)
    if c == "search":
        return C.search(a.run_dir, sets=sets, con=con)
    if c == "table":
        return C.table(a.config, a.out, sets=sets, con=con)
    if c == "rtl":
        return C.rtl(a.run_dir, sets=sets, con=con)
    if c in ("sim", "hls") and a.map is not None:
        return C.replay_level(a.run_dir, a.map, "rtl" if c == "sim" else "csim",
                              images=getattr(a, "images", None), sets=sets, con=con)
    if c == "sim":
        return C.sim(a.run_dir, ber=a.ber, trials=a.trials, seed=a.seed, images=a.images,
                     sets=sets, con=con, **par)
    if c == "hls":
        return C.hls(a.run_dir, board=a.board, backend=a.backend, boards_dir=a.boards_dir,
                     sets=sets, con=con)
    if c == "synth":
        return C.synth(a.run_dir, board=a.board, boards_dir=a.boards_dir, sets=sets, con=con)
    if c == "boards":
        return C.boards(a.boards_dir)
    if c == "zobnn":
        return C.zobnn(a.config, a.out, trials=a.trials, sets=sets, con=con)
    out = a.out or ("runs/bench" if a.what == "fi" else "runs/bench-clean")
    return C.bench(out, what=a.what, repeats=a.repeats, seed=a.seed, epochs=a.epochs, sets=sets,
                   con=con)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hetq`` console script."""
    try:
        args = build_parser().parse_args(argv)
        res = _dispatch(args)
    except HetqError as e:
        print(f"hetq: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hetq: interrupted", file=sys.stderr)
        return 130
    try:
        print(json.dumps(res.to_json(), indent=2, default=str) if args.json else res.summary())
        sys.stdout.flush()
    except BrokenPipeError:            # the reader stopped early (``hetq boards | head``)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # no error at exit
        return 141                     # as a Unix tool killed by SIGPIPE
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())
