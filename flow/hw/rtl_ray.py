"""RTL campaigns on Ray: each actor receives the project's files, builds its own Verilator model
in a folder of its node, and runs parts of the campaign (RTL flips per trial) on the images.

The driver samples the fault maps and translates them into RTL flips, as for local simulators,
so a trial's flips, and therefore its predictions, do not depend on where it runs. Nothing is
shared through the file system: a cluster's nodes need hetq installed (for the testbench), not
the run directory.
"""
from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from flow.hw.rtlgen import sources
from flow.hw.rtlsim import RtlSim, verilator_env
from flow.reliability.parallel import ray_connected


def project_files(project: Path) -> dict[str, bytes]:
    """What a remote build needs: the sources, the memory files and the manifest."""
    project = Path(project)
    paths = [*sources(project), project / "manifest.json", *sorted((project / "mem").iterdir())]
    return {str(p.relative_to(project)): p.read_bytes() for p in paths}


class RtlActor:
    """Ray actor body: its own copy of the project, built once, running parts of a campaign."""

    def __init__(self, files: dict[str, bytes], n_max: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="hetq_rtl_"))
        for rel, data in files.items():
            (self.dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.dir / rel).write_bytes(data)
        self.sim = RtlSim(self.dir, build_dir=self.dir / "sim_build", n_max=n_max)
        with verilator_env():
            self.sim.build()

    def run(self, hwc: np.ndarray, batch: list[dict]) -> list[dict]:
        """The trials of ``batch`` (id, flips, n_faults) on the images: preds and seconds."""
        res = self.sim.run(hwc, batch, self.dir / "work", log="sim_ray")
        return [{"preds": r.preds.tolist(), "wall_s": r.wall_s} for r in res]

    def close(self) -> None:
        """Remove the actor's copy of the project."""
        shutil.rmtree(self.dir, ignore_errors=True)


class RaySimulators:
    """``n`` Ray actors, each with its own built model of ``project``."""

    def __init__(self, project: Path, n_max: int, n: int, address: str | None = None) -> None:
        self.ray = ray = ray_connected(address)
        files = ray.put(project_files(project))
        actor = ray.remote(num_cpus=1)(RtlActor)
        self.actors = [actor.remote(files, n_max) for _ in range(n)]

    def each(self, hwc: np.ndarray, parts: Sequence[list[dict]]
             ) -> Iterator[tuple[dict, dict]]:
        """(trial, result) for every trial of ``parts``, each part on a free actor, as parts
        finish."""
        images = self.ray.put(hwc)
        pending: dict = {}
        todo = list(parts)
        free = list(self.actors)
        while todo or pending:
            while free and todo:
                part = todo.pop(0)
                a = free.pop()
                pending[a.run.remote(images, part)] = (part, a)
            done, _ = self.ray.wait(list(pending), num_returns=1)
            part, a = pending.pop(done[0])
            free.append(a)
            yield from zip(part, self.ray.get(done[0]))

    def close(self) -> None:
        """Remove the actors' folders and release them (the Ray instance stays up)."""
        self.ray.get([a.close.remote() for a in self.actors])
        for a in self.actors:
            self.ray.kill(a)
