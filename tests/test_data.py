"""Tests of flow.data: bundled digits splits; CIFAR-10 / MNIST readers on tiny synthetic files."""
from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from flow.data import DATASETS, Dataset, Split, load_dataset, read_cifar10, read_mnist
from flow.errors import DataError


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


def _rows(s: Split) -> set[bytes]:
    return {row.tobytes() for row in s.x.reshape(len(s.x), -1).numpy()}


# ---------------------------------------------------------------- digits / digits32


def test_digits_shapes_ranges_and_sizes(digits: Dataset) -> None:
    assert digits.name == "digits" and digits.num_classes == 10 and digits.input_shape == (1, 8, 8)
    splits = (digits.train, digits.val, digits.test)
    assert sum(len(s.x) for s in splits) == 1797
    assert [len(s.x) for s in splits] == [1258, 180, 359]
    for s in splits:
        assert s.x.dtype == torch.float32 and s.y.dtype == torch.int64
        assert s.x.shape[1:] == (1, 8, 8) and len(s.x) == len(s.y)
        assert float(s.x.min()) >= 0.0 and float(s.x.max()) <= 1.0
        assert int(s.y.min()) == 0 and int(s.y.max()) == 9
        assert torch.equal(s.x * 16, torch.round(s.x * 16))  # on the k/16 grid
        counts = torch.bincount(s.y, minlength=10).float()  # stratified: every class ~ equal share
        assert float(counts.max() - counts.min()) <= 0.1 * len(s.y) + 2


def test_digits_split_is_reproducible_disjoint_and_complete(digits: Dataset) -> None:
    again = load_dataset("digits", seed=0)
    for a, b in zip((digits.train, digits.val, digits.test), (again.train, again.val, again.test)):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    other = load_dataset("digits", seed=1)
    assert not torch.equal(digits.test.x, other.test.x)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    all_x = np.concatenate([s.x.reshape(len(s.x), -1).numpy()
                            for s in (digits.train, digits.val, digits.test)])
    ref = (bunch.images.reshape(len(bunch.images), -1) / 16.0).astype(np.float32)
    order = lambda a: np.lexsort(a.T[::-1])  # noqa: E731 - sort rows to compare as multisets
    assert np.array_equal(all_x[order(all_x)], ref[order(ref)])
    # disjoint: no image (up to duplicates already in the source) appears in two splits
    dup = len(ref) - len({r.tobytes() for r in ref})
    tr, va, te = _rows(digits.train), _rows(digits.val), _rows(digits.test)
    assert len(tr & va) + len(tr & te) + len(va & te) <= dup


def test_digits_fractions_and_limit() -> None:
    d = load_dataset("digits", val_fraction=np.float32(0.2), test_fraction=0.3, limit=np.int64(50))
    assert [len(s.y) for s in (d.train, d.val, d.test)] == [50, 50, 50]
    assert len(set(d.train.y.tolist())) == 10  # the first samples of a class-balanced order
    d = load_dataset("digits", val_fraction=0.2, test_fraction=0.3)
    assert [len(s.y) for s in (d.train, d.val, d.test)] == [899, 359, 539]


def test_digits32_is_nearest_upsampled_digits(digits: Dataset) -> None:
    d32 = load_dataset("digits32")
    assert d32.input_shape == (3, 32, 32)
    for s8, s32 in zip((digits.train, digits.val, digits.test), (d32.train, d32.val, d32.test)):
        assert s32.x.shape == (len(s8.x), 3, 32, 32) and s32.x.dtype == torch.float32
        assert torch.equal(s32.y, s8.y)
        blocks = s32.x.reshape(len(s32.x), 3, 8, 4, 8, 4)
        assert torch.equal(blocks, blocks[:, :, :, :1, :, :1].expand_as(blocks))  # 4x4 constant
        assert torch.equal(blocks[:, :, :, 0, :, 0], s8.x.expand(-1, 3, -1, -1))


@pytest.mark.parametrize("kwargs, field", [
    ({"val_fraction": 0.0}, "data.val_fraction"), ({"test_fraction": 1.0}, "data.test_fraction"),
    ({"val_fraction": 0.5, "test_fraction": 0.5}, "data.val_fraction"),
    ({"val_fraction": float("nan")}, "data.val_fraction"), ({"limit": 0}, "data.limit"),
    ({"val_fraction": 0.0001}, "leave an empty split")])
def test_bad_arguments(kwargs: dict, field: str) -> None:
    with pytest.raises(DataError, match=field):
        load_dataset("digits", **kwargs)


def test_unknown_name_and_missing_root() -> None:
    assert DATASETS == ("digits", "digits32", "cifar10", "mnist")
    with pytest.raises(DataError, match=r"unknown data set 'cifar100' \(known: digits, digits32"):
        load_dataset("cifar100")
    with pytest.raises(DataError, match="data set 'cifar10' needs a folder"):
        load_dataset("cifar10")


# ---------------------------------------------------------------- cifar10


def _cifar_images(n: int, offset: int) -> np.ndarray:
    """n deterministic uint8 images in the official row layout (R plane, G plane, B plane)."""
    pixels = np.arange(3072)[None, :] * 7 + 11 * np.arange(n)[:, None] + 37 * offset
    return (pixels % 256).astype(np.uint8)  # distinct images (for offset, n < 6)


def _write_cifar(folder: Path, n_train: int = 6, n_test: int = 4) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        n = n_test if name == "test_batch" else n_train
        batch = {b"batch_label": name.encode(), b"data": _cifar_images(n, i),
                 b"labels": [(i + j) % 10 for j in range(n)],
                 b"filenames": [f"img{j}.png".encode() for j in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)


def test_read_cifar10_exact_pixels_and_labels(tmp_path: Path) -> None:
    _write_cifar(tmp_path)
    train, test = read_cifar10(tmp_path)
    assert train.x.shape == (30, 3, 32, 32) and test.x.shape == (4, 3, 32, 32)
    assert train.x.dtype == torch.float32 and train.y.dtype == torch.int64
    assert train.y.tolist() == [(i + j) % 10 for i in range(5) for j in range(6)]
    assert test.y.tolist() == [5, 6, 7, 8]
    raw = _cifar_images(6, 1)[2]  # batch 2, image 2 -> train index 8
    for row, col in [(0, 0), (3, 17), (31, 31)]:
        p = row * 32 + col
        rgb = [float(train.x[8, c, row, col]) for c in range(3)]
        assert rgb == [float(np.float32(raw[p + 1024 * c] / 255.0)) for c in range(3)]
    expected = torch.from_numpy(_cifar_images(4, 5)[3] / 255.0).float()
    assert torch.equal(test.x[3].reshape(-1), expected)
    assert len(_rows(train)) == 30  # all test images distinct


def test_cifar10_subfolder_and_load_dataset(tmp_path: Path) -> None:
    _write_cifar(tmp_path / "cifar-10-batches-py")
    train, test = read_cifar10(tmp_path)
    d = load_dataset("cifar10", tmp_path, seed=3, test_fraction=0.9)
    assert d.input_shape == (3, 32, 32) and len(d.val.y) == 3 and len(d.train.y) == 27
    assert torch.equal(d.test.x, test.x) and torch.equal(d.test.y, test.y)
    assert _rows(d.train) | _rows(d.val) == _rows(train) and not _rows(d.train) & _rows(d.val)
    again = load_dataset("cifar10", str(tmp_path), seed=3)
    assert torch.equal(again.val.x, d.val.x)
    small = load_dataset("cifar10", tmp_path, limit=2)
    assert [len(s.y) for s in (small.train, small.val, small.test)] == [2, 2, 2]


def test_cifar10_malformed(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist .*data_batch_1..5 and test_batch"):
        read_cifar10(tmp_path / "nope")
    _write_cifar(tmp_path)
    (tmp_path / "test_batch").unlink()
    with pytest.raises(DataError, match="lacks test_batch"):
        load_dataset("cifar10", tmp_path)
    _write_cifar(tmp_path)
    with open(tmp_path / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(DataError, match=r"data_batch_3' has b'data' of shape \(2, 100\)"):
        read_cifar10(tmp_path)
    with open(tmp_path / "data_batch_3", "wb") as f:
        pickle.dump({"data": _cifar_images(2, 0), "labels": [0, 1]}, f)
    with pytest.raises(DataError, match="expected a dict with keys b'data'"):
        read_cifar10(tmp_path)
    with open(tmp_path / "data_batch_3", "wb") as f:
        pickle.dump({b"data": _cifar_images(2, 0), b"labels": [0]}, f)
    with pytest.raises(DataError, match="1 b'labels'"):
        read_cifar10(tmp_path)
    (tmp_path / "data_batch_3").write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match="unpickling failed"):
        read_cifar10(tmp_path)
    with open(tmp_path / "data_batch_3", "wb") as f:
        pickle.dump({b"data": Path("x"), b"labels": []}, f)  # a non-numpy global is refused
    with pytest.raises(DataError, match="unpickling failed.*not allowed"):
        read_cifar10(tmp_path)


def test_cifar10_legacy_numpy_global_names(tmp_path: Path) -> None:
    """The official files were pickled by old numpy: globals are numpy.core.multiarray.*."""
    _write_cifar(tmp_path)
    blob = (tmp_path / "test_batch").read_bytes()
    assert b"numpy._core.multiarray\n_reconstruct" in blob
    legacy = blob.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    (tmp_path / "test_batch").write_bytes(legacy)
    _, test = read_cifar10(tmp_path)
    expected = torch.from_numpy(_cifar_images(4, 5)[0] / 255.0).float()
    assert torch.equal(test.x[0].reshape(-1), expected)


# ---------------------------------------------------------------- mnist


def _idx_images(images: np.ndarray) -> bytes:
    n, rows, cols = images.shape
    return struct.pack(">IIII", 0x00000803, n, rows, cols) + images.astype(np.uint8).tobytes()


def _idx_labels(labels: list[int]) -> bytes:
    return struct.pack(">II", 0x00000801, len(labels)) + bytes(labels)


def _mnist_sets() -> dict[str, np.ndarray | list[int]]:
    rng = np.random.default_rng(7)
    return {"train-images-idx3-ubyte": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
            "train-labels-idx1-ubyte": [j % 10 for j in range(12)],
            "t10k-images-idx3-ubyte": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
            "t10k-labels-idx1-ubyte": [9, 0, 4]}


def _write_mnist(folder: Path, gz: bool) -> dict[str, np.ndarray | list[int]]:
    sets = _mnist_sets()
    for name, value in sets.items():
        blob = _idx_images(value) if "images" in name else _idx_labels(value)
        (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(blob) if gz else blob)
    return sets


@pytest.mark.parametrize("gz", [False, True])
def test_read_mnist_exact(tmp_path: Path, gz: bool) -> None:
    sets = _write_mnist(tmp_path, gz)
    train, test = read_mnist(tmp_path)
    assert train.x.shape == (12, 1, 28, 28) and test.x.shape == (3, 1, 28, 28)
    assert train.x.dtype == torch.float32 and test.y.dtype == torch.int64
    assert train.y.tolist() == sets["train-labels-idx1-ubyte"] and test.y.tolist() == [9, 0, 4]
    ref = torch.from_numpy(sets["t10k-images-idx3-ubyte"][:, None] / 255.0).float()
    assert torch.equal(test.x, ref)
    pixel = sets["train-images-idx3-ubyte"][5, 3, 27]
    assert float(train.x[5, 0, 3, 27]) == float(np.float32(pixel / 255))
    d = load_dataset("mnist", tmp_path, val_fraction=0.25)
    assert d.input_shape == (1, 28, 28)
    assert [len(d.train.y), len(d.val.y), len(d.test.y)] == [9, 3, 3]


def test_mnist_malformed(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist .*train-images-idx3-ubyte"):
        read_mnist(tmp_path / "missing")
    sets = _write_mnist(tmp_path, gz=False)
    bad = struct.pack(">IIII", 0x1234, 12, 28, 28) + bytes(12 * 28 * 28)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(bad)
    with pytest.raises(DataError, match=r"is not an MNIST idx image file \(magic 0x00001234, "
                                        r"expected 0x00000803\)"):
        read_mnist(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx_images(sets["train-images-idx3-ubyte"]))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_labels([1, 2]))
    with pytest.raises(DataError, match="holds 3 images but t10k-labels-idx1-ubyte holds 2 labels"):
        read_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_labels([1, 2, 3])[:-1])
    with pytest.raises(DataError, match="holds 2 data bytes"):
        read_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="lacks t10k-labels-idx1-ubyte"):
        load_dataset("mnist", tmp_path)
    for blob in (b"\x1f\x8b garbage", gzip.compress(_idx_labels([1, 2, 3]))[:-12]):
        (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(blob)
        with pytest.raises(DataError, match="cannot be read"):
            read_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"")
    with pytest.raises(DataError, match=r"idx label file \(magic none"):
        read_mnist(tmp_path)
