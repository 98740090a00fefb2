"""Property-based fuzzing of every sampler: adversarial scores to update() and select()
(every dtype and container, extreme magnitudes, wrong shapes), and corrupted or truncated
state_dicts to load_state_dict(). Each call raises a named error and leaves the sampler as
it was (its state_dict unchanged), or is accepted and the sampler goes on working (its
state round-trips, its next step runs)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from fuzz import FUZZ, NAMED, arrays, corrupted
from hypothesis import given, settings
from hypothesis import strategies as st
from sampler_helpers import ALL, LEARNERS, pending, round_trip, same_state, step, trained


@pytest.mark.parametrize("name", LEARNERS)
@settings(FUZZ, max_examples=40)
@given(data=st.data())
def test_update_takes_valid_scores_or_refuses_and_changes_nothing(name, data):
    sampler = trained(name, steps=2)
    draw, size = pending(sampler)
    scores = data.draw(st.one_of(arrays(size), arrays(), st.floats(allow_nan=True)))
    before = copy.deepcopy(sampler.state_dict())
    try:
        sampler.update(draw, scores)
    except NAMED:
        assert same_state(sampler.state_dict(), before)
        return
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    assert np.isfinite(values).all() and (values >= 0).all() and (values <= 1e30).all()
    assert sampler.step == draw.step + 1
    sampler.load_state_dict(round_trip(sampler.state_dict()))
    step(sampler)


@pytest.mark.parametrize("name", ["UpperBound", "BiasedLoss exact"])
@settings(FUZZ, max_examples=40)
@given(data=st.data())
def test_select_takes_valid_pool_scores_or_refuses_and_changes_nothing(name, data):
    sampler = trained(name, steps=2)
    draw = next(iter(sampler))
    while not sampler.is_pool(draw):
        sampler.update(draw, np.ones(len(draw)))
        draw = next(iter(sampler))
    scores = data.draw(st.one_of(arrays(len(draw)), arrays()))
    before = copy.deepcopy(sampler.state_dict())
    try:
        pick = sampler.select(draw, scores)
    except NAMED:
        assert same_state(sampler.state_dict(), before)
        return
    values = np.asarray(scores, dtype=np.float64)
    assert len(values) == len(draw) and np.isfinite(values).all() and (values >= 0).all()
    assert np.isfinite(pick.weight.numpy()).all() and (pick.weight.numpy() > 0).all()
    if values.sum() > 0:  # a zero score is never picked
        assert (values[pick.rows.numpy()] > 0).all()


@pytest.mark.parametrize("name", ALL)
@settings(FUZZ, max_examples=40)
@given(data=st.data())
def test_a_corrupted_state_is_refused_by_name_or_works(name, data):
    source = trained(name)
    next(iter(source))  # a batch in flight
    state = data.draw(corrupted(round_trip(source.state_dict())))
    target = trained(name, steps=2)
    before = copy.deepcopy(target.state_dict())
    try:
        target.load_state_dict(state)
    except NAMED:
        assert same_state(target.state_dict(), before)
        return
    # Accepted (a harmless change, e.g. a smaller weight in flight): it goes on working.
    target.load_state_dict(round_trip(target.state_dict()))
    step(target)
