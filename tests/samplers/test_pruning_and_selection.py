"""DynamicPruning, SelectiveBackprop and RhoLoss: unbiasedness (Monte Carlo, against the
exact float64 gradients of tests/sampler_helpers.LeastSquares), what each keeps and drops,
epoch lengths, resume, and bad configurations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sampler_helpers import LeastSquares, same_state

from fastis.samplers import DynamicPruning, RhoLoss, SelectiveBackprop
from fastis.samplers.rho_loss import irreducible_losses


# ---------------------------------------------------------------------- DynamicPruning
def pruned_epoch_estimates(sampler: DynamicPruning, problem: LeastSquares, epochs: int
                           ) -> np.ndarray:
    """Per epoch from 1 on: sum over the epoch's trained examples of w_i G_i / N, the
    epoch's weighted-gradient estimate of the full mean gradient (epoch 0 scores every
    example)."""
    n, out = len(problem.losses), []
    for epoch in range(epochs + 1):
        sampler.set_epoch(epoch)
        total = np.zeros(problem.grads.shape[1])
        for draw in sampler:
            total += (draw.weight.astype(np.float64)[:, None] * problem.grads[draw.index]).sum(0)
            sampler.update(draw, problem.losses[draw.index])
        if epoch:
            out.append(total / n)
    return np.array(out)


@pytest.mark.parametrize("exact", [False, True])
def test_dynamic_pruning_is_unbiased_per_epoch(exact):
    problem = LeastSquares(n=40, seed=5)
    sampler = DynamicPruning(40, 8, epochs=10**6, prune_ratio=0.6, exact=exact, seed=2)
    estimates = pruned_epoch_estimates(sampler, problem, 2500)
    problem.assert_unbiased(estimates, f"DynamicPruning exact={exact}")
    # It did prune: the estimates vary (an unpruned epoch is the exact mean).
    assert estimates.std(axis=0).min() > 0


def test_dynamic_pruning_without_weights_would_be_caught():
    """The test above can fail: the same pruning with every weight set to 1 is biased."""
    problem = LeastSquares(n=40, seed=5)
    sampler = DynamicPruning(40, 8, epochs=10**6, prune_ratio=0.6, seed=2)
    n, estimates = 40, []
    for epoch in range(800):
        sampler.set_epoch(epoch)
        total = np.zeros(problem.grads.shape[1])
        for draw in sampler:
            total += problem.grads[draw.index].sum(0)
            sampler.update(draw, problem.losses[draw.index])
        if epoch:
            estimates.append(total / n)
    with pytest.raises(AssertionError):
        problem.assert_unbiased(np.array(estimates), "unweighted pruning")


def test_dynamic_pruning_drops_only_well_learned_examples_and_anneals():
    n, b = 200, 16
    losses = np.where(np.arange(n) < 100, 0.1, 2.0)  # the first half is well learned
    sampler = DynamicPruning(n, b, epochs=8, prune_ratio=0.5, delta=0.5, exact=True, seed=0)
    seen_per_epoch, lengths = [], []
    for epoch in range(8):
        sampler.set_epoch(epoch)
        lengths.append(len(sampler))
        seen = []
        for draw in sampler:
            seen += draw.index.tolist()
            low = draw.index < 100
            expected = np.where(low, 2.0, 1.0) if 1 <= epoch < 4 else np.ones(len(low))
            np.testing.assert_array_equal(draw.weight, expected)
            sampler.update(draw, losses[draw.index])
        seen_per_epoch.append(np.array(seen))
        assert len(seen) == len(set(seen))  # each kept example once
        assert lengths[-1] == -(-len(seen) // b)  # len() known at the epoch's start
    assert len(seen_per_epoch[0]) == n  # nothing scored yet: nothing pruned
    for epoch in (1, 2, 3):  # exactly half of the well-learned half dropped
        kept = seen_per_epoch[epoch]
        assert (kept >= 100).sum() == 100 and (kept < 100).sum() == 50
    for epoch in (4, 5, 6, 7):  # the last (1 - delta) of the epochs: all the data
        assert len(seen_per_epoch[epoch]) == n
    assert sampler.stats()["annealing"] == 1.0


def test_dynamic_pruning_bad_configuration():
    for bad in ({"epochs": 0}, {"epochs": 2.5}, {"epochs": 3, "prune_ratio": 1.0},
                {"epochs": 3, "prune_ratio": -0.1}, {"epochs": 3, "delta": 1.5},
                {"epochs": 3, "prune_ratio": float("nan")}):
        with pytest.raises((ValueError, TypeError)):
            DynamicPruning(100, 10, **bad)


# ---------------------------------------------------------------------- SelectiveBackprop
def selective_estimates(reweight: bool) -> tuple[LeastSquares, np.ndarray]:
    problem = LeastSquares(n=40, seed=6)
    sampler = SelectiveBackprop(40, 4, pool_size=16, history=64, reweight=reweight,
                                guard=False, seed=3)
    estimates = []
    for _ in range(6000):
        draw = next(iter(sampler), None)
        if draw is None:
            continue  # an epoch ended
        pick = sampler.select(draw, problem.losses[draw.index])
        assert len(pick.rows) == min(4, len(draw))
        estimates.append(problem.estimate(pick.index.numpy(), pick.weight.numpy()))
        sampler.update(draw, problem.losses[pick.index.numpy()])
    return problem, np.array(estimates)


def test_reweighted_selective_backprop_is_unbiased():
    problem, estimates = selective_estimates(reweight=True)
    problem.assert_unbiased(estimates, "SelectiveBackprop reweight")


def test_the_papers_selective_backprop_is_biased_and_the_test_sees_it():
    problem, estimates = selective_estimates(reweight=False)
    with pytest.raises(AssertionError):
        problem.assert_unbiased(estimates, "SelectiveBackprop")


def test_selective_backprop_keeps_high_losses_at_a_fixed_batch_size():
    n, b = 400, 8
    losses = np.random.default_rng(0).exponential(1.0, n)
    sampler = SelectiveBackprop(n, b, history=256, seed=1)
    picked = []
    for epoch in range(6):
        sampler.set_epoch(epoch)
        for draw in sampler:
            pick = sampler.select(draw, losses[draw.index])
            assert len(pick.rows) == min(b, len(draw))
            np.testing.assert_array_equal(pick.weight.numpy(), 1.0)  # the paper's rule
            picked += pick.index.tolist()
            sampler.update(draw, losses[pick.index.numpy()])
    # beta = 3: the kept examples' losses sit far above the data's median.
    assert np.median(losses[picked[len(picked) // 2:]]) > 2 * np.median(losses)


def test_reweighted_selective_backprop_trains_uniform_batches_where_no_selection_pays():
    """Guarded at F = 4b a step costs (F + 3b) / 3b = 2.33 uniform steps, beyond the gain
    bound 2 - rho of any unbiased estimator: every batch is b uniform examples, weight 1,
    each example once per epoch, and no pool to score. Below F = 2b (F = 1.5b: cost 1.5)
    or unguarded it selects."""
    n, b = 100, 8
    sampler = SelectiveBackprop(n, b, reweight=True, seed=4)
    assert sampler.threshold() == pytest.approx(7 / 3) and not sampler.scores_pools
    assert len(sampler) == 13 and sampler.stats()["uniform_batches"] == 1.0
    seen = []
    for draw in sampler:
        assert len(draw) <= b and not sampler.is_pool(draw)
        np.testing.assert_array_equal(draw.weight, 1.0)
        seen += draw.index.tolist()
        sampler.update(draw, np.ones(len(draw)))
    assert sorted(seen) == list(range(n))
    # Bad scores are still refused, and change nothing.
    draw = next(iter(sampler))
    before = sampler.state_dict()
    with pytest.raises(ValueError):
        sampler.update(draw, np.full(len(draw), -1.0))
    assert same_state(sampler.state_dict(), before)
    for selecting in (SelectiveBackprop(n, b, reweight=True, pool_size=12, seed=4),
                      SelectiveBackprop(n, b, reweight=True, guard=False, seed=4),
                      SelectiveBackprop(n, b, seed=4)):
        assert selecting.scores_pools and selecting.is_pool(next(iter(selecting)))
        assert selecting.stats()["uniform_batches"] == 0.0


def test_stale_selective_backprop_yields_the_chosen_batch():
    n, b = 120, 6
    losses = np.linspace(0.01, 3.0, n)
    sampler = SelectiveBackprop(n, b, history=64, stale=True, seed=2)
    assert not sampler.scores_pools  # no pool to forward: the draw is the batch
    late = []
    for epoch in range(6):
        sampler.set_epoch(epoch)
        for draw in sampler:
            assert len(draw) <= b
            np.testing.assert_array_equal(draw.weight, 1.0)
            if epoch >= 3:
                late += draw.index.tolist()
            sampler.update(draw, losses[draw.index])
    # From each example's last loss: the chosen ones are mostly the high-loss examples.
    assert np.median(losses[late]) > 1.3 * np.median(losses)


def test_selective_backprop_bad_configuration():
    for bad in ({"pool_size": 4}, {"beta": 0}, {"beta": float("inf")}, {"history": 0},
                {"pool_size": 0}):
        with pytest.raises((ValueError, TypeError)):
            SelectiveBackprop(100, 8, **bad)


# ---------------------------------------------------------------------- RhoLoss
def test_rho_loss_picks_the_highest_reducible_losses():
    n, b = 100, 5
    irreducible = np.where(np.arange(n) % 2 == 0, 2.0, 0.0)  # even examples: noise
    losses = np.full(n, 2.1)  # every training loss alike: only the reducible part differs
    sampler = RhoLoss(n, b, irreducible=irreducible, pool_size=20, seed=0)
    for _ in range(5):
        draw = next(iter(sampler))
        pick = sampler.select(draw, losses[draw.index])
        assert len(pick.rows) == b
        assert (pick.index.numpy() % 2 == 1).all(), "a noisy (irreducible) example was kept"
        sampler.update(draw, losses[pick.index.numpy()])


def test_rho_loss_state_is_tied_to_its_irreducible_losses():
    n = 60
    sampler = RhoLoss(n, 4, irreducible=np.zeros(n), pool_size=12, seed=0)
    draw = next(iter(sampler))
    pick = sampler.select(draw, np.arange(len(draw), dtype=float))
    sampler.update(draw, np.ones(len(pick.rows)))
    state = sampler.state_dict()
    other = RhoLoss(n, 4, irreducible=np.ones(n), pool_size=12, seed=0)
    before = other.state_dict()
    with pytest.raises(ValueError):
        other.load_state_dict(state)
    assert same_state(other.state_dict(), before)


def test_rho_loss_bad_irreducible_losses():
    for bad in (np.zeros(59), np.full(60, np.nan), -np.ones(60), np.full(60, np.inf),
                "losses", None):
        with pytest.raises((ValueError, TypeError)):
            RhoLoss(60, 4, irreducible=bad)
    with pytest.raises(ValueError):
        RhoLoss(60, 8, irreducible=np.zeros(60), pool_size=4)


def test_irreducible_losses_match_a_float64_reference():
    torch.manual_seed(0)
    x, y = torch.randn(37, 5), torch.randint(0, 3, (37,))
    model = torch.nn.Linear(5, 3)
    got = irreducible_losses(model, torch.utils.data.TensorDataset(x, y), batch_size=8)
    with torch.no_grad():
        z = model(x).double()
    want = (torch.logsumexp(z, 1) - z[torch.arange(37), y]).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert model.training  # its mode is restored
