"""Recycled memory: structures built from weights reuse the large buffers of freed ones.

A build into recycled memory starts from the freed structure's bytes instead of zeros, so
every test builds on memory dirtied by a structure of the same size with other weights and
compares, bit for bit, against a build into fresh (zeroed) memory: an entry or padding that
a build forgot to write shows up as the freed structure's leftover.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from helpers import WEIGHT_KINDS, assert_same_structure, make_weights, seed_of
from process_helpers import result_of_forked_child

import fastis
from fastis import AliasTable, SumTree

# Above LargeBuffer's mmap threshold (1 MiB of float64), where freed buffers are kept.
LARGE = 140_003


@pytest.fixture(autouse=True)
def default_cache():
    """Each test starts with nothing kept and the default limit, and leaves it so."""
    fastis.empty_cache()
    limit = fastis.set_cache_limit(2 << 30)
    yield
    fastis.set_cache_limit(limit)
    fastis.empty_cache()


def fresh_build(make, weights):
    """make(weights) in zeroed memory: keeping is off, so nothing freed is reused."""
    limit = fastis.set_cache_limit(0)
    try:
        return make(weights)
    finally:
        fastis.set_cache_limit(limit)


def dirty_build(make, weights):
    """make(weights) right after a structure of the same size with other weights was freed:
    its large buffers are that structure's (asserted), small ones most likely too."""
    other = np.random.default_rng(seed_of("dirty", len(weights))).lognormal(0.0, 3.0, len(weights))
    freed = make(other)
    del freed
    kept = fastis.cached_bytes()
    built = make(weights)
    if len(weights) >= LARGE:
        assert fastis.cached_bytes() < kept, "the build did not reuse the freed buffers"
    return built


def cases():
    rng = np.random.default_rng(seed_of("recycled-cases"))
    out = [(f"{kind}-{n}", make_weights(kind, n, rng)) for kind in WEIGHT_KINDS for n in (7, 1025)]
    out += [(f"{kind}-large", make_weights(kind, LARGE, rng)) for kind in WEIGHT_KINDS]
    # Skewed: all the heavies after all the lights, so the sweep's cursors run far apart.
    out.append(("ascending-large", np.sort(rng.lognormal(0.0, 2.0, LARGE))))
    out.append(("descending-large", np.sort(rng.lognormal(0.0, 2.0, LARGE))[::-1].copy()))
    return out


CASES = cases()
IDS = [name for name, _ in CASES]


def alias_entries(table: AliasTable) -> tuple[bytes, bytes]:
    keep, alias = table._core._entries()
    return keep.tobytes(), alias.tobytes()


@pytest.mark.parametrize("name, weights", CASES, ids=IDS)
@pytest.mark.parametrize("threads_count", [1, 2])
@pytest.mark.parametrize("structure", [AliasTable, SumTree], ids=["alias", "tree"])
def test_build_in_recycled_memory_equals_fresh_build(
    structure, name, weights, threads_count, threads
):
    # Whatever a build leaves unwritten (an alias entry; a SumTree's padding, leaves beyond n
    # and nodes beyond each level's last, which must read as zero) shows as a difference in
    # the table, the total or the draws.
    threads(threads_count)

    def make(w):
        return structure(w, seed=5)

    expected = fresh_build(make, weights)
    built = dirty_build(make, weights)
    if structure is AliasTable:
        assert alias_entries(built) == alias_entries(expected)
    idx = np.arange(len(weights))
    assert torch.equal(built.probabilities(idx), expected.probabilities(idx))
    assert_same_structure(built, expected, draws=4099)


@pytest.mark.parametrize("name, weights", CASES, ids=IDS)
def test_wide_alias_table_in_recycled_memory_equals_fresh_build(name, weights):
    def make(w):
        return fastis._C.AliasTable._from_weights_wide(w)

    expected = fresh_build(make, weights)
    built = dirty_build(make, weights)
    assert built._entries()[0].tobytes() == expected._entries()[0].tobytes()
    assert built._entries()[1].tobytes() == expected._entries()[1].tobytes()


def test_zero_tree_never_gets_recycled_memory():
    # SumTree(n) relies on zeroed pages; it must not take a freed structure's buffers.
    freed = SumTree(np.full(LARGE, 3.0))
    del freed
    kept = fastis.cached_bytes()
    assert kept > 0
    tree = SumTree.zeros(LARGE)
    assert fastis.cached_bytes() == kept
    assert tree.total == 0.0
    assert torch.count_nonzero(tree.weights()) == 0


def test_freed_buffers_are_kept_until_emptied():
    n = 300_000
    table = AliasTable(np.ones(n))
    del table
    kept = fastis.cached_bytes()
    # Two buffers of 8 bytes per item (weights, entries), each rounded up to 2 MiB pages
    # plus one page of alignment slack.
    assert 2 * 8 * n <= kept <= 2 * (8 * n + (4 << 20))
    assert fastis.empty_cache() == kept
    assert fastis.cached_bytes() == 0


def test_limit_bounds_what_is_kept():
    n = 300_000
    one_buffer = 8 * n
    assert fastis.set_cache_limit(one_buffer + (4 << 20)) == 2 << 30
    table = AliasTable(np.ones(n))
    del table  # two buffers freed; only one fits
    kept = fastis.cached_bytes()
    assert one_buffer <= kept <= one_buffer + (4 << 20)
    # Lowering the limit unmaps what no longer fits; 0 turns keeping off.
    fastis.set_cache_limit(one_buffer // 2)
    assert fastis.cached_bytes() == 0
    fastis.set_cache_limit(0)
    del_me = SumTree(np.ones(n))
    del del_me
    assert fastis.cached_bytes() == 0


@pytest.mark.parametrize("bad", [-1, -(2**40)])
def test_negative_limit_is_refused_and_changes_nothing(bad):
    fastis.set_cache_limit(12345 << 20)
    with pytest.raises(ValueError, match="cache limit"):
        fastis.set_cache_limit(bad)
    assert fastis.set_cache_limit(2 << 30) == 12345 << 20


@pytest.mark.parametrize("bad", [1.5, "1", None])
def test_non_integer_limit_is_a_type_error(bad):
    with pytest.raises(TypeError):
        fastis.set_cache_limit(bad)
    assert fastis.set_cache_limit(2 << 30) == 2 << 30


@pytest.mark.parametrize("structure", [AliasTable, SumTree], ids=["alias", "tree"])
def test_failed_build_hands_back_recycled_memory(structure):
    # A build that rejects its weights frees what it took, and the next build is correct.
    def make(w):
        return structure(w, seed=3)

    weights = np.random.default_rng(1).lognormal(0.0, 1.0, LARGE)
    freed = make(weights * 2.0)
    del freed
    kept = fastis.cached_bytes()
    bad = weights.copy()
    bad[LARGE - 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        make(bad)
    assert fastis.cached_bytes() == kept
    assert_same_structure(dirty_build(make, weights), fresh_build(make, weights))


def test_concurrent_builds_from_threads(threads):
    # Builds release the GIL: several Python threads take and free recycled buffers at once.
    threads(1)
    rng = np.random.default_rng(seed_of("concurrent"))
    vectors = [rng.lognormal(0.0, 2.0, LARGE) for _ in range(4)]
    expected = [alias_entries(fresh_build(AliasTable, w)) for w in vectors]
    failures = []

    def worker(k: int) -> None:
        for _ in range(6):
            if alias_entries(AliasTable(vectors[k])) != expected[k]:
                failures.append(k)

    workers = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert failures == []
    assert fastis.cached_bytes() <= 2 << 30


def _build_in_child(weights, expected) -> bool:
    ok = fastis.cached_bytes() == 0 and alias_entries(AliasTable(weights)) == expected
    del_me = AliasTable(weights * 3.0)
    del del_me
    return ok and alias_entries(AliasTable(weights)) == expected


def test_forked_child_starts_with_nothing_kept():
    weights = np.random.default_rng(2).lognormal(0.0, 1.0, LARGE)
    expected = alias_entries(fresh_build(AliasTable, weights))
    freed = AliasTable(weights * 5.0)
    del freed
    assert fastis.cached_bytes() > 0
    assert result_of_forked_child(_build_in_child, weights, expected) is True
