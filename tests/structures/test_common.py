"""Behaviour both structures share: accepted input types (numpy, torch, Python sequences,
non-contiguous inputs), output types, results that never share memory with the structure,
basic properties, and sizes beyond float32's 2^24 integer range."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import SIGMAS

from fastis import SumTree

# Values exactly representable in every weight dtype used below (float16, bfloat16, ints).
VALUES = [0.0, 1.0, 2.0, 0.5, 3.0, 0.25, 4.0, 0.0, 6.0, 1.5]
INTS = [0, 1, 2, 5, 3, 0, 4, 7, 6, 1]


def strided_numpy(values, dtype):
    a = np.zeros(2 * len(values), dtype=dtype)
    a[::2] = values
    return a[::2]


def strided_torch(values, dtype):
    a = torch.zeros(len(values), 3, dtype=dtype)
    a[:, 1] = torch.tensor(values, dtype=dtype)
    return a[:, 1]


WEIGHT_INPUTS = [
    ("np-float64", lambda v: np.array(v, np.float64)),
    ("np-float32", lambda v: np.array(v, np.float32)),
    ("np-float16", lambda v: np.array(v, np.float16)),
    ("np-big-endian", lambda v: np.array(v, ">f8")),
    ("np-strided", lambda v: strided_numpy(v, np.float64)),
    ("np-reversed", lambda v: np.array(v[::-1], np.float64)[::-1]),
    ("np-fortran-column", lambda v: np.asfortranarray(np.tile(np.array(v)[:, None], (1, 2)))[:, 1]),
    ("torch-float64", lambda v: torch.tensor(v, dtype=torch.float64)),
    ("torch-float32", lambda v: torch.tensor(v, dtype=torch.float32)),
    ("torch-float16", lambda v: torch.tensor(v, dtype=torch.float16)),
    ("torch-bfloat16", lambda v: torch.tensor(v, dtype=torch.bfloat16)),
    ("torch-strided", lambda v: strided_torch(v, torch.float32)),
    ("torch-strided-bfloat16", lambda v: strided_torch(v, torch.bfloat16)),
    ("torch-requires-grad", lambda v: torch.tensor(v, requires_grad=True)),
    ("list", list),
    ("tuple", tuple),
]

INT_WEIGHT_INPUTS = [
    ("np-int64", lambda v: np.array(v, np.int64)),
    ("np-int32", lambda v: np.array(v, np.int32)),
    ("np-uint8", lambda v: np.array(v, np.uint8)),
    ("np-uint64", lambda v: np.array(v, np.uint64)),
    ("np-int-strided", lambda v: strided_numpy(v, np.int16)),
    ("torch-int64", lambda v: torch.tensor(v)),
    ("torch-int32", lambda v: torch.tensor(v, dtype=torch.int32)),
    ("torch-uint8", lambda v: torch.tensor(v, dtype=torch.uint8)),
    ("torch-int-strided", lambda v: strided_torch(v, torch.int32)),
    ("list-of-ints", list),
    ("range", lambda v: range(len(v))),
]


@pytest.mark.parametrize(
    ("make", "values"),
    [(m, VALUES) for _, m in WEIGHT_INPUTS] + [(m, INTS) for _, m in INT_WEIGHT_INPUTS],
    ids=[name for name, _ in WEIGHT_INPUTS + INT_WEIGHT_INPUTS],
)
def test_weight_input_types(structure, make, values):
    data = make(values)
    expected = np.array(list(range(len(values))) if isinstance(data, range) else values, float)
    obj = structure(data, seed=8)
    reference = structure(expected, seed=8)
    got = obj.weights()
    assert got.dtype == torch.float64 and got.shape == (len(values),)
    assert np.array_equal(got.numpy(), expected)
    assert obj.total == reference.total == math.fsum(expected)
    assert torch.equal(obj.sample(1001), reference.sample(1001))


INDEX_INPUTS = [
    ("np-int64", lambda v: np.array(v, np.int64)),
    ("np-int32", lambda v: np.array(v, np.int32)),
    ("np-int8", lambda v: np.array(v, np.int8)),
    ("np-uint32", lambda v: np.array(v, np.uint32)),
    ("np-uint64", lambda v: np.array(v, np.uint64)),
    ("np-strided", lambda v: strided_numpy(v, np.int64)),
    ("torch-int64", lambda v: torch.tensor(v)),
    ("torch-int32", lambda v: torch.tensor(v, dtype=torch.int32)),
    ("torch-int16", lambda v: torch.tensor(v, dtype=torch.int16)),
    ("torch-uint8", lambda v: torch.tensor(v, dtype=torch.uint8)),
    ("torch-strided", lambda v: strided_torch(v, torch.int64)),
    ("list", list),
    ("tuple", tuple),
]


@pytest.mark.parametrize("make", [m for _, m in INDEX_INPUTS], ids=[n for n, _ in INDEX_INPUTS])
def test_index_input_types(structure, make):
    obj = structure(VALUES, seed=1)
    idx = [9, 0, 4, 4, 2]
    w = np.array(VALUES)
    prob = obj.probabilities(make(idx))
    assert prob.dtype == torch.float64
    assert np.array_equal(prob.numpy(), w[idx] / obj.total)
    assert np.array_equal(obj.weights(make(idx)).numpy(), w[idx])


@pytest.mark.parametrize(
    "empty", [[], (), np.array([], np.int64), torch.tensor([], dtype=torch.int32)]
)
def test_empty_index_queries(structure, empty):
    obj = structure(VALUES, seed=1)
    for result in (obj.probabilities(empty), obj.weights(empty)):
        assert result.dtype == torch.float64 and result.shape == (0,)


def test_output_types(structure):
    obj = structure(VALUES, seed=2)
    idx = obj.sample(10)
    assert isinstance(idx, torch.Tensor) and idx.dtype == torch.int64 and idx.shape == (10,)
    pair = obj.sample(10, with_probabilities=True)
    assert isinstance(pair, tuple) and len(pair) == 2
    assert pair[0].dtype == torch.int64 and pair[1].dtype == torch.float64
    assert pair[0].shape == pair[1].shape == (10,)
    empty = obj.sample(0)
    assert empty.dtype == torch.int64 and empty.shape == (0,)
    e_idx, e_prob = obj.sample(0, with_probabilities=True)
    assert e_idx.shape == e_prob.shape == (0,) and e_prob.dtype == torch.float64
    for result in (idx, *pair, obj.weights(), obj.probabilities([1])):
        assert result.device.type == "cpu" and result.is_contiguous()
    assert isinstance(obj.total, float) and obj.total == sum(VALUES)
    assert isinstance(len(obj), int) and len(obj) == len(VALUES)
    assert isinstance(obj.nbytes, int) and obj.nbytes > 0
    assert isinstance(obj.seed, int) and obj.seed == 2
    assert type(obj).__name__ in repr(obj) and "n=10" in repr(obj)


@pytest.mark.parametrize("k", [np.int64(5), np.uint8(5), torch.tensor(5), 5])
def test_k_accepts_integer_types(structure, k):
    a, b = structure(VALUES, seed=3), structure(VALUES, seed=3)
    assert torch.equal(a.sample(k), b.sample(5))


def test_with_probabilities_matches_probabilities(structure):
    rng = np.random.default_rng(4)
    w = rng.lognormal(0.0, 2.0, 3000) * (rng.random(3000) < 0.7)
    obj = structure(w, seed=4)
    idx, prob = obj.sample(50_000, with_probabilities=True)
    assert torch.equal(prob, obj.probabilities(idx))
    assert np.array_equal(prob.numpy(), w[idx.numpy()] / obj.total)


def test_results_do_not_share_memory(structure):
    obj = structure(VALUES, seed=5)
    twin = structure(VALUES, seed=5)
    w = obj.weights()
    w[:] = 123.0
    sub = obj.weights([1, 2])
    sub[:] = 0.0
    p = obj.probabilities([1, 2])
    p[:] = 7.0
    first, second = obj.sample(64), obj.sample(64)
    assert first.data_ptr() != second.data_ptr()
    expected_second = twin.sample(128)[64:]
    first[:] = -1
    assert torch.equal(second, expected_second)
    i1, p1 = obj.sample(64, with_probabilities=True)
    i2, p2 = obj.sample(64, with_probabilities=True)
    assert len({i1.data_ptr(), i2.data_ptr(), p1.data_ptr(), p2.data_ptr()}) == 4
    twin.sample(128)
    assert torch.equal(obj.weights(), twin.weights())
    assert obj.total == twin.total
    assert torch.equal(obj.sample(100), twin.sample(100))


@pytest.mark.parametrize("kind", ["numpy", "torch", "float32"])
def test_structure_does_not_alias_its_input(structure, kind):
    base = np.array(VALUES)
    data = {
        "numpy": base.copy(),
        "torch": torch.tensor(VALUES, dtype=torch.float64),
        "float32": base.astype(np.float32),
    }[kind]
    obj = structure(data, seed=6)
    data[:] = 0
    data[0] = 1000
    assert np.array_equal(obj.weights().numpy(), base)
    assert torch.equal(obj.sample(200), structure(base, seed=6).sample(200))


@pytest.mark.parametrize("n", [2**24 + 1, 2**24 + 2])
def test_beyond_float32_integer_range(structure, n):
    # float32 cannot count past 2^24: the last index (2^24 + 1 is not even a float32) must be
    # reachable, with the right probability.
    last = n - 1
    w = np.ones(n)
    if structure is SumTree:
        obj = SumTree(w, seed=7)
        obj.update([last], [float(n - 1)])
    else:
        w[last] = n - 1
        obj = structure(w, seed=7)
    assert len(obj) == n
    assert obj.total == 2.0 * (n - 1)
    assert obj.probabilities([last, 0, last - 1]).tolist() == [0.5, 0.5 / (n - 1), 0.5 / (n - 1)]
    assert obj.weights([last]).tolist() == [n - 1]
    draws = 200_000
    idx = obj.sample(draws).numpy()
    hits = int((idx == last).sum())
    assert abs(hits - draws / 2) <= SIGMAS * math.sqrt(draws / 4)
    rest = idx[idx != last]
    assert rest.min() >= 0 and rest.max() < last
    # The other draws are uniform over [0, n - 1): their mean is (n - 2) / 2.
    sigma = (n - 1) / math.sqrt(12 * len(rest))
    assert abs(rest.mean() - (n - 2) / 2) <= SIGMAS * sigma
