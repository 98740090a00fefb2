"""The shared sampler protocol and the methods Uniform, SoftRandom, ImportanceSampler,
UpperBound and BiasedLoss (RAS, HighLossBatches and the loss predictors have their own
files). Statistical checks use fixed seeds with the false-alarm rates stated at each."""

from __future__ import annotations

import itertools
import math
import pickle

import numpy as np
import pytest
import torch
from helpers import assert_fits, assert_within_sigmas
from sampler_helpers import LeastSquares, loader_for, round_trip, run_loop, same_state

import fastis
from fastis.data import Draw
from fastis.samplers import (
    RAS,
    BiasedLoss,
    DynamicPruning,
    HighLossBatches,
    ImportanceSampler,
    Pick,
    RhoLoss,
    SelectiveBackprop,
    SoftRandom,
    Uniform,
    UpperBound,
)


def drive(sampler, steps: int, scores_of=None):
    """Draws `steps` batches without a DataLoader, reporting scores_of(index) back."""
    draws = []
    while len(draws) < steps:
        for draw in sampler:
            draws.append(draw)
            sampler.update(draw, None if scores_of is None else scores_of(draw.index))
            if len(draws) == steps:
                break
    return draws


# ----------------------------------------------------------------------- the data plumbing
def test_indexed_loader_carries_the_draws_indices_and_weights():
    n = 300
    weights = np.random.default_rng(0).random(n) + 0.1
    sampler = ImportanceSampler(n, 32, initial_score=weights, seed=5)
    twin = pickle.loads(pickle.dumps(sampler))
    expected = list(twin)
    got = list(loader_for(sampler, n, workers=2))
    assert len(got) == len(expected) == len(sampler)
    for batch, draw in zip(got, expected):
        assert batch.index.dtype == torch.int64 and batch.weight.dtype == torch.float32
        assert np.array_equal(batch.index.numpy(), draw.index)
        assert np.array_equal(batch.weight.numpy(), draw.weight)
        assert set(batch.step.tolist()) == {draw.step}


def test_indexed_plain_index_and_bad_dataset():
    ds = torch.utils.data.TensorDataset(torch.arange(5.0))
    item = fastis.data.Indexed(ds)[3]
    assert item.index == 3 and item.weight == 1.0 and item.step == -1
    with pytest.raises(TypeError, match="map-style"):
        fastis.data.Indexed(iter(range(3)))


def test_update_rejects_foreign_batches_and_changes_nothing():
    sampler = ImportanceSampler(50, 8, seed=1)
    draw = next(iter(sampler))
    before = sampler.state_dict()
    with pytest.raises(TypeError, match=r"fastis\.data\.Batch"):
        sampler.update([1, 2, 3], np.ones(3))
    with pytest.raises(IndexError, match="outside"):
        sampler.update(Draw(np.array([0, 50]), np.ones(2, np.float32), 0), np.ones(2))
    with pytest.raises(ValueError, match="was not drawn"):
        sampler.update(Draw(draw.index, draw.weight, 7), np.ones(8))
    for bad, match in [(np.ones(7), "shape"), (np.full(8, np.nan), "NaN"),
                       (-np.ones(8), ">= 0"), (None, "needs")]:
        with pytest.raises(ValueError, match=match):
            sampler.update(draw, bad)
    assert same_state(before, sampler.state_dict())


# ----------------------------------------------------------------------- Uniform, SRS, RS2
def test_uniform_without_replacement_is_a_permutation_per_epoch():
    sampler = Uniform(103, 10, seed=3)
    assert len(sampler) == 11
    epochs = [np.concatenate([d.index for d in sampler]) for _ in range(3)]
    for order in epochs:
        assert np.array_equal(np.sort(order), np.arange(103))
    assert not np.array_equal(epochs[0], epochs[1])
    assert len(Uniform(103, 10, drop_last=True, seed=3)) == 10


def test_soft_random_coverage_per_epoch():
    # Coverage of one SRS epoch is 1 - e^-rho in expectation (docs/methods.md); its
    # standard deviation is below sqrt(N p (1 - p)) / N (occupancy indicators are negatively
    # correlated). 5 sigma: a false-alarm rate below 6e-7 per check.
    n = 20_000
    for rate in (0.3, 1.0):
        sampler = SoftRandom(n, 256, rate=rate, seed=11)
        for _ in range(2):
            drawn = np.concatenate([d.index for d in sampler])
            assert len(drawn) == round(rate * n)
            coverage = len(np.unique(drawn)) / n
            p = -math.expm1(-rate)
            assert_within_sigmas(coverage, p, math.sqrt(p * (1 - p) / n), f"rate {rate}")


def test_rs2_cycles_through_the_data_without_replacement():
    n, rate = 1000, 0.3
    sampler = SoftRandom(n, 64, rate=rate, replacement=False, seed=2)
    drawn = np.concatenate([np.concatenate([d.index for d in sampler]) for _ in range(10)])
    # 10 epochs of 300 = 3 full permutations; every n consecutive positions from the start
    # of a permutation hold every example once.
    for cycle in range(3):
        assert np.array_equal(np.sort(drawn[cycle * n:(cycle + 1) * n]), np.arange(n))


def test_set_epoch_positions_the_stream():
    a, b = SoftRandom(500, 50, rate=0.5, seed=9), SoftRandom(500, 50, rate=0.5, seed=9)
    for _ in range(2):
        list(a)
    b.set_epoch(2)
    assert b.epoch == 2 and b.step == 10
    assert [d.index.tolist() for d in b] == [d.index.tolist() for d in a]

    # In the middle of epoch 1 (3 of its 5 steps trained), set_epoch(1) changes nothing,
    # so a resumed run continues; set_epoch(2) skips to the next epoch.
    c, d = SoftRandom(500, 50, rate=0.5, seed=9), SoftRandom(500, 50, rate=0.5, seed=9)
    for sampler in (c, d):
        sampler.set_epoch(1)
        for draw in itertools.islice(sampler, 3):
            sampler.update(draw)
    rest = [draw.index.tolist() for draw in c]
    d.set_epoch(1)
    assert d.step == 8 and [draw.index.tolist() for draw in d] == rest and len(rest) == 2
    d.set_epoch(2)
    assert d.step == 10


# ----------------------------------------------------------------------- ImportanceSampler
def test_importance_sampler_distribution_and_weights():
    n, rng = 400, np.random.default_rng(4)
    scores = rng.lognormal(0, 1.5, n)
    for floor, smoothing in [(0.0, 0.0), (0.2, 0.0), (0.0, 0.5), (0.1, 0.3)]:
        sampler = ImportanceSampler(n, 500, initial_score=scores, floor=floor,
                                    smoothing=smoothing, guard=False, seed=int(floor * 10) + 7)
        # Exact p in float64: smoothed scores mixed with uniform at weight floor.
        smooth = (scores + smoothing) / (scores + smoothing).sum()
        p = (1 - floor) * smooth + floor / n
        draws = drive(sampler, 200, lambda i: scores[i])
        index = np.concatenate([d.index for d in draws])
        weight = np.concatenate([d.weight for d in draws])
        assert_fits(index, p, f"floor={floor} smoothing={smoothing}")
        np.testing.assert_allclose(weight, 1 / (n * p[index]), rtol=2e-7)


def test_importance_sampler_is_unbiased():
    problem = LeastSquares(seed=1)
    sampler = ImportanceSampler(len(problem.norms), 16, floor=0.05, seed=3)
    draws = drive(sampler, 4000, lambda index: problem.norms[index])
    estimates = np.array([problem.estimate(d.index, d.weight) for d in draws[100:]])
    problem.assert_unbiased(estimates, "ImportanceSampler")


def test_importance_sampler_updates_last_write_wins_power_staleness():
    sampler = ImportanceSampler(10, 4, power=0.5, seed=0)
    sampler.observe(np.array([1, 2, 1, 3]), np.array([4.0, 9.0, 16.0, 0.0]))  # stamped 0
    np.testing.assert_array_equal(sampler._tree.weights([1, 2, 3]).numpy(), [4.0, 3.0, 0.0])
    # Three trained steps; the mean staleness is recomputed here from the last step that
    # scored each example.
    stamp = {1: 0, 2: 0, 3: 0}
    draws = list(itertools.islice(iter(sampler), 3))
    for draw in draws:
        sampler.update(draw, np.ones(4))
        stamp.update(dict.fromkeys(draw.index.tolist(), draw.step))
    stats = sampler.stats()
    assert stats["scored"] == len(stamp) / 10
    assert stats["staleness"] == pytest.approx(2 - np.mean(list(stamp.values())))


def test_importance_sampler_skip_policy_keeps_old_scores():
    sampler = ImportanceSampler(5, 2, invalid="skip", seed=0)
    sampler.observe(np.arange(5), np.array([2.0, np.nan, np.inf, -1.0, 3.0]))
    np.testing.assert_array_equal(sampler._tree.weights().numpy(), [2.0, 1.0, 1.0, 1.0, 3.0])
    assert sampler.stats()["scored"] == 0.4
    draw = next(iter(sampler))
    sampler.update(draw, np.array([np.nan, 7.0]))
    assert sampler._tree.weights(draw.index[1:]).item() == 7.0


def test_importance_sampler_takes_ops_scores():
    logits, target = torch.randn(6, 5), torch.randint(0, 5, (6,))
    scores = fastis.ops.cross_entropy_scores(logits, target)
    for field in ("loss", "grad_norm"):
        sampler = ImportanceSampler(6, 3, score=field, seed=0)
        sampler.observe(np.arange(6), scores)
        np.testing.assert_allclose(sampler._tree.weights().numpy(),
                                   getattr(scores, field).double().numpy())
        draw = next(iter(sampler))
        sampler.update(draw, fastis.ops.Scores(*(t[:3] for t in scores)))
        last = dict(zip(draw.index.tolist(), getattr(scores, field)[:3].double().tolist()))
        np.testing.assert_allclose(sampler._tree.weights(list(last)).numpy(), list(last.values()))


# ----------------------------------------------------------------------- UpperBound
def test_upper_bound_tau_switches_on_and_off():
    """The paper's switch (guard=False)."""
    n, b = 1000, 10
    sampler = UpperBound(n, b, presample=3, guard=False, seed=0)
    assert sampler.threshold() == pytest.approx(2.0)  # (B + 3b) / 3b with B = 3b
    flat = lambda rows: torch.ones(len(rows))  # noqa: E731
    # Scores spread over orders of magnitude: sqrt(|U| sum g^2) ~ 2.5-3.5 on batches of 10.
    skewed_values = np.exp(3 * np.random.default_rng(1).normal(size=n))

    def step(scores_of):
        draw = next(iter(sampler))
        pick = sampler.select(draw, lambda rows: torch.as_tensor(scores_of(draw.index[rows])))
        sampler.update(draw, scores_of(pick.index.numpy()))
        return len(draw) == sampler.pool_size

    kinds = [step(lambda i: flat(i).numpy()) for _ in range(30)]
    assert not any(kinds) and sampler.tau == pytest.approx(1 - 0.9 ** 30)
    kinds = [step(lambda i: skewed_values[i]) for _ in range(60)]
    first_pool = kinds.index(True)
    # tau climbs to 2 within a few tens of EMA steps, then pools (larger sets, larger
    # sqrt(|U| sum g^2)) keep it above.
    assert 0 < first_pool <= 40 and all(kinds[first_pool:])
    assert sampler.stats()["tau"] > 2
    kinds = [step(lambda i: flat(i).numpy()) for _ in range(60)]
    assert kinds[0] and not kinds[-1]
    last_pool = max(i for i, k in enumerate(kinds) if k)
    assert not any(kinds[last_pool + 1:])


def test_upper_bound_threshold_models():
    assert UpperBound(100, 10, presample=5).threshold() == pytest.approx(80 / 30)
    assert UpperBound(100, 10, presample=5, reuse_forward=True).threshold() == 5.0
    assert UpperBound(100, 10, tau_th=1.5).threshold() == 1.5
    measured = UpperBound(100, 10, presample=4, cost="measured")
    assert measured.threshold() == pytest.approx(70 / 30)  # 1:2 until both costs are known
    measured._forward_cost, measured._step_cost = 1.0, 5.0
    assert measured.threshold() == pytest.approx((40 * 1 + 10 * 5) / (10 * 5))
    for bad in [dict(presample=0.5), dict(tau_th=0.5), dict(cost="fast"), dict(momentum=1.0)]:
        with pytest.raises(ValueError):
            UpperBound(100, 10, **bad)


def test_upper_bound_pool_weights_and_unbiasedness():
    problem = LeastSquares(seed=2)
    n = len(problem.norms)
    sampler = UpperBound(n, 8, presample=4, tau_th=1.0, guard=False, seed=1)
    sampler.tau = 50.0  # importance sampling on from the start
    estimates = []
    for _ in range(3000):
        draw = next(iter(sampler))
        assert len(draw) == 32
        pick = sampler.select(draw, torch.as_tensor(problem.norms[draw.index]))
        g = problem.norms[draw.index] / problem.norms[draw.index].sum()
        np.testing.assert_allclose(pick.weight.numpy(), 1 / (32 * g[pick.rows.numpy()]),
                                   rtol=1e-6)
        assert np.array_equal(pick.index.numpy(), draw.index[pick.rows.numpy()])
        estimates.append(problem.estimate(pick.index.numpy(), pick.weight.numpy()))
        sampler.update(draw, problem.norms[pick.index.numpy()])
    assert sampler.tau > 1
    problem.assert_unbiased(np.array(estimates), "UpperBound")


def test_pool_resampling_follows_the_scores():
    # Rows of a fixed pool are drawn in proportion to their scores; a zero score never.
    sampler = UpperBound(100, 64, presample=2, tau_th=1.0, guard=False, seed=8)
    sampler.tau = 10.0
    scores = np.linspace(0.0, 3.0, 128)
    counts = np.zeros(128)
    for _ in range(300):
        draw = next(iter(sampler))
        pick = sampler.select(draw, scores)
        counts += np.bincount(pick.rows.numpy(), minlength=128)
        sampler.update(draw, np.ones(64))
    assert counts[0] == 0
    assert_fits(np.repeat(np.arange(128), counts.astype(int)), scores / scores.sum())


def test_select_is_idempotent_and_take_applies_rows():
    sampler = UpperBound(50, 4, presample=2, tau_th=1.0, guard=False, seed=2)
    sampler.tau = 10.0
    draw = next(iter(sampler))
    calls = []
    first = sampler.select(draw, lambda rows: calls.append(len(rows)) or torch.rand(len(rows)))
    tau = sampler.tau
    again = sampler.select(draw, lambda rows: torch.rand(len(rows)))
    assert again is first and sampler.tau == tau and calls == [4, 4]  # forward_batch_size = b
    data = (torch.arange(8) * 10, {"y": torch.arange(8)})
    x, d = first.take(data)
    assert torch.equal(x, first.rows * 10) and torch.equal(d["y"], first.rows)


def test_take_gathers_rows_of_any_layout_and_a_whole_pick_is_the_batch_itself():
    """take_rows (index_select) against advanced indexing, on odd shapes, dtypes and
    strides; a uniform step's whole pick returns the batch without a copy."""
    rng = np.random.default_rng(5)
    rows = torch.from_numpy(rng.integers(0, 7, 11))
    data = (torch.randn(9, 7, dtype=torch.float64).t(),  # non-contiguous, [7, 9]
            {"y": torch.from_numpy(rng.integers(0, 5, 7)), "m": torch.rand(7, 3, 2) > 0.5},
            [torch.randn(7, 1)[:, 0].half()])
    pick = Pick(rows, rows, torch.ones(11))
    x, d, (h,) = pick.take(data)
    assert torch.equal(x, data[0][rows]) and torch.equal(d["y"], data[1]["y"][rows])
    assert torch.equal(d["m"], data[1]["m"][rows]) and torch.equal(h, data[2][0][rows])
    whole = Pick.whole(np.arange(7, dtype=np.int64), np.ones(7))
    assert whole.take(data) is data and not pick.every_row
    sampler = UpperBound(50, 4, seed=0)  # guarded: uniform steps
    draw = next(iter(sampler))
    assert sampler.select(draw, None).take(data) is data


# ----------------------------------------------------------------------- BiasedLoss
def test_biased_loss_weights_for_k():
    rng = np.random.default_rng(3)
    scores = rng.lognormal(0, 1, 256)
    for k in (1.0, 0.5, 0.0, -1.0):
        sampler = BiasedLoss(1000, 16, k=k, guard=False, seed=4)
        draw = next(iter(sampler))
        pick = sampler.select(draw, scores)
        rows = pick.rows.numpy()
        unbiased = scores.sum() / (256 * scores[rows])  # 1 / (P g)
        t = (unbiased * scores[rows]).sum() / (unbiased ** k * scores[rows]).sum()
        np.testing.assert_allclose(pick.weight.numpy(), t * unbiased ** k, rtol=1e-6)
        if k == 1.0:
            np.testing.assert_allclose(pick.weight.numpy(), unbiased, rtol=1e-6)
        if k == 0.0:  # loss-proportional sampling, no reweighting beyond the scale t
            assert np.ptp(pick.weight.numpy()) == 0


def test_biased_loss_k1_is_unbiased_and_k0_samples_by_loss():
    problem = LeastSquares(seed=3)
    n = len(problem.losses)
    sampler = BiasedLoss(n, 8, k=1.0, pool_size=24, guard=False, seed=5)
    estimates = []
    for _ in range(3000):
        draw = next(iter(sampler))
        pick = sampler.select(draw, problem.losses[draw.index])
        estimates.append(problem.estimate(pick.index.numpy(), pick.weight.numpy()))
        sampler.update(draw)
    problem.assert_unbiased(np.array(estimates), "BiasedLoss k=1")


def test_biased_loss_smoothing():
    scores = np.array([0.0, 1.0, 3.0, 0.0])
    fixed = BiasedLoss(10, 2, smoothing=0.5, pool_size=4, switch=False, seed=0)
    np.testing.assert_allclose(fixed._sampling_scores(scores), scores + 0.5)
    adaptive = BiasedLoss(10, 2, smoothing=0.5, adaptive_smoothing=True, pool_size=4,
                          switch=False, seed=0)
    np.testing.assert_allclose(adaptive._sampling_scores(scores), scores + 0.5)  # m = 1
    np.testing.assert_allclose(adaptive._sampling_scores(scores * 3),
                               scores * 3 + 0.5 * (0.9 + 0.1 * 3))


def test_biased_loss_rejects_bad_configuration():
    for bad in [dict(k=1.5), dict(smoothing=-1.0), dict(predictor="oracle"),
                dict(predictor="lstm")]:
        with pytest.raises(ValueError):
            BiasedLoss(10, 2, **bad)


# ----------------------------------------------------------------------- state and resume
def scored_step(problem_scores):
    """A step function for run_loop: a pool is resampled, the trained examples' scores are
    reported (a deterministic function of index and step), the record is what trained."""

    def step(sampler, batch):
        index = batch.index.numpy()
        stepno = int(batch.step[0])
        values = lambda i: problem_scores[i] * (1 + stepno % 3)  # noqa: E731
        if hasattr(sampler, "select"):
            pick = sampler.select(batch, values(index))
            index, weight = pick.index.numpy(), pick.weight.numpy()
        else:
            weight = batch.weight.numpy()
        sampler.update(batch, values(index))
        return stepno, index.tolist(), weight.tolist()

    return step


LABELS = np.arange(160) % 4
RESUMABLE = {
    "ImportanceSampler": lambda n: ImportanceSampler(n, 16, floor=0.1, seed=3),
    "UpperBound": lambda n: UpperBound(n, 16, presample=2, tau_th=1.05, seed=4),
    "SoftRandom": lambda n: SoftRandom(n, 16, rate=0.7, seed=5),
    "BiasedLoss": lambda n: BiasedLoss(n, 16, pool_size=40, seed=6),
    "BiasedLoss-lstm": lambda n: BiasedLoss(n, 16, predictor="lstm", labels=LABELS,
                                            pool_size=64, seed=7),
    "RAS": lambda n: RAS(n, 16, groups=LABELS, seed=8),
    "HighLossBatches": lambda n: HighLossBatches(n, 16, delta=0.3, seed=9),
    "DynamicPruning": lambda n: DynamicPruning(n, 16, epochs=3, delta=1.0, seed=10),
    "DynamicPruning-exact": lambda n: DynamicPruning(n, 16, epochs=3, delta=1.0, exact=True,
                                                     seed=11),
    "SelectiveBackprop": lambda n: SelectiveBackprop(n, 8, history=32, seed=12),
    "SelectiveBackprop-reweight": lambda n: SelectiveBackprop(n, 8, history=32, reweight=True,
                                                              pool_size=12, seed=13),
    "SelectiveBackprop-stale": lambda n: SelectiveBackprop(n, 8, history=32, stale=True,
                                                           seed=14),
    "RhoLoss": lambda n: RhoLoss(n, 8, irreducible=np.arange(n) % 3 / 4, pool_size=24,
                                 seed=15),
}


@pytest.mark.parametrize("make", RESUMABLE.values(), ids=RESUMABLE.keys())
def test_resume_with_workers_continues_bit_identically(make):
    n = 160
    scores = np.random.default_rng(0).lognormal(0, 1, n)
    step = scored_step(scores)
    reference = run_loop(make(n), n, 3, step)
    interrupted = make(n)
    stop = len(interrupted) + 2  # early in epoch 1 (pruned epochs are shorter)
    head = run_loop(interrupted, n, 3, step, stop_after=stop)
    checkpoint = round_trip(interrupted.state_dict())
    resumed = make(n)
    resumed.load_state_dict(checkpoint)
    assert resumed.epoch == 1 and resumed.step == stop + 1
    tail = run_loop(resumed, n, 3, step)
    assert head + tail == reference


def test_state_dict_round_trip_and_rejections():
    sampler = ImportanceSampler(30, 4, seed=1)
    drive(sampler, 5, lambda i: i + 1.0)
    state = sampler.state_dict()
    twin = ImportanceSampler(30, 4, seed=1)
    twin.load_state_dict(round_trip(state))
    assert same_state(twin.state_dict(), state)
    assert [d.index.tolist() for d in drive(twin, 6, lambda i: i + 1.0)] == \
        [d.index.tolist() for d in drive(sampler, 6, lambda i: i + 1.0)]
    fresh = ImportanceSampler(30, 4, seed=1)
    before = fresh.state_dict()
    with pytest.raises(ValueError, match="another configuration"):
        fresh.load_state_dict(ImportanceSampler(30, 4, seed=2).state_dict())
    with pytest.raises(ValueError, match="belongs to a Uniform"):
        fresh.load_state_dict(Uniform(30, 4, seed=1).state_dict())
    with pytest.raises(ValueError, match="not a fastis sampler"):
        fresh.load_state_dict({"weights": 1})
    corrupted = round_trip(state)
    corrupted["method"]["stamp"] = corrupted["method"]["stamp"][:-1]
    with pytest.raises(ValueError, match="stamp has shape"):
        fresh.load_state_dict(corrupted)
    corrupted = round_trip(state)
    corrupted["in_flight"] = [(np.array([99]), np.ones(1, np.float32), 1)]
    with pytest.raises(ValueError, match="corrupted"):
        fresh.load_state_dict(corrupted)
    assert same_state(before, fresh.state_dict())


def test_stats_are_the_last_draws_figures():
    sampler = ImportanceSampler(100, 50, initial_score=np.arange(100) % 10 + 1.0, seed=0)
    draw = next(iter(sampler))
    w = draw.weight.astype(np.float64)
    stats = sampler.stats()
    assert stats["ess"] == pytest.approx(w.sum() ** 2 / (50 * (w * w).sum()))
    assert stats["max_weight"] == w.max() and stats["min_weight"] == w.min()
    assert stats["seen"] == len(np.unique(draw.index)) / 100


# ----------------------------------------------------------------------- more method checks
@pytest.mark.parametrize("make", [
    lambda n: Uniform(n, 8, seed=1),
    lambda n: Uniform(n, 8, replacement=True, seed=2),
    lambda n: SoftRandom(n, 8, rate=0.4, seed=3),
    lambda n: SoftRandom(n, 8, rate=0.4, replacement=False, seed=4),
], ids=["Uniform", "Uniform-replacement", "SRS", "RS2"])
def test_uniform_methods_are_unbiased(make):
    problem = LeastSquares(seed=4)
    draws = drive(make(len(problem.norms)), 3000)
    problem.assert_unbiased(np.array([problem.estimate(d.index, d.weight) for d in draws]),
                            "uniform family")


def test_biased_loss_with_a_predictor_k1_is_unbiased():
    problem = LeastSquares(seed=5)
    n = len(problem.losses)
    labels = np.arange(n) % 4
    sampler = BiasedLoss(n, 8, k=1.0, predictor="gaussian", labels=labels, pool_size=32,
                         guard=False, seed=6)
    draws = drive(sampler, 3000, lambda index: problem.losses[index])
    assert np.ptp(np.concatenate([d.weight for d in draws[-50:]])) > 0  # really reweighted
    problem.assert_unbiased(np.array([problem.estimate(d.index, d.weight) for d in draws]),
                            "BiasedLoss + PerClassGaussian, k=1")


def test_biased_loss_k0_samples_in_proportion_to_the_loss():
    scores = np.linspace(0.5, 4.0, 64)
    sampler = BiasedLoss(500, 64, k=0.0, pool_size=64, guard=False, seed=7)
    counts = np.zeros(64)
    for _ in range(300):
        draw = next(iter(sampler))
        pick = sampler.select(draw, scores)
        assert np.ptp(pick.weight.numpy()) == 0  # no reweighting
        counts += np.bincount(pick.rows.numpy(), minlength=64)
        sampler.update(draw)
    assert_fits(np.repeat(np.arange(64), counts.astype(int)), scores / scores.sum())


def test_reusing_the_pools_forward_gives_the_second_forwards_gradient():
    # The README's reuse pattern: back-propagate through the pool's own forward at the
    # chosen rows; for a deterministic model the gradient equals that of a fresh forward.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 4))
    sampler = UpperBound(100, 6, presample=3, reuse_forward=True, tau_th=1.0, seed=3)
    sampler.tau = 10.0
    draw = next(iter(sampler))
    x, y = torch.randn(len(draw), 5), torch.randint(0, 4, (len(draw),))
    logits = model(x)
    pick = sampler.select(draw, fastis.ops.cross_entropy_scores(logits.detach(), y))
    weighted = lambda z, t: (torch.nn.functional.cross_entropy(z, t, reduction="none")  # noqa: E731
                             * pick.weight).mean()
    reused = torch.autograd.grad(weighted(logits[pick.rows], y[pick.rows]),
                                 list(model.parameters()))
    fresh = torch.autograd.grad(weighted(model(x[pick.rows]), y[pick.rows]),
                                list(model.parameters()))
    for a, b in zip(reused, fresh):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_measured_costs_set_the_threshold():
    import time as clock

    sampler = UpperBound(1000, 10, presample=4, cost="measured", tau_th=None, guard=False,
                         seed=1)
    sampler.tau = 100.0  # the paper's switch: pools from the start

    def slow_scores(rows):
        clock.sleep(0.002)  # 2 ms per chunk of 10 rows: ~0.2 ms per example
        return torch.ones(len(rows))

    for _ in range(6):
        draw = next(iter(sampler))
        pick = sampler.select(draw, slow_scores)
        clock.sleep(0.02)  # the training step: ~2 ms per trained example
        sampler.update(draw, np.ones(len(pick.rows)))
    t_f, t_s = sampler._forward_cost, sampler._step_cost
    assert t_f > 1.5e-4 and t_f < 1e-3 and t_s > 1.5e-3 and t_s < 1e-2
    assert sampler.threshold() == pytest.approx((40 * t_f + 10 * t_s) / (10 * t_s))
    assert sampler.threshold() < (40 + 30) / 30  # cheaper forwards than the 1:2 model says


def test_a_loader_thread_may_draw_while_the_loop_updates():
    # One thread draws ahead (as a prefetching loader would) while the main thread updates;
    # every call holds the sampler's lock, so the end state is exactly the sequential
    # result of the updates, in the order they were made, and the counters agree with it.
    import queue
    import threading

    n = 500
    sampler = ImportanceSampler(n, 16, floor=0.1, steps_per_epoch=10**6, seed=4)
    drawn: queue.Queue = queue.Queue(maxsize=8)

    def loader() -> None:
        for draw in sampler:
            drawn.put(draw)
            if draw.step == 1999:
                return

    thread = threading.Thread(target=loader)
    thread.start()
    expected = np.ones(n)
    stamp = np.full(n, -1)
    for _ in range(2000):
        draw = drawn.get(timeout=30)
        values = (draw.index % 13 + 1.0) * (1 + draw.step % 5)
        sampler.update(draw, values)
        expected[draw.index] = values  # numpy assignment: the last duplicate wins, as in update
        stamp[draw.index] = draw.step
        if draw.step % 100 == 0:
            sampler.stats()  # reads while the loader thread draws
    thread.join(30)
    np.testing.assert_array_equal(sampler._tree.weights().numpy(), expected)
    np.testing.assert_array_equal(sampler._stamp, stamp)
    assert sampler._stamp_sum == stamp[stamp >= 0].sum()
    assert sampler._num_seen == int(sampler._seen.sum()) and sampler.step == 2000


def test_reshuffled_stream_is_a_permutation_per_pass_and_uniform_per_position():
    from fastis.samplers.draws import Reshuffled

    stream = Reshuffled(seed=3, num_examples=37)
    examples = stream.at(np.arange(0, 37 * 3, dtype=np.int64), None)
    for p in range(3):  # each pass of 37 positions: every example once
        assert sorted(examples[37 * p:37 * (p + 1)].tolist()) == list(range(37))
    assert not np.array_equal(examples[:37], examples[37:74])  # a fresh order per pass
    # Any slice, across a pass boundary too, reads the same stream.
    np.testing.assert_array_equal(stream.at(np.arange(30, 45, dtype=np.int64), None),
                                  examples[30:45])
    # Position 5 over many seeds: uniform over the examples (chi-square, 5 sigma).
    hits = np.bincount([Reshuffled(s, 8).at(np.array([5]), None)[0] for s in range(4000)],
                       minlength=8)
    chi2 = ((hits - 500) ** 2 / 500).sum()
    assert chi2 < 7 + 5 * np.sqrt(14), chi2
    # Beyond max_examples: independent draws from the caller's generator.
    big = Reshuffled(seed=0, num_examples=100, max_examples=10)
    assert not big.reshuffles
    assert len(big.at(np.arange(5), np.random.default_rng(0))) == 5


@pytest.mark.parametrize("first, count", [(0, 37), (3, 5), (30, 15), (36, 1), (74, 40),
                                          (5, 0), (111, 74)])
def test_reshuffled_span_reads_the_same_stream_as_at(first, count):
    from fastis.samplers.draws import Reshuffled

    stream = Reshuffled(seed=3, num_examples=37)
    unused = lambda: pytest.fail("a reshuffled span needs no generator")  # noqa: E731
    span = stream.span(first, count, unused)
    assert span.dtype == np.int64 and len(span) == count
    np.testing.assert_array_equal(span, stream.at(np.arange(first, first + count,
                                                            dtype=np.int64), None))
    span[:] = -1  # the caller owns it: the cached pass is unchanged
    assert stream.at(np.arange(first, first + count, dtype=np.int64), None).min(
        initial=0) >= 0
    # Beyond max_examples: independent draws, from the generator the factory makes.
    big = Reshuffled(seed=0, num_examples=100, max_examples=10)
    np.testing.assert_array_equal(big.span(first, count, lambda: np.random.default_rng(4)),
                                  big.at(np.arange(count), np.random.default_rng(4)))


def test_importance_sampler_backed_off_goes_through_the_data_without_replacement():
    n, b = 40, 4
    sampler = ImportanceSampler(n, b, steps_per_epoch=10**6, seed=5)
    stream = iter(sampler)
    drawn = []
    for _ in range(10):  # the guard's warm-up: uniform sampling, u = 1
        draw = next(stream)
        assert sampler.uniform_share() == 1.0
        drawn += draw.index.tolist()
        sampler.update(draw, np.ones(b))
    assert sorted(drawn) == list(range(n))  # one pass: random reshuffling
