"""QONNX graphs: export a Brevitas module, read a QONNX file, clean it, and run qonnx's executor.

hetq's front end reads one kind of input, a QONNX graph, whether the network is a Brevitas module
(exported here with Brevitas ``export_qonnx`` and the TorchScript exporter, as FACTS.md asks) or a
QONNX file a user brings. :func:`prepare` applies qonnx's own transformations (shape inference,
constant folding, removal of dead nodes, topological sort) and keeps the initializer names, so a
layer keeps the name of its weight tensor (``features.0.weight`` -> layer ``features.0``).
:func:`execute` runs qonnx's executor, the independent oracle of the lowering.
"""
from __future__ import annotations

import copy
import re
import warnings
from pathlib import Path

import numpy as np

from flow.core.errors import HetqError

QUANT_OPS = ("Quant", "IntQuant", "BipolarQuant", "Trunc")
QONNX_DOMAIN = "qonnx.custom_op.general"


class ModelError(HetqError):
    """A network cannot be read, exported or lowered to hetq's integer network."""


def _value(y):
    """The float tensor of a Brevitas QuantTensor (or the tensor itself)."""
    return y.value if hasattr(y, "value") else y


def _float_output(module):
    """``module`` with a forward that returns a plain tensor (a QuantTensor output would export
    its scale and bit-width as extra graph outputs)."""
    import torch

    class FloatOut(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x):
            return _value(self.net(x))

    return FloatOut(module)


def export_module(module, input_shape: tuple[int, ...]):
    """Export a Brevitas module (eval mode, on the CPU) to a prepared QONNX ModelWrapper.

    The module is moved to the CPU and put in eval mode (the caller's object is changed only in
    that). A module that cannot run on ``input_shape`` inputs is a ModelError naming the shape.
    """
    import torch
    from qonnx.core.modelwrapper import ModelWrapper
    with warnings.catch_warnings():     # harmless: Brevitas falls back to plain PyTorch kernels
        warnings.filterwarnings("ignore", "fast_hadamard_transform package not found")
        from brevitas.export import export_qonnx

    module = module.eval().cpu()
    shape = "x".join(map(str, input_shape))
    x = torch.zeros(1, *input_shape)
    try:
        with torch.no_grad():
            module(x)
    except Exception as e:  # noqa: BLE001 - any failure of the user's forward
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelError(f"model: the network does not run on the data's {shape} images: "
                         f"{first}") from None
    # the exporter restores the wrapper's mode afterwards: a fresh wrapper is in training mode,
    # so it is put in eval mode first (batch-norm must use its running statistics)
    proto = export_qonnx(_float_output(module).eval(), x, dynamo=False)
    model = ModelWrapper(proto)
    # the wrapper adds 'net.' to every parameter name: the layer names are the module's paths
    renamed = {i.name: i.name[4:] for i in model.graph.initializer if i.name.startswith("net.")}
    for init in model.graph.initializer:
        init.name = renamed.get(init.name, init.name)
    for vi in model.graph.input:
        vi.name = renamed.get(vi.name, vi.name)
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    for node in model.graph.node:
        node.name = node.name.replace("/net/", "/", 1)
    return prepare(model)


def prepare(model):
    """A cleaned copy of a QONNX ModelWrapper: qonnx op domains, one graph output, batch size 1,
    shapes inferred, constants folded (quantizers kept), dead nodes removed, nodes sorted, every
    node named. Initializer names are kept."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.change_batchsize import ChangeBatchSize
    from qonnx.transformation.fold_constants import FoldConstants
    from qonnx.transformation.general import RemoveStaticGraphInputs, RemoveUnusedTensors, SortGraph
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.infer_shapes import InferShapes
    from qonnx.transformation.remove import RemoveUnusedNodes

    m = ModelWrapper(copy.deepcopy(model.model))
    for node in m.graph.node:
        if node.op_type in QUANT_OPS:
            node.domain = QONNX_DOMAIN
    m = m.transform(RemoveStaticGraphInputs())      # initializers listed as inputs
    if len(m.graph.input) != 1:
        names = ", ".join(i.name for i in m.graph.input)
        raise ModelError(f"model: the graph has {len(m.graph.input)} inputs ({names}); "
                         f"hetq takes networks with one image input")
    while len(m.graph.output) > 1:          # a QuantTensor's scale, zero point, bit-width...
        m.graph.output.pop()
    dims = m.graph.input[0].type.tensor_type.shape.dim
    if dims and dims[0].dim_value != 1:
        m = m.transform(ChangeBatchSize(1))
    for t in (InferShapes(), FoldConstants(exclude_op_types=list(QUANT_OPS)),
              RemoveUnusedNodes(), RemoveUnusedTensors(), RemoveStaticGraphInputs(),
              SortGraph(), InferShapes(), InferDataTypes()):
        m = m.transform(t)
    seen: set[str] = set()
    for i, node in enumerate(m.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)
    return m


def load(path: str | Path, what: str = "model.arch"):
    """Read a QONNX file and :func:`prepare` it; an unreadable file is a one-line ModelError."""
    import onnx
    from qonnx.core.modelwrapper import ModelWrapper

    p = Path(path)
    if not p.is_file():
        raise ModelError(f"{what}: QONNX file '{p}' does not exist")
    try:
        proto = onnx.load(str(p))
    except Exception as e:  # noqa: BLE001 - a corrupt file can raise many things
        raise ModelError(f"{what}: '{p}' is not an ONNX file ({type(e).__name__})") from None
    if not proto.graph.node:
        raise ModelError(f"{what}: '{p}' holds no graph nodes")
    return prepare(ModelWrapper(proto))


def save(model, path: Path) -> None:
    """Write a ModelWrapper to ``path`` atomically."""
    from flow.core.io import atomic_write
    atomic_write(Path(path), model.model.SerializeToString())


def input_shape(model) -> tuple[int, ...]:
    """Shape of one input sample (the graph input without its batch dimension)."""
    return tuple(int(d) for d in model.get_tensor_shape(model.graph.input[0].name)[1:])


def execute(model, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every tensor of the graph for the batch ``x`` (float32), by qonnx's executor."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.change_batchsize import ChangeBatchSize
    from qonnx.transformation.infer_shapes import InferShapes

    m = ModelWrapper(copy.deepcopy(model.model))
    m = m.transform(ChangeBatchSize(x.shape[0])).transform(InferShapes())
    return execute_onnx(m, {m.graph.input[0].name: np.asarray(x, dtype=np.float32)},
                        return_full_exec_context=True)


_INTERNAL = {"act_quant", "weight_quant", "bias_quant", "input_quant", "output_quant",
             "export_handler", "activation_impl", "tensor_quant", "fused_activation_quant_proxy"}


def module_path(node_name: str) -> str | None:
    """The module path a TorchScript-exported node name carries, or None for a name without
    scopes: ``/features/features.1/act_quant/export_handler/Quant`` -> ``features.1``,
    ``/layer1/layer1.0/relu1/act_quant/...`` -> ``layer1.0.relu1``. (A module called through a
    container that is never called itself shows only the part that was called.)"""
    if not node_name.startswith("/"):
        return None
    path = ""
    for part in node_name.split("/")[1:-1]:
        if part in _INTERNAL:
            break
        path = part if not path or part.startswith(path + ".") else f"{path}.{part}"
    return path or None


def safe_name(name: str) -> str:
    """A layer or node name usable in file names and HDL identifiers (letters, digits, '_', '.')."""
    s = re.sub(r"[^A-Za-z0-9_.]", "_", name).strip("_.")
    return s or "layer"
