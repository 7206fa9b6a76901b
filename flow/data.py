"""Data sets of hetq: scikit-learn digits (bundled) and CIFAR-10 / MNIST read from local files.

Nothing is ever downloaded. Every image tensor is float32 NCHW with values in [0, 1], every label
tensor int64. A bad folder or file raises :class:`~flow.errors.DataError` with a one-line message.
"""
from __future__ import annotations

import gzip
import numbers
import pickle
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flow.errors import DataError

DATASETS: tuple[str, ...] = ("digits", "digits32", "cifar10", "mnist")
_CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
_CIFAR_EXPECT = "expected the CIFAR-10 python batches data_batch_1..5 and test_batch"
_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_MNIST_EXPECT = "expected the MNIST idx files " + ", ".join(_MNIST_FILES) + " (optionally .gz)"


@dataclass(frozen=True)
class Split:
    """One split of a data set: images ``x`` (float32, NCHW, in [0, 1]) and labels ``y`` (int64)."""

    x: torch.Tensor
    y: torch.Tensor


@dataclass(frozen=True)
class Dataset:
    """A data set with its train/val/test splits, class count and input shape ``(C, H, W)``."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, int, int]


def _to_split(x: np.ndarray, y: np.ndarray, scale: float) -> Split:
    """Integer pixels ``x`` in 0..scale -> float32 ``x / scale`` in [0, 1]; labels -> int64."""
    x32 = np.array(x, dtype=np.float32, order="C")  # always a fresh copy, divided in place
    x32 /= np.float32(scale)
    return Split(torch.from_numpy(x32), torch.from_numpy(np.array(y, dtype=np.int64)))


def _stratified_order(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A seeded permutation in which every class is spread evenly, so any slice is ~stratified."""
    perm = rng.permutation(len(y))
    ys, key = y[perm], np.zeros(len(y))
    for c in np.unique(ys):
        mask = ys == c
        key[mask] = (np.arange(int(mask.sum())) + 0.5) / mask.sum()
    return perm[np.argsort(key, kind="stable")]


def _carve(y: np.ndarray, rng: np.random.Generator, fractions: dict[str, float],
           what: str) -> list[np.ndarray]:
    """Cut a seeded stratified order of ``y`` into [rest, one slice per fraction], none empty."""
    order, sizes = _stratified_order(y, rng), [round(f * len(y)) for f in fractions.values()]
    if min(sizes) < 1 or sum(sizes) >= len(y):
        names, values = "/data.".join(fractions), "/".join(map(repr, fractions.values()))
        raise DataError(f"data.{names}: {values} leave an empty split of the {len(y)} {what}")
    ends = np.cumsum(sizes)
    return [order[ends[-1]:]] + [order[e - n:e] for n, e in zip(sizes, ends)]


def _check_args(val_fraction: float, test_fraction: float, limit: int | None, digits: bool) -> None:
    for field, v in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not isinstance(v, numbers.Real) or isinstance(v, bool) or not 0.0 < v < 1.0:
            raise DataError(f"data.{field}: {v!r} is not a fraction in (0, 1)")
    if digits and val_fraction + test_fraction >= 1.0:
        raise DataError(f"data.val_fraction + data.test_fraction: {val_fraction!r} + "
                        f"{test_fraction!r} >= 1 (expected < 1 so a training split remains)")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, numbers.Integral)
                              or limit < 1):
        raise DataError(f"data.limit: {limit!r} is not a positive integer (or none)")


def _upsample32(s: Split) -> Split:
    """8x8 -> 32x32 by nearest neighbour (each pixel a 4x4 block), 1 -> 3 channels.

    Values stay exactly on the k/16 grid, as the network quantizes inputs to a fixed-point grid.
    """
    x = s.x.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)
    return Split(x.expand(-1, 3, -1, -1).contiguous(), s.y)


class _NumpyUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays: a CIFAR batch must not run arbitrary code."""

    _ALLOWED = {"_reconstruct", "ndarray", "dtype", "scalar", "_frombuffer"}

    def find_class(self, module: str, name: str) -> object:
        if (module, name) == ("_codecs", "encode") or (
                module.split(".")[0] == "numpy" and name in self._ALLOWED):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _NumpyUnpickler(f, encoding="bytes").load()
    except Exception as exc:  # unpickling can raise almost anything on a corrupt file
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise DataError(f"data.root: '{path}' is not a CIFAR-10 python batch "
                        f"(unpickling failed: {detail})") from exc
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        found = sorted(map(repr, batch)) if isinstance(batch, dict) else type(batch).__name__
        raise DataError(f"data.root: '{path}' is not a CIFAR-10 python batch (expected a dict with "
                        f"keys b'data' and b'labels', found {found})")
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"data.root: '{path}' has b'data' of shape {data.shape} dtype {data.dtype}"
                        " (expected uint8 N x 3072)")
    if labels.shape != (data.shape[0],) or labels.dtype.kind not in "iu" or (
            labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise DataError(f"data.root: '{path}' has {labels.size} b'labels' (dtype {labels.dtype})"
                        f" for {data.shape[0]} images (expected one label in 0..9 per image)")
    return data.reshape(-1, 3, 32, 32), labels


def _folder(root: str | Path, expect: str) -> Path:
    folder = Path(root)
    if not folder.is_dir():
        raise DataError(f"data.root: folder '{folder}' does not exist ({expect})")
    return folder


def _cifar_raw(root: str | Path) -> list[tuple[np.ndarray, np.ndarray]]:
    folder = _folder(root, _CIFAR_EXPECT)
    if not (folder / "test_batch").is_file() and (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"
    missing = [n for n in _CIFAR_FILES if not (folder / n).is_file()]
    if missing:
        raise DataError(f"data.root: folder '{folder}' lacks {', '.join(missing)} "
                        f"({_CIFAR_EXPECT})")
    parts = [_cifar_batch(folder / n) for n in _CIFAR_FILES]
    return [(np.concatenate([p[0] for p in parts[:5]]), np.concatenate([p[1] for p in parts[:5]])),
            parts[5]]


def read_cifar10(root: str | Path) -> tuple[Split, Split]:
    """Read (train, test) from the official CIFAR-10 python batches in ``root``.

    ``root`` holds ``data_batch_1`` .. ``data_batch_5`` and ``test_batch`` directly or inside a
    ``cifar-10-batches-py/`` subfolder. Train is the five batches concatenated in file order.
    Only numpy arrays are unpickled (any other global is refused), so no code can run.
    """
    (tx, ty), (sx, sy) = _cifar_raw(root)
    return _to_split(tx, ty, 255.0), _to_split(sx, sy, 255.0)


def _idx_file(folder: Path, name: str, magic: int) -> np.ndarray:
    path = folder / name if (folder / name).is_file() else folder / (name + ".gz")
    if not path.is_file():
        raise DataError(f"data.root: folder '{folder}' lacks {name} ({_MNIST_EXPECT})")
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"data.root: '{path}' cannot be read ({exc})") from exc
    found = f"0x{struct.unpack('>I', raw[:4])[0]:08x}" if len(raw) >= 4 else "none (empty file)"
    if found != f"0x{magic:08x}":
        kind = "image" if magic == 0x00000803 else "label"
        raise DataError(f"data.root: '{path}' is not an MNIST idx {kind} file "
                        f"(magic {found}, expected 0x{magic:08x})")
    ndim = magic & 0xFF  # 3 for images (N, rows, cols), 1 for labels (N)
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", raw[4:header]) if len(raw) >= header else ()
    if len(dims) != ndim or len(raw) - header != int(np.prod(dims)):
        raise DataError(f"data.root: '{path}' holds {max(len(raw) - header, 0)} data bytes "
                        f"(expected {int(np.prod(dims)) if dims else '?'} for dims {dims})")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _mnist_raw(root: str | Path) -> list[tuple[np.ndarray, np.ndarray]]:
    folder = _folder(root, _MNIST_EXPECT)
    splits = []
    for images_name, labels_name in (_MNIST_FILES[:2], _MNIST_FILES[2:]):
        images = _idx_file(folder, images_name, 0x00000803)
        labels = _idx_file(folder, labels_name, 0x00000801)
        if len(images) != len(labels):
            raise DataError(f"data.root: {images_name} holds {len(images)} images but "
                            f"{labels_name} holds {len(labels)} labels (expected equal counts)")
        if labels.size and labels.max() > 9:
            raise DataError(f"data.root: {labels_name} holds label {labels.max()} (expected 0..9)")
        splits.append((images[:, None], labels))
    return splits


def read_mnist(root: str | Path) -> tuple[Split, Split]:
    """Read (train, test) from the MNIST idx files in ``root`` (each optionally gzipped)."""
    (tx, ty), (sx, sy) = _mnist_raw(root)
    return _to_split(tx, ty, 255.0), _to_split(sx, sy, 255.0)


def load_dataset(name: str, root: str | Path | None = None, *, seed: int = 0,
                 val_fraction: float = 0.1, test_fraction: float = 0.2,
                 limit: int | None = None) -> Dataset:
    """Load data set ``name`` (one of :data:`DATASETS`) with a seeded, reproducible split.

    digits/digits32: a stratified train/val/test split of the 1,797 bundled images, with
    ``val_fraction`` and ``test_fraction`` of the whole set; ``root`` is ignored. cifar10/mnist:
    ``root`` is the folder of the official files; val is ``val_fraction`` of the official train
    set, test is the official test set (``test_fraction`` is ignored). The same ``seed`` always
    gives the same split. ``limit`` keeps at most that many samples of each split (the first ones
    of a seeded, class-balanced order).
    """
    if name not in DATASETS:
        raise DataError(f"data.name: unknown data set {name!r} (known: {', '.join(DATASETS)})")
    _check_args(val_fraction, test_fraction, limit, digits=name.startswith("digits"))
    rng = np.random.default_rng(seed)
    if name in ("digits", "digits32"):
        from sklearn.datasets import load_digits  # bundled with scikit-learn, never downloads

        bunch = load_digits()
        x, y = bunch.images.reshape(-1, 1, 8, 8), bunch.target
        fractions = {"test_fraction": test_fraction, "val_fraction": val_fraction}
        train_idx, test_idx, val_idx = _carve(y, rng, fractions, "digits images")
        parts, scale = [(x, y, train_idx), (x, y, val_idx), (x, y, test_idx)], 16.0
    else:
        if root is None:
            raise DataError(f"data.root: data set {name!r} needs a folder (none given)")
        (tx, ty), (sx, sy) = (_cifar_raw if name == "cifar10" else _mnist_raw)(root)
        train_idx, val_idx = _carve(ty, rng, {"val_fraction": val_fraction}, f"{name} train images")
        test_idx = np.arange(len(sy)) if limit is None else _stratified_order(sy, rng)
        parts, scale = [(tx, ty, train_idx), (tx, ty, val_idx), (sx, sy, test_idx)], 255.0
    train, val, test = (_to_split(x[i[:limit]], y[i[:limit]], scale) for x, y, i in parts)
    if name == "digits32":
        train, val, test = _upsample32(train), _upsample32(val), _upsample32(test)
    c, h, w = (int(d) for d in train.x.shape[1:])
    return Dataset(name, train, val, test, 10, (c, h, w))
