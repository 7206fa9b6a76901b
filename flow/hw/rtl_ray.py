"""RTL campaigns on Ray: each actor receives the project's files, builds its own Verilator model
in a folder of its node, and runs parts of the campaign (RTL flips per trial) on the images.
An actor on the driver's own node uses the driver's built model instead (as local simulators
share it), so a local Ray instance compiles the model once, not once per actor.

The driver samples the fault maps and translates them into RTL flips, as for local simulators,
so a trial's flips, and therefore its predictions, do not depend on where it runs. Other nodes
share nothing with the driver through the file system: a cluster's nodes need hetq installed
(for the testbench), not the run directory.
"""
from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from flow.hw.rtlgen import sources
from flow.hw.rtlsim import PGO_IMAGES, RtlSim, verilator_env
from flow.reliability.parallel import ray_connected


def project_files(project: Path) -> dict[str, bytes]:
    """What a remote build needs: the sources, the memory files and the manifest."""
    project = Path(project)
    paths = [*sources(project), project / "manifest.json", *sorted((project / "mem").iterdir())]
    return {str(p.relative_to(project)): p.read_bytes() for p in paths}


def write_files(files: dict[str, bytes], folder: Path) -> None:
    """Write :func:`project_files` into ``folder`` (a project a remote build can use)."""
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)


class RtlActor:
    """Ray actor body: a built model of the project, running parts of a campaign.

    ``files``: the project's files (:func:`project_files`), copied and built in a temporary
    folder (profile-guided on the image codes ``train`` when given, as ``RtlSim(pgo=True)``).
    ``shared``: (node id, project folder, build folder) of the driver's built model, used in
    place of the copy when this actor runs on that node."""

    def __init__(self, files: dict[str, bytes], n_max: int,
                 shared: tuple[str, str, str] | None = None,
                 train: np.ndarray | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="hetq_rtl_"))
        if shared is not None and _node_id() == shared[0]:
            self.sim = RtlSim(Path(shared[1]), build_dir=Path(shared[2]), n_max=n_max)
        else:
            write_files(files, self.dir)
            self.sim = RtlSim(self.dir, build_dir=self.dir / "sim_build", n_max=n_max,
                              pgo=train is not None)
        self.log = f"sim_ray_{self.dir.name}"         # a build folder may be shared: logs not
        with verilator_env():
            self.sim.build(train=train)               # the driver's model: nothing to do

    def run(self, hwc: np.ndarray, batch: list[dict]) -> list[dict]:
        """The trials of ``batch`` (id, flips, n_faults) on the images: preds and seconds."""
        res = self.sim.run(hwc, batch, self.dir / "work", log=self.log)
        return [{"preds": r.preds.tolist(), "wall_s": r.wall_s} for r in res]

    def built_own(self) -> bool:
        """Whether this actor built its own copy of the project (else it uses the driver's)."""
        return self.sim.project == self.dir.resolve()

    def close(self) -> None:
        """Remove the actor's copy of the project."""
        shutil.rmtree(self.dir, ignore_errors=True)


def _node_id() -> str:
    """The Ray node this process runs on."""
    import ray
    return ray.get_runtime_context().get_node_id()


class RaySimulators:
    """``n`` Ray actors with built models of ``project``: their own copies, or, on the driver's
    node, the driver's model in ``build_dir`` when given (built by the driver already); their
    own copies profile-guided on the image codes ``train`` when given."""

    def __init__(self, project: Path, n_max: int, n: int, address: str | None = None,
                 build_dir: Path | None = None, train: np.ndarray | None = None) -> None:
        self.ray = ray = ray_connected(address)
        files = ray.put(project_files(project))
        shared = (None if build_dir is None else
                  (_node_id(), str(Path(project).resolve()), str(Path(build_dir).resolve())))
        actor = ray.remote(num_cpus=1)(RtlActor)
        train = None if train is None else ray.put(np.asarray(train)[:PGO_IMAGES])
        self.actors = [actor.remote(files, n_max, shared, train) for _ in range(n)]

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
