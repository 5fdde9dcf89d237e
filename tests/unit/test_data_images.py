"""Digits split and IDX (MNIST) reading."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from scaletrain.data import images
from scaletrain.errors import UserError

_CODES = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype(">i2"): 0x0B,
          np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}


def _idx_bytes(a: np.ndarray, dtype: str) -> bytes:
    dt = np.dtype(dtype)
    header = struct.pack(">BBBB", 0, 0, _CODES[dt], a.ndim) + struct.pack(f">{a.ndim}I", *a.shape)
    return header + a.astype(dt).tobytes()


def _write_idx(path: Path, a: np.ndarray, dtype: str = "u1", gz: bool = False) -> Path:
    data = _idx_bytes(a, dtype)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def test_digits_split() -> None:
    d = images.load_digits_split(0.2, seed=0)
    assert d.x_train.shape[1] == d.x_val.shape[1] == d.input_dim == 64
    assert len(d.x_train) + len(d.x_val) == 1797 and abs(len(d.x_val) - 360) <= 1
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert 0.0 <= d.x_train.min() and d.x_train.max() <= 1.0 and d.num_classes == 10
    # Stratified: every class keeps roughly its share in val.
    frac = np.bincount(d.y_val, minlength=10) / np.bincount(np.concatenate([d.y_train, d.y_val]))
    assert np.all(np.abs(frac - 0.2) < 0.03)
    assert d.fingerprint() == images.load_digits_split(0.2, seed=0).fingerprint()
    assert d.fingerprint() != images.load_digits_split(0.2, seed=1).fingerprint()


def test_shipped_digits_are_uci_optdigits_test_set() -> None:
    """The 1,797 rows scikit-learn's load_digits reads (its class counts and first image), without
    scikit-learn; the split puts every sample on one side only."""
    x, y = images.read_digits()
    assert x.shape == (1797, 64) and y.dtype == np.int64
    assert np.bincount(y).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert (x[0] * 16).astype(int).reshape(8, 8)[1].tolist() == [0, 0, 13, 15, 10, 15, 5, 0]
    assert y[:5].tolist() == [0, 1, 2, 3, 4]
    train, val = images.stratified_split(y, 0.2, seed=3)
    assert np.intersect1d(train, val).size == 0 and np.union1d(train, val).tolist() == list(range(1797))


@pytest.mark.parametrize("dtype", ["u1", "i1", ">i2", ">i4", ">f4", ">f8"])
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path: Path, dtype: str, gz: bool) -> None:
    a = (np.arange(2 * 3 * 4).reshape(2, 3, 4) - (0 if dtype == "u1" else 7)).astype(dtype)
    # Plain name even when gzipped: detection is by content, not extension.
    got = images.read_idx(_write_idx(tmp_path / "x.idx", a, dtype, gz))
    assert got.shape == a.shape and got.dtype.isnative
    np.testing.assert_array_equal(got, a)


def test_read_idx_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad-magic"
    bad.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(UserError, match="bad-magic"):
        images.read_idx(bad)
    data = _idx_bytes(np.zeros((4, 5), np.uint8), "u1")
    trunc = tmp_path / "trunc"
    trunc.write_bytes(data[:-3])
    with pytest.raises(UserError, match="trunc.*truncated"):
        images.read_idx(trunc)
    trunc_gz = tmp_path / "trunc.gz"
    trunc_gz.write_bytes(gzip.compress(data)[:-10])
    with pytest.raises(UserError, match="trunc.gz"):
        images.read_idx(trunc_gz)
    long = tmp_path / "long"
    long.write_bytes(data + b"\x00")
    with pytest.raises(UserError, match="long"):
        images.read_idx(long)
    with pytest.raises(UserError, match="absent"):
        images.read_idx(tmp_path / "absent")


def _fake_mnist(d: Path, n_train: int = 20, n_test: int = 10, test_labels: int | None = None) -> None:
    rng = np.random.default_rng(0)
    _write_idx(d / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (n_train, 28, 28)), gz=True)
    _write_idx(d / "train-labels.idx1-ubyte", np.arange(n_train) % 10)
    _write_idx(d / "t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, 28, 28)))
    _write_idx(d / "t10k-labels-idx1-ubyte.gz", np.arange(test_labels or n_test) % 10, gz=True)


def test_load_mnist(tmp_path: Path) -> None:
    _fake_mnist(tmp_path)
    d = images.load_mnist(tmp_path)
    assert d.x_train.shape == (20, 784) and d.x_val.shape == (10, 784)
    assert d.x_train.dtype == np.float32 and 0 <= d.x_train.min() and d.x_train.max() <= 1
    assert d.y_train.dtype == np.int64 and d.num_classes == 10 and d.input_dim == 784
    np.testing.assert_array_equal(d.y_train, np.arange(20) % 10)


def test_load_mnist_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte"):
        images.load_mnist(tmp_path)
    _fake_mnist(tmp_path, test_labels=9)
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte.gz.*9 labels"):
        images.load_mnist(tmp_path)
