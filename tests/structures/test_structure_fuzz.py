"""Property-based fuzzing of SumTree and AliasTable: adversarial weights, indices, draw
counts and state_dicts. Every call either raises a named error and leaves the structure as
it was, or gives the result a float64 numpy reference gives."""

from __future__ import annotations

import math

import numpy as np
import torch
from fuzz import FUZZ, NAMED, arrays, corrupted, junk
from helpers import assert_same_structure
from hypothesis import given
from hypothesis import strategies as st

from fastis import AliasTable, SumTree

BASE = np.array([0.5, 1.0, 0.0, 2.0, 3.0])


def _as_float64(values) -> np.ndarray | None:
    """The float64 weights a valid input means, or None when it is not valid input."""
    try:
        arr = np.asarray(values.numpy() if isinstance(values, torch.Tensor) else values)
    except Exception:
        return None
    if arr.ndim != 1 or arr.dtype.kind not in "fiu" or arr.size == 0:
        return None
    with np.errstate(over="ignore", invalid="ignore"):
        w = arr.astype(np.float64)
    ok = np.isfinite(w).all() and (w >= 0).all() and math.isfinite(math.fsum(w))
    return w if ok else None


@FUZZ
@given(structure=st.sampled_from([SumTree, AliasTable]), weights=arrays())
def test_construction_builds_exactly_or_refuses_by_name(structure, weights):
    expected = _as_float64(weights)
    try:
        obj = structure(weights, seed=0)
    except NAMED:
        valid_but_refused = expected is not None and (structure is SumTree or expected.sum() > 0)
        assert not valid_but_refused, f"{structure.__name__} refused valid weights {weights}"
        return
    assert expected is not None, f"{structure.__name__} accepted {weights}"
    np.testing.assert_array_equal(obj.weights().numpy(), expected)
    assert obj.total == math.fsum(expected) or math.isclose(obj.total, math.fsum(expected),
                                                            rel_tol=1e-12)


@FUZZ
@given(indices=arrays(ints=True), weights=st.one_of(arrays(), st.floats(allow_nan=True)),
       data=st.data())
def test_update_matches_the_reference_or_refuses_and_changes_nothing(indices, weights, data):
    tree, twin = SumTree(BASE, seed=3), SumTree(BASE, seed=3)
    try:
        tree.update(indices, weights)
    except NAMED:
        assert_same_structure(tree, twin)
        return
    idx = np.asarray(indices.numpy() if isinstance(indices, torch.Tensor) else indices)
    new = (np.full(len(idx), float(weights)) if np.ndim(weights) == 0 else
           np.asarray(weights.numpy() if isinstance(weights, torch.Tensor) else weights,
                      dtype=np.float64))
    assert (idx.dtype.kind in "iu" or len(idx) == 0) and len(idx) == len(new)
    reference = BASE.copy()
    for i, w in zip(idx.astype(np.int64), new):  # last write wins
        reference[i] = w
    np.testing.assert_array_equal(tree.weights().numpy(), reference)


@FUZZ
@given(structure=st.sampled_from([SumTree, AliasTable]),
       k=st.one_of(st.integers(-10, 5000), st.sampled_from([2**45, 2**62 + 1, 2**63, 2**64]),
                   st.floats(), junk()))
def test_sample_counts_draw_exactly_k_or_refuse_and_change_nothing(structure, k):
    obj, twin = structure(BASE, seed=1), structure(BASE, seed=1)
    try:
        drawn = obj.sample(k)
    except (*NAMED, MemoryError):
        assert_same_structure(obj, twin)
        return
    assert type(k) is int and k >= 0 and drawn.shape == (k,)
    assert (obj.weights()[drawn] > 0).all()


@FUZZ
@given(structure=st.sampled_from([SumTree, AliasTable]), data=st.data())
def test_corrupted_states_restore_exactly_or_refuse_and_change_nothing(structure, data):
    source = structure(np.array([1.0, 2.0, 0.0, 4.0, 5.0]), seed=9)
    source.sample(7)
    state = data.draw(corrupted(source.state_dict()))
    obj, twin = structure(BASE, seed=2), structure(BASE, seed=2)
    try:
        obj.load_state_dict(state)
    except NAMED:
        assert_same_structure(obj, twin)
        return
    # Accepted: it must be a state this structure can continue from.
    assert (len(obj) == len(BASE) and obj.total > 0) or structure is SumTree
    again = structure.from_state_dict(obj.state_dict())
    assert_same_structure(obj, again)
