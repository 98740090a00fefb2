"""AliasTable-only behaviour: property tests of construction against a numpy reference,
memory footprint, and its fixed-weights API."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import (
    WEIGHT_KINDS,
    alias_sweep_reference,
    assert_matches_reference,
    make_weights,
    seed_of,
)
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fastis import _C, AliasTable, SumTree

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


def alias_cases():
    """Weight vectors for the exact table comparison: every kind of test vector at sizes
    that end inside a mask word and a prefix block, plus items of >= 2^11 units (the
    128-bit path), tiny and subnormal totals, and all-equal weights."""
    rng = np.random.default_rng(seed_of("alias-cases"))
    cases = []
    for kind in WEIGHT_KINDS:
        for n in (2, 63, 65, 1000, 1025, 5003):
            cases.append((f"{kind}-{n}", make_weights(kind, n, rng)))
    huge = rng.random(20_000)
    huge[[3, 9000, 19_999]] = [5e4, 1e6, 2e3]
    cases.append(("huge-items", huge))
    cases.append(("subnormal", rng.integers(0, 3, 3000) * 5e-324))
    cases.append(("tiny", rng.random(3000) * 1e-310))
    cases.append(("equal", np.full(4097, 0.1)))
    # Small integer weights: units are simple fractions, so a light's running deficit often
    # ties a heavy's running surplus exactly (the sweep's >= versus >).
    # Weights summing to exactly n (dyadic steps moved between pairs): units equal the
    # weights, so a light's running deficit often ties a heavy's running surplus exactly
    # (the sweep's >= versus >).
    for n in (4, 12, 1000, 4098):
        w = np.ones(n)
        for _ in range(n):
            i, j = rng.choice(n, 2, replace=False)
            step = min(rng.choice([0.25, 0.5, 0.75]), w[j])
            w[i], w[j] = w[i] + step, w[j] - step
        cases.append((f"ties-{n}", w))
    # A last light just below one unit after others whose rounded units fall short of n:
    # the lights' deficits overrun the heavies' surpluses, and the last heavy is left over
    # without ever being closed.
    for seed in (0, 1, 3):
        overrun_rng = np.random.default_rng(seed)
        w = overrun_rng.random(int(overrun_rng.integers(3, 40)))
        w[-1] = np.nextafter(w[:-1].sum() / (len(w) - 1), 0)
        cases.append((f"overrun-{seed}", w))
    cases.append(("long", rng.lognormal(0.0, 1.0, 70_001)))
    return cases


@pytest.mark.parametrize("name, weights", alias_cases(), ids=[c[0] for c in alias_cases()])
def test_table_equals_sequential_sweep(name, weights, threads):
    # The table is built from prefix sums by blocks across threads; it must be exactly the
    # table of the textbook sequential sweep, whatever the thread count and vector path.
    # Both entry widths: float32 keeps (n <= 2^32) and float64 keeps, which show every
    # 2^-52 unit of the fixed-point masses.
    for build, keep_dtype in (
        (_C.AliasTable.from_weights, np.float32),
        (_C.AliasTable._from_weights_wide, np.float64),
    ):
        results = set()
        for count in (1, 2, 3):
            for avx512 in (True, False):
                threads(count)
                previous = _C._set_avx512(avx512)
                try:
                    core = build(np.asarray(weights))
                finally:
                    _C._set_avx512(previous)
                keep, alias = core._entries()
                results.add((keep.tobytes(), alias.tobytes(), core.total))
        assert len(results) == 1
        ref_keep, ref_alias = alias_sweep_reference(weights, core.total, keep_dtype)
        assert np.array_equal(alias, ref_alias)
        assert np.array_equal(keep, ref_keep)


@pytest.mark.parametrize(
    "name, weights", alias_cases()[::5], ids=[c[0] for c in alias_cases()[::5]]
)
def test_table_represents_the_weights(name, weights):
    # Each item's probability as the table encodes it, (keep_k + sum of (1 - keep_b) over
    # buckets b aliasing k) / n, against w_k / sum(w): float32 keeps bound the error.
    table = AliasTable(weights, seed=0)
    keep, alias = table._core._entries()
    n = len(weights)
    encoded = (keep + np.bincount(alias, weights=1.0 - keep, minlength=n)) / n
    exact = weights / math.fsum(weights)
    assert np.all(encoded[weights == 0] == 0)
    assert np.allclose(encoded, exact, rtol=2e-6, atol=4.0 / n * 6e-8)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [7, 8, 65_543, 200_003])
def test_weight_copy_paths_agree(dtype, n, threads):
    # The table's copy of the weights is written with streaming stores on AVX-512 CPUs:
    # the copy, the total and the table must equal those of the portable path, bit for bit,
    # and the copy must be the float64 value of every input (-0.0 read as +0.0), for both
    # input dtypes and lengths that end inside a vector and inside a 64 Ki-item chunk.
    rng = np.random.default_rng(seed_of("copy-paths", n, np.dtype(dtype).name))
    weights = (rng.lognormal(0.0, 2.0, n)).astype(dtype)
    weights[rng.integers(0, n, 5)] = -0.0
    results = set()
    for count in (1, 2):
        for avx512 in (True, False):
            threads(count)
            previous = _C._set_avx512(avx512)
            try:
                table = AliasTable(weights, seed=0)
            finally:
                _C._set_avx512(previous)
            copied = table.weights().numpy()
            assert copied.dtype == np.float64
            assert np.array_equal(copied, weights.astype(np.float64))
            assert not np.signbit(copied).any()
            keep, alias = table._core._entries()
            results.add((copied.tobytes(), keep.tobytes(), alias.tobytes(), table.total))
    assert len(results) == 1
    assert math.isclose(table.total, math.fsum(weights.astype(np.float64)), rel_tol=1e-12)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -1.0])
@pytest.mark.parametrize("position", [0, 8, 65_541])
def test_invalid_weight_found_on_either_copy_path(bad, position):
    # Each vector lane and the scalar tail flag an invalid weight, on both paths.
    weights = np.ones(65_543)
    weights[position] = bad
    for avx512 in (True, False):
        previous = _C._set_avx512(avx512)
        try:
            with pytest.raises(ValueError, match=f"weights\\[{position}\\]"):
                AliasTable(weights, seed=0)
        finally:
            _C._set_avx512(previous)
