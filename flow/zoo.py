"""The model zoo: Brevitas networks with per-tensor power-of-two quantizers and per-layer bit-widths.

Every network is a :class:`ZooNet`: an input quantizer followed by a list of blocks. A block is one
weight layer with its output quantizer (:class:`QConv`, :class:`QDense`, :class:`BDense`), a
residual block (:class:`QResBlock`) or a shape operation. Weight layers are named (``conv1``,
``fc2``, ``layer2.0.conv1``...); the per-layer bit-width map, the plan and the weight-memory image
use these names. ``flow.lower`` turns a trained ZooNet into the integer network hardware runs.

Quantizers (chosen because they give bit-exact integer hardware, see FACTS.md): weights
``Int8WeightPerTensorFixedPoint`` (narrow, power-of-two scale) with the bit-width overridden per
layer; activations ``Uint8ActPerTensorFixedPoint`` after ReLU and ``Int8ActPerTensorFixedPoint``
before a residual add; biases ``Int16Bias`` (16-bit, at the accumulator's scale); binary layers
``SignedBinaryWeightPerTensorConst`` / ``SignedBinaryActPerTensorConst`` with scale 1.0 and
batch-norm before each sign. Fixed-point networks have no batch-norm: hardware carries no float.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import brevitas.nn as qnn
import torch
import torch.nn.functional as F
from brevitas.quant import (Int8ActPerTensorFixedPoint, Int8WeightPerTensorFixedPoint, Int16Bias,
                            SignedBinaryActPerTensorConst, SignedBinaryWeightPerTensorConst,
                            Uint8ActPerTensorFixedPoint)
from torch import nn

from flow.errors import ConfigError

MIN_BITS, MAX_BITS = 2, 16


def _qtensor_value(x):
    """The float value of a QuantTensor or a plain tensor."""
    return x.value if hasattr(x, "value") else x


class InputQuant(nn.Module):
    """Unsigned fixed-point quantizer of the network input (pixels in [0, 1])."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits
        self.quant = qnn.QuantIdentity(act_quant=Uint8ActPerTensorFixedPoint, bit_width=bits,
                                       return_quant_tensor=True)

    def forward(self, x):
        return self.quant(x)


def _act(kind: str | None, bits: int) -> nn.Module | None:
    if kind == "relu":
        return qnn.QuantReLU(act_quant=Uint8ActPerTensorFixedPoint, bit_width=bits,
                             return_quant_tensor=True)
    if kind == "signed":
        return qnn.QuantIdentity(act_quant=Int8ActPerTensorFixedPoint, bit_width=bits,
                                 return_quant_tensor=True)
    return None


class QConv(nn.Module):
    """Fixed-point convolution (+ bias) followed by its output quantizer and an optional max-pool.

    ``act`` is ``"relu"`` (unsigned output), ``"signed"`` (signed output, before a residual add)
    or ``None`` (the raw accumulator is the output).
    """

    weighted = True
    binary = False

    def __init__(self, name: str, cin: int, cout: int, k: int, *, stride: int = 1, pad: int = 0,
                 wbits: int = 8, abits: int = 8, act: str | None = "relu", pool: int = 0) -> None:
        super().__init__()
        self.name, self.wbits, self.abits, self.act_kind = name, wbits, abits, act
        self.stride, self.pad, self.k, self.pool = stride, pad, k, pool
        self.layer = qnn.QuantConv2d(cin, cout, k, stride=stride, padding=pad, bias=True,
                                     weight_quant=Int8WeightPerTensorFixedPoint,
                                     weight_bit_width=wbits, bias_quant=Int16Bias,
                                     return_quant_tensor=True)
        self.act = _act(act, abits)

    def forward(self, x):
        y = self.layer(x)
        if self.act is not None:
            y = self.act(y)
        if self.pool:
            y = F.max_pool2d(y, self.pool)
        return y


class QDense(nn.Module):
    """Fixed-point fully connected layer (+ bias) followed by its output quantizer (or none)."""

    weighted = True
    binary = False

    def __init__(self, name: str, cin: int, cout: int, *, wbits: int = 8, abits: int = 8,
                 act: str | None = "relu") -> None:
        super().__init__()
        self.name, self.wbits, self.abits, self.act_kind = name, wbits, abits, act
        self.layer = qnn.QuantLinear(cin, cout, bias=True,
                                     weight_quant=Int8WeightPerTensorFixedPoint,
                                     weight_bit_width=wbits, bias_quant=Int16Bias,
                                     return_quant_tensor=True)
        self.act = _act(act, abits)

    def forward(self, x):
        y = self.layer(x)
        return self.act(y) if self.act is not None else y


class BDense(nn.Module):
    """Binary fully connected layer (1-bit weights, no bias); batch-norm + sign unless it is last."""

    weighted = True
    binary = True

    def __init__(self, name: str, cin: int, cout: int, *, sign: bool = True) -> None:
        super().__init__()
        self.name, self.wbits, self.abits = name, 1, 1 if sign else 0
        self.act_kind = "sign" if sign else None
        self.layer = qnn.QuantLinear(cin, cout, bias=False,
                                     weight_quant=SignedBinaryWeightPerTensorConst,
                                     weight_scaling_const=1.0, return_quant_tensor=True)
        self.bn = nn.BatchNorm1d(cout) if sign else None
        self.sign = (qnn.QuantIdentity(act_quant=SignedBinaryActPerTensorConst, scaling_const=1.0,
                                       return_quant_tensor=True) if sign else None)

    def forward(self, x):
        y = self.layer(x)
        if self.bn is None:
            return y
        return self.sign(self.bn(y.value))


class Flatten(nn.Module):
    """Flattens (C, H, W) to one vector per image, in PyTorch's channel-major order."""

    weighted = False

    def __init__(self) -> None:
        super().__init__()
        self.name = "flatten"

    def forward(self, x):
        return x.flatten(1)


class GlobalAvgPool(nn.Module):
    """Average over the whole feature map (area a power of two) and requantize to ``abits``."""

    weighted = False

    def __init__(self, name: str, abits: int) -> None:
        super().__init__()
        self.name, self.abits = name, abits
        self.act = _act("relu", abits)

    def forward(self, x):
        v = _qtensor_value(x)
        return self.act(v.mean(dim=(2, 3)))


class QResBlock(nn.Module):
    """ResNet basic block: conv-relu-conv (signed output) + shortcut, add, then ReLU quantizer.

    The shortcut is a 1x1 strided convolution when the shape changes, else the input itself.
    """

    weighted = False

    def __init__(self, name: str, cin: int, cout: int, stride: int,
                 bits: Callable[[str], int], abits: int) -> None:
        super().__init__()
        self.name, self.abits = name, abits
        self.conv1 = QConv(f"{name}.conv1", cin, cout, 3, stride=stride, pad=1,
                           wbits=bits(f"{name}.conv1"), abits=abits, act="relu")
        self.conv2 = QConv(f"{name}.conv2", cout, cout, 3, stride=1, pad=1,
                           wbits=bits(f"{name}.conv2"), abits=abits, act="signed")
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = QConv(f"{name}.shortcut", cin, cout, 1, stride=stride, pad=0,
                                  wbits=bits(f"{name}.shortcut"), abits=abits, act="signed")
        self.act = _act("relu", abits)

    def forward(self, x):
        y = self.conv2(self.conv1(x))
        s = self.shortcut(x) if self.shortcut is not None else x
        return self.act(_qtensor_value(y) + _qtensor_value(s))

    def weight_blocks(self) -> list[QConv]:
        """The weight layers inside the block, in execution order."""
        return [b for b in (self.conv1, self.conv2, self.shortcut) if b is not None]


class ZooNet(nn.Module):
    """A zoo network: input quantizer then blocks. ``forward`` returns float class scores."""

    def __init__(self, arch: str, input_bits: int, blocks: list[nn.Module],
                 input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        self.arch, self.input_shape, self.num_classes = arch, tuple(input_shape), num_classes
        self.input = InputQuant(input_bits)
        self.blocks = nn.ModuleList(blocks)

    def forward_quant(self, x):
        """Run the network and return the last block's output QuantTensor."""
        h = self.input(x)
        for b in self.blocks:
            h = b(h)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _qtensor_value(self.forward_quant(x))

    def weight_layers(self) -> list[nn.Module]:
        """All weight layers (QConv, QDense, BDense) in execution order."""
        out: list[nn.Module] = []
        for b in self.blocks:
            if isinstance(b, QResBlock):
                out.extend(b.weight_blocks())
            elif getattr(b, "weighted", False):
                out.append(b)
        return out

    def layer_names(self) -> list[str]:
        """Names of the weight layers in execution order."""
        return [b.name for b in self.weight_layers()]


# ----------------------------------------------------------------------------------------------
# Architectures. Each builder takes the bit-width lookup, activation bits, the width multiplier,
# the input shape and the class count, and returns the block list.

@dataclass(frozen=True)
class ArchInfo:
    """A zoo architecture: its builder, whether it is binary, and the input shapes it accepts."""

    build: Callable[..., list[nn.Module]]
    binary: bool
    doc: str


def _ch(c: int, width: float) -> int:
    return max(1, int(round(c * width)))


def _mlp(bits, abits, width, shape, ncls):
    c, h, w = shape
    hid = _ch(64, width)
    return [Flatten(),
            QDense("fc1", c * h * w, hid, wbits=bits("fc1"), abits=abits),
            QDense("fc2", hid, hid, wbits=bits("fc2"), abits=abits),
            QDense("fc3", hid, ncls, wbits=bits("fc3"), abits=abits, act=None)]


def _cnn(bits, abits, width, shape, ncls):
    c, h, w = shape
    c1, c2 = _ch(16, width), _ch(32, width)
    return [QConv("conv1", c, c1, 3, pad=1, wbits=bits("conv1"), abits=abits),
            QConv("conv2", c1, c2, 3, pad=1, wbits=bits("conv2"), abits=abits, pool=2),
            Flatten(),
            QDense("fc1", c2 * (h // 2) * (w // 2), ncls, wbits=bits("fc1"), abits=abits,
                   act=None)]


def _bmlp(bits, abits, width, shape, ncls):
    c, h, w = shape
    hid = _ch(256, width)
    return [Flatten(),
            BDense("fc1", c * h * w, hid), BDense("fc2", hid, hid), BDense("fc3", hid, hid),
            BDense("fc4", hid, ncls, sign=False)]


def _conv_stack(bits, abits, width, shape, ncls, convs, hidden):
    """3x3 conv layers ``convs`` = [(channels, pool), ...], then three dense layers."""
    c, h, w = shape
    blocks: list[nn.Module] = []
    cin, down = c, 1
    for i, (co, pool) in enumerate(convs, start=1):
        co = _ch(co, width)
        blocks.append(QConv(f"conv{i}", cin, co, 3, pad=1, wbits=bits(f"conv{i}"), abits=abits,
                            pool=pool))
        cin, down = co, down * (pool or 1)
    hid = _ch(hidden, width)
    blocks += [Flatten(),
               QDense("fc1", cin * (h // down) * (w // down), hid, wbits=bits("fc1"),
                      abits=abits),
               QDense("fc2", hid, hid, wbits=bits("fc2"), abits=abits),
               QDense("fc3", hid, ncls, wbits=bits("fc3"), abits=abits, act=None)]
    return blocks


def _alexnet(bits, abits, width, shape, ncls):
    convs = [(64, 2), (192, 2), (384, 0), (256, 0), (256, 2)]
    return _conv_stack(bits, abits, width, shape, ncls, convs, 1024)


def _vgg11(bits, abits, width, shape, ncls):
    convs = [(64, 2), (128, 2), (256, 0), (256, 2), (512, 0), (512, 2), (512, 0), (512, 2)]
    return _conv_stack(bits, abits, width, shape, ncls, convs, 512)


def _resnet18(bits, abits, width, shape, ncls):
    c, h, w = shape
    c0 = _ch(64, width)
    blocks: list[nn.Module] = [QConv("conv1", c, c0, 3, pad=1, wbits=bits("conv1"), abits=abits)]
    cin = c0
    for stage, (mult, stride) in enumerate(((1, 1), (2, 2), (4, 2), (8, 2)), start=1):
        co = _ch(64 * mult, width)
        for j in range(2):
            blocks.append(QResBlock(f"layer{stage}.{j}", cin, co, stride if j == 0 else 1,
                                    bits, abits))
            cin = co
    blocks += [GlobalAvgPool("avgpool", abits),
               QDense("fc", cin, ncls, wbits=bits("fc"), abits=abits, act=None)]
    return blocks


ARCHS: dict[str, ArchInfo] = {
    "mlp": ArchInfo(_mlp, False, "3-layer fixed-point MLP (64 hidden x width)"),
    "cnn": ArchInfo(_cnn, False, "2 conv + 1 dense fixed-point CNN"),
    "bmlp": ArchInfo(_bmlp, True, "binary MLP, 4 layers of 256 x width (BNN-PYNQ TFC style)"),
    "alexnet": ArchInfo(_alexnet, False, "AlexNet, CIFAR-10 form: 5 conv + 3 dense"),
    "vgg11": ArchInfo(_vgg11, False, "VGG-11, CIFAR-10 form: 8 conv + 3 dense"),
    "resnet18": ArchInfo(_resnet18, False, "ResNet-18, CIFAR-10 form: 17 conv + 3 shortcut + 1 dense"),
}


def build_model(arch: str, *, input_shape: tuple[int, int, int], num_classes: int,
                weight_bits: Mapping[str, int] | None = None, default_weight_bits: int = 8,
                act_bits: int = 8, input_bits: int = 8, width: float = 1.0) -> ZooNet:
    """Build a zoo network.

    ``weight_bits`` maps layer names to bit-widths (2..16); layers not in it get
    ``default_weight_bits``. A name in ``weight_bits`` that the network does not have is an error.
    Binary networks ignore weight bits (their weights are 1 bit).
    """
    if arch not in ARCHS:
        raise ConfigError(f"model.arch: unknown model '{arch}' (known: {', '.join(ARCHS)})")
    weight_bits = dict(weight_bits or {})
    for name, b in [("model.default_weight_bits", default_weight_bits),
                    ("model.act_bits", act_bits), ("model.input_bits", input_bits)]:
        if not isinstance(b, int) or not MIN_BITS <= b <= MAX_BITS:
            raise ConfigError(f"{name}: bit-width {b!r} is outside {MIN_BITS}..{MAX_BITS}")
    for lname, b in weight_bits.items():
        if not isinstance(b, int) or not MIN_BITS <= b <= MAX_BITS:
            raise ConfigError(f"model.weight_bits.{lname}: bit-width {b!r} is outside "
                              f"{MIN_BITS}..{MAX_BITS}")
    if not width > 0:
        raise ConfigError(f"model.width: width multiplier {width!r} must be > 0")
    used: set[str] = set()

    def bits(name: str) -> int:
        used.add(name)
        return weight_bits.get(name, default_weight_bits)

    info = ARCHS[arch]
    c, h, w = input_shape
    if arch in ("alexnet", "vgg11", "resnet18") and (h % 32 or w % 32):
        raise ConfigError(f"model.arch: '{arch}' needs 32x32 inputs (got {h}x{w}); "
                          f"use data 'digits32' or 'cifar10'")
    blocks = info.build(bits, act_bits, width, tuple(input_shape), num_classes)
    model = ZooNet(arch, input_bits, blocks, input_shape, num_classes)
    names = model.layer_names()
    unknown = sorted(set(weight_bits) - set(names))
    if unknown:
        raise ConfigError(f"model.weight_bits: unknown layer '{unknown[0]}' for model '{arch}' "
                          f"(layers: {', '.join(names)})")
    return model
