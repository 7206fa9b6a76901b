"""ZOBNN: deliberately quantized float parameters of a binary network (paper 003, Section V).

One scale for the whole network, ``delta = max|theta| / (2^(bits-1) - 1)`` (Eq. 7), over every
float parameter ``theta`` that is quantized. Quantization Q(x) = round(x / delta) and
dequantization D(x) = delta * x are reciprocal (Eqs. 8-9), so every D followed by a Q cancels and
the network runs in the quantized domain end to end (Eq. 6), with no added layer or parameter:

- input layer (Eq. 10): the float first conv takes the real input with weights W/delta, so its
  output is already in the quantized domain;
- sign layers (Eq. 11) and RSign: thresholds divided by delta (``beta / delta``); a sign without
  a threshold is unchanged;
- binary convs: the +-1 weights are unchanged, their scale is ``alpha / delta``;
- batch-norm (Eqs. 12-13): weight, bias, mean and sigma = sqrt(var + eps) as integers at delta,
  computed as ``w_q (x_q - mu_q) / sigma_q + b_q`` (sigma at least one code step);
- RPReLU (Eq. 14): the shifts gamma and zeta at delta; the slope is a ratio and stays a real
  number (float32), as in the paper;
- output layer: weights at delta; its input is at delta too, so its bias is stored at delta^2 as
  a 32-bit integer (the accumulator scale of standard integer inference), and argmax absorbs the
  final D (Section V-C).

Every quantized parameter is a ``bits``-bit two's complement integer in the weight-memory image,
so no bit flip can take it outside [-2^(bits-1), 2^(bits-1) - 1] codes: the fault cannot blow a
value up the way an exponent flip of a float32 does.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from flow.core.errors import ConfigError
from flow.core.precision import Fixed
from flow.zobnn.bnn import BNNModel, RPReLU

BIAS_BITS = 32          # output-layer bias, at delta^2


class QBatchNorm2d(nn.Module):
    """Batch-norm with stored integer weight, bias, mean and sigma (Eq. 12), no running var."""

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        self.register_buffer("weight", bn.weight.detach().clone())
        self.register_buffer("bias", bn.bias.detach().clone())
        self.register_buffer("mean", bn.running_mean.detach().clone())
        self.register_buffer("sigma", torch.sqrt(bn.running_var.detach() + bn.eps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # batch_norm computes (x - mean) / sqrt(var + eps) * weight + bias: var = sigma^2, eps 0
        return F.batch_norm(x, self.mean, self.sigma * self.sigma, self.weight, self.bias,
                            training=False, eps=0.0)

    def stored(self) -> list[tuple[str, str, torch.Tensor, bool]]:
        """(attribute, kind, tensor, binary) of what the forward reads."""
        return [(a, "bn", getattr(self, a), False) for a in ("weight", "bias", "mean", "sigma")]


@dataclass(frozen=True)
class ZobnnInfo:
    """The quantization of one ZOBNN network."""

    bits: int
    delta: float
    max_abs: float
    quantized: tuple[str, ...]        # stored at delta, ``bits`` wide
    float32: tuple[str, ...]          # kept float32 (RPReLU slopes)
    accumulator: tuple[str, ...]      # output-layer bias at delta^2, 32 bits

    def to_json(self) -> dict:
        """Plain dict."""
        return {"bits": self.bits, "delta": self.delta, "max_abs": self.max_abs,
                "quantized": list(self.quantized), "float32": list(self.float32),
                "accumulator": list(self.accumulator)}


def _swap_batchnorms(model: nn.Module) -> None:
    for name, child in model.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(model, name, QBatchNorm2d(child))
        else:
            _swap_batchnorms(child)


def _output_bias(model: BNNModel) -> str | None:
    """State-dict name of the output layer's bias (the last linear layer), if it has one."""
    last = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not last:
        return None
    lin = model.get_submodule(last[-1])
    return f"{last[-1]}.bias" if lin.bias is not None else None


@torch.no_grad()
def zobnn(model: BNNModel, bits: int) -> tuple[BNNModel, ZobnnInfo]:
    """The ZOBNN form of a trained binary network (a copy; ``model`` is unchanged).

    The copy's ``stored_formats`` maps every integer parameter to its :class:`Fixed` format, which
    :class:`flow.zobnn.floatimage.FloatImage` uses to store it as two's complement words.
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ConfigError(f"zobnn.bits: {bits!r} is not an integer in 2..16")
    if not any(p.binary for p in model.stored_parameters()):
        raise ConfigError(f"model.arch: '{getattr(model, 'arch', '?')}' has no binary layer; "
                          f"ZOBNN quantizes the float parameters of a binary network")
    q = copy.deepcopy(model).eval()
    _swap_batchnorms(q)
    slopes = {f"{n}.slope" for n, m in q.named_modules() if isinstance(m, RPReLU)}
    out_bias = _output_bias(q)
    floats = [p for p in q.stored_parameters() if not p.binary]
    scaled = [p for p in floats if p.name not in slopes and p.name != out_bias]
    max_abs = max(float(p.tensor.abs().max()) for p in scaled)
    top = 2 ** (bits - 1) - 1
    delta = max_abs / top
    fmt = Fixed(bits=bits, signed=True)
    formats: dict[str, Fixed] = {}
    for p in scaled:
        codes = torch.clamp(torch.round(p.tensor / delta), -top, top)
        if p.name.endswith(".sigma"):
            codes = torch.clamp(codes, min=1)       # a divisor: at least one code step
        p.tensor.copy_(codes)
        formats[p.name] = fmt
    if out_bias is not None:
        t = q.get_parameter(out_bias)
        lim = 2 ** (BIAS_BITS - 1) - 1
        t.copy_(torch.clamp(torch.round(t / (delta * delta)), -lim, lim))
        formats[out_bias] = Fixed(bits=BIAS_BITS, signed=True)
    q.stored_formats = formats
    info = ZobnnInfo(bits, delta, max_abs, tuple(p.name for p in scaled),
                     tuple(sorted(slopes)), (out_bias,) if out_bias else ())
    return q, info


class QD(nn.Module):
    """An explicit dequantization-quantization pair in front of a layer, as conventional
    quantization has it between consecutive layers (Eq. 4): ``layer(Q(D(x)))``, where
    ``D(x) = delta * x`` and ``Q(x) = round(x / delta)``; ``delta`` is a stored parameter."""

    def __init__(self, layer: nn.Module, delta: float) -> None:
        super().__init__()
        self.layer = layer
        self.register_buffer("delta", torch.tensor(float(delta)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(torch.round(x * self.delta / self.delta))


class Dequantize(nn.Module):
    """The final D of conventional quantization (``scale * x``) after the output layer."""

    def __init__(self, layer: nn.Module, scale: float) -> None:
        super().__init__()
        self.layer = layer
        self.register_buffer("scale", torch.tensor(float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x) * self.scale


def _wrap(module: nn.Module, delta: float) -> None:
    from flow.zobnn.bnn import RSign
    for name, child in module.named_children():
        if isinstance(child, (QBatchNorm2d, RPReLU, RSign)):
            setattr(module, name, QD(child, delta))
        else:
            _wrap(child, delta)


@torch.no_grad()
def conventional(zobnn_model: BNNModel, info: ZobnnInfo) -> nn.Module:
    """The same integer network with the Q and D layers of conventional quantization kept
    (Eq. 4): a D-Q pair before every S-type layer and a D after the output layer. For the
    inference-time comparison (the paper's Table II); its outputs are those of ZOBNN up to the
    rounding of the activations."""
    m = copy.deepcopy(zobnn_model).eval()
    _wrap(m, info.delta)
    last = [n for n, mod in m.named_modules() if isinstance(mod, nn.Linear)][-1]
    parent, _, attr = last.rpartition(".")
    owner = m.get_submodule(parent) if parent else m
    setattr(owner, attr, Dequantize(getattr(owner, attr), info.delta * info.delta))
    return m
