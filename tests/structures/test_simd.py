"""The AVX-512 descent of SumTree.sample against the portable scalar one: the vector path
must give bit-identical indices and probabilities (both are exact; the scalar path is
itself checked against a pure-Python replay in test_rng.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import WEIGHT_KINDS, make_weights, seed_of

import fastis
from fastis import _C

pytestmark = pytest.mark.skipif(
    not _C._avx512_active(), reason="this CPU has no AVX-512: only the scalar path runs"
)


def draws_with_and_without_avx512(tree: fastis.SumTree, k: int):
    """(vector draws, scalar draws) of the same k draws from the same generator state."""
    state = tree.state_dict()
    vector = tree.sample(k, with_probabilities=True)
    tree.load_state_dict(state)
    previous = _C._set_avx512(False)
    try:
        assert not _C._avx512_active()
        scalar = tree.sample(k, with_probabilities=True)
    finally:
        _C._set_avx512(previous)
    return vector, scalar


@pytest.mark.parametrize("kind", WEIGHT_KINDS)
@pytest.mark.parametrize("n", [2, 7, 9, 64, 513, 4097, 100_003])
def test_vector_descent_equals_scalar(kind, n):
    rng = np.random.default_rng(seed_of("simd", kind, n))
    tree = fastis.SumTree(make_weights(kind, n, rng), seed=seed_of(kind, n))
    # k covers a partial vector (1, 5), a partial group of 32 (37) and many groups.
    for k in (1, 5, 37, 3000):
        (vi, vp), (si, sp) = draws_with_and_without_avx512(tree, k)
        assert torch.equal(vi, si)
        assert torch.equal(vp, sp)


@pytest.mark.parametrize("scale", [1e300, 1e-300, 5e-324])
def test_vector_descent_equals_scalar_at_extreme_totals(scale):
    # Huge totals, tiny ones and a subnormal total (drawn on the 2^-1074 grid).
    rng = np.random.default_rng(seed_of("simd-extreme", scale))
    w = rng.integers(0, 4, 1000).astype(np.float64) * scale
    w[17] = scale
    tree = fastis.SumTree(w, seed=5)
    (vi, vp), (si, sp) = draws_with_and_without_avx512(tree, 2000)
    assert torch.equal(vi, si)
    assert torch.equal(vp, sp)
    assert np.all(w[vi.numpy()] > 0)


def test_vector_descent_equals_scalar_after_updates():
    rng = np.random.default_rng(11)
    tree = fastis.SumTree(rng.random(30_000), seed=2)
    idx = rng.integers(0, 30_000, 20_000)
    tree.update(idx, np.where(rng.random(20_000) < 0.5, 0.0, rng.lognormal(0, 3, 20_000)))
    (vi, vp), (si, sp) = draws_with_and_without_avx512(tree, 10_000)
    assert torch.equal(vi, si)
    assert torch.equal(vp, sp)
