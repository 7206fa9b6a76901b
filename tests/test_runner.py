"""The step runner: a step that runs beside the step before it (synth beside sim)."""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass

import pytest

from flow.core.config import load_config
from flow.core.errors import HetqError
from flow.pipeline.rundir import RunDir
from flow.pipeline.runner import Runner, Step, StepContext, StepResult


@dataclass
class Said(StepResult):
    """A toy step's result."""

    text: str

    def summary(self) -> str:
        return self.text


def _runner(tmp_path) -> Runner:
    run = RunDir(tmp_path / "run")
    cfg = load_config(None)
    run.init(cfg.to_yaml(), cfg.seed)
    return Runner(run, cfg, progress=False)


def _steps(log: list[str], fail: str | None = None):
    """a, then b beside a (b must start before a ends: a waits for it), then c."""
    b_started = threading.Event()

    def a(ctx: StepContext) -> StepResult:
        log.append("a in")
        assert b_started.wait(10), "b did not start beside a"
        log.append("a out")
        if fail == "a":
            raise HetqError("a: broken")
        return Said("a")

    def b(ctx: StepContext) -> StepResult:
        log.append("b in")
        b_started.set()
        if fail == "b":
            raise RuntimeError("b: broken")
        return Said("b")

    def c(ctx: StepContext) -> StepResult:
        log.append("c")
        return Said("c")

    return [Step("a", a), Step("b", b, folder=None, beside="a"), Step("c", c)]


def test_step_runs_beside_the_one_before(tmp_path):
    runner, log = _runner(tmp_path), []
    res = runner.run_flow(_steps(log))
    assert list(res) == ["a", "b", "c"]
    assert log.index("b in") < log.index("a out") and log[-1] == "c"
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())["steps"]
    assert {k: v["status"] for k, v in m.items()} == {"a": "done", "b": "done", "c": "done"}
    assert m["b"]["beside"] == "a" and "beside" not in m["a"]


def test_to_stops_before_the_side_step(tmp_path):
    runner, log = _runner(tmp_path), []
    steps = _steps(log)
    steps[0] = Step("a", lambda ctx: Said("a"))          # nothing to wait for
    assert list(runner.run_flow(steps, stop=0)) == ["a"]


@pytest.mark.parametrize("fail", ["a", "b"])
def test_a_failure_beside_waits_for_both_and_records_both(tmp_path, fail):
    runner, log = _runner(tmp_path), []
    with pytest.raises(HetqError if fail == "a" else RuntimeError, match=f"{fail}: broken"):
        runner.run_flow(_steps(log, fail))
    assert "c" not in log
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())["steps"]
    other = "b" if fail == "a" else "a"
    assert m[other]["status"] == "done"
    # a user error (HetqError) leaves no record, as if the step never ran; a crash is recorded
    assert ("a" not in m) if fail == "a" else (m["b"]["status"] == "failed")
