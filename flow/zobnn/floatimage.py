"""Float-parameter memories: the fault model of networks that store IEEE-754 float32 values.

Binary networks keep floating-point parameters (batch-norm, RPReLU, RSign thresholds, scales, the
float first and last layers; the ZOBNN paper's S-type layers). Here every stored parameter of such
a network becomes one memory of the same :class:`~flow.core.image.MemoryImage` form the fault
campaigns already use:

- a float parameter is a memory of 32-bit words, the IEEE-754 binary32 pattern of each value
  (bit 31 sign, bits 30..23 exponent, 22..0 fraction), so a flip of an exponent bit can turn
  1.0 into 2^128 (inf) exactly as in the hardware's memory;
- a binary weight is a 1-bit word (1 for +1, 0 for -1).

:class:`TorchExecutor` runs the PyTorch model and, when a word changes, writes the decoded value
into the very tensor the forward pass reads, so :class:`~flow.reliability.faults.Injector`,
:class:`~flow.reliability.faults.SeuSampler` and :func:`~flow.reliability.campaign.run_campaign`
work unchanged: same
seeded trials, same store, same summaries.

A model provides ``stored_parameters()``: a list of objects with ``name``, ``layer``, ``kind``,
``tensor`` (the tensor its eval forward reads) and ``binary``.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from flow.core.errors import FaultMapError
from flow.core.image import Memory, MemoryImage, decode, encode
from flow.core.precision import Fixed

FLOAT_KINDS = ("weight", "bias", "bn", "rprelu", "rsign", "scale")
BINARY = Fixed(bits=1, signed=True, bipolar=True)


@dataclass(frozen=True)
class Float32:
    """IEEE-754 binary32, the stored format of a float parameter (32 bits, sign at bit 31)."""

    bits: int = 32
    signed: bool = True


FLOAT32 = Float32()


def float_words(values: np.ndarray) -> np.ndarray:
    """float values -> their binary32 bit patterns (int64 words, 0 .. 2^32 - 1)."""
    return np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.int64)


def float_values(words: np.ndarray) -> np.ndarray:
    """binary32 bit patterns (int64 words) -> float32 values (inf and NaN included)."""
    return np.asarray(words, dtype=np.int64).astype(np.uint32).view(np.float32)


def binary_words(values: np.ndarray) -> np.ndarray:
    """+-1 values -> 1-bit words (1 for +1, 0 for -1)."""
    v = np.asarray(values)
    if not np.isin(v, (-1.0, 1.0)).all():
        raise FaultMapError("binary weight: values other than -1 and +1 cannot be stored in 1 bit")
    return (v > 0).astype(np.int64)


class FloatImage(MemoryImage):
    """The stored parameters of a float-parameter network as memories of bit patterns."""

    KINDS = FLOAT_KINDS

    def __init__(self, memories: Iterable[Memory], tensors: dict[str, torch.Tensor]) -> None:
        super().__init__(memories)
        self.tensors = tensors

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> "FloatImage":
        """One memory per entry of ``model.stored_parameters()`` (read from its current values).

        A parameter named in the model's ``stored_formats`` (a ZOBNN network,
        :func:`flow.zobnn.quant.zobnn`) holds integer codes and is stored as two's complement words
        of
        that :class:`Fixed` format; the others are float32 (or 1-bit binary) words.
        """
        formats = getattr(model, "stored_formats", {})
        mems, tensors = [], {}
        for p in model.stored_parameters():
            if p.kind not in FLOAT_KINDS:
                raise FaultMapError(f"stored parameter '{p.name}': unknown kind '{p.kind}' "
                                    f"(known: {', '.join(FLOAT_KINDS)})")
            if p.name in tensors:
                raise FaultMapError(f"stored parameter '{p.name}' is listed twice")
            vals = p.tensor.detach().cpu().numpy().reshape(-1)
            if p.binary:
                mem = Memory(p.name, p.layer, p.kind, BINARY, False, 1, tuple(p.tensor.shape),
                             binary_words(vals))
            elif p.name in formats:
                fmt = formats[p.name]
                codes = vals.astype(np.int64)
                lo, hi = -(1 << (fmt.bits - 1)), (1 << (fmt.bits - 1)) - 1
                if not np.array_equal(codes, vals) or codes.min() < lo or codes.max() > hi:
                    raise FaultMapError(f"stored parameter '{p.name}': values are not "
                                        f"{fmt.bits}-bit integers")
                mem = Memory(p.name, p.layer, p.kind, fmt, False, fmt.bits,
                             tuple(p.tensor.shape), encode(codes, fmt, False))
            else:
                mem = Memory(p.name, p.layer, p.kind, FLOAT32, False, 32,    # type: ignore[arg-type]
                             tuple(p.tensor.shape), float_words(vals))
            mems.append(mem)
            tensors[p.name] = p.tensor
        return cls(mems, tensors)

    def values(self, name: str, idx: np.ndarray | None = None) -> np.ndarray:
        """Decoded values of memory ``name`` (all, or the words ``idx``), as float32."""
        m = self.memory(name)
        w = m.words if idx is None else m.words[idx]
        if isinstance(m.fmt, Float32):
            return float_values(w)
        if m.fmt.bipolar:
            return (2.0 * w - 1.0).astype(np.float32)
        return decode(w, m.fmt, False).astype(np.float32)


class TorchExecutor:
    """Runs a PyTorch model whose stored parameters live in a :class:`FloatImage`.

    Offers what the campaign machinery asks of an executor (``device``, ``quantize_input``,
    ``run``, ``predict``, ``correct``, ``update``); inputs stay floats.
    """

    def __init__(self, model: torch.nn.Module, image: FloatImage,
                 device: str | torch.device | None = None) -> None:
        self.device = torch.device(device or "cpu")
        self.model = model.to(self.device).eval()
        self.image = image
        # the image was built from this model: its tensors are the ones the forward reads
        self._flat = {n: t.data.view(-1) for n, t in image.tensors.items()}

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """The input as the model takes it (float, on the device)."""
        return x.to(self.device, torch.float32)

    def remember(self, x: torch.Tensor, quantized: bool = True) -> None:
        """The executor protocol's clean-activation cache: the float model always runs in full
        (its faults may sit in any parameter), so there is nothing to remember."""

    @torch.no_grad()
    def run(self, x: torch.Tensor, quantized: bool = True) -> torch.Tensor:
        """Logits of a batch."""
        return self.model(x.to(self.device))

    def predict(self, x: torch.Tensor, quantized: bool = True) -> torch.Tensor:
        """Predicted classes of a batch (a NaN logit counts as the largest, as torch.argmax)."""
        return self.run(x).argmax(1)

    def correct(self, x: torch.Tensor, y: torch.Tensor) -> int:
        """Correctly classified images of a batch."""
        return int((self.predict(self.quantize_input(x)).cpu() == y.cpu()).sum())

    @torch.no_grad()
    def update(self, name: str, idx: np.ndarray, stored: np.ndarray | None = None) -> None:
        """Write the decoded values of words ``idx`` of memory ``name`` into the model
        (``stored``, the words' stored values, is read from the image here)."""
        idx = np.asarray(idx, dtype=np.int64)
        vals = torch.from_numpy(self.image.values(name, idx).copy()).to(self.device)
        self._flat[name][torch.from_numpy(idx).to(self.device)] = vals
