"""The random stream: Philox4x64-10 against numpy, exact replays of draws from the Philox
words, thread-count independence, how successive calls continue the stream, and calls from
several Python threads."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from helpers import (
    counter_of,
    last_write_wins,
    philox_words,
    replay,
    replay_alias_uniform,
    replay_sum_tree,
    seed_of,
)
from process_helpers import result_of_forked_child

import fastis
from fastis import _C

PHILOX_CASES = [
    (1, 0),
    (2, 0),
    (5, 123),
    (2**32, 2**32 + 1),
    (2**63, 2**64 - 1),
    (2**64 - 1, 7),
    (12345678901234567, 9876543210987654321),
]


@pytest.mark.parametrize(("block", "seed"), PHILOX_CASES)
def test_philox_matches_numpy(block, seed):
    words = _C.philox4x64(block, seed)
    expected = np.random.Philox(key=seed, counter=block - 1).random_raw(4)
    assert tuple(words) == tuple(int(x) for x in expected)
    assert all(isinstance(w, int) and 0 <= w < 2**64 for w in words)


def test_philox_block_zero_is_numpy_counter_wrap():
    # A fresh structure draws from block 0, which numpy reaches from its last counter value.
    expected = np.random.Philox(key=42, counter=2**256 - 1).random_raw(4)
    assert tuple(_C.philox4x64(0, 42)) == tuple(int(x) for x in expected)


def test_philox_words_helper_agrees_with_core():
    # The helper that every replay below relies on reads consecutive blocks from numpy.
    words = philox_words(seed=77, counter=3, count=10)
    blocks = [_C.philox4x64(b, 77) for b in (3, 4, 5)]
    assert words == [blocks[d // 4][d % 4] for d in range(10)]


@pytest.mark.parametrize("weight", [1.0, 1e-300, 1e300, 0.375])
def test_single_item_always_draws_zero(structure, weight):
    obj = structure([weight], seed=5)
    idx, prob = obj.sample(1001, with_probabilities=True)
    assert torch.equal(idx, torch.zeros(1001, dtype=torch.int64))
    assert torch.equal(prob, torch.ones(1001, dtype=torch.float64))
    assert obj.probabilities([0]).item() == 1.0


# Sizes around the 8-wide lines of the tree: one level (n <= 8), two, three, four levels.
REPLAY_SIZES = [1, 2, 7, 8, 9, 63, 64, 65, 100, 511, 512, 513, 4097]


@pytest.mark.parametrize("n", REPLAY_SIZES)
def test_sum_tree_exact_replay(n):
    # Small integer weights (about a third zero) keep every partial sum exact, so the
    # tree's descent must agree exactly with a flat float64 cumsum search.
    rng = np.random.default_rng(seed_of("replay", n))
    w = rng.integers(0, 10, n).astype(np.float64) * (rng.random(n) < 0.66)
    w[rng.integers(n)] = 5.0  # a positive total
    seed = seed_of("replay-seed", n) * 2**31 + 12345
    tree = fastis.SumTree(w, seed=seed)
    first = tree.sample(1003).numpy()
    assert np.array_equal(first, replay_sum_tree(w, seed, 0, 1003))
    # The second call starts at block ceil(1003 / 4) = 251.
    assert counter_of(tree) == 251
    second = tree.sample(50).numpy()
    assert np.array_equal(second, replay_sum_tree(w, seed, 251, 50))
    assert np.all(w[first] > 0) and np.all(w[second] > 0)


@pytest.mark.parametrize("n", [9, 65, 513, 4097])
def test_sum_tree_exact_replay_after_updates(n):
    # The same replay on a tree filled and rewritten by batched updates (with repeated
    # indices): the internal sums after updates must equal those of a fresh build.
    rng = np.random.default_rng(seed_of("replay-updates", n))
    tree = fastis.SumTree.zeros(n, seed=99)
    w = np.zeros(n)
    for size in (n, n // 3 + 1, 5, 1, 2 * n):
        idx = rng.integers(0, n, size)
        val = rng.integers(0, 12, size).astype(np.float64)
        tree.update(idx, val)
        w = last_write_wins(w, idx, val)
    if w.sum() == 0:
        tree.update([n - 1], [3.0])
        w[n - 1] = 3.0
    assert np.array_equal(tree.weights().numpy(), w)
    assert np.array_equal(tree.sample(777).numpy(), replay_sum_tree(w, 99, 0, 777))


@pytest.mark.parametrize("n", [1, 2, 3, 1000, 2**20 + 7])
def test_alias_table_exact_replay_equal_weights(n):
    # With equal weights every bucket keeps its own item: a draw is floor(r * n / 2^64).
    table = fastis.AliasTable(np.ones(n), seed=2024)
    table.sample(3)  # the next call starts at block 1
    got = table.sample(2001).numpy()
    assert np.array_equal(got, replay_alias_uniform(n, 2024, 1, 2001))


def test_alias_table_exact_replay_two_items():
    # Weights [1, 3]: bucket 0 keeps item 0 with probability 0.5 and otherwise aliases item
    # 1; bucket 1 always keeps item 1. The bucket is the top bit of r, the position inside
    # it the remaining 63 bits, compared as (low word >> 11) * 2^-53 < keep.
    table = fastis.AliasTable([1.0, 3.0], seed=31337)
    got = table.sample(4000).numpy()
    expected = []
    for r in philox_words(31337, 0, 4000):
        bucket, within = divmod(r * 2, 2**64)
        if bucket == 1:
            expected.append(1)
        else:
            expected.append(0 if (within >> 11) * 2.0**-53 < 0.5 else 1)
    assert np.array_equal(got, np.array(expected))


@pytest.mark.parametrize("with_probabilities", [False, True])
@pytest.mark.parametrize("k", [1, 1000, 4099, 300_000])
def test_same_indices_whatever_the_thread_count(structure, threads, with_probabilities, k):
    # k spans one call on the calling thread, a few pool pieces and many pieces.
    rng = np.random.default_rng(7)
    w = rng.lognormal(0.0, 1.5, 50_000)
    w[::7] = 0.0
    results = []
    for count in (1, 2, 3, 5):
        threads(count)
        assert fastis.get_num_threads() == count
        obj = structure(w, seed=123456789)
        obj.sample(5)  # start the call under test at a nonzero counter
        results.append(obj.sample(k, with_probabilities=with_probabilities))
    for other in results[1:]:
        if with_probabilities:
            assert torch.equal(results[0][0], other[0])
            assert torch.equal(results[0][1], other[1])
        else:
            assert torch.equal(results[0], other)
    idx = (results[0][0] if with_probabilities else results[0]).numpy()
    assert np.all(w[idx] > 0)


def _draw_in_child(structure, w):
    fastis.set_num_threads(2)
    return structure(w, seed=4).sample(5000).numpy()


def test_pool_works_in_a_forked_child(structure, threads):
    # DataLoader workers are forked: a child has none of the parent's pool threads and must
    # start its own instead of waiting on threads that do not exist.
    w = np.random.default_rng(3).random(20_000)
    threads(2)
    expected = structure(w, seed=4).sample(5000).numpy()  # the parent's pool is running
    assert np.array_equal(result_of_forked_child(_draw_in_child, structure, w), expected)


def test_build_is_independent_of_thread_count(structure, threads):
    # Large enough for several ingest chunks and a parallel tree rebuild; the total is
    # summed in fixed chunks, so it must be bit-identical, and so must the draws.
    rng = np.random.default_rng(8)
    w = rng.lognormal(0.0, 3.0, 2**20 + 3)
    built = []
    for count in (1, 2):
        threads(count)
        built.append(structure(w, seed=11))
    assert built[0].total == built[1].total
    assert math.isclose(built[0].total, math.fsum(w), rel_tol=1e-12)
    threads(2)
    assert torch.equal(built[0].sample(100_000), built[1].sample(100_000))


def test_set_num_threads_round_trip(threads):
    threads(1)
    assert fastis.get_num_threads() == 1
    threads(3)
    assert fastis.get_num_threads() == 3
    with pytest.raises(ValueError, match="at least 1"):
        fastis.set_num_threads(0)
    assert fastis.get_num_threads() == 3


@pytest.mark.parametrize(("a", "b"), [(4, 9), (8, 1), (1024, 333), (40_000, 70_001)])
def test_calls_continue_the_stream_when_first_is_multiple_of_four(structure, a, b):
    w = np.random.default_rng(3).random(997)
    split = structure(w, seed=8)
    whole = structure(w, seed=8)
    first, second = split.sample(a), split.sample(b)
    joined = whole.sample(a + b)
    assert torch.equal(torch.cat([first, second]), joined)


@pytest.mark.parametrize(("a", "b"), [(1, 9), (2, 40), (3, 4), (5, 100), (1023, 333)])
def test_each_call_starts_a_new_block(structure, a, b):
    # A call of k draws consumes ceil(k / 4) whole blocks: the words left over in the last
    # block are skipped, so the next call does not continue one long sample(a + b).
    w = np.random.default_rng(4).random(100_003)
    split = structure(w, seed=9)
    first, second = split.sample(a), split.sample(b)
    assert counter_of(split) == math.ceil(a / 4) + math.ceil(b / 4)
    padded = 4 * math.ceil(a / 4)
    reference = structure(w, seed=9).sample(padded + b)
    assert torch.equal(first, reference[:a])
    assert torch.equal(second, reference[padded:])
    naive = structure(w, seed=9).sample(a + b)
    assert not torch.equal(second, naive[a:])


def test_different_seeds_give_different_draws(structure):
    w = np.ones(10_000)
    a = structure(w, seed=1).sample(100)
    b = structure(w, seed=2).sample(100)
    c = structure(w, seed=1).sample(100)
    assert torch.equal(a, c)
    assert not torch.equal(a, b)


def test_seed_none_follows_torch_manual_seed(structure):
    torch.manual_seed(1234)
    first = structure([1.0, 2.0, 3.0])
    torch.manual_seed(1234)
    second = structure([1.0, 2.0, 3.0])
    torch.manual_seed(1235)
    third = structure([1.0, 2.0, 3.0])
    assert first.seed == second.seed != third.seed
    assert 0 <= first.seed < 2**64
    assert torch.equal(first.sample(64), second.sample(64))


@pytest.mark.parametrize("seed", [0, 1, 2**63, 2**64 - 1, np.uint64(2**64 - 1), torch.tensor(5)])
def test_seed_range(structure, seed):
    # Equal weights, so that both structures can be replayed exactly from the Philox words.
    obj = structure(np.ones(6), seed=seed)
    assert obj.seed == int(seed)
    assert np.array_equal(obj.sample(41).numpy(), replay(structure, np.ones(6), int(seed), 0, 41))


def test_calls_from_python_threads_take_whole_blocks(structure):
    # Each call holds the object's lock: concurrent calls must each get a disjoint run of
    # blocks, i.e. exactly the results of some sequential order of the same calls.
    w = np.random.default_rng(5).random(5000)
    shared = structure(w, seed=21)
    calls, k = 64, 1024
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: shared.sample(k).numpy().tobytes(), range(calls)))
    twin = structure(w, seed=21)
    sequential = [twin.sample(k).numpy().tobytes() for _ in range(calls)]
    assert sorted(results) == sorted(sequential)
    assert counter_of(shared) == counter_of(twin) == calls * k // 4


def test_concurrent_updates_and_draws():
    # Threads updating disjoint index sets while others draw: the final weights are the
    # union of the writes, the total is exact, and every draw is a valid index.
    n = 4000
    tree = fastis.SumTree(np.ones(n), seed=3)
    rng = np.random.default_rng(6)
    parts = np.array_split(rng.permutation(n), 8)
    values = [rng.random(len(p)) + 0.5 for p in parts]

    def write(j):
        for idx, val in zip(np.array_split(parts[j], 10), np.array_split(values[j], 10)):
            tree.update(idx, val)

    def draw():
        return tree.sample(2048).numpy()

    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = []
        for j in range(8):
            futures.append(pool.submit(draw))
            futures.append(pool.submit(write, j))
        results = [f.result() for f in futures]
    draws = [r for r in results if r is not None]
    expected = np.ones(n)
    for p, v in zip(parts, values):
        expected[p] = v
    assert np.array_equal(tree.weights().numpy(), expected)
    assert math.isclose(tree.total, math.fsum(expected), rel_tol=1e-12)
    assert len(draws) == 8
    assert all(d.min() >= 0 and d.max() < n for d in draws)
