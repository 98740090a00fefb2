"""RAS (fastis.samplers.ras): the group distribution q, its warm-up and mixture floor, the
weights against an independent float64 computation, unbiasedness on a least-squares problem,
the EMA of V_c, input checks that change nothing, and exact resume.

Every expected value is computed here from the formulas of docs/methods.md, without
the sampler's own code. Goodness-of-fit tests run at level ALPHA (helpers.py) with fixed
seeds, so a given build passes or fails deterministically.
"""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from helpers import ALPHA, pooled_chisquare
from sampler_helpers import round_trip, same_state, train

from fastis.data import Batch, Draw
from fastis.ops import Scores
from fastis.samplers.ras import RAS

# 30 examples in three groups with non-contiguous ids, interleaved so that group members
# are not contiguous either.
GROUP_IDS = np.array([10, 20, 40])
SIZES = np.array([5, 10, 15])
GROUPS = np.array([10] * 5 + [20] * 10 + [40] * 15)[np.random.default_rng(7).permutation(30)]
N = len(GROUPS)


def group_index(groups: np.ndarray) -> np.ndarray:
    """0..K-1 position of each example's group id in GROUP_IDS, int64 [N]."""
    return np.searchsorted(GROUP_IDS, groups)


def expected_q(v: np.ndarray, mix: float, sizes: np.ndarray = SIZES) -> np.ndarray:
    """q = (1 - mix) q^AS + mix pi with q^AS_c ∝ n_c sqrt(V_c), in float64."""
    pi = sizes / sizes.sum()
    a = sizes * np.sqrt(v)
    q_as = pi if a.sum() == 0 else a / a.sum()
    return (1 - mix) * q_as + mix * pi


def observe_all(sampler: RAS, scores_per_group) -> None:
    """One observation of every example, with each group's score given (V_c = s_c^2)."""
    scores = np.asarray(scores_per_group, dtype=np.float64)[group_index(GROUPS)]
    sampler.observe(np.arange(N), scores)


def draw_many(sampler: RAS, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and weights of the next `steps` draws (no updates), int64 / float32 [steps*b]."""
    draws = []
    while len(draws) < steps:  # across epoch boundaries
        draws.extend(itertools.islice(iter(sampler), steps - len(draws)))
    return (np.concatenate([d.index for d in draws]), np.concatenate([d.weight for d in draws]))


# ---------------------------------------------------------------------- distribution


def test_draws_follow_q_for_hand_set_estimates():
    sampler = RAS(N, 16, groups=torch.as_tensor(GROUPS), mix=0.3, seed=11, guard=False)
    observe_all(sampler, [2.0, 0.5, 1.0])  # V = [4, 0.25, 1]
    np.testing.assert_array_equal(sampler.second_moments, [4.0, 0.25, 1.0])
    q = expected_q(np.array([4.0, 0.25, 1.0]), 0.3)
    np.testing.assert_allclose(sampler.group_distribution(), q, rtol=1e-12)

    index, _ = draw_many(sampler, 600)  # 9,600 draws
    groups = group_index(GROUPS[index])
    group_counts = np.bincount(groups, minlength=3)
    assert pooled_chisquare(group_counts, q) > ALPHA
    # Inside a group, members are uniform: example i has probability q_c / n_c.
    per_example = q[group_index(GROUPS)] / SIZES[group_index(GROUPS)]
    assert pooled_chisquare(np.bincount(index, minlength=N), per_example) > ALPHA
    # The same counts are rejected against the prior (q differs from pi by ~0.1 per group):
    # the test above has the power to see a sampler that ignores V.
    assert pooled_chisquare(group_counts, SIZES / N) < ALPHA


def test_warm_up_samples_the_prior_until_every_group_is_seen():
    sampler = RAS(N, 16, groups=GROUPS, mix=0.3, seed=12, guard=False)
    assert sampler.warming_up
    first = next(iter(sampler))
    np.testing.assert_array_equal(first.weight, np.ones(16, np.float32))
    # Two of the three groups observed: still the prior, weights 1.
    seen = np.flatnonzero(GROUPS != 40)
    sampler.observe(seen, np.full(len(seen), 5.0))
    assert sampler.warming_up
    np.testing.assert_array_equal(sampler.group_distribution(), SIZES / N)
    index, weight = draw_many(sampler, 400)
    np.testing.assert_array_equal(weight, np.ones_like(weight))
    assert pooled_chisquare(np.bincount(index, minlength=N), np.full(N, 1 / N)) > ALPHA
    # The last group's first observation ends the warm-up.
    rest = np.flatnonzero(GROUPS == 40)
    sampler.observe(rest, np.full(len(rest), 1.0))
    assert not sampler.warming_up
    np.testing.assert_allclose(sampler.group_distribution(),
                               expected_q(np.array([25.0, 25.0, 1.0]), 0.3), rtol=1e-12)


@pytest.mark.parametrize("mix", [0.1, 0.3, 0.5])
def test_mixture_floor_bounds_probabilities_and_weights(mix):
    sampler = RAS(N, 32, groups=GROUPS, mix=mix, seed=13, guard=False)
    observe_all(sampler, [1e6, 0.0, 1e-6])  # one group takes (almost) all of q^AS
    q = sampler.group_distribution()
    pi = SIZES / N
    assert (q >= mix * pi * (1 - 1e-12)).all()
    assert q[1] == pytest.approx(mix * pi[1], rel=1e-12)  # V = 0: exactly the floor
    _, weight = draw_many(sampler, 200)
    assert weight.max() <= np.float32(1 / mix) * (1 + 1e-6)
    stats = sampler.stats()
    assert stats["min_q_over_prior"] == pytest.approx(mix, rel=1e-9)
    assert stats["max_weight"] <= 1 / mix * (1 + 1e-6)


def test_all_zero_estimates_give_the_prior():
    sampler = RAS(N, 8, groups=GROUPS, mix=0.2, seed=14, guard=False)
    observe_all(sampler, [0.0, 0.0, 0.0])
    assert not sampler.warming_up
    np.testing.assert_allclose(sampler.group_distribution(), SIZES / N, rtol=1e-12)


def test_plain_as_never_draws_a_zero_probability_group():
    # mix = 0 is Gopal's AS: a group with V = 0 has q = 0 and must never be drawn.
    sampler = RAS(N, 32, groups=GROUPS, mix=0.0, seed=15, guard=False)
    observe_all(sampler, [1.0, 0.0, 3.0])
    index, weight = draw_many(sampler, 300)
    assert not (GROUPS[index] == 20).any()
    assert np.isfinite(weight).all()


def test_weights_match_an_independent_float64_computation():
    sampler = RAS(N, 16, groups=GROUPS, mix=0.25, seed=16, guard=False)
    observe_all(sampler, [0.3, 2.0, 0.7])
    q = expected_q(np.array([0.09, 4.0, 0.49]), 0.25)
    index, weight = draw_many(sampler, 50)
    c = group_index(GROUPS[index])
    expected = SIZES[c] / (N * q[c])
    assert weight.dtype == np.float32
    np.testing.assert_allclose(weight, expected, rtol=2e-7)
    assert len(np.unique(c)) == 3  # every group (so every distinct weight) was checked


def test_weighted_gradient_is_unbiased_on_least_squares():
    # 60 examples, 3 groups whose inputs differ in scale by 10x: per-example gradients of
    # 0.5 (x.theta - y)^2 differ by ~100x, so q is far from the prior.
    rng = np.random.default_rng(17)
    n, dim = 60, 3
    groups = np.repeat([0, 1, 2], 20)
    x = rng.normal(size=(n, dim)) * np.array([0.1, 1.0, 10.0])[groups, None]
    y = rng.normal(size=n)
    theta = np.array([0.5, -1.0, 2.0])
    grads = (x @ theta - y)[:, None] * x  # G_i, float64 [n, dim]
    full = grads.mean(axis=0)

    sampler = RAS(n, 4, groups=groups, mix=0.3, seed=18, guard=False)
    next(iter(sampler))
    sampler.observe(np.arange(n), np.linalg.norm(grads, axis=1))
    q = sampler.group_distribution()
    assert q[2] > 0.6 > 1 / 3  # far from the prior pi = 1/3 each

    steps = 4000
    index, weight = draw_many(sampler, steps)
    index, weight = index.reshape(steps, 4), weight.reshape(steps, 4).astype(np.float64)
    estimates = (weight[..., None] * grads[index]).mean(axis=1)  # [steps, dim]
    mean = estimates.mean(axis=0)
    sigma = estimates.std(axis=0, ddof=1) / np.sqrt(steps)
    assert (np.abs(mean - full) <= 4 * sigma).all(), (mean, full, sigma)
    # Power: without the weights the same draws are biased far outside the band.
    unweighted = grads[index].mean(axis=1)
    u_sigma = unweighted.std(axis=0, ddof=1) / np.sqrt(steps)
    assert (np.abs(unweighted.mean(axis=0) - full) > 4 * u_sigma).any()


# ---------------------------------------------------------------------- estimates


def test_estimate_is_the_mean_square_then_an_ema():
    sampler = RAS(N, 4, groups=GROUPS, momentum=0.9, seed=19, guard=False)
    next(iter(sampler))
    members = np.flatnonzero(GROUPS == 20)[:2]
    # First observation: V = mean of the squares, (1 + 9) / 2 = 5 (not the square of the
    # mean, 4).
    sampler.observe(members, [1.0, 3.0])
    assert sampler.second_moments[1] == 5.0
    assert sampler.second_moments[0] == 0.0  # other groups untouched
    for k in range(1, 31):
        sampler.observe(members, torch.tensor([2.0, 2.0]))
        assert sampler.second_moments[1] == pytest.approx(4.0 + (5.0 - 4.0) * 0.9 ** k,
                                                          rel=1e-12)


def test_estimate_tracks_a_stationary_score():
    rng = np.random.default_rng(20)
    sampler = RAS(N, 4, groups=GROUPS, momentum=0.9, seed=21, guard=False)
    members = np.resize(np.flatnonzero(GROUPS == 40), 300)
    history = []
    for _ in range(200):
        # s ~ U(0, 2): E[s^2] = 4/3, E[s] = 1.
        sampler.observe(members, Scores(torch.zeros(300), torch.as_tensor(rng.uniform(0, 2, 300))))
        history.append(sampler.second_moments[2])
    # EMA of batch means of s^2: sd = sqrt((1 - b) / (1 + b) * Var(s^2) / 300) = 0.016; the
    # mean of the last 150 values has sd ~ sqrt(Var(s^2) / 300 / 150) = 0.0056. Without the
    # square the estimate would be E[s] = 1.
    assert abs(history[-1] - 4 / 3) < 5 * 0.016
    assert abs(np.mean(history[50:]) - 4 / 3) < 0.03


# ---------------------------------------------------------------------- input checks


@pytest.mark.parametrize(
    ("groups", "error"),
    [
        (GROUPS[:-1], ValueError),  # wrong length
        (GROUPS.astype(np.float64), TypeError),  # floats, even integral ones
        (GROUPS.reshape(2, 15), ValueError),  # 2-D
        (GROUPS > 15, TypeError),  # booleans
        ("abc", TypeError),
    ],
    ids=["length", "float", "2d", "bool", "string"],
)
def test_bad_groups_are_refused(groups, error):
    with pytest.raises(error, match="groups"):
        RAS(N, 4, groups=groups, guard=False)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"mix": 1.5}, ValueError),
        ({"mix": -0.1}, ValueError),
        ({"momentum": 1.0}, ValueError),
        ({"steps_per_epoch": 0}, ValueError),
        ({"steps_per_epoch": 2.5}, TypeError),
    ],
)
def test_bad_options_are_refused(kwargs, error):
    with pytest.raises(error):
        RAS(N, 4, groups=GROUPS, **kwargs, guard=False)


@pytest.mark.parametrize(
    "scores",
    [
        np.array([1.0, np.nan, 1.0, 1.0]),
        np.array([1.0, -0.5, 1.0, 1.0]),
        np.array([1.0, 1.0, 1.0]),  # wrong length
        np.ones((4, 1)),  # wrong shape
        np.array([1.0, 1e200, 1.0, 1.0]),  # the square overflows
        None,
    ],
    ids=["nan", "negative", "length", "2d", "overflow", "none"],
)
def test_bad_scores_raise_and_change_nothing(scores):
    sampler = RAS(N, 4, groups=GROUPS, seed=22)
    train(sampler, 10, lambda d: np.ones(len(d)), prefetch=1)  # leaves steps 10 and 11 in flight
    pending = next(iter(sampler))
    before = copy.deepcopy(sampler.state_dict())
    with pytest.raises(ValueError):
        sampler.update(pending, scores)
    assert same_state(sampler.state_dict(), before)
    assert sampler.step == 10  # not acknowledged


def test_length_and_stats():
    assert len(RAS(N, 4, groups=GROUPS, guard=False)) == 8  # ceil(30 / 4)
    assert len(RAS(N, 4, groups=GROUPS, steps_per_epoch=3, guard=False)) == 3
    sampler = RAS(N, 4, groups=GROUPS, seed=23, guard=False)
    stats = sampler.stats()
    assert stats["warming_up"] == 1.0 and stats["groups_observed"] == 0.0
    assert stats["min_q_over_prior"] == stats["max_q_over_prior"] == 1.0
    observe_all(sampler, [1.0, 1.0, 4.0])
    ratio = expected_q(np.array([1.0, 1.0, 16.0]), 0.3) / (SIZES / N)
    stats = sampler.stats()
    assert stats["warming_up"] == 0.0 and stats["groups_observed"] == 1.0
    assert stats["min_q_over_prior"] == pytest.approx(ratio.min(), rel=1e-12)
    assert stats["max_q_over_prior"] == pytest.approx(ratio.max(), rel=1e-12)


# ---------------------------------------------------------------------- state


def scores_for(draw: Draw) -> np.ndarray:
    """Deterministic scores that differ by group and drift with the step."""
    base = np.array([0.2, 1.0, 3.0])[group_index(GROUPS[draw.index])]
    return base * (1.0 + 0.5 * np.sin(draw.step + draw.index))


@pytest.mark.parametrize("save_after", [3, 8, 13])
def test_state_round_trip_continues_identically(save_after):
    def make():
        return RAS(N, 4, groups=GROUPS, mix=0.2, momentum=0.8, seed=24)

    reference, _ = train(make(), 40, scores_for, prefetch=1)
    interrupted = make()
    head, saved = train(interrupted, save_after, scores_for, prefetch=1,
                        save_after=save_after)
    assert head == reference[:save_after]
    resumed = make()
    resumed.load_state_dict(round_trip(saved))
    tail, _ = train(resumed, 40 - save_after, scores_for, prefetch=1)
    assert tail == reference[save_after:]
    # The run is adaptive: the tail's weights are not all 1.
    assert any((d.weight != 1).any() for d in tail)


def test_state_of_other_groups_is_refused():
    sampler = RAS(N, 4, groups=GROUPS, seed=25)
    train(sampler, 12, scores_for)
    state = sampler.state_dict()
    other = RAS(N, 4, groups=np.roll(GROUPS, 1), seed=25)  # same sizes, other members
    before = copy.deepcopy(other.state_dict())
    with pytest.raises(ValueError, match="groups_sha256"):
        other.load_state_dict(state)
    assert same_state(other.state_dict(), before)


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda m: m.update(second_moments=np.array([1.0, np.nan, 1.0])),
        lambda m: m.update(second_moments=np.array([1.0, -1.0, 1.0])),
        lambda m: m.update(second_moments=np.ones(4)),
        lambda m: m.update(observed=np.array([1, 1, 1])),
        lambda m: m.pop("observed"),
        lambda m: m.update(observed=np.array([True, False, True])),  # V > 0 but unseen
    ],
    ids=["nan", "negative", "shape", "int-flags", "missing", "unseen-estimate"],
)
def test_corrupted_state_is_refused_and_changes_nothing(corrupt):
    sampler = RAS(N, 4, groups=GROUPS, seed=26)
    train(sampler, 12, scores_for)
    state = copy.deepcopy(sampler.state_dict())
    corrupt(state["method"])
    target = RAS(N, 4, groups=GROUPS, seed=26)
    train(target, 5, scores_for)
    before = copy.deepcopy(target.state_dict())
    with pytest.raises(ValueError):
        target.load_state_dict(state)
    assert same_state(target.state_dict(), before)


def test_works_as_a_dataloader_batch_sampler():
    features = torch.arange(N, dtype=torch.float32)[:, None]
    sampler = RAS(N, 5, groups=GROUPS, seed=27)
    loader = sampler.loader(torch.utils.data.TensorDataset(features))
    for _ in range(3):
        for batch in loader:
            assert isinstance(batch, Batch)
            (x,) = batch.data
            np.testing.assert_array_equal(x[:, 0].long().numpy(), batch.index.numpy())
            sampler.update(batch, x[:, 0] / N)
    assert not sampler.warming_up
    assert sampler.step == 3 * len(sampler)
