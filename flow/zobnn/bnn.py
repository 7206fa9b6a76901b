"""Binary neural networks of the ZOBNN study, in plain PyTorch, and their float twins.

Two BNN families (the paper's FracBNN and DoReFa-Net, sized for 8x8 digits on a CPU and for
3x32x32 inputs) and the float network of the same shape for each (the paper's Fig. 3):

- :class:`BinaryResNet` ("breact", FracBNN / ReActNet style): float 3x3 first conv + batch-norm,
  then basic blocks ``RSign -> binary 3x3 conv (x per-channel scale) -> BN -> + shortcut ->
  RPReLU``, global average pool, float last linear layer. The stride-2 block's shortcut is a 2x2
  average pool and channel duplication: it holds no parameters.
- :class:`DoReFaBNN` ("bdorefa", DoReFa-Net style): float first conv + BN, then ``sign -> binary
  3x3 conv (x per-layer scale E|W|) -> BN [-> 2x2 max-pool]``, flatten, float last linear layer.
- :class:`FloatTwin` ("breact_float", "bdorefa_float"): the same layers with every binary conv a
  float conv (its scale folded into the float weights) and every sign a float activation:
  identity for the RSign of the ResNet (RPReLU stays the non-linearity, as in ReActNet's
  real-valued ResNet) and ReLU for the sign of DoReFa-Net (its only non-linearity).

Binarization uses straight-through estimators: weights ``sign(W)`` with the gradient of
``clamp(W, -1, 1)``; activations ``sign(x)`` (+1 at 0, so stored values are exactly +-1) with
the Bi-Real/ReActNet polynomial gradient ``2 - 2|x|`` (ResNet) or the clipped identity ``|x| <= 1``
(DoReFa-Net).

Every model lists in :meth:`BNNModel.stored_parameters` what the accelerator stores at inference
time, as the very tensors its eval forward reads (writing one in place changes the output), for
:class:`flow.zobnn.floatimage.FloatImage`. A binary conv reads, in eval mode, the +-1.0 buffer
``wbin``
and the scale buffer ``alpha`` that :meth:`BNNModel.freeze` derives from the latent float weights
(the latent weights are a training-only variable and are not stored). In training mode it uses
``sign(latent)`` with the STE and ``alpha = mean|latent|`` (not back-propagated, as ReActNet).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from flow.core.errors import ConfigError
from flow.nn.data import Dataset
from flow.nn.train import fit

STORED_KINDS: tuple[str, ...] = ("weight", "bias", "bn", "rprelu", "rsign", "scale")
BASE_CHANNELS = 32  # channels of the first conv at width 1.0


@dataclass(frozen=True)
class StoredParam:
    """One stored parameter tensor of a network at inference time.

    ``name`` is its key in the model's state dict, ``layer`` the module holding it, ``kind`` one
    of :data:`STORED_KINDS`, ``tensor`` the tensor the eval forward reads (not a copy) and
    ``binary`` whether it holds +-1 values stored in 1 bit each (else float32).
    """

    name: str
    layer: str
    kind: str
    tensor: torch.Tensor
    binary: bool


# ----------------------------------------------------------------------------------------------
# Binarization with straight-through estimators


def _pm1(x: torch.Tensor) -> torch.Tensor:
    """sign(x) with sign(0) = +1: exactly +-1.0 everywhere (NaN -> -1)."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


class _SignClipSTE(torch.autograd.Function):
    """sign(x) forward; gradient 1 where |x| <= 1, else 0 (the clipped identity STE)."""

    @staticmethod
    def forward(ctx, x):  # noqa: D102 - autograd protocol
        ctx.save_for_backward(x)
        return _pm1(x)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102 - autograd protocol
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


class _SignApproxSTE(torch.autograd.Function):
    """sign(x) forward; gradient 2 - 2|x| on [-1, 1], else 0 (Bi-Real / ReActNet ApproxSign)."""

    @staticmethod
    def forward(ctx, x):  # noqa: D102 - autograd protocol
        ctx.save_for_backward(x)
        return _pm1(x)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102 - autograd protocol
        (x,) = ctx.saved_tensors
        return grad * (2.0 - 2.0 * x.abs()).clamp(min=0.0)


def sign_clip_ste(x: torch.Tensor) -> torch.Tensor:
    """Exactly +-1 (sign, +1 at 0) with the clipped-identity straight-through gradient."""
    return _SignClipSTE.apply(x)


def sign_approx_ste(x: torch.Tensor) -> torch.Tensor:
    """Exactly +-1 (sign, +1 at 0) with the ApproxSign polynomial gradient 2 - 2|x|."""
    return _SignApproxSTE.apply(x)


# ----------------------------------------------------------------------------------------------
# Layers


class BinaryConv2d(nn.Module):
    """3x3 (or kxk) convolution with binary weights and a float scale, no bias.

    ``y = conv(x, sign(W)) * alpha`` with ``alpha = mean|W|`` per output channel
    (``per_channel=True``, XNOR-Net / ReActNet) or over the whole layer (DoReFa-Net). Eval mode
    reads the buffers ``wbin`` (+-1.0) and ``alpha`` written by :meth:`freeze`; it refuses to run
    on latent weights changed since (a training forward or a loaded state dict).
    """

    def __init__(self, cin: int, cout: int, k: int = 3, *, stride: int = 1, padding: int = 1,
                 per_channel: bool = True) -> None:
        super().__init__()
        self.cin, self.cout, self.k, self.stride, self.padding = cin, cout, k, stride, padding
        self.per_channel = per_channel
        self.weight = nn.Parameter(torch.empty(cout, cin, k, k))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv2d's default
        self.register_buffer("wbin", torch.empty(cout, cin, k, k))
        self.register_buffer("alpha", torch.empty(cout if per_channel else 1))
        self._frozen = False
        self.freeze()

    def _scale(self, w: torch.Tensor) -> torch.Tensor:
        """mean|w| per output channel (shape (cout,)) or over the layer (shape (1,))."""
        a = w.detach().abs()
        return a.mean(dim=(1, 2, 3)) if self.per_channel else a.mean().reshape(1)

    @torch.no_grad()
    def freeze(self) -> None:
        """Write the stored binary weights ``wbin = sign(W)`` and scale ``alpha`` from ``W``."""
        self.wbin.copy_(_pm1(self.weight))
        self.alpha.copy_(self._scale(self.weight))
        self._frozen = True

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._frozen = False  # new latent weights: freeze() before an eval forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self._frozen = False
            w, alpha = sign_clip_ste(self.weight), self._scale(self.weight)
        else:
            if not self._frozen:
                raise RuntimeError("BinaryConv2d: the latent weights changed since freeze(); call "
                                   "model.freeze() before evaluating (after training or "
                                   "load_state_dict)")
            w, alpha = self.wbin, self.alpha
        y = F.conv2d(x, w, stride=self.stride, padding=self.padding)
        return y * alpha.view(1, -1, 1, 1)

    def stored(self) -> list[tuple[str, str, torch.Tensor, bool]]:
        """(attribute, kind, tensor, binary) of what the eval forward reads."""
        return [("wbin", "weight", self.wbin, True), ("alpha", "scale", self.alpha, False)]

    def extra_repr(self) -> str:
        return (f"{self.cin}, {self.cout}, kernel_size={self.k}, stride={self.stride}, "
                f"padding={self.padding}, scale={'channel' if self.per_channel else 'layer'}")


class RSign(nn.Module):
    """ReActNet's RSign: ``sign(x - beta_c)`` with a learnable per-channel threshold ``beta``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sign_approx_ste(x - self.beta.view(1, -1, 1, 1))

    def stored(self) -> list[tuple[str, str, torch.Tensor, bool]]:
        """(attribute, kind, tensor, binary) of what the forward reads."""
        return [("beta", "rsign", self.beta, False)]


class RPReLU(nn.Module):
    """ReActNet's RPReLU: ``PReLU_c(x - gamma_c) + zeta_c`` per channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(channels))
        self.slope = nn.Parameter(torch.full((channels,), 0.25))
        self.zeta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.prelu(x - self.gamma.view(1, -1, 1, 1), self.slope) + self.zeta.view(1, -1, 1, 1)

    def stored(self) -> list[tuple[str, str, torch.Tensor, bool]]:
        """(attribute, kind, tensor, binary) of what the forward reads."""
        return [(a, "rprelu", getattr(self, a), False) for a in ("gamma", "slope", "zeta")]


class Sign(nn.Module):
    """Parameter-free binary activation ``sign(x)`` (+1 at 0), clipped-identity STE."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sign_clip_ste(x)


def _stored_of(module: nn.Module) -> list[tuple[str, str, torch.Tensor, bool]]:
    """What one leaf module's eval forward reads, as (attribute, kind, tensor, binary)."""
    if hasattr(module, "stored"):
        return module.stored()
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
        if not module.track_running_stats or not module.affine:
            raise TypeError("stored parameters: batch-norm must be affine with running stats")
        return [(a, "bn", getattr(module, a), False)
                for a in ("weight", "bias", "running_mean", "running_var")]
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        out = [("weight", "weight", module.weight, False)]
        if module.bias is not None:
            out.append(("bias", "bias", module.bias, False))
        return out
    if next(module.parameters(recurse=False), None) is not None or \
            next(module.buffers(recurse=False), None) is not None:
        raise TypeError(f"stored parameters: no rule for {type(module).__name__}")
    return []


# ----------------------------------------------------------------------------------------------
# Models


class BNNModel(nn.Module):
    """Common interface: :meth:`stored_parameters` and :meth:`freeze`."""

    arch: str = ""

    def stored_parameters(self) -> list[StoredParam]:
        """Every tensor the accelerator stores at inference time, in execution order.

        Each is the tensor the eval forward reads (write into it in place to inject a fault).
        Latent float weights of binary convs and BN's ``num_batches_tracked`` are not stored.
        """
        out = []
        for lname, module in self.named_modules():
            for attr, kind, tensor, binary in _stored_of(module):
                out.append(StoredParam(f"{lname}.{attr}", lname, kind, tensor, binary))
        return out

    def freeze(self) -> None:
        """Write every binary conv's stored ``wbin``/``alpha`` from its latent weights.

        Call it after training and after ``load_state_dict`` (the eval forward refuses stale
        buffers). A no-op for float networks.
        """
        for m in self.modules():
            if isinstance(m, BinaryConv2d):
                m.freeze()


def _ch(c: int, width: float) -> int:
    return max(1, int(round(c * width)))


def _stage_plan(input_hw: int) -> int:
    """Number of resolution halvings: 1 below 16x16 (8x8 digits -> 4x4), else 2 (32 -> 8)."""
    return 1 if input_hw < 16 else 2


def _conv3(cin: int, cout: int, stride: int, binary: bool, per_channel: bool) -> nn.Module:
    if binary:
        return BinaryConv2d(cin, cout, 3, stride=stride, padding=1, per_channel=per_channel)
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class ReActBlock(nn.Module):
    """``RSign -> 3x3 conv -> BN -> + shortcut -> RPReLU``.

    With ``stride=2`` (``cout`` a multiple of ``cin``) the shortcut is a 2x2 average pool with
    each channel repeated ``cout // cin`` times; no parameters. Float twin: RSign is identity.
    """

    def __init__(self, cin: int, cout: int, stride: int, *, binary: bool = True) -> None:
        super().__init__()
        if cout % cin or (stride == 1 and cout != cin):
            raise ValueError(f"ReActBlock: {cin} -> {cout} channels with stride {stride}")
        self.stride, self.repeat = stride, cout // cin
        self.rsign = RSign(cin) if binary else nn.Identity()
        self.conv = _conv3(cin, cout, stride, binary, per_channel=True)
        self.bn = nn.BatchNorm2d(cout)
        self.rprelu = RPReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x if self.stride == 1 else F.avg_pool2d(x, self.stride, ceil_mode=True)
        if self.repeat > 1:
            s = s.repeat(1, self.repeat, 1, 1)
        return self.rprelu(self.bn(self.conv(self.rsign(x))) + s)

    def extra_repr(self) -> str:
        return f"shortcut=avg_pool2d({self.stride}) x{self.repeat}" if self.stride > 1 else ""


class _Stem(nn.Module):
    """Float 3x3 first conv (no bias) + batch-norm."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


def _check_shape(arch: str, in_ch: int, num_classes: int, input_hw: int, width: float) -> None:
    for field, v in (("in_ch", in_ch), ("num_classes", num_classes), ("input_hw", input_hw)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"model.{field}: {v!r} is not a positive integer (model '{arch}')")
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0:
        raise ConfigError(f"model.width: width multiplier {width!r} must be > 0")
    if input_hw < 4:
        raise ConfigError(f"model.arch: '{arch}' needs inputs of at least 4x4 (got {input_hw})")


def _init_react(m: nn.Module, in_ch: int, num_classes: int, input_hw: int, width: float,
                binary: bool) -> None:
    """Add the layers of the (binary or float) ReAct ResNet to ``m``."""
    c = _ch(BASE_CHANNELS, width)
    m.stem = _Stem(in_ch, c)
    blocks, cin = [], c
    for stage in range(_stage_plan(input_hw) + 1):
        cout = c * 2 ** stage
        for j in range(2):
            blocks.append(ReActBlock(cin, cout, 2 if stage and j == 0 else 1, binary=binary))
            cin = cout
    m.blocks = nn.Sequential(*blocks)
    m.fc = nn.Linear(cin, num_classes)


def _forward_react(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m.fc(m.blocks(m.stem(x)).mean(dim=(2, 3)))


class DoReFaBlock(nn.Module):
    """``sign -> 3x3 conv (x per-layer scale) -> BN [-> 2x2 max-pool]``; float twin: ReLU."""

    def __init__(self, cin: int, cout: int, pool: bool, *, binary: bool = True) -> None:
        super().__init__()
        self.pool = pool
        self.act = Sign() if binary else nn.ReLU()
        self.conv = _conv3(cin, cout, 1, binary, per_channel=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(self.act(x)))
        return F.max_pool2d(y, 2) if self.pool else y

    def extra_repr(self) -> str:
        return "max_pool=2" if self.pool else ""


def _init_dorefa(m: nn.Module, in_ch: int, num_classes: int, input_hw: int, width: float,
                 binary: bool) -> None:
    """Add the layers of the (binary or float) DoReFa CNN to ``m``."""
    c = _ch(BASE_CHANNELS, width)
    m.stem = _Stem(in_ch, c)
    # stage 0: one conv c -> c; stage s > 0: c*2^(s-1) -> c*2^s -> c*2^s; a max-pool ends each
    blocks, cin, hw = [DoReFaBlock(c, c, True, binary=binary)], c, input_hw // 2
    for stage in range(1, _stage_plan(input_hw) + 1):
        cout = c * 2 ** stage
        blocks += [DoReFaBlock(cin, cout, False, binary=binary),
                   DoReFaBlock(cout, cout, True, binary=binary)]
        cin, hw = cout, hw // 2
    m.blocks = nn.Sequential(*blocks)
    m.fc = nn.Linear(cin * hw * hw, num_classes)


def _forward_dorefa(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m.fc(m.blocks(m.stem(x)).flatten(1))


_BODIES: dict[str, tuple[Callable[..., None], Callable[[nn.Module, torch.Tensor], torch.Tensor]]]
_BODIES = {"breact": (_init_react, _forward_react), "bdorefa": (_init_dorefa, _forward_dorefa)}


class BinaryResNet(BNNModel):
    """FracBNN / ReActNet-style binary ResNet (arch "breact").

    Float 3x3 conv + BN; two basic blocks per stage (:class:`ReActBlock`), channels
    ``32*width * 2^stage``, the first block of stages 1.. with stride 2 (one halving below 16x16
    input, two above: 8x8 -> 4x4, 32x32 -> 8x8); global average pool; float linear layer.
    """

    arch = "breact"

    def __init__(self, in_ch: int = 1, num_classes: int = 10, input_hw: int = 8,
                 width: float = 1.0) -> None:
        super().__init__()
        _check_shape(self.arch, in_ch, num_classes, input_hw, width)
        _init_react(self, in_ch, num_classes, input_hw, width, binary=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _forward_react(self, x)


class DoReFaBNN(BNNModel):
    """DoReFa-Net-style binary CNN (arch "bdorefa").

    Float 3x3 conv + BN; binary 3x3 convs (per-layer scale ``E|W|``, sign activations) each with
    BN, a 2x2 max-pool after stage 0's single conv and after each later stage's two convs
    (channels ``32*width``, then x2 per stage; 8x8 -> 2x2, 32x32 -> 4x4); float linear layer on
    the flattened map.
    """

    arch = "bdorefa"

    def __init__(self, in_ch: int = 1, num_classes: int = 10, input_hw: int = 8,
                 width: float = 1.0) -> None:
        super().__init__()
        _check_shape(self.arch, in_ch, num_classes, input_hw, width)
        _init_dorefa(self, in_ch, num_classes, input_hw, width, binary=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _forward_dorefa(self, x)


class FloatTwin(BNNModel):
    """The float network of the same shape as a BNN ``kind`` ("breact" or "bdorefa").

    Same modules and state-dict keys, but binary convs are float ``nn.Conv2d`` (no scale: it
    folds into the float weights), the ResNet's RSign is the identity (RPReLU stays the
    non-linearity) and DoReFa-Net's sign is a ReLU. Every weight is a stored float32.
    """

    def __init__(self, kind: str, in_ch: int = 1, num_classes: int = 10, input_hw: int = 8,
                 width: float = 1.0) -> None:
        super().__init__()
        if kind not in _BODIES:
            raise ConfigError(f"model.arch: unknown binary network '{kind}' for a float twin "
                              f"(known: {', '.join(_BODIES)})")
        self.kind, self.arch = kind, f"{kind}_float"
        _check_shape(self.arch, in_ch, num_classes, input_hw, width)
        _BODIES[kind][0](self, in_ch, num_classes, input_hw, width, binary=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _BODIES[self.kind][1](self, x)


ARCHS: tuple[str, ...] = ("breact", "bdorefa", "breact_float", "bdorefa_float")


def build_bnn(arch: str, input_shape: tuple[int, int, int], num_classes: int,
              width: float = 1.0, *, seed: int | None = None) -> BNNModel:
    """Build (untrained) network ``arch`` (one of :data:`ARCHS`) for ``(C, H, W)`` inputs.

    Inputs must be square. With ``seed`` the initial weights come from that seed (the global
    torch RNG is left as it was); without it, from the global torch RNG.
    """
    if arch not in ARCHS:
        raise ConfigError(f"model.arch: unknown model '{arch}' (known: {', '.join(ARCHS)})")
    c, h, w = input_shape
    if h != w:
        raise ConfigError(f"model.arch: '{arch}' needs square inputs (got {h}x{w})")
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_bnn(arch, input_shape, num_classes, width)
    if arch == "breact":
        return BinaryResNet(c, num_classes, h, width)
    if arch == "bdorefa":
        return DoReFaBNN(c, num_classes, h, width)
    return FloatTwin(arch.removesuffix("_float"), c, num_classes, h, width)


# ----------------------------------------------------------------------------------------------
# Training


def train_bnn(model: BNNModel, data: Dataset, *, epochs: int = 8, lr: float = 5e-3,
              batch_size: int = 64, seed: int = 0, progress: bool = True) -> list[dict]:
    """Train ``model`` in place on ``data`` (Adam, cosine learning rate); return the history.

    One dict per epoch: ``epoch``, ``loss`` (mean train cross-entropy) and ``val_accuracy``. The
    weights of the epoch with the best validation accuracy are kept; the model ends frozen and in
    eval mode. Deterministic on CPU for a given initial model and ``seed`` (batch order).
    """
    for field, v, lo in (("train.epochs", epochs, 1), ("train.batch_size", batch_size, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ConfigError(f"{field}: {v!r} is not a positive integer")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ConfigError(f"train.lr: {lr!r} must be > 0")
    return fit(model, data, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
               progress=progress, desc=f"train {getattr(model, 'arch', 'bnn')}",
               after_epoch=model.freeze)
