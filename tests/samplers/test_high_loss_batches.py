"""HighLossBatches (DyBAT, fastis.samplers.high_loss_batches): fixed batches, pass 0 in
order, then the top floor(delta * M) batches by last-seen loss per pass in id order, the
E * M step budget, stale losses, the opt-in refresh, the score forms update() takes, input
checks that change nothing, and exact resume mid-pass.

Expected selections come from an independent reference written here: a dict of stored
losses and Python's sorted() (docs/methods.md), not the sampler's own code.
"""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest
import torch
from sampler_helpers import round_trip, same_state, train

from fastis.data import Batch, Draw
from fastis.ops import Scores
from fastis.samplers.high_loss_batches import HighLossBatches


def batch_ids(sampler: HighLossBatches, draws) -> list[int]:
    """The fixed batch each draw is, by its first example (checked to be the whole batch)."""
    table = {tuple(sampler.batch(m)): m for m in range(sampler.num_batches)}
    return [table[tuple(d.index)] for d in draws]


def reference_passes(m: int, k: int, loss_of, num_steps: int) -> list[list[int]]:
    """The paper's schedule with every loss reported before the next pass starts: pass 0 is
    0..M-1, each later pass the top k stored losses (ties: lower id) in id order, truncated
    at num_steps steps in all."""
    stored: dict[int, float] = {}
    passes, steps = [], 0
    while steps < num_steps:
        if not passes:
            chosen = list(range(m))
        else:
            ranked = sorted(range(m), key=lambda j: (-stored[j], j))
            chosen = sorted(ranked[:k])
        chosen = chosen[:num_steps - steps]
        for j in chosen:
            stored[j] = loss_of(j, steps)
            steps += 1
        passes.append(chosen)
    return passes


def split_passes(ids: list[int], m: int, k: int) -> list[list[int]]:
    out, rest = [ids[:m]], ids[m:]
    while rest:
        out.append(rest[:k])
        rest = rest[k:]
    return out


# ---------------------------------------------------------------------- schedule


def test_pass_zero_covers_every_batch_in_order():
    sampler = HighLossBatches(23, 4, delta=0.4, seed=1)  # M = 5; examples 20..22 unused
    assert len(sampler) == sampler.num_batches == 5
    draws = list(sampler)
    assert [d.step for d in draws] == list(range(5))
    for m, d in enumerate(draws):
        np.testing.assert_array_equal(d.index, np.arange(4 * m, 4 * m + 4))
        assert d.index.dtype == np.int64
        np.testing.assert_array_equal(d.weight, np.ones(4, np.float32))


def test_shuffled_partition_is_fixed_and_seeded():
    def partition(seed):
        sampler = HighLossBatches(23, 4, delta=1.0, shuffle=True, seed=seed)
        first, _ = train(sampler, 5, lambda d: 1.0)
        later, _ = train(sampler, 10, lambda d: 1.0)
        # Same composition in every epoch (delta = 1 trains all, in id order).
        assert [tuple(d.index) for d in later] == [tuple(d.index) for d in first] * 2
        return np.stack([d.index for d in first])

    a = partition(2)
    assert len(np.unique(a)) == 20 and a.min() >= 0 and a.max() < 23  # disjoint batches
    np.testing.assert_array_equal(partition(2), a)
    assert not np.array_equal(np.sort(partition(3), axis=None), np.arange(20))  # not 0..19
    assert not np.array_equal(partition(3), a)


@pytest.mark.parametrize(("delta", "k"), [(0.3, 3), (0.37, 3), (0.5, 5), (0.05, 1)])
def test_each_pass_trains_the_top_k_batches_in_id_order(delta, k):
    m, b = 10, 3
    table = np.random.default_rng(4).uniform(0.1, 5.0, size=(m, 200))

    def loss_of(batch_id, step):  # changes with every visit, so the ranking keeps moving
        return float(table[batch_id, step % 200])

    sampler = HighLossBatches(m * b, b, delta=delta, seed=5)
    assert sampler.batches_per_pass == k
    steps = 4 * m
    draws, _ = train(sampler, steps, lambda d: loss_of(d.index[0] // b, d.step))
    ids = batch_ids(sampler, draws)
    expected = reference_passes(m, k, loss_of, steps)
    assert split_passes(ids, m, k) == expected
    assert len(expected) > 3 and len({tuple(p) for p in expected[1:]}) > 1


def test_ties_go_to_the_lower_batch_id():
    sampler = HighLossBatches(40, 4, delta=0.3, seed=6)  # M = 10, K = 3
    draws, _ = train(sampler, 10 + 3, lambda d: 2.0)
    assert batch_ids(sampler, draws[10:]) == [0, 1, 2]


def test_losses_not_reported_when_a_pass_starts_rank_first():
    # A loader that draws ahead starts pass 1 before the last batches of pass 0 report.
    sampler = HighLossBatches(30, 3, delta=0.3, seed=21)  # M = 10, K = 3
    stream = iter(sampler)
    draws = [next(stream) for _ in range(10)]
    for m, d in enumerate(draws[:8]):
        sampler.update(d, 10.0 - m)  # batch 0 has the highest known loss
    first = next(iter(sampler))  # the next epoch's iterator starts pass 1
    np.testing.assert_array_equal(sampler.selection, [0, 8, 9])
    assert batch_ids(sampler, [first]) == [0]


def test_a_late_report_is_counted_in_the_pass_that_trained_the_batch():
    sampler = HighLossBatches(24, 3, delta=0.25, seed=22)  # M = 8, K = 2
    # Pass 1 is steps 8-9 (batches 6, 7); one batch ahead, step 10 (pass 2) is drawn before
    # step 9 reports.
    draws, _ = train(sampler, 10, lambda d: float(d.index[0]), prefetch=1)
    assert batch_ids(sampler, draws[8:]) == [6, 7]
    stats = sampler.stats()
    assert stats["pass"] == 2.0
    assert stats["never_refreshed"] == 6.0
    # Batches 0-5 report from pass 0, batches 6 and 7 from pass 1 (not 2, the pass being
    # drawn when step 9 reported): (6 * 2 + 1 + 1) / 8.
    assert stats["loss_staleness"] == pytest.approx(14 / 8)


@pytest.mark.parametrize("delta", [0.2, 0.5, 0.8, 1.0])
def test_step_budget_of_e_epochs_is_e_times_m(delta):
    sampler = HighLossBatches(50, 5, delta=delta, seed=7)  # M = 10
    m, k = 10, max(1, math.floor(delta * 10))
    total = 0
    for _ in range(4):
        epoch = list(sampler)
        assert len(epoch) == len(sampler) == m
        for d in epoch:
            sampler.update(d, float(d.index[0]))
        total += len(epoch)
    assert total == 4 * m
    assert sampler.step == 4 * m and sampler.epoch == 4
    assert [sampler.pass_of(s) for s in (m - 1, m, m + k - 1, m + k)] == [
        (0, m - 1), (1, 0), (1, k - 1), (2, 0)]


def test_delta_one_is_standard_training():
    sampler = HighLossBatches(30, 3, delta=1.0, seed=8)
    rng = np.random.default_rng(9)
    draws, _ = train(sampler, 50, lambda d: float(rng.uniform(0, 3)))
    assert batch_ids(sampler, draws) == list(range(10)) * 5


def test_unselected_batches_keep_their_stale_loss():
    sampler = HighLossBatches(24, 3, delta=0.5, seed=10)  # M = 8, K = 4
    pass0 = [5.0, 1.0, 7.0, 2.0, 6.0, 0.5, 3.0, 4.0]
    train(sampler, 8, lambda d: pass0[d.index[0] // 3])
    np.testing.assert_array_equal(sampler.losses, pass0)
    # Pass 1 trains 0, 2, 4, 7 (the top four) and reports 0.1 for each.
    draws, _ = train(sampler, 4, lambda d: 0.1)
    assert batch_ids(sampler, draws) == [0, 2, 4, 7]
    expected = np.array(pass0)
    expected[[0, 2, 4, 7]] = 0.1
    np.testing.assert_array_equal(sampler.losses, expected)
    # Pass 2 is chosen from the stale losses of 1, 3, 5, 6 against the fresh 0.1s.
    draws, _ = train(sampler, 4, lambda d: 0.1)
    assert batch_ids(sampler, draws) == [1, 3, 5, 6]
    stats = sampler.stats()
    assert stats["pass"] == 2.0
    assert stats["never_refreshed"] == 0.0
    assert stats["loss_staleness"] == pytest.approx(0.5)  # four from pass 1, four from 2


def test_stats_count_batches_never_refreshed():
    sampler = HighLossBatches(24, 3, delta=0.25, seed=11)  # M = 8, K = 2
    train(sampler, 8 + 2, lambda d: float(d.index[0]))
    stats = sampler.stats()
    assert stats["pass"] == 1.0
    assert stats["never_refreshed"] == 6.0  # only batches 6 and 7 were trained again
    assert stats["loss_staleness"] == pytest.approx(6 / 8)


def starving_loss(draw: Draw) -> float:
    """Batch 0 always has the lowest loss; the others' losses are fixed and distinct."""
    return float(draw.index[0] // 2)


def test_paper_mode_starves_a_low_loss_batch():
    sampler = HighLossBatches(20, 2, delta=0.5, seed=12)  # M = 10, K = 5
    draws, _ = train(sampler, 10 + 5 * 12, starving_loss)
    ids = batch_ids(sampler, draws)
    assert 0 not in ids[10:]
    assert split_passes(ids, 10, 5)[1:] == [[5, 6, 7, 8, 9]] * 12


@pytest.mark.parametrize("r", [1, 2, 3])
def test_refresh_after_brings_a_starved_batch_back_within_r_plus_1_passes(r):
    sampler = HighLossBatches(20, 2, delta=0.5, refresh_after=r, seed=13)
    draws, _ = train(sampler, 10 + 5 * 12, starving_loss)
    passes = split_passes(batch_ids(sampler, draws), 10, 5)
    assert all(len(p) == 5 and p == sorted(set(p)) for p in passes[1:])  # K kept, id order
    for j in range(10):
        trained = [p for p, chosen in enumerate(passes) if j in chosen]
        gaps = np.diff([*trained, len(passes)])  # passes until the next training
        assert gaps.max() <= r + 1, (j, trained)
    # Batch 0 comes back exactly when it has missed r passes: at pass r + 1.
    assert [p for p, chosen in enumerate(passes) if 0 in chosen][:2] == [0, r + 1]


# ---------------------------------------------------------------------- update() inputs


@pytest.mark.parametrize(
    ("scores", "expected"),
    [
        (1.5, 1.5),
        (np.float32(2.5), 2.5),
        (torch.tensor(0.75), 0.75),
        (np.array(3.0), 3.0),
        (torch.tensor([1.0, 2.0, 6.0]), 3.0),
        (np.array([0.0, 0.0, 3.0]), 1.0),
        ([1.0, 1.0, 4.0], 2.0),
        (Scores(torch.tensor([2.0, 4.0, 6.0]), torch.tensor([9.0, 9.0, 9.0])), 4.0),
        (torch.tensor(2.0, requires_grad=True) * 2, 4.0),
    ],
    ids=["float", "np-scalar", "0d-tensor", "0d-array", "tensor", "array", "list", "Scores",
         "grad-tensor"],
)
def test_update_takes_a_mean_or_per_example_losses_or_scores(scores, expected):
    sampler = HighLossBatches(12, 3, seed=14)
    draws = list(itertools.islice(iter(sampler), 3))
    sampler.update(draws[2], scores)
    assert sampler.losses[2] == pytest.approx(expected, rel=1e-7)
    assert np.isnan(sampler.losses[[0, 1, 3]]).all()


def test_update_takes_a_collated_batch():
    features = torch.arange(20, dtype=torch.float32)[:, None]
    sampler = HighLossBatches(20, 4, delta=0.4, seed=15)  # M = 5, K = 2
    loader = sampler.loader(torch.utils.data.TensorDataset(features))
    seen = []
    for _ in range(3):
        for batch in loader:
            assert isinstance(batch, Batch)
            (x,) = batch.data
            seen.append(int(batch.index[0]) // 4)
            sampler.update(batch, torch.nn.functional.mse_loss(x[:, 0], torch.zeros(4)))
    # Losses grow with the batch id: every later pass takes batches 3 and 4.
    assert seen == [0, 1, 2, 3, 4] + [3, 4] * 5


@pytest.mark.parametrize(
    "scores",
    [math.nan, -1.0, math.inf, np.array([1.0, np.nan, 1.0]), torch.tensor([1.0, -1.0, 1.0]),
     np.ones(4), np.ones((3, 1)), None, "1.0", True,
     Scores(torch.tensor([1.0, -2.0, 1.0]), torch.ones(3))],
    ids=["nan", "negative", "inf", "nan-item", "negative-item", "length", "2d", "none",
         "string", "bool", "Scores-negative"],
)
def test_bad_scores_raise_and_change_nothing(scores):
    sampler = HighLossBatches(15, 3, delta=0.4, refresh_after=2, seed=16)
    train(sampler, 7, lambda d: float(d.index[0]), prefetch=1)
    pending = next(iter(sampler))
    before = copy.deepcopy(sampler.state_dict())
    with pytest.raises((TypeError, ValueError)):
        sampler.update(pending, scores)
    assert same_state(sampler.state_dict(), before)


def test_a_batch_that_is_not_one_of_the_fixed_batches_is_refused():
    sampler = HighLossBatches(12, 3, seed=17)
    draws = list(sampler)
    before = copy.deepcopy(sampler.state_dict())
    mixed = Draw(np.array([0, 1, 5]), np.ones(3, np.float32), 0)  # parts of batches 0 and 1
    short = Draw(np.array([0, 1]), np.ones(2, np.float32), 0)
    for bad in (mixed, short):
        with pytest.raises(ValueError, match="not the batch this sampler drew"):
            sampler.update(bad, 1.0)
    assert same_state(sampler.state_dict(), before)
    sampler.update(Draw(draws[1].index[::-1].copy(), draws[1].weight, 1), 2.0)  # any order
    assert sampler.losses[1] == 2.0


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        ((10, 11), {}, ValueError),  # no full batch
        ((10, 2), {"delta": 0.0}, ValueError),
        ((10, 2), {"delta": 1.5}, ValueError),
        ((10, 2), {"refresh_after": 0}, ValueError),
        ((10, 2), {"refresh_after": 1.5}, TypeError),
    ],
)
def test_bad_options_are_refused(args, kwargs, error):
    with pytest.raises(error):
        HighLossBatches(*args, **kwargs)


# ---------------------------------------------------------------------- state


def drifting_loss(draw: Draw) -> float:
    """Deterministic loss of a draw that differs by batch and drifts with the step."""
    return float(1.0 + np.sin(3.0 * draw.index[0] + 0.7 * draw.step) ** 2)


@pytest.mark.parametrize(
    ("shuffle", "refresh_after", "prefetch", "save_after"),
    [(False, None, 0, 12), (False, None, 2, 14), (True, 2, 2, 11), (True, None, 3, 9)],
)
def test_state_round_trip_mid_pass_continues_identically(shuffle, refresh_after, prefetch,
                                                         save_after):
    def make():
        return HighLossBatches(31, 3, delta=0.3, shuffle=shuffle, refresh_after=refresh_after,
                               seed=18)  # M = 10, K = 3

    m = 10
    assert make().pass_of(save_after)[1] > 0  # the next step to train is inside a pass
    reference, _ = train(make(), save_after + 3 * m, drifting_loss, prefetch=prefetch)
    head, saved = train(make(), save_after, drifting_loss, prefetch=prefetch,
                        save_after=save_after)
    assert head == reference[:save_after]
    resumed = make()
    resumed.load_state_dict(round_trip(saved))
    tail, _ = train(resumed, 3 * m, drifting_loss, prefetch=prefetch)
    assert tail == reference[save_after:]
    # The compared stretch spans several loss-driven passes, not a fixed cycle.
    ids = batch_ids(resumed, tail)
    assert len(set(ids)) > 3


def test_state_of_another_configuration_is_refused():
    sampler = HighLossBatches(30, 3, delta=0.5, seed=19)
    train(sampler, 12, drifting_loss)
    state = sampler.state_dict()
    other = HighLossBatches(30, 3, delta=0.4, seed=19)
    before = copy.deepcopy(other.state_dict())
    with pytest.raises(ValueError, match="delta"):
        other.load_state_dict(state)
    assert same_state(other.state_dict(), before)


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda s: s.update(selection=np.array([4, 2, 7, 9, 1])),  # not increasing
        lambda s: s.update(selection=np.array([0, 1, 2])),  # wrong size for K = 5
        lambda s: s.update(selection=np.array([0, 1, 2, 3, 10])),  # out of range
        lambda s: s.update(losses=np.full(10, -1.0)),
        lambda s: s.update(losses=np.ones(9)),
        lambda s: s.update(loss_pass=np.full(10, -1)),  # known losses without a pass
        lambda s: s.update(last_trained=np.ones(10)),  # floats
        lambda s: s.update({"pass": 1.5}),
        lambda s: s.pop("selection"),
    ],
    ids=["unsorted", "size", "range", "negative-loss", "loss-shape", "loss-pass", "float-pass",
         "float-current", "missing"],
)
def test_corrupted_state_is_refused_and_changes_nothing(corrupt):
    sampler = HighLossBatches(30, 3, delta=0.5, seed=20)  # M = 10, K = 5
    train(sampler, 12, drifting_loss)
    state = copy.deepcopy(sampler.state_dict())
    corrupt(state["method"])
    target = HighLossBatches(30, 3, delta=0.5, seed=20)
    train(target, 4, drifting_loss)
    before = copy.deepcopy(target.state_dict())
    with pytest.raises(ValueError):
        target.load_state_dict(state)
    assert same_state(target.state_dict(), before)
