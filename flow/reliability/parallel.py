"""One executor interface for fault-injection work: in-process by default, or a Ray cluster.

A :class:`FaultWorker` holds its own copy of the memory image and integer executor (faults are
applied in place, so workers never share one) and answers two kinds of task: campaign trials
(seed, BER, trial index -> flips and correct images; several at once are classified in one
forward pass, :mod:`flow.core.multimap`) and the GA's group test of a pool of bits.
Results depend only on the task's arguments, so the same seed gives the same numbers whichever
pool runs them and in whatever order they finish.

:class:`LocalPool` runs tasks in this process on the caller's executor; :class:`RayPool` starts
Ray actors (``ray`` is an optional extra: ``pip install 'hetq[ray]'``) on the cluster at
``address`` or on a local Ray instance.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch

from flow.core.errors import ConfigError
from flow.core.executor import Executor
from flow.core.image import MemoryImage
from flow.core.ir import IntNetwork
from flow.core.multimap import MapParams, predict_maps
from flow.reliability.faults import Injector, SeuSampler
from flow.reliability.streams import TrialStreams

EXECUTORS = ("local", "ray")


class FaultWorker:
    """A network's image and executor plus the test set: runs trials and pool tests."""

    def __init__(self, executor: Executor, image: MemoryImage, x: torch.Tensor,
                 y: torch.Tensor) -> None:
        self.ex, self.image = executor, image
        self.inj = Injector(image, executor)
        self.xq = executor.quantize_input(x)
        self.y = y.to(executor.device)
        self._y_np = self.y.numpy() if self.y.device.type == "cpu" else None
        executor.remember(self.xq, quantized=True)    # trials recompute from the first faulty node
        self.clean_pred = executor.predict(self.xq, quantized=True)
        self.clean = int((self.clean_pred == self.y).sum())
        self._samplers: dict[tuple, SeuSampler] = {}
        self._streams = TrialStreams()     # each trial's trial_rng stream, one generator
        # a multilayer perceptron's trials run one map at a time on the compiled engine,
        # faster than batched maps
        from flow.core.chain import compiled
        self.chained = isinstance(executor, Executor) and compiled(executor)

    @classmethod
    def build(cls, net: IntNetwork, protected: Sequence[str], x: torch.Tensor, y: torch.Tensor,
              device: str) -> "FaultWorker":
        """A worker with a fresh image of ``net`` (used by remote workers)."""
        image = MemoryImage.build(net, protected)
        return cls(Executor(net, image, device), image, x, y)

    def sampler(self, kinds: tuple, layers: tuple | None, bits: tuple | None) -> SeuSampler:
        """The sampler over the given targets (built once per target set)."""
        key = (kinds, layers, bits)
        if key not in self._samplers:
            self._samplers[key] = SeuSampler(self.image, kinds=kinds, layers=layers, bits=bits)
        return self._samplers[key]

    def trial(self, seed: int, ber: float, t: int, kinds: tuple, layers: tuple | None,
              bits: tuple | None, fault: str) -> tuple[int, int, float]:
        """One campaign trial: (flips, correct images, seconds)."""
        t0 = time.perf_counter()
        fmap = self.sampler(kinds, layers, bits).sample(ber, self._streams.rng(seed, ber, t), fault)
        with self.inj.injected(fmap):
            correct = self._correct(self.ex.predict(self.xq, quantized=True))
        return len(fmap), correct, time.perf_counter() - t0

    def _correct(self, pred: torch.Tensor) -> int:
        """How many of the predictions ``pred`` equal the labels (on the CPU by NumPy: 2.0 us
        against PyTorch's 5.2 us for 359 labels)."""
        if self._y_np is not None and pred.device.type == "cpu":
            return int(np.count_nonzero(pred.numpy() == self._y_np))
        return int((pred == self.y).sum())

    def trials(self, tasks: Sequence[tuple]) -> list[tuple[int, int, float]]:
        """Several campaign trials (each task as :meth:`trial` takes it), their maps classified
        in one forward pass: the same (flips, correct images) as :meth:`trial` one by one, and
        each trial's share of the time. Falls back to one at a time where the maps cannot be
        batched exactly (or the executor has no batched form), and on a dense chain (compiled,
        :mod:`flow.core.chain`)."""
        if len(tasks) == 1 or not isinstance(self.ex, Executor) or self.chained:
            return [self.trial(*task) for task in tasks]
        t0 = time.perf_counter()
        sizes, params = [], []
        for seed, ber, t, kinds, layers, bits, fault in tasks:
            rng = self._streams.rng(seed, ber, t)
            fmap = self.sampler(kinds, layers, bits).sample(ber, rng, fault)
            sizes.append(len(fmap))
            with self.inj.injected(fmap):
                touched = {str(m): fmap.word[fmap.memory == m] for m in np.unique(fmap.memory)}
                params.append(MapParams.capture(self.ex, touched))
        preds = predict_maps(self.ex, self.xq, params)
        if preds is None:
            return [self.trial(*task) for task in tasks]
        share = (time.perf_counter() - t0) / len(tasks)
        return [(n, int((p == self.y).sum()), share) for n, p in zip(sizes, preds)]

    def test(self, genes: np.ndarray) -> tuple[bool, float]:
        """(any prediction changed, accuracy drop) when the weight bits ``genes`` flip."""
        fmap = self.sampler(("weight",), None, None).faults_at(np.sort(np.asarray(genes)))
        with self.inj.injected(fmap):
            pred = self.ex.predict(self.xq, quantized=True)
        return (bool((pred != self.clean_pred).any()),
                (self.clean - int((pred == self.y).sum())) / len(self.y))

    def classify(self, group: list[int]) -> tuple[dict[int, float], int]:
        """Group testing of a pool of weight bits: the single-flip drop of every bit whose pool
        changed a prediction, 0.0 for bits of pools that changed none; and the inferences used.
        A pool is screened by "any prediction changed" (flips that lower and raise the accuracy
        cannot cancel out there); a single bit is judged by its own accuracy drop."""
        drops: dict[int, float] = {}
        count = 0

        def rec(g: list[int], result: tuple[bool, float] | None) -> None:
            nonlocal count
            if result is None:
                result, count = self.test(np.array(g)), count + 1
            changed, drop = result
            if len(g) == 1:
                drops[g[0]] = drop
            elif not changed:
                drops.update((b, 0.0) for b in g)
            else:
                rec(g[:len(g) // 2], None)
                rec(g[len(g) // 2:], None)

        rec(list(group), None)
        return drops, count


class LocalPool:
    """Runs tasks one after the other in this process, on one worker."""

    def __init__(self, worker: FaultWorker) -> None:
        self.worker = worker

    def imap(self, method: str, tasks: Iterable[tuple]) -> Iterator[tuple[tuple, object]]:
        """Yield (task, result) for every task, in order."""
        fn = getattr(self.worker, method)
        for task in tasks:
            yield task, fn(*task)

    def close(self) -> None:
        """Nothing to release."""


def ray_connected(address: str | None):
    """The ``ray`` module, connected to the cluster at ``address`` (or a local Ray instance)
    unless this process is connected already; a ConfigError if Ray is not installed."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor: 'ray' needs the ray package "
                          "(pip install 'hetq[ray]')") from None
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 ignore_reinit_error=True)
    return ray


class RayPool:
    """Runs tasks on Ray actors, each with its own copy of the network image."""

    def __init__(self, net: IntNetwork, protected: Sequence[str], x: torch.Tensor,
                 y: torch.Tensor, *, address: str | None = None, workers: int | None = None,
                 device: str = "cpu") -> None:
        self.ray = ray = ray_connected(address)
        n = workers or max(1, int(ray.available_resources().get("CPU", 1)))
        payload = ray.put((net, list(protected), x, y, device))
        actor = ray.remote(num_cpus=1)(_RemoteWorker)
        self.actors = [actor.remote(payload) for _ in range(n)]

    def imap(self, method: str, tasks: Iterable[tuple]) -> Iterator[tuple[tuple, object]]:
        """Yield (task, result) as tasks finish (up to two in flight per actor)."""
        pending: dict = {}
        it = iter(tasks)
        free = list(self.actors) * 2
        exhausted = False
        while True:
            while free and not exhausted:
                try:
                    task = next(it)
                except StopIteration:
                    exhausted = True
                    break
                a = free.pop()
                pending[a.call.remote(method, task)] = (task, a)
            if not pending:
                return
            done, _ = self.ray.wait(list(pending), num_returns=1)
            task, a = pending.pop(done[0])
            free.append(a)
            yield task, self.ray.get(done[0])

    def close(self) -> None:
        """Release the actors (the Ray instance stays up for reuse)."""
        for a in self.actors:
            self.ray.kill(a)


class _RemoteWorker:
    """Ray actor body: builds its FaultWorker from the shared payload."""

    def __init__(self, payload) -> None:
        net, protected, x, y, device = payload
        torch.set_num_threads(1)
        self.worker = FaultWorker.build(net, protected, x, y, device)

    def call(self, method: str, task: tuple):
        return getattr(self.worker, method)(*task)


def make_pool(kind: str, executor: Executor, image: MemoryImage, x: torch.Tensor,
              y: torch.Tensor, *, address: str | None = None, workers: int | None = None):
    """``local`` (default) or ``ray`` pool over the given network and image."""
    if kind == "local":
        return LocalPool(FaultWorker(executor, image, x, y))
    if kind == "ray":
        protected = [m.layer for m in image.memories.values() if m.protected]
        return RayPool(executor.net, protected, x, y, address=address, workers=workers,
                       device=str(executor.device))
    raise ConfigError(f"--executor: unknown executor '{kind}' (known: {', '.join(EXECUTORS)})")
