"""AliasTable-only behaviour: property tests of construction against a numpy reference,
memory footprint, and its fixed-weights API."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import assert_matches_reference
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fastis import AliasTable, SumTree

# Zeros, ordinary values, values spread over many orders of magnitude (small enough that
# no 400 of them overflow), and tiny normal and subnormal ones.
weight_strategy = st.one_of(
    st.just(0.0),
    st.floats(min_value=0.0, max_value=10.0),
    st.floats(min_value=1e-300, max_value=1e250),
    st.sampled_from([1e-9, 1.0, 1e9, 1e-306, 2.2250738585072014e-308, 5e-324]),
)


@settings(max_examples=120, deadline=None)
@given(
    st.lists(weight_strategy, min_size=1, max_size=400),
    st.integers(min_value=0, max_value=2**64 - 1),
)
# Found by this test: a total below n / DBL_MAX (here 4 / 2^1024) made AliasTable draw
# zero-weight items (n / total overflows to inf while building the table).
@example(weights=[0.0, 0.0, 2.2250738585072014e-308, 0.0], seed=0)
def test_construction_matches_numpy_reference(weights, seed):
    ref = np.array(weights, dtype=np.float64)
    exact = math.fsum(ref)
    if exact == 0.0:
        with pytest.raises(ValueError, match="zero"):
            AliasTable(ref, seed=seed)
        return
    table = AliasTable(ref, seed=seed)
    assert len(table) == len(ref)
    assert np.array_equal(table.weights().numpy(), ref)
    assert_matches_reference(table, ref, exact, draws=300)
    # The same weights in a SumTree: the same weights and (to rounding) probabilities.
    tree = SumTree(ref, seed=seed)
    assert np.array_equal(tree.weights().numpy(), table.weights().numpy())
    assert math.isclose(tree.total, table.total, rel_tol=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(min_value=1, max_value=2000),
    st.floats(min_value=1e-200, max_value=1e200),
    st.integers(min_value=0, max_value=2**64 - 1),
)
def test_zero_heavy_vectors_never_draw_zeros(n, value, seed):
    # One positive weight among n - 1 zeros, placed at a seed-dependent position: every
    # zero bucket must alias the single positive item.
    w = np.zeros(n)
    hot = seed % n
    w[hot] = value
    table = AliasTable(w, seed=seed)
    assert set(table.sample(2000).tolist()) == {hot}


def test_nbytes_sixteen_bytes_per_example():
    n = 1_000_000
    table = AliasTable(np.ones(n), seed=1)
    assert 16 * n <= table.nbytes <= 16 * n + 4096


def test_fixed_weights_api():
    # An AliasTable is rebuilt, never updated: it has neither update() nor zeros().
    table = AliasTable([1.0, 2.0], seed=1)
    assert not hasattr(table, "update")
    assert not hasattr(AliasTable, "zeros")
