"""hetq's model zoo: plain factories of Brevitas networks, the same kind a user writes.

``model.arch: cnn`` is shorthand for ``flow.nn.zoo:cnn``; every factory here goes through the same
path as a user's (:mod:`flow.nn.models`): hetq calls it with ``input_shape``, ``num_classes`` and
the
config's ``width`` / ``act_bits`` / ``input_bits``, sets the weight bit-widths through Brevitas's
API and lowers the network through its QONNX graph (:mod:`flow.nn.lower`). Layers are named by
module path (``conv1``, ``fc2``, ``layer2.0.conv1``...).

Quantizers (chosen because they give bit-exact integer hardware, see FACTS.md): weights
``Int8WeightPerTensorFixedPoint`` (narrow, power-of-two scale; 8 bits until hetq sets the
width); activations ``Uint8ActPerTensorFixedPoint`` after ReLU and ``Int8ActPerTensorFixedPoint``
before a residual add; biases ``Int16Bias`` (16-bit, at the accumulator's scale); binary layers
``SignedBinaryWeightPerTensorConst`` / ``SignedBinaryActPerTensorConst`` with scale 1.0 and
batch-norm before each sign. Fixed-point networks have no batch-norm: hardware carries no float.
"""
from __future__ import annotations

from collections import OrderedDict

import brevitas.nn as qnn
from brevitas.quant import (
    Int8ActPerTensorFixedPoint,
    Int8WeightPerTensorFixedPoint,
    Int16Bias,
    SignedBinaryActPerTensorConst,
    SignedBinaryWeightPerTensorConst,
    Uint8ActPerTensorFixedPoint,
)
from torch import nn

from flow.core.errors import ConfigError

Shape = tuple[int, int, int]


def _value(x):
    """The float value of a QuantTensor or a plain tensor."""
    return x.value if hasattr(x, "value") else x


def input_quant(bits: int) -> nn.Module:
    """Unsigned fixed-point quantizer of the network input (pixels in [0, 1])."""
    return qnn.QuantIdentity(act_quant=Uint8ActPerTensorFixedPoint, bit_width=bits,
                             return_quant_tensor=True)


def relu(bits: int) -> nn.Module:
    """ReLU with an unsigned fixed-point output quantizer."""
    return qnn.QuantReLU(act_quant=Uint8ActPerTensorFixedPoint, bit_width=bits,
                         return_quant_tensor=True)


def signed(bits: int) -> nn.Module:
    """Signed fixed-point quantizer (before a residual add)."""
    return qnn.QuantIdentity(act_quant=Int8ActPerTensorFixedPoint, bit_width=bits,
                             return_quant_tensor=True)


def conv(cin: int, cout: int, k: int, *, stride: int = 1, pad: int = 0) -> nn.Module:
    """Fixed-point convolution with a 16-bit bias at the accumulator's scale."""
    return qnn.QuantConv2d(cin, cout, k, stride=stride, padding=pad, bias=True,
                           weight_quant=Int8WeightPerTensorFixedPoint, bias_quant=Int16Bias,
                           return_quant_tensor=True)


def dense(cin: int, cout: int) -> nn.Module:
    """Fixed-point fully connected layer with a 16-bit bias at the accumulator's scale."""
    return qnn.QuantLinear(cin, cout, bias=True, weight_quant=Int8WeightPerTensorFixedPoint,
                           bias_quant=Int16Bias, return_quant_tensor=True)


def binary_dense(cin: int, cout: int) -> nn.Module:
    """Binary fully connected layer (weights +-1, scale 1, no bias)."""
    return qnn.QuantLinear(cin, cout, bias=False, weight_quant=SignedBinaryWeightPerTensorConst,
                           weight_scaling_const=1.0, return_quant_tensor=False)


def sign() -> nn.Module:
    """Binary sign activation (+-1, scale 1)."""
    return qnn.QuantIdentity(act_quant=SignedBinaryActPerTensorConst, scaling_const=1.0,
                             return_quant_tensor=True)


class GlobalAvgPool(nn.Module):
    """Mean over the whole feature map (exported as ReduceMean; its area must be a power of two)."""

    def forward(self, x):
        return _value(x).mean(dim=(2, 3))


class BasicBlock(nn.Module):
    """ResNet basic block: conv-relu-conv (signed output) + shortcut, add, then ReLU quantizer.

    The shortcut is a 1x1 strided convolution when the shape changes, else the input itself.
    """

    def __init__(self, cin: int, cout: int, stride: int, act_bits: int) -> None:
        super().__init__()
        self.conv1 = conv(cin, cout, 3, stride=stride, pad=1)
        self.relu1 = relu(act_bits)
        self.conv2 = conv(cout, cout, 3, pad=1)
        self.quant2 = signed(act_bits)
        self.shortcut = self.quant_sc = None
        if stride != 1 or cin != cout:
            self.shortcut = conv(cin, cout, 1, stride=stride)
            self.quant_sc = signed(act_bits)
        self.relu = relu(act_bits)

    def forward(self, x):
        y = self.quant2(self.conv2(self.relu1(self.conv1(x))))
        s = x if self.shortcut is None else self.quant_sc(self.shortcut(x))
        return self.relu(_value(y) + _value(s))


def _ch(c: int, width: float) -> int:
    return max(1, int(round(c * width)))


def _need32(name: str, shape: Shape) -> None:
    if shape[1] % 32 or shape[2] % 32:
        raise ConfigError(f"model.arch: '{name}' needs 32x32 inputs (got {shape[1]}x{shape[2]}); "
                          f"use data 'digits32' or 'cifar10'")


def mlp(input_shape: Shape, num_classes: int, width: float = 1.0, act_bits: int = 8,
        input_bits: int = 8) -> nn.Module:
    """3-layer fixed-point MLP (64 hidden x width)."""
    c, h, w = input_shape
    hid = _ch(64, width)
    return nn.Sequential(OrderedDict([
        ("input", input_quant(input_bits)), ("flatten", nn.Flatten()),
        ("fc1", dense(c * h * w, hid)), ("relu1", relu(act_bits)),
        ("fc2", dense(hid, hid)), ("relu2", relu(act_bits)),
        ("fc3", dense(hid, num_classes))]))


def cnn(input_shape: Shape, num_classes: int, width: float = 1.0, act_bits: int = 8,
        input_bits: int = 8) -> nn.Module:
    """2 conv + 1 dense fixed-point CNN."""
    c, h, w = input_shape
    c1, c2 = _ch(16, width), _ch(32, width)
    return nn.Sequential(OrderedDict([
        ("input", input_quant(input_bits)),
        ("conv1", conv(c, c1, 3, pad=1)), ("relu1", relu(act_bits)),
        ("conv2", conv(c1, c2, 3, pad=1)), ("relu2", relu(act_bits)),
        ("pool2", nn.MaxPool2d(2)), ("flatten", nn.Flatten()),
        ("fc1", dense(c2 * (h // 2) * (w // 2), num_classes))]))


def bmlp(input_shape: Shape, num_classes: int, width: float = 1.0,
         input_bits: int = 8) -> nn.Module:
    """Binary MLP, 4 layers of 256 x width (BNN-PYNQ TFC style)."""
    c, h, w = input_shape
    hid = _ch(256, width)
    layers: list[tuple[str, nn.Module]] = [("input", input_quant(input_bits)),
                                           ("flatten", nn.Flatten())]
    cin = c * h * w
    for i in range(1, 4):
        layers += [(f"fc{i}", binary_dense(cin, hid)), (f"bn{i}", nn.BatchNorm1d(hid)),
                   (f"sign{i}", sign())]
        cin = hid
    layers.append(("fc4", binary_dense(hid, num_classes)))
    return nn.Sequential(OrderedDict(layers))


def _conv_stack(input_shape: Shape, num_classes: int, width: float, act_bits: int,
                input_bits: int, convs: list[tuple[int, int]], hidden: int) -> nn.Module:
    """3x3 conv layers ``convs`` = [(channels, pool), ...], then three dense layers."""
    c, h, w = input_shape
    layers: list[tuple[str, nn.Module]] = [("input", input_quant(input_bits))]
    cin, down = c, 1
    for i, (co, pool) in enumerate(convs, start=1):
        co = _ch(co, width)
        layers += [(f"conv{i}", conv(cin, co, 3, pad=1)), (f"relu{i}", relu(act_bits))]
        if pool:
            layers.append((f"pool{i}", nn.MaxPool2d(pool)))
        cin, down = co, down * (pool or 1)
    hid = _ch(hidden, width)
    layers += [("flatten", nn.Flatten()),
               ("fc1", dense(cin * (h // down) * (w // down), hid)), ("relu_fc1", relu(act_bits)),
               ("fc2", dense(hid, hid)), ("relu_fc2", relu(act_bits)),
               ("fc3", dense(hid, num_classes))]
    return nn.Sequential(OrderedDict(layers))


def alexnet(input_shape: Shape, num_classes: int, width: float = 1.0, act_bits: int = 8,
            input_bits: int = 8) -> nn.Module:
    """AlexNet, CIFAR-10 form: 5 conv + 3 dense."""
    _need32("alexnet", input_shape)
    convs = [(64, 2), (192, 2), (384, 0), (256, 0), (256, 2)]
    return _conv_stack(input_shape, num_classes, width, act_bits, input_bits, convs, 1024)


def vgg11(input_shape: Shape, num_classes: int, width: float = 1.0, act_bits: int = 8,
          input_bits: int = 8) -> nn.Module:
    """VGG-11, CIFAR-10 form: 8 conv + 3 dense."""
    _need32("vgg11", input_shape)
    convs = [(64, 2), (128, 2), (256, 0), (256, 2), (512, 0), (512, 2), (512, 0), (512, 2)]
    return _conv_stack(input_shape, num_classes, width, act_bits, input_bits, convs, 512)


def resnet18(input_shape: Shape, num_classes: int, width: float = 1.0, act_bits: int = 8,
             input_bits: int = 8) -> nn.Module:
    """ResNet-18, CIFAR-10 form: 17 conv + 3 shortcut + 1 dense."""
    _need32("resnet18", input_shape)
    c = input_shape[0]
    c0 = _ch(64, width)
    layers: list[tuple[str, nn.Module]] = [("input", input_quant(input_bits)),
                                           ("conv1", conv(c, c0, 3, pad=1)),
                                           ("relu1", relu(act_bits))]
    cin = c0
    for stage, (mult, stride) in enumerate(((1, 1), (2, 2), (4, 2), (8, 2)), start=1):
        co = _ch(64 * mult, width)
        blocks = []
        for j in range(2):
            blocks.append(BasicBlock(cin, co, stride if j == 0 else 1, act_bits))
            cin = co
        layers.append((f"layer{stage}", nn.Sequential(*blocks)))
    layers += [("avgpool", GlobalAvgPool()), ("avgquant", relu(act_bits)),
               ("fc", dense(cin, num_classes))]
    return nn.Sequential(OrderedDict(layers))


FACTORIES: dict[str, str] = {
    "mlp": "3-layer fixed-point MLP (64 hidden x width)",
    "cnn": "2 conv + 1 dense fixed-point CNN",
    "bmlp": "binary MLP, 4 layers of 256 x width (BNN-PYNQ TFC style)",
    "alexnet": "AlexNet, CIFAR-10 form: 5 conv + 3 dense",
    "vgg11": "VGG-11, CIFAR-10 form: 8 conv + 3 dense",
    "resnet18": "ResNet-18, CIFAR-10 form: 17 conv + 3 shortcut + 1 dense",
}
