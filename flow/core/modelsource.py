"""Where a run's network comes from: ``model.arch`` parsed into a :class:`ModelSource`.

``model.arch`` takes four forms: a zoo name (``cnn``, shorthand for ``flow.nn.zoo:cnn``),
``path/to/file.py:factory`` (relative to the config file, or absolute),
``package.module:factory``, or ``path/to/model.onnx`` (a trained QONNX file). Only the syntax is
checked here; :mod:`flow.nn.models` imports and calls factories.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flow.core.errors import ConfigError

ZOO_MODULE = "flow.nn.zoo"


@dataclass(frozen=True)
class ModelSource:
    """Where a run's network comes from: ``kind`` ``factory`` (``module`` is a dotted module or
    a ``.py`` file, ``factory`` the function) or ``qonnx`` (``path`` of the file)."""

    kind: str
    text: str
    module: str | None = None
    factory: str | None = None
    path: Path | None = None

    @property
    def label(self) -> str:
        """Short name for reports: the zoo name, ``file.py:factory``, ``module:factory`` or the
        QONNX file's name."""
        if self.kind == "qonnx":
            return self.path.name
        if self.module == ZOO_MODULE:
            return self.factory
        if self.module.endswith(".py"):
            return f"{Path(self.module).name}:{self.factory}"
        return self.text

    @property
    def trainable(self) -> bool:
        """True for a factory (hetq can train and fine-tune it), False for a QONNX file."""
        return self.kind == "factory"


def parse_arch(arch: str, base: Path | None = None) -> ModelSource:
    """Parse ``model.arch``; relative file paths resolve against ``base`` (the config's folder)
    and become absolute in the returned ``text``. Only the syntax is checked here."""
    a = arch.strip()
    if not a:
        raise ConfigError("model.arch: empty")

    def absolute(p: str) -> Path:
        path = Path(p).expanduser()
        return path if path.is_absolute() or base is None else (base / path).resolve()

    if a.lower().endswith(".onnx"):
        path = absolute(a)
        return ModelSource("qonnx", str(path), path=path)
    if ":" not in a:
        if not a.isidentifier():
            raise ConfigError(f"model.arch: '{arch}' is neither a zoo name, FILE.py:factory, "
                              f"package.module:factory nor a .onnx file")
        return ModelSource("factory", a, ZOO_MODULE, a)
    mod, _, fn = a.rpartition(":")
    if not fn.isidentifier() or not mod:
        raise ConfigError(f"model.arch: '{arch}' does not end in ':factory' (a Python function "
                          f"name)")
    if mod.endswith(".py"):
        path = absolute(mod)
        return ModelSource("factory", f"{path}:{fn}", str(path), fn)
    if not all(p.isidentifier() for p in mod.split(".")):
        raise ConfigError(f"model.arch: '{mod}' is not a Python module name or a .py file")
    return ModelSource("factory", a, mod, fn)
