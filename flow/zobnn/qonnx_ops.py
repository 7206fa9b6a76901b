"""hetq's QONNX custom operations for a lowered binary ResNet (:mod:`flow.zobnn.lower`): RPReLU
(ReActNet's shifted PReLU, the ``rprelu`` op) and channel repetition (the ``repeat`` op).

Channel repetition is its own operation, not ``Concat(x, x)``: qonnx's tensor renaming
(``ModelWrapper.rename_tensor``, run by ``cleanup_model``) renames only the first of a node's
repeated inputs, so the second would name a tensor that no longer exists.

qonnx finds custom operations by their node's domain, which names the Python module that defines
them: a node ``HetqRPReLU`` of domain ``flow.zobnn.qonnx_ops`` is this module's class, so qonnx's
shape inference and executor run it like its own operations. hls4ml converts it through the ONNX
handler that :mod:`flow.hw.hls_ext` registers.
"""
from __future__ import annotations

import numpy as np
from onnx import helper
from qonnx.core.datatype import DataType
from qonnx.custom_op.base import CustomOp

DOMAIN = "flow.zobnn.qonnx_ops"


def rprelu(x: np.ndarray, gamma: np.ndarray, slope: np.ndarray, zeta: np.ndarray,
           axis: int) -> np.ndarray:
    """``prelu(x - gamma, slope) + zeta`` with per-channel ``gamma``, ``slope``, ``zeta`` along
    ``axis`` of ``x`` (float64)."""
    shape = [1] * x.ndim
    shape[axis] = -1
    u = np.asarray(x, dtype=np.float64) - np.reshape(gamma, shape)
    return np.where(u >= 0, u, u * np.reshape(slope, shape)) + np.reshape(zeta, shape)


class HetqRPReLU(CustomOp):
    """``y = prelu(x - gamma, slope) + zeta`` per channel; inputs ``x, gamma, slope, zeta``
    (the three parameters as initializers of shape (C,)); ``data_layout`` is ``NCHW`` or
    ``NHWC`` (which axis holds the channels)."""

    def get_nodeattr_types(self) -> dict:
        return {"data_layout": ("s", False, "NCHW", {"NCHW", "NHWC"})}

    def make_shape_compatible_op(self, model):
        node = self.onnx_node
        return helper.make_node("Identity", [node.input[0]], [node.output[0]])

    def infer_node_datatype(self, model) -> None:
        model.set_tensor_datatype(self.onnx_node.output[0], DataType["FLOAT32"])

    def execute_node(self, context: dict, graph) -> None:
        node = self.onnx_node
        x = context[node.input[0]]
        axis = 1 if self.get_nodeattr("data_layout") == "NCHW" else x.ndim - 1
        y = rprelu(x, *(context[i].reshape(-1) for i in node.input[1:4]), axis)
        context[node.output[0]] = y.astype(np.float32)

    def verify_node(self) -> list[str]:
        return [] if len(self.onnx_node.input) == 4 else ["HetqRPReLU takes 4 inputs"]


class HetqRepeat(CustomOp):
    """The channels of ``x`` repeated ``times`` times (``[x, x, ...]`` along the channel axis);
    ``data_layout`` as for :class:`HetqRPReLU`."""

    def get_nodeattr_types(self) -> dict:
        return {"times": ("i", True, 2), "data_layout": ("s", False, "NCHW", {"NCHW", "NHWC"})}

    def _axis(self) -> int:
        return 1 if self.get_nodeattr("data_layout") == "NCHW" else 3

    def make_shape_compatible_op(self, model):
        node = self.onnx_node
        return helper.make_node("Concat", [node.input[0]] * self.get_nodeattr("times"),
                                [node.output[0]], axis=self._axis())

    def infer_node_datatype(self, model) -> None:
        node = self.onnx_node
        model.set_tensor_datatype(node.output[0], model.get_tensor_datatype(node.input[0]))

    def execute_node(self, context: dict, graph) -> None:
        node = self.onnx_node
        x = context[node.input[0]]
        context[node.output[0]] = np.concatenate([x] * self.get_nodeattr("times"),
                                                 axis=self._axis())

    def verify_node(self) -> list[str]:
        return [] if self.get_nodeattr("times") >= 1 else ["HetqRepeat: times < 1"]
