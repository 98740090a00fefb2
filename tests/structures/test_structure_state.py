"""state_dict / load_state_dict / from_state_dict, pickling, torch.save and copies: a
restored structure continues with exactly the draws the original would have made."""

from __future__ import annotations

import copy
import io
import pickle

import numpy as np
import pytest
import torch
from helpers import assert_same_structure, counter_of, replay

from fastis import AliasTable, SumTree


def via_from_state_dict(obj):
    return type(obj).from_state_dict(obj.state_dict())


def via_load_state_dict(obj):
    # Into a structure of the same size but different weights and seed.
    target = type(obj)(np.arange(1, len(obj) + 1, dtype=np.float64), seed=obj.seed + 1)
    target.sample(11)
    target.load_state_dict(obj.state_dict())
    return target


def via_pickle(obj):
    return pickle.loads(pickle.dumps(obj))


def via_pickled_state(obj):
    return type(obj).from_state_dict(pickle.loads(pickle.dumps(obj.state_dict())))


def via_torch_save(obj):
    buffer = io.BytesIO()
    torch.save(obj.state_dict(), buffer)
    buffer.seek(0)
    return type(obj).from_state_dict(torch.load(buffer, weights_only=True))


TRANSPORTS = [
    via_from_state_dict,
    via_load_state_dict,
    via_pickle,
    via_pickled_state,
    via_torch_save,
    copy.deepcopy,
    copy.copy,
]


def used_structure(structure, updated: bool):
    rng = np.random.default_rng(17)
    w = rng.lognormal(0.0, 2.0, 1000) * (rng.random(1000) < 0.8)
    obj = structure(w, seed=2**64 - 3)
    obj.sample(5)  # counter 2
    obj.sample(4097, with_probabilities=True)  # counter 2 + 1025
    if updated:
        idx = rng.integers(0, 1000, 300)
        obj.update(idx, rng.random(300))
        obj.update(idx[:10], 0.0)
        obj.sample(1)
    return obj


@pytest.mark.parametrize("transport", TRANSPORTS, ids=lambda t: getattr(t, "__name__", str(t)))
@pytest.mark.parametrize(
    ("structure", "updated"),
    [(SumTree, False), (SumTree, True), (AliasTable, False)],
    ids=["SumTree-built", "SumTree-updated", "AliasTable"],
)
def test_round_trip_continues_identically(structure, updated, transport):
    obj = used_structure(structure, updated)
    restored = transport(obj)
    assert restored is not obj
    assert type(restored) is structure
    assert_same_structure(obj, restored, draws=10_001)
    # And again after both have drawn more (the restored generator keeps going in step).
    assert_same_structure(obj, restored)


def test_state_dict_contents(structure):
    obj = structure([1.0, 0.0, 2.5], seed=42)
    obj.sample(9)
    obj.sample(4)
    state = obj.state_dict()
    assert set(state) == {"kind", "version", "weights", "seed", "counter"}
    assert state["kind"] == structure.__name__
    assert state["version"] == 1
    assert state["seed"] == 42 and isinstance(state["seed"], int)
    assert state["counter"] == 3 + 1 and isinstance(state["counter"], int)
    assert state["weights"].dtype == torch.float64
    assert state["weights"].tolist() == [1.0, 0.0, 2.5]


def test_state_dict_is_a_copy(structure):
    obj = structure([1.0, 2.0, 3.0], seed=1)
    twin = structure([1.0, 2.0, 3.0], seed=1)
    state = obj.state_dict()
    state["weights"][:] = 100.0
    assert_same_structure(obj, twin)
    loaded = structure.from_state_dict(twin.state_dict())
    reference = structure.from_state_dict(twin.state_dict())
    fresh = twin.state_dict()
    loaded.load_state_dict(fresh)
    fresh["weights"][0] = 7.0  # changing the dict after loading changes nothing
    assert_same_structure(loaded, reference)


def test_copies_are_independent():
    tree = SumTree([1.0, 2.0, 3.0], seed=3)
    clone = copy.deepcopy(tree)
    clone.update([0], [50.0])
    clone.sample(7)
    assert tree.weights().tolist() == [1.0, 2.0, 3.0]
    assert counter_of(tree) == 0


@pytest.mark.parametrize(
    "weights",
    [
        [1.0, 1.0, 1.0, 1.0],
        np.ones(4, np.float32),
        torch.ones(4, dtype=torch.bfloat16),
        (1, 1, 1, 1),
    ],
    ids=["list", "float32", "bfloat16", "tuple"],
)
def test_state_weights_of_any_input_type(structure, weights):
    state = {"kind": structure.__name__, "version": 1, "weights": weights, "seed": 5, "counter": 9}
    obj = structure.from_state_dict(state)
    assert obj.weights().tolist() == [1.0] * 4
    assert np.array_equal(obj.sample(20).numpy(), replay(structure, np.ones(4), 5, 9, 20))


@pytest.mark.parametrize("counter", [2**32, 2**63, 2**64 - 2])
def test_full_range_counter_is_kept(structure, counter):
    # The counter is a full 64-bit integer: the next block after a load is exactly `counter`.
    state = {
        "kind": structure.__name__,
        "version": 1,
        "weights": np.ones(7),
        "seed": 123,
        "counter": counter,
    }
    obj = structure.from_state_dict(state)
    assert counter_of(obj) == counter
    assert np.array_equal(obj.sample(4).numpy(), replay(structure, np.ones(7), 123, counter, 4))


def test_load_state_dict_replaces_weights_seed_and_counter():
    tree = SumTree([5.0, 5.0, 5.0], seed=1)
    source = SumTree([1.0, 0.0, 3.0], seed=99)
    source.sample(8)
    tree.load_state_dict(source.state_dict())
    assert tree.weights().tolist() == [1.0, 0.0, 3.0]
    assert tree.seed == 99 and counter_of(tree) == 2 and tree.total == 4.0
    # and it stays a working SumTree
    tree.update([1], [4.0])
    assert tree.total == 8.0


def test_a_counter_that_would_wrap_is_kept_but_draws_nothing(structure):
    # 2**64 - 1 is the last counter a state holds; drawing from it would move the counter
    # past 2**64 - 1, back to 0, and repeat the stream: refused, and nothing changes.
    state = {"kind": structure.__name__, "version": 1, "weights": np.ones(7), "seed": 123,
             "counter": 2**64 - 1}
    obj = structure.from_state_dict(state)
    with pytest.raises(OverflowError, match="wrap"):
        obj.sample(1)
    assert counter_of(obj) == 2**64 - 1
    # One block (up to 4 draws) fits below the end of the range.
    obj = structure.from_state_dict({**state, "counter": 2**64 - 2})
    obj.sample(4)
    assert counter_of(obj) == 2**64 - 1
    with pytest.raises(OverflowError, match="wrap"):
        obj.sample(1)
