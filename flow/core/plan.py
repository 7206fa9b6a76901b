"""plan.json: per layer the weight and activation bits, the protection and the vulnerability.

Training writes the first plan from the config; later steps (rank, search) replace it. A plan
carries the SHA-256 of the checkpoint it belongs to; loading it beside another checkpoint is an
error.
"""
from __future__ import annotations

from pathlib import Path

from flow.core.errors import PlanError
from flow.core.io import read_json, write_json
from flow.core.ir import IntNetwork, layer_act_bits

PLAN_VERSION = 2


def make_plan(*, arch: str, layers: list[str], weight_bits: dict[str, int],
              act_bits: dict[str, int | None], protected: list[str], checkpoint_sha256: str,
              checkpoint: str, source: str) -> dict:
    """A plan dict for the given layers (``weight_bits`` per layer, 1 for binary layers;
    ``act_bits`` per layer, None for a layer whose accumulator is the network output)."""
    unknown = sorted(set(protected) - set(layers))
    if unknown:
        raise PlanError(f"model.protected: unknown layer '{unknown[0]}' "
                        f"(layers: {', '.join(layers)})")
    return {"version": PLAN_VERSION, "arch": arch, "checkpoint": checkpoint,
            "checkpoint_sha256": checkpoint_sha256, "source": source,
            "layers": {name: {"weight_bits": weight_bits[name], "act_bits": act_bits.get(name),
                              "protected": name in protected, "vulnerability": None}
                       for name in layers}}


def plan_of_network(net: IntNetwork, protected: list[str], sha: str, checkpoint: str,
                    source: str) -> dict:
    """The plan of a lowered network: its own weight and activation bits per layer."""
    layers = net.layers()
    return make_plan(arch=net.arch, layers=layers,
                     weight_bits={n: net.params[f"{n}.weight"].fmt.bits for n in layers},
                     act_bits=layer_act_bits(net), protected=list(protected),
                     checkpoint_sha256=sha, checkpoint=checkpoint, source=source)


def save_plan(path: Path, plan: dict) -> None:
    """Write a plan atomically."""
    write_json(path, plan)


def load_plan(path: Path, checkpoint_sha256: str | None = None) -> dict:
    """Read and check a plan; with ``checkpoint_sha256``, it must match the plan's."""
    plan = read_json(path, "plan")
    if plan.get("version") != PLAN_VERSION:
        raise PlanError(f"plan.version: {plan.get('version')!r} in '{path}' "
                        f"(this hetq reads version {PLAN_VERSION})")
    if not isinstance(plan.get("layers"), dict) or not plan["layers"]:
        raise PlanError(f"plan.layers: missing or empty in '{path}'")
    for name, entry in plan["layers"].items():
        for key in ("weight_bits", "act_bits", "protected"):
            if key not in entry:
                raise PlanError(f"plan.layers.{name}.{key}: missing in '{path}'")
    if checkpoint_sha256 is not None:
        verify_checkpoint(plan, checkpoint_sha256, path)
    return plan


def verify_checkpoint(plan: dict, checkpoint_sha256: str, where: Path | str = "plan.json") -> None:
    """Raise PlanError unless the plan belongs to the checkpoint with this SHA-256."""
    if plan.get("checkpoint_sha256") != checkpoint_sha256:
        raise PlanError(f"plan.checkpoint_sha256: '{where}' belongs to checkpoint "
                        f"{str(plan.get('checkpoint_sha256'))[:12]}..., not to "
                        f"{checkpoint_sha256[:12]}...")


def checkpoint_of(plan: dict) -> str:
    """The checkpoint a plan belongs to, relative to the run directory."""
    return plan["checkpoint"]
