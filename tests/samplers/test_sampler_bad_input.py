"""Every sampler under hostile input: scores whose sums or squares would overflow,
corrupted and truncated states, batches it did not draw, scores of the wrong kind, draws
that share buffers, wiring mistakes. Each raises a named error and changes nothing (the
state_dict before and after are equal), or gives a correct result."""

from __future__ import annotations

import copy
import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from sampler_helpers import (
    ALL,
    LABELS,
    LEARNERS,
    B,
    N,
    pending,
    round_trip,
    same_state,
    step,
    trained,
)

import fastis
from fastis.data import Draw
from fastis.samplers import (
    ImportanceSampler,
    LSTMLossPredictor,
    Uniform,
    UpperBound,
)


# ---------------------------------------------------------------------- overflow
@pytest.mark.parametrize("name", LEARNERS)
@pytest.mark.parametrize("value", [1.2e154, 1e308, 1e31, math.inf, math.nan, -1e-300])
def test_scores_beyond_the_valid_range_are_refused_and_change_nothing(name, value):
    sampler = trained(name)
    draw, size = pending(sampler)
    before = copy.deepcopy(sampler.state_dict())
    with pytest.raises(ValueError, match=r"at most 1e\+30|NaN|>= 0"):
        sampler.update(draw, np.full(size, value))
    assert same_state(sampler.state_dict(), before)
    sampler.update(draw, np.ones(size))  # and the sampler still works
    sampler.load_state_dict(round_trip(sampler.state_dict()))
    step(sampler)


def test_the_largest_valid_scores_keep_every_sampler_finite():
    for name in LEARNERS:
        sampler = trained(name)
        for _ in range(3):
            step(sampler, lambda index: np.full(len(index), 1e30))
        stats = sampler.stats()
        assert all(math.isfinite(v) or math.isnan(v) for v in stats.values()), name
        assert math.isfinite(stats["max_weight"]), name
        sampler.load_state_dict(round_trip(sampler.state_dict()))


@pytest.mark.parametrize("name", ["UpperBound", "BiasedLoss exact"])
def test_pool_scores_beyond_the_valid_range_are_refused_by_select(name):
    sampler = trained(name)
    draw = next(iter(sampler))
    while not sampler.is_pool(draw):
        sampler.update(draw, np.ones(len(draw)))
        draw = next(iter(sampler))
    before = copy.deepcopy(sampler.state_dict())
    with pytest.raises(ValueError, match="at most"):
        sampler.select(draw, np.full(len(draw), 1e308))
    assert same_state(sampler.state_dict(), before)


def test_the_lstm_predictor_stays_finite_under_huge_losses():
    predictor = LSTMLossPredictor(N, LABELS, seed=0)
    for _ in range(3):
        predictor.observe(np.arange(12), np.full(12, 1e25))  # squares overflow float32
    assert np.isfinite(predictor.predict(np.arange(N))).all()
    assert all(torch.isfinite(p).all() for p in predictor._net.parameters())


# ---------------------------------------------------------------------- corrupted state
def _set(path, value):
    def corrupt(state):
        target = state
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value(target[path[-1]]) if callable(value) else value
        return state
    return corrupt


def _drop(path):
    def corrupt(state):
        target = state
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
        return state
    return corrupt


def _in_flight(change):
    def corrupt(state):
        index, weight, step_ = state["in_flight"][0]
        state["in_flight"][0] = change(index, weight, step_)
        return state
    return corrupt


COMMON = {
    "in-flight float indices": _in_flight(lambda i, w, s: (i.double(), w, s)),
    "in-flight 2-D indices": _in_flight(lambda i, w, s: (i.reshape(1, -1), w, s)),
    "in-flight index out of range": _in_flight(lambda i, w, s: (i + N, w, s)),
    "in-flight weights of another length": _in_flight(lambda i, w, s: (i, w[:-1], s)),
    "in-flight NaN weights": _in_flight(lambda i, w, s: (i, w * math.nan, s)),
    "in-flight float step": _in_flight(lambda i, w, s: (i, w, float(s))),
    "in-flight duplicate steps": lambda st: {**st, "in_flight": st["in_flight"] * 2},
    "next_step negative": _set(["next_step"], -5),
    "next_step float": _set(["next_step"], 3.0),
    "next_step 2**70": _set(["next_step"], 2**70),
    "acked beyond next_step": _set(["acked"], lambda v: v + 100),
    "seen truncated": _set(["seen"], lambda v: v[:-1]),
    "seen float": _set(["seen"], lambda v: v.double()),
    "last_weights NaN": _set(["last_weights"], lambda v: v * math.nan),
    "no next_step": _drop(["next_step"]),
    "no method state": _drop(["method"]),
    "unknown field": _set(["surprise"], 1),
    "not a dict": lambda st: list(st.items()),
}
METHOD_CORRUPTIONS = {
    "ImportanceSampler": {"stamps float": _set(["method", "stamp"], lambda v: v.double()),
                          "stamps below -1": _set(["method", "stamp"], lambda v: v - 5),
                          "stamps truncated": _set(["method", "stamp"], lambda v: v[:-1]),
                          "no tree": _drop(["method", "tree"]),
                          "tree weights NaN": _set(["method", "tree", "weights"],
                                                   lambda v: v * math.nan)},
    "UpperBound": {"negative cost": _set(["method", "step_cost"], -1.0),
                   "negative importance steps": _set(["method", "importance_steps"], -2),
                   "tau NaN": _set(["method", "tau"], math.nan),
                   "tau beyond its bound": _set(["method", "tau"], 1e9)},
    "BiasedLoss gaussian": {"mean_score -inf": _set(["method", "mean_score"], -math.inf),
                            "no predictor": _drop(["method", "predictor"]),
                            "predictor m1 NaN": _set(["method", "predictor", "state", "m1"],
                                                     lambda v: v * math.nan)},
    "BiasedLoss lstm": {"NaN predictor parameters": _set(
        ["method", "predictor", "state", "model", "head.weight"], lambda v: v * math.nan)},
    "RAS": {"negative second moment": _set(["method", "second_moments"], lambda v: v - 1),
            "observed as floats": _set(["method", "observed"], lambda v: v.double())},
    "HighLossBatches": {"negative loss": _set(["method", "losses"], lambda v: -abs(v) - 1),
                        "pass float": _set(["method", "pass"], 1.0)},
}
CASES = [(name, what, corrupt) for name in ALL for what, corrupt in
         {**COMMON, **METHOD_CORRUPTIONS.get(name, {})}.items()]


@pytest.mark.parametrize(("name", "what", "corrupt"), CASES,
                         ids=[f"{n}-{w}" for n, w, _ in CASES])
def test_a_corrupted_state_is_refused_by_name_and_changes_nothing(name, what, corrupt):
    source = trained(name)
    next(iter(source))  # one batch in flight
    state = corrupt(round_trip(source.state_dict()))
    target = trained(name, steps=2)
    before = copy.deepcopy(target.state_dict())
    with pytest.raises(ValueError):
        target.load_state_dict(state)
    assert same_state(target.state_dict(), before)
    step(target)  # still works


# ---------------------------------------------------------------------- foreign batches
@pytest.mark.parametrize("name", ALL)
def test_a_batch_this_sampler_did_not_draw_is_refused(name):
    sampler = trained(name)
    draw, size = pending(sampler)
    before = copy.deepcopy(sampler.state_dict())
    scores = np.ones(size)
    shifted = Draw((draw.index + 1) % N, draw.weight, draw.step)
    for bad, exc, match in [(shifted, ValueError, "not the batch"),
                            (Draw(draw.index, draw.weight, float(draw.step)), TypeError,
                             "integer"),
                            (Draw(draw.index.astype(float), draw.weight, draw.step), TypeError,
                             "integers"),
                            (Draw(draw.index, draw.weight, draw.step + 5), ValueError,
                             "not drawn")]:
        with pytest.raises(exc, match=match):
            sampler.update(bad, scores)
        assert same_state(sampler.state_dict(), before)
    sampler.update(draw, scores)
    with pytest.raises(ValueError, match="not in flight"):  # reported twice
        sampler.update(draw, scores)


# ---------------------------------------------------------------------- score kinds
@pytest.mark.parametrize("name", LEARNERS)
def test_scores_of_the_wrong_kind_are_refused_and_change_nothing(name):
    sampler = trained(name)
    draw, size = pending(sampler)
    before = copy.deepcopy(sampler.state_dict())
    bad = [(np.ones(size) + 1j, TypeError), (["3.5"] * size, TypeError),
           (np.ones(size, bool), TypeError), (torch.ones(size, dtype=torch.complex64), TypeError),
           (torch.ones(size, device="meta"), ValueError),
           (torch.ones(size, requires_grad=True), ValueError),
           (np.ones(size + 1), ValueError), (np.full(size, np.nan), ValueError)]
    if name != "HighLossBatches":  # it takes a batch's mean loss as a scalar too
        bad.append((np.float64(3.0), ValueError))
    for scores, exc in bad:
        with pytest.raises(exc):
            sampler.update(draw, scores)
        assert same_state(sampler.state_dict(), before)


def test_exact_biased_loss_checks_the_scores_it_is_given():
    sampler = trained("BiasedLoss exact")
    draw, size = pending(sampler)
    for bad in (np.full(size, np.nan), np.ones(size + 2), -np.ones(size)):
        with pytest.raises(ValueError):
            sampler.update(draw, bad)
    sampler.update(draw, None)  # it learns nothing from them: none is fine


def test_probabilities_refuse_non_integer_indices():
    sampler = ImportanceSampler(10, 2, seed=0)
    with pytest.raises(TypeError, match="integers"):
        sampler.probabilities([1.9])
    with pytest.raises(IndexError):
        sampler.probabilities([10])


# ---------------------------------------------------------------------- buffers
@pytest.mark.parametrize("name", ALL)
def test_every_draw_owns_its_arrays(name):
    sampler, twin = ALL[name](), ALL[name]()
    first, twin_first = next(iter(sampler)), next(iter(twin))
    first.weight *= 3
    first.index[:] = 0
    second, twin_second = next(iter(sampler)), next(iter(twin))
    assert np.array_equal(second.index, twin_second.index), name
    assert np.array_equal(second.weight, twin_second.weight), name
    assert not np.shares_memory(second.index, first.index)
    assert not np.shares_memory(second.weight, first.weight)
    del twin_first


# ---------------------------------------------------------------------- small cases
def test_upper_bound_learns_nothing_from_an_empty_batch():
    sampler = trained("UpperBound")
    tau = sampler.tau
    sampler.observe([], [])
    assert sampler.tau == tau


def test_upper_bound_stats_report_the_weights_trained_on_and_clipping_bounds_them():
    for max_weight in (None, 4.0):
        sampler = UpperBound(N, B, tau_th=1.0, momentum=0.0, max_weight=max_weight,
                             guard=False, seed=0)
        # Scores that differ within the batch: tau > 1 = tau_th after one step.
        step(sampler, lambda index: np.where(np.arange(len(index)) % 5 == 0, 1e-3, 1.0))
        draw = next(iter(sampler))
        assert sampler.is_pool(draw)
        scores = np.where(np.arange(len(draw)) % 4 == 0, 1e-4, 1.0)
        scores[1] = 1e-6  # a tiny score: a huge unbiased weight if drawn
        pick = sampler.select(draw, scores)
        stats = sampler.stats()
        assert stats["max_weight"] == pytest.approx(float(pick.weight.max()))
        assert stats["min_weight"] == pytest.approx(float(pick.weight.min()))
        if max_weight is not None:
            assert float(pick.weight.max()) <= max_weight
    with pytest.raises(ValueError, match="max_weight"):
        UpperBound(N, B, max_weight=0.5)


def test_a_loop_that_never_reports_back_is_warned_once():
    sampler = ImportanceSampler(N, B, steps_per_epoch=10**6, seed=0)
    with pytest.warns(RuntimeWarning, match="never reported back") as record:
        for _ in itertools.islice(iter(sampler), 600):
            pass
    assert len([w for w in record if "never reported" in str(w.message)]) == 1
    reporting = ImportanceSampler(N, B, steps_per_epoch=10**6, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for draw in itertools.islice(iter(reporting), 600):
            reporting.update(draw, np.ones(len(draw)))


@pytest.mark.parametrize("dataset", ["tensors", "indexed", "list"])
@pytest.mark.parametrize("argument", ["batch_sampler", "sampler"])
def test_wiring_mistakes_say_how_to_build_the_loader(dataset, argument):
    base = torch.utils.data.TensorDataset(torch.arange(float(N)))
    ds = {"tensors": base, "indexed": fastis.data.Indexed(base), "list": list(range(N))}[dataset]
    loader = torch.utils.data.DataLoader(ds, **{argument: Uniform(N, B, seed=0)})
    if dataset == "indexed" and argument == "batch_sampler":  # the right wiring: it works
        batch = next(iter(loader))
        assert torch.equal(batch.data[0].long(), batch.index) and len(batch.index) == B
        return
    with pytest.raises(TypeError, match=r"sampler\.loader"):
        next(iter(loader))


def test_a_custom_collate_fn_makes_the_data_and_the_bookkeeping_rides_along():
    sequences = [torch.ones(1 + i % 4) * i for i in range(N)]

    def pad(items):
        return torch.nn.utils.rnn.pad_sequence(items, batch_first=True)

    sampler = ImportanceSampler(N, B, seed=0)
    for loader in (sampler.loader(sequences, collate_fn=pad),
                   torch.utils.data.DataLoader(fastis.data.Indexed(sequences),
                                               batch_sampler=sampler,
                                               collate_fn=fastis.data.collate(pad))):
        batch = next(iter(loader))
        assert batch.data.shape[0] == B and batch.data.shape[1] <= 4
        assert torch.equal(batch.data[:, 0], batch.index.float())
        sampler.update(batch, torch.ones(B))
