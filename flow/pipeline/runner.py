"""One protocol for every step of the flow, and the runner that owns the manifest.

A step is ``run(ctx) -> StepResult``: it reads the run directory's artifacts and writes new ones.
The runner, not the step, records it in the manifest (running, then done with its time and its
result's record, or failed), gives it an atomic folder (``ctx.out``: built as
``<folder>.partial`` and renamed when the step finishes, so a crash leaves no half-written
folder; ``ctx.atomic(path)`` for outputs keyed inside a folder, such as one campaign of many),
sends the tools' output to the step's log (:mod:`flow.pipeline.console`) and, in a flow, marks
the later finished steps stale. ``hetq run``, ``hetq table``, ``hetq zobnn`` and ``hetq bench``
are lists of steps of this one runner.

A step may run *beside* the step before it when it needs only what came earlier (``synth``
beside ``sim``: both read the RTL project; Yosys and Verilator then share the machine's cores).
Such a step keeps its tools' output to itself (Yosys writes its own logs) and runs without
progress lines or bars of its own; the runner says when it starts and ends.
"""
from __future__ import annotations

import contextlib
import dataclasses
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flow.core.config import RunConfig
from flow.core.errors import HetqError
from flow.pipeline.console import tools_to_log
from flow.pipeline.rundir import RunDir


def plain(value: Any) -> Any:
    """``value`` as JSON-ready data (dataclasses, paths, tuples, enums, numpy scalars)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if hasattr(value, "to_json"):
            return value.to_json()
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    if hasattr(value, "value") and isinstance(value, str):       # str enums
        return value.value
    return value


@dataclass
class StepResult:
    """The result of a step or command: a dataclass with :meth:`to_json` and :meth:`summary`.

    ``ok`` is False when a check failed (the command then exits with status 1).
    """

    def to_json(self) -> dict:
        """Every field as JSON-ready data (what ``--json`` prints)."""
        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def summary(self) -> str:
        """What the command prints without ``--json``."""
        raise NotImplementedError

    def record(self) -> dict:
        """What the manifest keeps of the step (default: the whole result)."""
        return self.to_json()

    def brief(self) -> str:
        """The step's lines in ``hetq run``'s closing summary (default: :meth:`summary`)."""
        return self.summary()

    @property
    def ok(self) -> bool:
        """False if a check of the step failed."""
        return True


@dataclass
class StepContext:
    """What a step gets: the run, its config, the console settings, its atomic folder."""

    run: RunDir
    cfg: RunConfig
    progress: bool = True
    verbose: bool = False
    out: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def say(self, text: str) -> None:
        """A progress line on the console (stderr), unless progress is off."""
        if self.progress:
            print(text, file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def atomic(self, relpath: str) -> Iterator[Path]:
        """An atomic folder ``RUN_DIR/relpath`` (built as ``relpath.partial``, renamed on
        success), for outputs keyed inside a step's folder."""
        with self.run.atomic_folder(relpath) as out:
            yield out


@dataclass(frozen=True)
class Step:
    """A step of the flow: its name (the manifest key), its function, its atomic folder
    (default: the name; None for a step whose outputs are keyed inside its folder), and the step
    before it in a flow that it may run beside (``beside``; None: after it)."""

    name: str
    run: Callable[[StepContext], StepResult]
    folder: str | None = ""
    beside: str | None = None

    @property
    def out_folder(self) -> str | None:
        """The folder the runner builds atomically for this step."""
        return self.name if self.folder == "" else self.folder


class Runner:
    """Runs steps on one run directory and owns its manifest."""

    def __init__(self, run: RunDir, cfg: RunConfig, *, progress: bool = True,
                 verbose: bool = False) -> None:
        self.run, self.cfg, self.progress, self.verbose = run, cfg, progress, verbose

    def run_step(self, step: Step, *, beside: str | None = None, **options: Any) -> StepResult:
        """Run one step: record it, give it its folder and its log, record its result.

        ``beside``: the step this one runs beside (in another thread); it then gets no log
        redirection and no progress output of its own, and its record names that step."""
        run = self.run
        t0 = time.time()
        before = run.manifest().get("steps", {}).get(step.name)
        run.record_step(step.name, status="running", started=t0,
                        **({"beside": beside} if beside else {}))
        log = run.path / f"{step.name}.log"
        ctx = StepContext(run, self.cfg, self.progress and not beside, self.verbose, None,
                          options)
        try:
            with contextlib.nullcontext() if beside else tools_to_log(log, self.verbose):
                if step.out_folder:
                    with run.atomic_folder(step.out_folder) as out:
                        ctx.out = out
                        result = step.run(ctx)
                else:
                    result = step.run(ctx)
        except HetqError:
            # a user's mistake (a bad option, a missing input): as if the step never started
            run.restore_step(step.name, before)
            if log.is_file() and not log.stat().st_size:
                log.unlink()
            raise
        except BaseException as e:
            run.record_step(step.name, status="failed", seconds=round(time.time() - t0, 3),
                            error=str(e).splitlines()[0] if str(e) else type(e).__name__,
                            log=str(log) if log.is_file() else None)
            raise
        kept = log
        home = run.path / (step.out_folder or step.name)    # the step's folder keeps its log
        if log.is_file() and not log.stat().st_size:
            log.unlink()                                    # the tools said nothing
        elif log.is_file() and home.is_dir():
            kept = home / log.name
            shutil.move(str(log), kept)
        run.record_step(step.name, status="done", seconds=round(time.time() - t0, 3),
                        log=str(kept) if kept.is_file() else None, **result.record())
        return result

    def run_flow(self, steps: Sequence[Step], start: int = 0, stop: int | None = None
                 ) -> dict[str, StepResult]:
        """Run ``steps[start:stop + 1]`` in order, printing ``[i/n] step``; each step marks the
        later finished ones stale before it runs (their inputs change)."""
        names = [s.name for s in steps]
        stop = len(steps) - 1 if stop is None else stop
        results: dict[str, StepResult] = {}
        for i, step in enumerate(steps[:stop + 1]):
            tag = f"[{i + 1}/{len(steps)}] {step.name}"
            if i < start:
                if self.progress:
                    print(f"{tag}: done, skipped", file=sys.stderr)
                continue
            if step.name in results:                     # it ran beside the step before it
                continue
            self.run.invalidate_after(step.name, names)
            nxt = steps[i + 1] if i + 1 <= stop else None
            if nxt is not None and nxt.beside == step.name:
                self._say(f"{tag}\n[{i + 2}/{len(steps)}] {nxt.name}: runs beside {step.name}")
                results.update(self._side_by_side(step, nxt))
            else:
                self._say(tag)
                results[step.name] = self.run_step(step)
        return results

    def _say(self, text: str) -> None:
        if self.progress:
            print(text, file=sys.stderr, flush=True)

    def _side_by_side(self, step: Step, other: Step) -> dict[str, StepResult]:
        """``step`` here and ``other`` in a thread beside it; both finish before this returns,
        and the first error (``step``'s before ``other``'s) is raised."""
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"hetq-{other.name}") as pool:
            fut = pool.submit(self.run_step, other, beside=step.name)
            try:
                first = self.run_step(step)
            except BaseException:
                self._say(f"{other.name}: waiting for it to stop after {step.name} failed")
                fut.exception()                              # let it finish and record itself
                raise
            t0 = time.time()
            second = fut.result()
            waited = time.time() - t0
        self._say(f"{other.name}: done beside {step.name}"
                  + (f" ({waited:.0f} s after it)" if waited >= 1 else ""))
        return {step.name: first, other.name: second}

    def resume_point(self, steps: Sequence[Step]) -> int:
        """Index of the first step that is not finished (``len(steps)`` if all are)."""
        return next((i for i, s in enumerate(steps) if not self.run.step_done(s.name)),
                    len(steps))
