"""SumTree-only behaviour: update semantics (last write wins, scalar broadcast, empty
batches), zeros(), trees beyond 2^32 leaves, property tests of update sequences against a
numpy reference, and no drift after 10^6 update batches."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from helpers import (
    assert_matches_reference,
    assert_same_structure,
    last_write_wins,
    last_write_wins_fast,
    seed_of,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import fastis
from fastis import SumTree


def test_update_last_write_wins():
    tree = SumTree([1.0, 2.0, 3.0, 4.0], seed=1)
    tree.update([0, 2, 0, 0, 3], [5.0, 6.0, 7.0, 0.5, 0.0])
    assert tree.weights().tolist() == [0.5, 2.0, 6.0, 0.0]
    assert tree.total == 8.5
    assert torch.equal(
        tree.probabilities([0, 1, 2, 3]), torch.tensor([0.5, 2, 6, 0], dtype=torch.float64) / 8.5
    )


@pytest.mark.parametrize(
    "scalar",
    [9.0, 9, np.float32(9.0), np.float64(9.0), np.int64(9), torch.tensor(9.0), np.array(9.0)],
    ids=["float", "int", "np.float32", "np.float64", "np.int64", "tensor0d", "ndarray0d"],
)
def test_update_scalar_weight_broadcasts(scalar):
    tree = SumTree(np.arange(6, dtype=np.float64), seed=2)
    tree.update([1, 4, 1], scalar)
    assert tree.weights().tolist() == [0.0, 9.0, 2.0, 3.0, 9.0, 5.0]
    assert tree.total == 28.0


@pytest.mark.parametrize(
    ("indices", "weights"),
    [
        ([], []),
        ((), ()),
        (np.array([], dtype=np.int64), np.array([], dtype=np.float64)),
        (np.array([], dtype=np.int32), np.array([], dtype=np.float32)),
        (torch.tensor([], dtype=torch.int64), torch.tensor([], dtype=torch.float64)),
        ([], 3.0),
    ],
    ids=["list", "tuple", "numpy64", "numpy32", "torch", "scalar"],
)
def test_empty_update_changes_nothing(indices, weights):
    w = np.array([0.5, 0.0, 2.0])
    tree, twin = SumTree(w, seed=3), SumTree(w, seed=3)
    tree.sample(3)
    twin.sample(3)
    tree.update(indices, weights)
    assert_same_structure(tree, twin)


@pytest.mark.parametrize(
    ("indices", "weights"),
    [
        (np.array([4, 0, 4], dtype=np.int32), np.array([1.5, 2.5, 0.25], dtype=np.float32)),
        (np.array([4, 0, 4], dtype=np.uint8), np.array([3, 5, 1], dtype=np.int16)),
        (torch.tensor([4, 0, 4]), torch.tensor([1.5, 2.5, 0.25], dtype=torch.bfloat16)),
        (torch.tensor([4, 0, 4], dtype=torch.int32), torch.tensor([1.5, 2.5, 0.25])),
        ((4, 0, 4), (1.5, 2.5, 0.25)),
        (np.array([4, 9, 0, 9, 4])[::2], np.array([1.5, -1.0, 2.5, -1.0, 0.25])[::2]),
        (torch.tensor([4, 9, 0, 9, 4])[::2], torch.tensor([1.5, -1.0, 2.5, -1.0, 0.25])[::2]),
    ],
    ids=[
        "i32-f32",
        "u8-i16",
        "torch-bf16",
        "torch-i32-f32",
        "tuples",
        "np-strided",
        "torch-strided",
    ],
)
def test_update_accepts_any_integer_and_real_input(indices, weights):
    tree = SumTree(np.ones(6), seed=4)
    tree.update(indices, weights)
    as_float64 = weights.double() if isinstance(weights, torch.Tensor) else weights
    expected = last_write_wins(np.ones(6), np.asarray(indices), np.asarray(as_float64, np.float64))
    assert np.array_equal(tree.weights().numpy(), expected)
    assert tree.total == math.fsum(expected)


def test_update_does_not_keep_a_reference_to_its_input():
    tree = SumTree(np.ones(4), seed=5)
    idx, val = np.array([1, 2]), np.array([3.0, 4.0])
    tree.update(idx, val)
    idx[:] = 0
    val[:] = 100.0
    assert tree.weights().tolist() == [1.0, 3.0, 4.0, 1.0]


def test_negative_zero_is_zero():
    tree = SumTree([1.0, -0.0, 2.0], seed=6)
    tree.update([2], [-0.0])
    w = tree.weights().numpy()
    assert w.tolist() == [1.0, 0.0, 0.0]
    assert not np.signbit(w).any()
    assert torch.equal(tree.sample(100), torch.zeros(100, dtype=torch.int64))


def test_overflow_is_judged_on_the_final_values_of_a_batch():
    # An intermediate write of 1e308 that a later duplicate replaces must not overflow.
    tree = SumTree([1.0, 1.0], seed=7)
    tree.update([0, 1, 0], [1e308, 1e308, 1.0])
    assert tree.weights().tolist() == [1.0, 1e308]
    assert tree.total == 1e308 + 1.0


def test_all_zero_after_update_then_refilled():
    w = np.array([1.0, 2.0, 3.0])
    tree, twin = SumTree(w, seed=8), SumTree(w, seed=8)
    tree.update([0, 1, 2], 0.0)
    assert tree.total == 0.0
    with pytest.raises(ValueError, match="zero"):
        tree.sample(1)
    tree.update([2, 0, 1], [3.0, 1.0, 2.0])
    assert_same_structure(tree, twin)


def test_zeros_then_updates_equals_built_tree():
    n = 5000
    rng = np.random.default_rng(9)
    w = rng.lognormal(0.0, 2.0, n) * (rng.random(n) < 0.5)
    tree = SumTree.zeros(n, seed=10)
    assert len(tree) == n and tree.total == 0.0 and tree.seed == 10
    assert torch.equal(tree.weights(), torch.zeros(n, dtype=torch.float64))
    order = rng.permutation(n)
    for chunk in np.array_split(order, 7):
        tree.update(chunk, w[chunk])
    # The tree is a pure function of its leaves: identical to one built in one go.
    assert_same_structure(tree, SumTree(w, seed=10), draws=10_000)


def test_zeros_beyond_two_to_the_32():
    n = 2**32 + 5
    tree = SumTree.zeros(n, seed=11)  # lazily allocated: untouched leaves cost nothing
    assert len(tree) == n and tree.total == 0.0
    assert 8 * n <= tree.nbytes <= 9.2 * n
    high = 2**32 + 3
    tree.update([high, 7, high], [5.0, 1.0, 3.0])
    assert tree.total == 4.0
    assert tree.weights([high, 7, 2**32 + 4, 2**32]).tolist() == [3.0, 1.0, 0.0, 0.0]
    assert tree.probabilities([high, 7]).tolist() == [0.75, 0.25]
    idx, prob = tree.sample(4000, with_probabilities=True)
    assert set(idx.tolist()) == {7, high}
    hits = int((idx == high).sum())
    assert abs(hits - 3000) <= 5 * math.sqrt(4000 * 0.75 * 0.25)
    assert torch.equal(prob, torch.where(idx == high, 0.75, 0.25).double())
    with pytest.raises(IndexError, match="out of range"):
        tree.update([n], [1.0])
    tree.update([high], [0.0])
    assert torch.equal(tree.sample(100), torch.full((100,), 7))


def test_nbytes_about_nine_bytes_per_example():
    n = 1_000_000
    tree = SumTree(np.ones(n), seed=12)
    assert 9.0 * n <= tree.nbytes <= 9.2 * n


# Weights for the property tests: zeros (both signs), ordinary values, tiny and huge ones
# (small enough that no 300 of them overflow), subnormals.
weight_strategy = st.one_of(
    st.just(0.0),
    st.just(-0.0),
    st.floats(min_value=0.0, max_value=10.0),
    st.floats(min_value=1e-300, max_value=1e250),
    st.sampled_from([5e-324, 2.2250738585072014e-308, 1e-200, 1.0, 1e250]),
)


@st.composite
def update_programs(draw):
    n = draw(st.integers(min_value=1, max_value=300))
    from_zeros = draw(st.booleans())
    initial = [0.0] * n if from_zeros else draw(st.lists(weight_strategy, min_size=n, max_size=n))
    index = st.integers(min_value=0, max_value=n - 1)
    batch = st.lists(st.tuples(index, weight_strategy), max_size=40)
    batches = draw(st.lists(batch, min_size=1, max_size=8))
    # Repeat the head of some batches at their end, so duplicates are common.
    repeats = draw(st.lists(st.integers(0, 5), min_size=len(batches), max_size=len(batches)))
    batches = [b + [(i, draw(weight_strategy)) for i, _ in b[:r]] for b, r in zip(batches, repeats)]
    return n, from_zeros, initial, batches


def check_against_reference(tree: SumTree, ref: np.ndarray) -> None:
    w = tree.weights().numpy()
    assert w.dtype == np.float64
    assert np.array_equal(w, ref)
    exact = math.fsum(ref)
    if exact == 0.0:
        assert tree.total == 0.0
        with pytest.raises(ValueError, match="zero"):
            tree.sample(1)
        return
    assert_matches_reference(tree, ref, exact, draws=64)


@settings(max_examples=80, deadline=None)
@given(update_programs(), st.integers(min_value=0, max_value=2**64 - 1))
def test_update_sequences_match_numpy_reference(program, seed):
    n, from_zeros, initial, batches = program
    tree = SumTree.zeros(n, seed=seed) if from_zeros else SumTree(initial, seed=seed)
    ref = np.array(initial, dtype=np.float64)
    check_against_reference(tree, ref)
    for batch in batches:
        idx = np.array([i for i, _ in batch], dtype=np.int64)
        val = np.array([v for _, v in batch], dtype=np.float64)
        tree.update(idx, val)
        ref = last_write_wins(ref, idx, val)
        check_against_reference(tree, ref)
    # A tree built from the final weights is identical, draws included.
    if math.fsum(ref) > 0:
        twin = SumTree(ref, seed=seed)
        twin.load_state_dict({**twin.state_dict(), "counter": tree.state_dict()["counter"]})
        assert_same_structure(tree, twin)


def test_no_drift_after_a_million_update_batches():
    # 10^6 batches of 4 random updates (about 10% zeros, lognormal weights over many orders
    # of magnitude, a forced duplicate in every tenth batch) on a tree of n = 1000. The loop
    # calls update() with small arrays, as a training loop would (about 3 s here).
    n, batches = 1000, 10**6
    rng = np.random.default_rng(seed_of("drift"))
    initial = rng.lognormal(0.0, 3.0, n)
    idx = rng.integers(0, n, (batches, 4))
    idx[::10, 3] = idx[::10, 0]
    val = rng.lognormal(0.0, 3.0, (batches, 4))
    val[rng.random((batches, 4)) < 0.1] = 0.0
    tree = SumTree(initial, seed=13)
    start = time.perf_counter()
    update = tree.update
    half = batches // 2
    for b in range(half):
        update(idx[b], val[b])
    mid = last_write_wins_fast(initial, idx[:half], val[:half])
    assert np.array_equal(tree.weights().numpy(), mid)
    assert math.isclose(tree.total, math.fsum(mid), rel_tol=1e-12)
    for b in range(half, batches):
        update(idx[b], val[b])
    elapsed = time.perf_counter() - start
    final = last_write_wins_fast(initial, idx, val)
    assert np.array_equal(tree.weights().numpy(), final)
    assert math.isclose(tree.total, math.fsum(final), rel_tol=1e-12)
    # No drift at all: bit-identical to a fresh tree of the final weights.
    fresh = SumTree(final, seed=13)
    assert tree.total == fresh.total
    assert torch.equal(tree.probabilities(np.arange(n)), fresh.probabilities(np.arange(n)))
    assert_same_structure(tree, fresh, draws=100_000)
    assert elapsed < 60, f"10^6 small updates took {elapsed:.1f} s"


def test_zeros_counts_and_types():
    assert len(SumTree.zeros(np.int64(3), seed=0)) == 3
    assert len(SumTree.zeros(torch.tensor(17), seed=0)) == 17
    assert isinstance(SumTree.zeros(1, seed=0), fastis.SumTree)


@pytest.mark.parametrize("n", [40_000, 300_001, 2_100_000])
def test_large_batches_are_exact_and_thread_count_independent(threads, n):
    # Large batches (>= 2^14 updates) on trees of one to many 8^5-leaf subtrees: the
    # update's dirty-set recompute switches to level sweeps, and any split of the work
    # across threads must not change the result. Duplicates are dense near subtree
    # boundaries; the result must not depend on the thread count and must equal a fresh
    # build from the last-write-wins reference.
    rng = np.random.default_rng(seed_of("large-batches", n))
    initial = rng.lognormal(0.0, 2.0, n)
    boundaries = np.arange(0, n, 8**5)
    batches = []
    for size in (16_384, 50_000, 16_383, 200_000):
        near = (rng.choice(boundaries, size // 2) + rng.integers(-40, 40, size // 2)) % n
        idx = np.concatenate([near, rng.integers(0, n, size - size // 2)])
        rng.shuffle(idx)
        val = rng.lognormal(0.0, 2.0, size) * (rng.random(size) < 0.9)
        batches.append((idx, val))
    final = initial
    for idx, val in batches:
        final = last_write_wins_fast(final, idx, val)
    trees = []
    for count in (1, 2, 3):
        threads(count)
        tree = SumTree(initial, seed=14)
        for idx, val in batches:
            tree.update(idx, val)
        trees.append(tree)
    assert np.array_equal(trees[0].weights().numpy(), final)
    assert math.isclose(trees[0].total, math.fsum(final), rel_tol=1e-12)
    for tree in trees:
        assert_same_structure(tree, SumTree(final, seed=14), draws=20_000)


@pytest.mark.parametrize("layout", ["one_bin", "two_clusters", "last_leaves", "sorted"])
def test_large_skewed_batches_split_across_threads(threads, layout):
    # A large batch is split across threads by leaf range, with ranges chosen from a sample
    # of the batch: batches packed into one range, two distant clusters, the very last
    # leaves or sorted order must give the same tree as a fresh build from the
    # last-write-wins reference, whatever the thread count (including more threads than
    # occupied ranges).
    n = 1_000_003
    rng = np.random.default_rng(seed_of("skewed", layout))
    initial = rng.random(n)
    size = 40_000
    if layout == "one_bin":
        idx = rng.integers(500_000, 500_300, size)
    elif layout == "two_clusters":
        idx = np.where(
            rng.random(size) < 0.5, rng.integers(0, 700, size), rng.integers(n - 700, n, size)
        )
    elif layout == "last_leaves":
        idx = n - 1 - rng.integers(0, 5, size)
    else:
        idx = np.sort(rng.integers(0, n, size))
    val = rng.lognormal(0.0, 1.0, size)
    final = last_write_wins_fast(initial, idx, val)
    for count in (1, 2, 3, 5):
        threads(count)
        tree = SumTree(initial, seed=3)
        tree.update(idx, val)
        assert np.array_equal(tree.weights().numpy(), final)
        assert_same_structure(tree, SumTree(final, seed=3), draws=5_000)


def test_large_overflowing_batch_with_duplicates_changes_nothing(threads):
    threads(2)
    n = 100_000
    rng = np.random.default_rng(seed_of("large-overflow"))
    w = rng.random(n)
    tree, twin = SumTree(w, seed=15), SumTree(w, seed=15)
    idx = np.concatenate([rng.integers(0, n, 30_000), np.arange(32_760, 32_780)])
    idx = np.concatenate([idx, idx[::-1]])  # every index twice
    val = np.full(len(idx), 1e304)
    with pytest.raises(OverflowError, match="overflow"):
        tree.update(idx, val)
    assert_same_structure(tree, twin, draws=20_000)
    # The same batch with small weights then applies normally.
    tree.update(idx, val * 1e-304)
    assert np.array_equal(tree.weights().numpy(), last_write_wins_fast(w, idx, val * 1e-304))
