"""Every kind of bad input: the right exception, a message that names the problem, and
(where a structure exists) no change at all: same weights, total, seed and counter, and the
same next draws as an untouched twin built with the same seed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import assert_same_structure
from process_helpers import run_python

import fastis
from fastis import AliasTable, SumTree

NAN, INF = float("nan"), float("inf")
BASE = np.array([0.5, 1.0, 0.0, 2.0, 3.0])  # n = 5
SEED = 77
OTHER_KIND = {SumTree: AliasTable, AliasTable: SumTree}


def meta(values, dtype=torch.float64):
    return torch.tensor(values, dtype=dtype, device="meta")


def twins(structure, weights=BASE):
    """A structure and its untouched twin, both with a nonzero generator counter."""
    obj, twin = structure(weights, seed=SEED), structure(weights, seed=SEED)
    obj.sample(3)
    twin.sample(3)
    return obj, twin


# ------------------------------------------------------------------- constructors

CONSTRUCTOR_CASES = [
    ("nan", [1.0, NAN], ValueError, r"weights\[1\] is NaN"),
    ("nan-float32", np.array([1, 2, 3, NAN], dtype=np.float32), ValueError, r"\[3\] is NaN"),
    ("nan-tensor", torch.tensor([NAN, 1.0]), ValueError, "NaN"),
    ("nan-bfloat16", torch.tensor([1.0, NAN], dtype=torch.bfloat16), ValueError, "NaN"),
    ("+inf", [1.0, 2.0, INF], ValueError, r"\+inf"),
    ("-inf", [-INF, 2.0], ValueError, "-inf"),
    ("+inf-float32", np.array([np.inf], dtype=np.float32), ValueError, r"\+inf"),
    ("negative", [1.0, -0.5], ValueError, r"weights\[1\] is negative"),
    ("negative-tiny", [1.0, -5e-324], ValueError, "negative"),
    ("negative-float32", np.array([-1.0], dtype=np.float32), ValueError, "negative"),
    ("negative-int", np.array([3, -2]), ValueError, "negative"),
    ("negative-tensor", torch.tensor([3.0, -2.0]), ValueError, "negative"),
    ("empty-list", [], ValueError, r"n = 0"),
    ("empty-array", np.array([], dtype=np.float32), ValueError, r"n = 0"),
    ("2-D", np.ones((2, 3)), ValueError, "1-D"),
    ("2-D-tensor", torch.ones(2, 3), ValueError, "1-D"),
    ("2-D-list", [[1.0], [2.0]], ValueError, "1-D"),
    ("0-D-array", np.array(1.0), ValueError, "1-D"),
    ("0-D-tensor", torch.tensor(1.0), ValueError, "1-D"),
    ("scalar", 5.0, TypeError, "1-D array"),
    ("string", "abc", TypeError, "1-D array"),
    ("none", None, TypeError, "1-D array"),
    ("bools", [True, False], TypeError, "boolean"),
    ("bool-array", np.array([True, True]), TypeError, "boolean"),
    ("bool-tensor", torch.tensor([True, True]), TypeError, "boolean"),
    ("complex", np.array([1 + 1j]), TypeError, "real"),
    ("complex-tensor", torch.tensor([1 + 1j]), TypeError, "real"),
    ("strings", ["a", "b"], TypeError, "real"),
    ("meta", meta([1.0, 2.0]), ValueError, "meta"),
    ("overflow", [1e308, 1e308], OverflowError, "overflow"),
    ("overflow-many", np.full(1000, 1e306), OverflowError, "overflow"),
]


@pytest.mark.parametrize(
    ("weights", "exc", "match"),
    [c[1:] for c in CONSTRUCTOR_CASES],
    ids=[c[0] for c in CONSTRUCTOR_CASES],
)
def test_constructor_rejects(structure, weights, exc, match):
    with pytest.raises(exc, match=match):
        structure(weights, seed=1)


@pytest.mark.parametrize(
    ("seed", "exc", "match"),
    [
        (-1, ValueError, ">= 0"),
        (2**64, ValueError, "2\\*\\*64"),
        (1.5, TypeError, "integer"),
        ("1", TypeError, "integer"),
        (True, TypeError, "integer"),
        (torch.tensor(1.0), TypeError, "integer"),
    ],
)
def test_constructor_rejects_bad_seed(structure, seed, exc, match):
    with pytest.raises(exc, match=match):
        structure([1.0, 2.0], seed=seed)


def test_alias_table_rejects_all_zero_weights():
    with pytest.raises(ValueError, match="zero"):
        AliasTable([0.0, 0.0, 0.0], seed=1)
    with pytest.raises(ValueError, match="zero"):
        AliasTable(np.zeros(100_000, dtype=np.float32), seed=1)


@pytest.mark.parametrize(
    ("n", "exc", "match"),
    [
        (0, ValueError, r"n = 0"),
        (-1, ValueError, ">= 0"),
        (2.0, TypeError, "integer"),
        (True, TypeError, "integer"),
        ("3", TypeError, "integer"),
    ],
)
def test_sum_tree_zeros_rejects(n, exc, match):
    with pytest.raises(exc, match=match):
        SumTree.zeros(n, seed=1)


def test_constructor_never_builds_an_infinite_total(structure):
    # The float64 sum of these weights is inf (max + 2^970 rounds up to inf: a tie, and
    # max is odd). The constructor must raise OverflowError, as it does for [1e308, 1e308],
    # or hold a finite total; a structure whose total is inf cannot draw correctly.
    big = np.finfo(np.float64).max
    w = np.zeros(16)
    w[1] = big
    w[8] = w[9] = 2.0**969
    try:
        obj = structure(w, seed=1)
    except OverflowError:
        return
    assert math.isfinite(obj.total), f"{structure.__name__} was built with total {obj.total}"
    assert set(obj.sample(1000).tolist()) <= {1, 8, 9}


# --------------------------------------------------------- calls on a structure

SHARED_CASES = [
    ("k-negative", lambda o: o.sample(-1), ValueError, ">= 0"),
    ("k-negative-probs", lambda o: o.sample(-4, with_probabilities=True), ValueError, ">= 0"),
    ("k-float", lambda o: o.sample(2.0), TypeError, "integer"),
    ("k-np-float", lambda o: o.sample(np.float64(2.0)), TypeError, "integer"),
    ("k-float-tensor", lambda o: o.sample(torch.tensor(2.0)), TypeError, "integer"),
    ("k-bool", lambda o: o.sample(True), TypeError, "integer"),
    ("k-str", lambda o: o.sample("3"), TypeError, "integer"),
    ("k-none", lambda o: o.sample(None), TypeError, "integer"),
    (
        "prob-out-of-range",
        lambda o: o.probabilities([0, 5]),
        IndexError,
        r"\[1\] = 5 is out of range",
    ),
    ("prob-negative", lambda o: o.probabilities([-1]), IndexError, "negative"),
    (
        "prob-negative-i32",
        lambda o: o.probabilities(np.array([2, -3], np.int32)),
        IndexError,
        "negative",
    ),
    (
        "prob-uint64-huge",
        lambda o: o.probabilities(np.array([2**63], np.uint64)),
        IndexError,
        "int64",
    ),
    ("prob-float", lambda o: o.probabilities([0.0]), TypeError, "integers"),
    ("prob-float-array", lambda o: o.probabilities(np.array([1.0])), TypeError, "integers"),
    ("prob-float-tensor", lambda o: o.probabilities(torch.tensor([1.0])), TypeError, "integers"),
    ("prob-bool", lambda o: o.probabilities([True]), TypeError, "integers"),
    ("prob-bool-tensor", lambda o: o.probabilities(torch.tensor([True])), TypeError, "integers"),
    ("prob-2-D", lambda o: o.probabilities([[0, 1]]), ValueError, "1-D"),
    ("prob-0-D", lambda o: o.probabilities(np.array(1)), ValueError, "1-D"),
    ("prob-meta", lambda o: o.probabilities(meta([0], torch.int64)), ValueError, "meta"),
    ("prob-scalar", lambda o: o.probabilities(1), TypeError, "1-D"),
    ("weights-out-of-range", lambda o: o.weights([5]), IndexError, "out of range"),
    ("weights-negative", lambda o: o.weights([-2]), IndexError, "negative"),
    ("weights-2-D", lambda o: o.weights(np.zeros((1, 1), np.int64)), ValueError, "1-D"),
    ("weights-float", lambda o: o.weights([0.5]), TypeError, "integers"),
]


@pytest.mark.parametrize(
    ("call", "exc", "match"), [c[1:] for c in SHARED_CASES], ids=[c[0] for c in SHARED_CASES]
)
def test_bad_call_changes_nothing(structure, call, exc, match):
    obj, twin = twins(structure)
    with pytest.raises(exc, match=match):
        call(obj)
    assert_same_structure(obj, twin)


UPDATE_CASES = [
    ("nan", [1], [NAN], ValueError, r"weights\[0\] is NaN"),
    ("nan-late", [0, 1, 2], [1.0, 2.0, NAN], ValueError, r"weights\[2\] is NaN"),
    ("nan-float32", [0], np.array([NAN], np.float32), ValueError, "NaN"),
    ("nan-tensor", [0], torch.tensor([NAN]), ValueError, "NaN"),
    ("nan-scalar", [0, 1], NAN, ValueError, "NaN"),
    ("+inf", [3, 1], [1.0, INF], ValueError, r"\+inf"),
    ("+inf-scalar", [3], INF, ValueError, r"\+inf"),
    ("-inf", [3], [-INF], ValueError, "-inf"),
    ("negative", [0, 4], [1.0, -2.0], ValueError, r"weights\[1\] is negative"),
    ("negative-scalar", [0], -1.0, ValueError, "negative"),
    ("negative-float32", [0], np.array([-1], np.float32), ValueError, "negative"),
    ("negative-int", [0], np.array([-7]), ValueError, "negative"),
    ("index-out-of-range", [0, 5], [1.0, 1.0], IndexError, r"indices\[1\] = 5 is out of range"),
    ("index-far-out", [2**40], [1.0], IndexError, "out of range"),
    ("index-negative", [-1], [1.0], IndexError, "negative"),
    ("index-negative-i32", np.array([-5], np.int32), [1.0], IndexError, "negative"),
    ("index-uint64-huge", np.array([2**64 - 1], np.uint64), [1.0], IndexError, "int64"),
    ("length-mismatch", [0, 1], [1.0], ValueError, "length mismatch"),
    ("length-mismatch-2", [0], [1.0, 2.0], ValueError, "length mismatch"),
    ("length-mismatch-empty", [], [1.0], ValueError, "length mismatch"),
    ("indices-2-D", [[0, 1]], [1.0, 2.0], ValueError, "1-D"),
    ("weights-2-D", [0, 1], [[1.0, 2.0]], ValueError, "1-D"),
    ("weights-2-D-tensor", [0], torch.ones(1, 1), ValueError, "1-D"),
    ("indices-float", [0.0], [1.0], TypeError, "integers"),
    ("indices-float-array", np.array([0.0, 1.0]), [1.0, 2.0], TypeError, "integers"),
    ("indices-float-tensor", torch.tensor([0.0]), [1.0], TypeError, "integers"),
    ("indices-bool", [True], [1.0], TypeError, "integers"),
    ("indices-bool-tensor", torch.tensor([False]), [1.0], TypeError, "integers"),
    ("indices-scalar", 0, [1.0], TypeError, "1-D"),
    ("weights-bool", [0], [True], TypeError, "boolean"),
    ("weights-str", [0], ["x"], TypeError, "real"),
    ("indices-meta", meta([0], torch.int64), [1.0], ValueError, "meta"),
    ("weights-meta", [0], meta([1.0]), ValueError, "meta"),
    # A 0-d tensor is broadcast like a scalar weight; on the wrong device it is still
    # a wrong-device tensor (found: numpy raises TypeError from inside np.full).
    ("weights-meta-scalar", [0], meta(1.0), ValueError, "meta"),
    ("overflow", [0, 1], [1e308, 1e308], OverflowError, "overflow"),
    ("overflow-scalar", [0, 1, 2], 1e308, OverflowError, "overflow"),
    # Repeated indices: the undo must restore each item's value from before the batch.
    ("overflow-duplicates", [0, 0, 1, 1], [3.0, 1e308, 7.0, 1e308], OverflowError, "overflow"),
]


@pytest.mark.parametrize(
    ("indices", "weights", "exc", "match"),
    [c[1:] for c in UPDATE_CASES],
    ids=[c[0] for c in UPDATE_CASES],
)
def test_bad_update_changes_nothing(indices, weights, exc, match):
    tree, twin = twins(SumTree)
    with pytest.raises(exc, match=match):
        tree.update(indices, weights)
    assert_same_structure(tree, twin)


def test_overflow_on_a_large_tree_changes_nothing():
    # A batch large enough to take the tree's sweep-the-level path when recomputing.
    w = np.random.default_rng(1).random(100_000)
    tree, twin = twins(SumTree, w)
    idx = np.arange(0, 100_000, 3)
    with pytest.raises(OverflowError, match="overflow"):
        tree.update(idx, np.full(len(idx), 1e305))
    assert_same_structure(tree, twin, draws=10_000)


def test_sampling_an_all_zero_tree_raises_and_changes_nothing():
    tree, twin = SumTree.zeros(5, seed=SEED), SumTree.zeros(5, seed=SEED)
    with pytest.raises(ValueError, match="all weights are zero"):
        tree.sample(1)
    with pytest.raises(ValueError, match="all weights are zero"):
        tree.sample(1000, with_probabilities=True)
    with pytest.raises(ValueError, match="zero"):
        tree.probabilities([0])
    assert tree.weights([4]).tolist() == [0.0]  # reading raw weights is fine
    assert_same_structure(tree, twin)
    # The failed calls did not advance the generator: after the same update, the next draws
    # equal the twin's.
    for t in (tree, twin):
        t.update([1, 3], [1.0, 2.0])
    assert_same_structure(tree, twin)


# ---------------------------------------------------------------- state dicts


def state_missing(key):
    def make(obj):
        state = obj.state_dict()
        del state[key]
        return state

    return make


def state_with(**changes):
    def make(obj):
        return {**obj.state_dict(), **changes}

    return make


STATE_CASES = [
    (
        "other-kind",
        lambda o: OTHER_KIND[type(o)](BASE, seed=SEED).state_dict(),
        ValueError,
        "not a (SumTree|AliasTable)",
    ),
    ("kind-renamed", state_with(kind="Foo"), ValueError, "not a"),
    ("other-size", lambda o: type(o)(np.ones(6), seed=SEED).state_dict(), ValueError, "6 weights"),
    ("missing-kind", state_missing("kind"), ValueError, "lacks"),
    ("missing-version", state_missing("version"), ValueError, "lacks"),
    ("missing-weights", state_missing("weights"), ValueError, "lacks"),
    ("missing-seed", state_missing("seed"), ValueError, "lacks"),
    ("missing-counter", state_missing("counter"), ValueError, "lacks"),
    ("version-2", state_with(version=2), ValueError, "version"),
    ("version-0", state_with(version=0), ValueError, "version"),
    ("version-str", state_with(version="1"), ValueError, "version"),
    ("weights-nan", state_with(weights=torch.tensor([0.5, 1, NAN, 2, 3])), ValueError, "NaN"),
    ("weights-negative", state_with(weights=[0.5, 1, 0, -2, 3]), ValueError, "negative"),
    ("weights-2-D", state_with(weights=torch.ones(5, 1)), ValueError, "1-D"),
    ("weights-overflow", state_with(weights=[1e308, 1e308, 0, 0, 0]), OverflowError, "overflow"),
    ("counter-negative", state_with(counter=-1), ValueError, ">= 0"),
    ("counter-too-big", state_with(counter=2**64), ValueError, "2\\*\\*64"),
    ("counter-float", state_with(counter=1.0), TypeError, "integer"),
    ("seed-negative", state_with(seed=-1), ValueError, ">= 0"),
    ("seed-too-big", state_with(seed=2**64), ValueError, "2\\*\\*64"),
    ("not-a-dict", lambda o: list(o.state_dict().items()), TypeError, "dict"),
]


@pytest.mark.parametrize(
    ("case", "make_state", "exc", "match"), STATE_CASES, ids=[c[0] for c in STATE_CASES]
)
def test_bad_state_dict_changes_nothing(structure, case, make_state, exc, match):
    obj, twin = twins(structure)
    state = make_state(obj)
    with pytest.raises(exc, match=match):
        obj.load_state_dict(state)
    assert_same_structure(obj, twin)
    if case != "other-size":  # a new structure may have any size
        with pytest.raises(exc, match=match):
            type(obj).from_state_dict(state)


def test_all_zero_state_dict_of_an_alias_table_is_rejected():
    obj, twin = twins(AliasTable)
    with pytest.raises(ValueError, match="zero"):
        obj.load_state_dict({**obj.state_dict(), "weights": torch.zeros(5)})
    assert_same_structure(obj, twin)


# ---------------------------------------------------------------------- sizes and settings
@pytest.mark.parametrize("n", [2**60 + 1, 2**63, 2**64 - 1, 2**64, 2**70])
def test_zeros_beyond_the_largest_tree_is_refused(n):
    with pytest.raises(ValueError, match="at most 2\\*\\*60"):
        SumTree.zeros(n)


def test_a_wrapped_size_never_builds_a_tree_that_crashes_later():
    # Once, zeros(2**64 - 1) rounded its size to a 104-byte tree, and the next read or update
    # segfaulted: run where a crash fails the test, not the test run.
    out = run_python(
        "import fastis\n"
        "for n in (2**64 - 1, 2**64 - 8, 2**61):\n"
        "    try:\n"
        "        t = fastis.SumTree.zeros(n)\n"
        "    except ValueError:\n"
        "        print('refused')\n"
        "        continue\n"
        "    t.weights([0]); t.update([5], [1.0]); print('built')\n"
        "from fastis import _C\n"
        "try:\n"
        "    _C.SumTree.zeros(2**61)\n"
        "except ValueError:\n"
        "    print('core refused')\n")
    assert out.split() == ["refused"] * 3 + ["core", "refused"]


@pytest.mark.parametrize(("k", "exc", "match"), [
    (2**63, OverflowError, "at most 2\\*\\*62"), (2**62 + 1, OverflowError, "2\\*\\*62"),
    (torch.tensor([3]), TypeError, "single integer"), (np.array([3]), TypeError, "single"),
    (3.0, TypeError, "integer"), (True, TypeError, "integer"), ("3", TypeError, "integer")])
def test_bad_draw_counts_are_refused_and_change_nothing(structure, k, exc, match):
    obj, twin = twins(structure)
    with pytest.raises(exc, match=match):
        obj.sample(k)
    assert_same_structure(obj, twin)


def test_a_draw_too_large_for_memory_raises_memory_error_and_changes_nothing(structure):
    obj, twin = twins(structure)
    with pytest.raises(MemoryError):
        obj.sample(2**45)  # 256 TiB of indices
    assert_same_structure(obj, twin)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -1.0, np.float32("nan")])
def test_a_bad_scalar_weight_is_refused_even_without_indices(bad):
    tree, twin = twins(SumTree)
    with pytest.raises(ValueError, match="finite and non-negative"):
        tree.update([], bad)
    assert_same_structure(tree, twin)


@pytest.mark.parametrize(("threads", "exc", "match"), [
    (100_000, ValueError, "at most"), (fastis.settings.MAX_THREADS + 1, ValueError, "at most"),
    (0, ValueError, "at least 1"), (-3, ValueError, ">= 0"), (2.0, TypeError, "integer"),
    (True, TypeError, "integer"), ("2", TypeError, "integer"), (None, TypeError, "integer")])
def test_bad_thread_counts_are_refused_and_change_nothing(threads, exc, match):
    before = fastis.get_num_threads()
    with pytest.raises(exc, match=match):
        fastis.set_num_threads(threads)
    assert fastis.get_num_threads() == before


def test_the_largest_thread_count_is_accepted(threads):
    threads(fastis.settings.MAX_THREADS)
    assert fastis.get_num_threads() == fastis.settings.MAX_THREADS
    tree = SumTree(np.ones(1 << 16), seed=0)  # a large call on that many threads
    assert len(tree.sample(1 << 16)) == 1 << 16


@pytest.mark.parametrize(("nbytes", "exc"), [(2**64, OverflowError), (2**63, OverflowError),
                                             (1.5, TypeError), ("1", TypeError)])
def test_bad_cache_limits_are_refused_and_change_nothing(nbytes, exc):
    before = fastis.set_cache_limit(1 << 30)
    try:
        with pytest.raises(exc):
            fastis.set_cache_limit(nbytes)
        assert fastis.set_cache_limit(1 << 30) == 1 << 30
    finally:
        fastis.set_cache_limit(before)
