"""Image classification data: the 8x8 digits (shipped as package data) and MNIST in IDX format."""
from __future__ import annotations

import gzip
import io
import struct
import zlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xxhash

from scaletrain.errors import UserError

# IDX type codes -> big-endian numpy dtypes.
_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
_MNIST = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "val_images": "t10k-images-idx3-ubyte",
    "val_labels": "t10k-labels-idx1-ubyte",
}


@dataclass
class ImageData:
    """Flattened float32 images in [0, 1] with int64 labels, split train/val."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    num_classes: int
    input_dim: int
    name: str

    def fingerprint(self) -> str:
        """xxh3_128 of the arrays (shape, dtype and bytes)."""
        h = xxhash.xxh3_128()
        for a in (self.x_train, self.y_train, self.x_val, self.y_val):
            h.update(f"{a.dtype.str}{a.shape}".encode("ascii"))
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()


# The UCI optdigits test set, as scikit-learn ships it (see optdigits.md beside it: CC BY 4.0).
DIGITS_FILE = "optdigits.csv.gz"


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """(pixels float32 in [0, 1], shape (1797, 64); labels int64) of the shipped 8x8 digits."""
    from importlib import resources

    raw = (resources.files("scaletrain.data") / DIGITS_FILE).read_bytes()
    table = np.loadtxt(io.BytesIO(gzip.decompress(raw)), delimiter=",", dtype=np.int64)
    return (table[:, :-1] / 16.0).astype(np.float32), table[:, -1].copy()  # pixel counts are 0..16


def stratified_split(y: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, val indices), sorted: each class gives round(val_fraction x its count) of its
    samples, drawn by a seeded generator, to validation (at least one, and at least one stays)."""
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        take = min(max(1, round(val_fraction * len(members))), len(members) - 1)
        val.append(rng.permutation(members)[:take])
    val_idx = np.sort(np.concatenate(val)) if val else np.array([], dtype=np.int64)
    train_idx = np.setdiff1d(np.arange(len(y)), val_idx)
    return train_idx, val_idx


def load_digits_split(val_fraction: float = 0.2, seed: int = 0) -> ImageData:
    """The 8x8 digits (1797 images, no download), stratified deterministic split."""
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"val_fraction must be in (0, 1), got {val_fraction}")
    x, y = read_digits()
    train_idx, val_idx = stratified_split(y, val_fraction, seed)
    return ImageData(
        x_train=np.ascontiguousarray(x[train_idx]),
        y_train=np.ascontiguousarray(y[train_idx]),
        x_val=np.ascontiguousarray(x[val_idx]),
        y_val=np.ascontiguousarray(y[val_idx]),
        num_classes=10,
        input_dim=x.shape[1],
        name="digits",
    )


def read_idx(path: str | Path) -> np.ndarray:
    """Array from an IDX file (MNIST format), plain or gzip-compressed (detected by content)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read IDX file {path}: {e.strerror or e}") from None
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise UserError(f"IDX file {path} is a corrupt gzip file: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise UserError(f"{path} is not an IDX file (bad magic {raw[:4].hex() or 'empty'})")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"IDX file {path} is truncated: header needs {header} bytes, has {len(raw)}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    actual = len(raw) - header
    if actual != expected:
        what = "truncated" if actual < expected else "longer than its header says"
        raise UserError(
            f"IDX file {path} is {what}: dims {list(dims)} need {expected} data bytes, has {actual}"
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))  # native byte order, writable copy


def _find(dir: Path, base: str) -> Path | None:
    dotted = base.replace("-idx", ".idx")
    for name in (base, base + ".gz", dotted, dotted + ".gz"):
        if (dir / name).is_file():
            return dir / name
    return None


def _images(path: Path) -> np.ndarray:
    a = read_idx(path)
    if a.ndim != 3:
        raise UserError(f"MNIST image file {path} has {a.ndim} dimensions, expected 3 (N, H, W)")
    return (a.reshape(len(a), -1).astype(np.float32) / 255.0).astype(np.float32)


def _labels(path: Path, count: int, images: Path) -> np.ndarray:
    a = read_idx(path)
    if a.ndim != 1:
        raise UserError(f"MNIST label file {path} has {a.ndim} dimensions, expected 1")
    if len(a) != count:
        raise UserError(f"MNIST label file {path} has {len(a)} labels but {images} has {count} images")
    if len(a) and a.min() < 0:
        raise UserError(f"MNIST label file {path} contains negative labels")
    return a.astype(np.int64)


def load_mnist(dir: str | Path) -> ImageData:
    """MNIST (or same-format data) from the four standard IDX files; t10k becomes val."""
    dir = Path(dir)
    found = {key: _find(dir, base) for key, base in _MNIST.items()}
    missing = [_MNIST[k] for k, p in found.items() if p is None]
    if missing:
        raise UserError(
            f"MNIST directory {dir} lacks {', '.join(missing)} (each may also end in .gz)"
        )
    paths = {k: p for k, p in found.items() if p is not None}
    x_train = _images(paths["train_images"])
    x_val = _images(paths["val_images"])
    if x_train.shape[1] != x_val.shape[1]:
        raise UserError(
            f"MNIST images differ in size: {paths['train_images']} has {x_train.shape[1]} pixels, "
            f"{paths['val_images']} has {x_val.shape[1]}"
        )
    y_train = _labels(paths["train_labels"], len(x_train), paths["train_images"])
    y_val = _labels(paths["val_labels"], len(x_val), paths["val_images"])
    num_classes = int(max(y_train.max(initial=0), y_val.max(initial=0))) + 1
    return ImageData(x_train, y_train, x_val, y_val, num_classes, x_train.shape[1], "mnist")


def standardize(data: ImageData) -> ImageData:
    """Z-score every input feature with the training split's mean and standard deviation.

    Features that never vary in training (the digits' blank border pixels) keep a unit scale
    instead of dividing by ~0.
    """
    mean = data.x_train.mean(axis=0)
    std = data.x_train.std(axis=0)
    std = np.where(std > 1e-6, std, 1.0)
    return dataclasses.replace(
        data,
        x_train=((data.x_train - mean) / std).astype(np.float32),
        x_val=((data.x_val - mean) / std).astype(np.float32),
    )
