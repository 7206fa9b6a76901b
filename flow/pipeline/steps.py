"""The steps of hetq, listed once, and the step lists its commands run.

Each step is ``run(ctx) -> StepResult`` in its own module (:mod:`flow.pipeline.runner` runs it);
a step is named here by ``module:function`` and imported when it runs, so the command line
answers a mistake before torch is imported. ``FLOW`` is ``hetq run``, top to bottom.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable

from flow.pipeline.runner import Step, StepContext, StepResult


def _lazy(target: str) -> Callable[[StepContext], StepResult]:
    module, _, name = target.partition(":")

    def run(ctx: StepContext) -> StepResult:
        return getattr(importlib.import_module(module), name)(ctx)
    run.__doc__ = f"``{target}``"
    return run


TRAIN = Step("train", _lazy("flow.pipeline.train_step:run"))
RANK = Step("rank", _lazy("flow.pipeline.rank:run"))
SEARCH = Step("search", _lazy("flow.pipeline.search:run"))
INJECT = Step("inject", _lazy("flow.pipeline.inject_step:run"), folder=None)
HLS = Step("hls", _lazy("flow.pipeline.hls_step:run"))
RTL = Step("rtl", _lazy("flow.pipeline.rtl_step:run_rtl"), folder=None)
SIM = Step("sim", _lazy("flow.pipeline.rtl_step:run_sim"), folder=None)
SYNTH = Step("synth", _lazy("flow.pipeline.synth_step:run"), folder=None, beside="sim")
REPORT = Step("report", _lazy("flow.pipeline.report:run"))
TABLE = Step("table", _lazy("flow.pipeline.table:run"))
ZOBNN = Step("zobnn", _lazy("flow.pipeline.zobnn_study:run"))
BENCH = Step("bench", _lazy("flow.pipeline.bench:run"))
BENCH_CLEAN = Step("bench_clean", _lazy("flow.pipeline.bench_clean:run"))

FLOW: list[Step] = [TRAIN, RANK, SEARCH, INJECT, HLS, RTL, SIM, SYNTH, REPORT]
"""``hetq run``: the whole flow."""
TABLE_FLOW: list[Step] = [TRAIN, TABLE]
"""``hetq table``: train (if new), then the paper's experiment."""
ZOBNN_FLOW: list[Step] = [ZOBNN]
"""``hetq zobnn``: the ZOBNN study (it trains its own networks)."""
BENCH_FLOW: list[Step] = [BENCH]
"""``hetq bench fi``: train the benchmark's network, then measure."""
BENCH_CLEAN_FLOW: list[Step] = [BENCH_CLEAN]
"""``hetq bench clean``: it trains its own networks."""
STEPS: dict[str, Step] = {s.name: s for s in FLOW}
