"""LeNet-5 as a hetq model file: a plain Brevitas module that hetq trains, lowers and builds.

Use it from a config (``examples/lenet5_mnist5k.yaml``)::

    model:
      arch: lenet5.py:lenet5        # FILE.py:factory, relative to the config file
      kwargs: {channels: [6, 16]}   # the factory's own arguments (optional)

What makes a network lower to hetq's integer hardware (docs/byo.md):

- every weight layer is a ``QuantConv2d`` or ``QuantLinear`` with a per-tensor power-of-two weight
  scale (``Int8WeightPerTensorFixedPoint``; hetq sets the bit-width per layer through Brevitas's
  API, so the 8 here is only the start) and, if it has a bias, ``Int16Bias`` (the accumulator's
  scale);
- the input and every activation go through a fixed-point quantizer (``QuantIdentity`` /
  ``QuantReLU`` with ``Uint8ActPerTensorFixedPoint`` or ``Int8ActPerTensorFixedPoint``);
- max-pools have kernel = stride; the output is one vector of class scores per image.

Layer names are the module paths: ``conv1``, ``conv2``, ``fc1``, ``fc2``, ``fc3``.
"""
from __future__ import annotations

import brevitas.nn as qnn
from brevitas.quant import Int8WeightPerTensorFixedPoint, Int16Bias, Uint8ActPerTensorFixedPoint
from torch import nn


def _relu(bits: int) -> nn.Module:
    return qnn.QuantReLU(act_quant=Uint8ActPerTensorFixedPoint, bit_width=bits,
                         return_quant_tensor=True)


class LeNet5(nn.Module):
    """conv 5x5 (pad 2) - pool - conv 5x5 - pool - 3 dense layers, for 28x28 images."""

    def __init__(self, in_channels: int, num_classes: int, channels: tuple[int, int],
                 act_bits: int, input_bits: int) -> None:
        super().__init__()
        c1, c2 = channels
        wq = {"weight_quant": Int8WeightPerTensorFixedPoint, "bias_quant": Int16Bias,
              "return_quant_tensor": True}
        self.quant_in = qnn.QuantIdentity(act_quant=Uint8ActPerTensorFixedPoint,
                                          bit_width=input_bits, return_quant_tensor=True)
        self.conv1 = qnn.QuantConv2d(in_channels, c1, 5, padding=2, **wq)
        self.relu1 = _relu(act_bits)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = qnn.QuantConv2d(c1, c2, 5, **wq)
        self.relu2 = _relu(act_bits)
        self.pool2 = nn.MaxPool2d(2)
        self.fc1 = qnn.QuantLinear(c2 * 5 * 5, 120, **wq)
        self.relu3 = _relu(act_bits)
        self.fc2 = qnn.QuantLinear(120, 84, **wq)
        self.relu4 = _relu(act_bits)
        self.fc3 = qnn.QuantLinear(84, num_classes, **wq)

    def forward(self, x):
        y = self.pool1(self.relu1(self.conv1(self.quant_in(x))))
        y = self.pool2(self.relu2(self.conv2(y)))
        y = self.relu3(self.fc1(y.flatten(1)))
        y = self.relu4(self.fc2(y))
        return self.fc3(y)


def lenet5(input_shape: tuple[int, int, int], num_classes: int,
           channels: tuple[int, int] = (6, 16), act_bits: int = 8,
           input_bits: int = 8) -> nn.Module:
    """The factory hetq calls: ``input_shape`` and ``num_classes`` come from the data, the rest
    from ``model.kwargs`` (or ``model.act_bits`` / ``model.input_bits``)."""
    c, h, w = input_shape
    if (h, w) != (28, 28):
        raise ValueError(f"LeNet-5 takes 28x28 images, got {h}x{w}")
    return LeNet5(c, num_classes, tuple(channels), act_bits, input_bits)
