"""The network of a run: a factory named by ``model.arch``, or a trained QONNX file.

``model.arch`` takes four forms, all resolved by :func:`parse_arch`:

- ``cnn``: a name of hetq's zoo, shorthand for ``flow.nn.zoo:cnn``;
- ``path/to/file.py:factory``: a function in a Python file (relative to the config file, or
  absolute);
- ``package.module:factory``: a function in an importable module;
- ``path/to/model.onnx``: a trained QONNX file (``hetq import``); nothing is trained.

A factory returns a ``torch.nn.Module`` built from standard Brevitas layers (docs/byo.md). hetq
calls it with ``model.kwargs``, plus ``input_shape`` (C, H, W) and ``num_classes`` when its
signature names them, and ``width``, ``act_bits`` and ``input_bits`` when the config sets them.
Then it sets the per-layer weight bit-widths on the layers through Brevitas's own API (the
quantizer's injector ``let(bit_width=...)`` and ``init_tensor_quant``). Layers are named by their
module paths (``features.0``, ``classifier.fc1``).
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from flow.core.errors import ConfigError
from flow.core.modelsource import ZOO_MODULE, ModelSource

MIN_BITS, MAX_BITS = 2, 16
OPTIONAL_ARGS = ("width", "act_bits", "input_bits")


def _import_file(path: Path):
    """Import a Python file as a module of its own (named after its path, so two files with the
    same name do not collide)."""
    if not path.is_file():
        raise ConfigError(f"model.arch: model file '{path}' does not exist")
    name = "hetq_user_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - the user's file can raise anything
        del sys.modules[name]
        first = (str(e).strip().splitlines() or [""])[0]
        raise ConfigError(f"model.arch: importing '{path}' failed ({type(e).__name__}: "
                          f"{first})") from None
    return module


def load_factory(src: ModelSource) -> Callable:
    """The factory function ``src`` names; a module or function that cannot be imported is a
    one-line ConfigError."""
    if src.kind != "factory":
        raise ConfigError(f"model.arch: '{src.text}' is a QONNX file, not a factory")
    if src.module.endswith(".py"):
        module = _import_file(Path(src.module))
    else:
        try:
            module = importlib.import_module(src.module)
        except Exception as e:  # noqa: BLE001
            first = (str(e).strip().splitlines() or [""])[0]
            raise ConfigError(f"model.arch: cannot import '{src.module}' ({type(e).__name__}: "
                              f"{first})") from None
    fn = getattr(module, src.factory, None)
    if src.module == ZOO_MODULE and src.factory not in getattr(module, "FACTORIES", {}):
        known = ", ".join(module.FACTORIES)
        raise ConfigError(f"model.arch: unknown model '{src.factory}' (zoo: {known}; or give "
                          f"FILE.py:factory, package.module:factory or a .onnx file)")
    if not callable(fn):
        raise ConfigError(f"model.arch: '{src.module}' has no function '{src.factory}'")
    return fn


def _accepts(fn: Callable, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD
                                 for p in params.values())


def call_factory(src: ModelSource, kwargs: Mapping, input_shape: tuple[int, int, int],
                 num_classes: int, optional: Mapping[str, object]):
    """Call the factory and check that it returns a ``torch.nn.Module``."""
    import torch
    fn = load_factory(src)
    args = dict(kwargs)
    for name, value in (("input_shape", tuple(input_shape)), ("num_classes", num_classes)):
        if name not in args and _accepts(fn, name):
            args[name] = value
    for name, value in optional.items():
        if value is None:
            continue
        if name in kwargs:
            raise ConfigError(f"model.{name}: also given in model.kwargs; give it once")
        if not _accepts(fn, name):
            raise ConfigError(f"model.{name}: factory '{src.text}' takes no argument "
                              f"'{name}' (pass the factory's own arguments in model.kwargs)")
        args[name] = value
    try:
        net = fn(**args)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's factory can raise anything
        first = (str(e).strip().splitlines() or [""])[0]
        raise ConfigError(f"model.kwargs: factory '{src.text}' failed with "
                          f"{type(e).__name__}: {first}") from None
    if not isinstance(net, torch.nn.Module):
        raise ConfigError(f"model.arch: factory '{src.text}' returned {type(net).__name__}, "
                          f"not a torch.nn.Module")
    return net


def weight_layers(module) -> dict[str, object]:
    """The Brevitas weight layers (QuantConv2d, QuantLinear...) of ``module`` by module path."""
    from brevitas.nn.quant_layer import QuantWeightBiasInputOutputLayer
    return {name: m for name, m in module.named_modules()
            if isinstance(m, QuantWeightBiasInputOutputLayer)}


def weight_bit_width(layer) -> int:
    """The layer's weight bit-width (1 for binary weights)."""
    return int(round(float(layer.weight_quant.bit_width().detach())))


def set_weight_bits(module, bits: Mapping[str, int], default: int | None = None,
                    field: str = "model.weight_bits") -> dict[str, int]:
    """Set weight bit-widths: ``bits`` per layer, ``default`` for the other non-binary layers
    (None keeps the module's own). Returns every layer's bit-width afterwards.

    Uses Brevitas's API: the weight quantizer's injector takes ``bit_width`` and
    ``init_tensor_quant`` rebuilds it, keeping its state. A layer whose quantizer does not take
    the new width (binary weights, a learned bit-width) is a ConfigError naming it.
    """
    layers = weight_layers(module)
    unknown = sorted(set(bits) - set(layers))
    if unknown:
        raise ConfigError(f"{field}: unknown layer '{unknown[0]}' (layers: "
                          f"{', '.join(layers) or 'none'})")
    for name, layer in layers.items():
        want = bits.get(name)
        if want is None and default is not None and weight_bit_width(layer) > 1:
            want = default
        key = f"{field}.{name}" if name in bits else "model.default_weight_bits"
        if want is None:
            continue
        if isinstance(want, bool) or not isinstance(want, int) or not MIN_BITS <= want <= MAX_BITS:
            raise ConfigError(f"{key}: bit-width {want!r} is outside {MIN_BITS}..{MAX_BITS}")
        if weight_bit_width(layer) == want:
            continue
        proxy = layer.weight_quant
        proxy.quant_injector = proxy.quant_injector.let(bit_width=want)
        proxy.init_tensor_quant(preserve_state_dict=True)
        got = weight_bit_width(layer)
        if got != want:
            kind = type(proxy.tensor_quant).__name__
            raise ConfigError(f"{key}: layer '{name}' has a weight quantizer ({kind}) that keeps "
                              f"{got} bits and cannot take {want}; give this layer a fixed-point "
                              f"quantizer such as Int8WeightPerTensorFixedPoint or leave its "
                              f"bit-width alone")
    return {name: weight_bit_width(layer) for name, layer in layers.items()}
