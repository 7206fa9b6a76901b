"""Networks hetq has never seen, written the way a designer writes them (plain Brevitas modules),
for the bring-your-own-network tests. Configs name them as ``<this file>:<factory>``.

The good ones (a-d) take every path of the supported set: nested module paths, per-layer
bit-widths, odd sizes, 5x5 and strided convolutions, padding 0 and 1, max-pool before and after
the ReLU, ``view`` and ``nn.Flatten``, binary layers with batch-norm (one negative scale), a
residual add and a global average pool. The bad ones each break exactly one rule of the front end.
"""
from __future__ import annotations

from collections import OrderedDict

import brevitas.nn as qnn
import torch
from brevitas.inject.enum import BitWidthImplType
from brevitas.quant import (
    Int8ActPerTensorFixedPoint,
    Int8BiasPerTensorFixedPointInternalScaling,
    Int8WeightPerTensorFixedPoint,
    Int8WeightPerTensorFloat,
    Int16Bias,
    ShiftedUint8ActPerTensorFixedPoint,
    SignedBinaryActPerTensorConst,
    SignedBinaryWeightPerTensorConst,
    Uint8ActPerTensorFixedPoint,
)
from torch import nn


def _in(bits: int = 8) -> nn.Module:
    return qnn.QuantIdentity(act_quant=Uint8ActPerTensorFixedPoint, bit_width=bits,
                             return_quant_tensor=True)


def _relu(bits: int) -> nn.Module:
    return qnn.QuantReLU(act_quant=Uint8ActPerTensorFixedPoint, bit_width=bits,
                         return_quant_tensor=True)


def _linear(cin: int, cout: int, bits: int = 8, **kw) -> nn.Module:
    return qnn.QuantLinear(cin, cout, bias=True, weight_quant=Int8WeightPerTensorFixedPoint,
                           weight_bit_width=bits, bias_quant=Int16Bias, return_quant_tensor=True,
                           **kw)


def _conv(cin: int, cout: int, k: int, bits: int = 8, **kw) -> nn.Module:
    kw.setdefault("bias_quant", Int16Bias)
    kw.setdefault("weight_quant", Int8WeightPerTensorFixedPoint)
    return qnn.QuantConv2d(cin, cout, k, bias=True, weight_bit_width=bits,
                           return_quant_tensor=True, **kw)


# -- (a) a dense network 64-37-23-10 -----------------------------------------------------------
class Dense643723(nn.Module):
    """64-37-23-10 with different activation widths; layers ``classifier.fc1..fc3``."""

    def __init__(self, num_classes: int = 10, hidden: tuple[int, int] = (37, 23)) -> None:
        super().__init__()
        self.quant_in = _in(8)
        h1, h2 = hidden
        self.classifier = nn.Sequential(OrderedDict([
            ("fc1", _linear(64, h1)), ("act1", _relu(6)),
            ("fc2", _linear(h1, h2)), ("act2", _relu(4)),
            ("fc3", _linear(h2, num_classes))]))

    def forward(self, x):
        return self.classifier(self.quant_in(x).flatten(1))


def dense_64_37_23_10(num_classes: int, hidden: tuple[int, int] = (37, 23)) -> nn.Module:
    """Factory of (a)."""
    return Dense643723(num_classes, tuple(hidden))


# -- (b) a CNN with odd shapes -----------------------------------------------------------------
class OddCNN(nn.Module):
    """5x5 conv (padding 1, 12 channels), max-pool, 3x3 stride-2 conv (padding 1, 20 channels)
    with its max-pool *before* the ReLU, a 1x1 conv (padding 0, 15 channels), dense; flattened
    with ``view``. On 8x8 images: 8 -> 6 -> 3 -> 2 -> 1 -> 1."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.quant_in = _in(8)
        self.features = nn.Sequential(
            _conv(1, 12, 5, bits=6, padding=1), _relu(5), nn.MaxPool2d(2),
            _conv(12, 20, 3, bits=4, stride=2, padding=1))
        self.pool2 = nn.MaxPool2d(2)
        self.relu2 = _relu(6)
        self.mix = _conv(20, 15, 1, bits=5, padding=0)
        self.relu3 = _relu(4)
        self.head = _linear(15, num_classes, bits=6)

    def forward(self, x):
        y = self.relu2(self.pool2(self.features(self.quant_in(x))))
        y = self.relu3(self.mix(y))
        return self.head(y.view(y.shape[0], -1))


def odd_cnn(num_classes: int) -> nn.Module:
    """Factory of (b)."""
    return OddCNN(num_classes)


# -- (c) a binary MLP with batch-norm + sign ---------------------------------------------------
class BinaryMLP(nn.Module):
    """64 -> 100 -> 50 -> classes, binary weights, batch-norm + sign between (layers
    ``hidden.0``, ``hidden.1``, ``out``); one batch-norm starts with negative scales."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.quant_in = _in(4)
        sizes = [64, 100, 50]
        self.hidden = nn.ModuleList(
            qnn.QuantLinear(a, b, bias=False, weight_quant=SignedBinaryWeightPerTensorConst,
                            weight_scaling_const=1.0) for a, b in zip(sizes, sizes[1:]))
        self.norms = nn.ModuleList(nn.BatchNorm1d(b) for b in sizes[1:])
        with torch.no_grad():
            self.norms[1].weight[::3] = -1.0        # a falling threshold (direction 0)
        self.sign = qnn.QuantIdentity(act_quant=SignedBinaryActPerTensorConst,
                                      scaling_const=1.0, return_quant_tensor=True)
        self.out = qnn.QuantLinear(sizes[-1], num_classes, bias=False,
                                   weight_quant=SignedBinaryWeightPerTensorConst,
                                   weight_scaling_const=1.0)

    def forward(self, x):
        y = torch.flatten(self.quant_in(x).value, 1)
        for fc, bn in zip(self.hidden, self.norms):
            y = self.sign(bn(fc(y)))
        return self.out(y)


def binary_mlp(num_classes: int) -> nn.Module:
    """Factory of (c)."""
    return BinaryMLP(num_classes)


# -- (d) a residual network with a global average pool -----------------------------------------
class ResidualGAP(nn.Module):
    """Stem conv, one residual block (add of two quantized maps), ReLU, global average pool
    (``nn.AdaptiveAvgPool2d(1)``, exported as GlobalAveragePool), dense."""

    def __init__(self, num_classes: int = 10, channels: int = 8) -> None:
        super().__init__()
        c = channels
        self.quant_in = _in(8)
        self.stem = _conv(1, c, 3, bits=6, padding=1)
        self.stem_act = _relu(6)
        self.conv_a = _conv(c, c, 3, bits=5, padding=1)
        self.act_a = _relu(6)
        self.conv_b = _conv(c, c, 3, bits=5, padding=1)
        self.quant_b = qnn.QuantIdentity(act_quant=Int8ActPerTensorFixedPoint, bit_width=7,
                                         return_quant_tensor=True)
        self.act_sum = _relu(6)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.quant_pool = _relu(8)
        self.fc = _linear(c, num_classes, bits=6)

    def forward(self, x):
        s = self.stem_act(self.stem(self.quant_in(x)))
        y = self.quant_b(self.conv_b(self.act_a(self.conv_a(s))))
        z = self.act_sum(s.value + y.value)
        z = self.quant_pool(torch.flatten(self.pool(z.value), 1))
        return self.fc(z)


def residual_gap(num_classes: int, channels: int = 8) -> nn.Module:
    """Factory of (d)."""
    return ResidualGAP(num_classes, channels)


class MeanPool(nn.Module):
    """conv 3x3 -> ReLU -> mean over the map (``x.mean((2, 3))``, exported as ReduceMean, as the
    zoo's ResNet-18 pools) -> quantized ReLU -> dense."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.quant_in = _in(8)
        self.conv = _conv(1, 4, 3, bits=4, padding=1)
        self.act = _relu(6)
        self.quant_pool = _relu(8)
        self.fc = _linear(4, num_classes, bits=4)

    def forward(self, x):
        z = self.act(self.conv(self.quant_in(x))).value.mean(dim=(2, 3))
        return self.fc(self.quant_pool(z))


def mean_pool(num_classes: int) -> nn.Module:
    """Factory of :class:`MeanPool`."""
    return MeanPool(num_classes)


# -- networks the front end refuses ------------------------------------------------------------
class _Small(nn.Module):
    """quant_in -> conv(1->4, 3x3) -> relu -> flatten -> fc; ``conv`` and ``fc`` replaceable."""

    def __init__(self, conv: nn.Module | None = None, fc: nn.Module | None = None,
                 act: nn.Module | None = None, inp: nn.Module | None = None,
                 side: int = 8) -> None:
        super().__init__()
        self.quant_in = inp or _in(8)
        self.conv = conv or _conv(1, 4, 3, padding=1)
        self.act = act or _relu(6)
        self.fc = fc or _linear(4 * side * side, 10)

    def forward(self, x):
        return self.fc(self.act(self.conv(self.quant_in(x))).flatten(1))


def float_scale(num_classes: int) -> nn.Module:
    """The dense layer's weight scale is a float (not a power of two)."""
    return _Small(fc=qnn.QuantLinear(256, num_classes, bias=False,
                                     weight_quant=Int8WeightPerTensorFloat))


class _PerChannelFixedPoint(Int8WeightPerTensorFixedPoint):
    scaling_per_output_channel = True


def per_channel(num_classes: int) -> nn.Module:
    """The conv's power-of-two weight scale is per output channel."""
    return _Small(conv=_conv(1, 4, 3, padding=1, weight_quant=_PerChannelFixedPoint))


def bias_scale(num_classes: int) -> nn.Module:
    """The conv's bias has a scale of its own, not the accumulator's."""
    return _Small(conv=_conv(1, 4, 3, padding=1,
                             bias_quant=Int8BiasPerTensorFixedPointInternalScaling))


def grouped(num_classes: int) -> nn.Module:
    """A grouped convolution (2 groups)."""
    return _Small(conv=_GroupedHead())


class _GroupedHead(nn.Module):
    """conv 1->4 then a grouped conv 4->4 (groups=2)."""

    def __init__(self) -> None:
        super().__init__()
        self.first = _conv(1, 4, 3, padding=1)
        self.act = _relu(6)
        self.grouped = qnn.QuantConv2d(4, 4, 3, padding=1, groups=2, bias=False,
                                       weight_quant=Int8WeightPerTensorFixedPoint,
                                       return_quant_tensor=True)

    def forward(self, x):
        return self.grouped(self.act(self.first(x)))


def dilated(num_classes: int) -> nn.Module:
    """A dilated convolution (dilation 2, padding 2 keeps the size)."""
    return _Small(conv=_conv(1, 4, 3, padding=2, dilation=2))


class _Sigmoid(nn.Module):
    def forward(self, x):
        return torch.sigmoid(x.value if hasattr(x, "value") else x)


def unsupported_op(num_classes: int) -> nn.Module:
    """A sigmoid (then a quantizer) between the conv and the dense layer."""
    return _Small(act=nn.Sequential(_Sigmoid(), _relu(6)))


def zero_point(num_classes: int) -> nn.Module:
    """An asymmetric input quantizer, calibrated on inputs in [-0.5, 1]: non-zero zero point."""
    net = _Small(inp=qnn.QuantIdentity(act_quant=ShiftedUint8ActPerTensorFixedPoint,
                                       return_quant_tensor=True),
                 conv=qnn.QuantConv2d(1, 4, 3, padding=1, bias=False,
                                      weight_quant=Int8WeightPerTensorFixedPoint),
                 fc=qnn.QuantLinear(256, num_classes, bias=False,
                                    weight_quant=Int8WeightPerTensorFixedPoint))
    net.train()
    with torch.no_grad():
        for _ in range(20):
            net(1.5 * torch.rand(16, 1, 8, 8) - 0.5)
    return net


def mnist_sized(num_classes: int) -> nn.Module:
    """A network for 28x28 images (given 8x8 ones, its dense layer cannot take them)."""
    return _Small(side=28)


class _LearnedBits(Int8WeightPerTensorFixedPoint):
    bit_width_impl_type = BitWidthImplType.PARAMETER


def learned_bits(num_classes: int) -> nn.Module:
    """The dense layer's weight bit-width is a learned parameter: it cannot be set."""
    return _Small(fc=qnn.QuantLinear(256, num_classes, bias=False, weight_quant=_LearnedBits))
