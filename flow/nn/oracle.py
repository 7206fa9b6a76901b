"""Independent checks of the lowering: the integer executor against qonnx's executor and against
the Brevitas forward.

Both compare integer codes, not floats: a tensor of the reference divided by its node's scale
2**-frac must be exactly the executor's codes. qonnx's executor computes in float32 (ONNX Runtime
for the standard ops), which is exact only while every partial sum stays below 2**24, so nodes
whose worst-case magnitude reaches 2**24 are skipped there (and counted).
"""
from __future__ import annotations

import numpy as np
import torch

from flow.core.executor import EXACT_F32, Executor
from flow.nn.qonnx_graph import execute


def compare_qonnx(executor: Executor, model, x: torch.Tensor) -> dict:
    """Every integer node that reproduces an ONNX tensor (``attrs['onnx']``) against qonnx's
    executor on the float images ``x``. Returns the images, the nodes compared and skipped, and
    per differing node the number of codes that differ."""
    net = executor.net
    ctx = execute(model, x.cpu().numpy())
    trace = executor.run(x, trace=True)
    compared, skipped, differ = 0, [], {}
    for node in net.nodes:
        tensor = node.attrs.get("onnx")
        if not tensor or tensor not in ctx:
            continue
        if max(abs(node.lo), abs(node.hi)) >= EXACT_F32:
            skipped.append(node.name)
            continue
        got = trace[node.name].double().cpu().numpy()
        ref = np.asarray(ctx[tensor], dtype=np.float64).reshape(got.shape) * 2.0 ** node.frac
        compared += 1
        bad = int((ref != got).sum())
        if bad:
            differ[node.name] = bad
    return {"images": int(x.shape[0]), "nodes_compared": compared, "nodes_skipped": skipped,
            "differing_nodes": differ, "exact": not differ}


@torch.no_grad()
def compare_brevitas(executor: Executor, module: torch.nn.Module, x: torch.Tensor) -> dict:
    """The class scores of the Brevitas forward against the executor's, as integer codes."""
    out = module.eval()(x.to(next(module.parameters()).device))
    out = (out.value if hasattr(out, "value") else out).double().cpu()
    frac = executor.net.node(executor.net.output).frac
    ref = out * 2.0 ** frac
    got = executor.run(x).double().cpu()
    same = (ref == got).all(dim=1)
    return {"images": int(x.shape[0]), "equal_images": int(same.sum()),
            "exact": bool(same.all())}
