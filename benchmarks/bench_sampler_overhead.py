"""What each fastis sampler adds to a training step on the CPU (draw the next batch, choose
from the pool where the method has one, update with the trained examples' scores), at
n = 1e6 and batch 128, against one training step of the demo's small CNN (forward,
backward, SGD) on Fashion-MNIST-sized images, timed in the same run.

    pytest benchmarks/bench_sampler_overhead.py --benchmark-only     # ~1 minute

Scores are random; the model forward that scores a pool is the method's own cost, not
bookkeeping, and is not included. The LSTM predictor's time is a small model's forward on
the pool and one Adam step per update.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from harness import Target
from torch import nn

import fastis
from fastis import samplers
from fastis.training import SmallCNN

N, BATCH = 1_000_000, 128
STEPS = 10**9  # one long epoch: the timed loop never restarts the iterator
GROUP = f"per-step cost, n = {N:,}, batch {BATCH}"


def _upper_bound_on() -> samplers.UpperBound:
    sampler = samplers.UpperBound(N, BATCH, tau_th=1.0, steps_per_epoch=STEPS, seed=0)
    sampler.tau = 10.0  # every step a pool of 3b, resampled
    return sampler


LABELS = np.random.default_rng(0).integers(0, 10, N)
FACTORIES = {
    "Uniform": lambda: samplers.Uniform(N, BATCH, seed=0),
    "SoftRandom (rate 0.5)": lambda: samplers.SoftRandom(N, BATCH, rate=0.5, seed=0),
    "ImportanceSampler (guarded)": lambda: samplers.ImportanceSampler(N, BATCH,
                                                                      steps_per_epoch=STEPS,
                                                                      seed=0),
    # The guarded pool methods' defaults: every step uniform (scores_pools False).
    "UpperBound, uniform steps (its default)": lambda: samplers.UpperBound(
        N, BATCH, steps_per_epoch=STEPS, seed=0),
    "UpperBound, importance steps (pool 384)": _upper_bound_on,
    "BiasedLoss exact, uniform steps (its default)": lambda: samplers.BiasedLoss(
        N, BATCH, steps_per_epoch=STEPS, seed=0),
    "BiasedLoss exact, pool steps (pool 256)": lambda: samplers.BiasedLoss(
        N, BATCH, switch=False, steps_per_epoch=STEPS, seed=0),
    "BiasedLoss + PerClassGaussian (pool 2048)": lambda: samplers.BiasedLoss(
        N, BATCH, predictor="gaussian", labels=LABELS, steps_per_epoch=STEPS, seed=0),
    "BiasedLoss + LSTM predictor (pool 2048)": lambda: samplers.BiasedLoss(
        N, BATCH, predictor="lstm", labels=LABELS, steps_per_epoch=STEPS, seed=0),
    "RAS": lambda: samplers.RAS(N, BATCH, groups=LABELS, steps_per_epoch=STEPS, seed=0),
    "HighLossBatches (delta 0.5)": lambda: samplers.HighLossBatches(N, BATCH, seed=0),
    "DynamicPruning": lambda: samplers.DynamicPruning(N, BATCH, epochs=10, seed=0),
    "SelectiveBackprop (pool 512)": lambda: samplers.SelectiveBackprop(N, BATCH, seed=0),
    "SelectiveBackprop reweighted, uniform batches (its default)": lambda:
        samplers.SelectiveBackprop(N, BATCH, reweight=True, seed=0),
    "SelectiveBackprop reweighted, unguarded (pool 512)": lambda: samplers.SelectiveBackprop(
        N, BATCH, reweight=True, guard=False, seed=0),
    "RhoLoss (pool 1280)": lambda: samplers.RhoLoss(
        N, BATCH, irreducible=np.random.default_rng(2).random(N), seed=0),
}


@pytest.mark.parametrize("name", FACTORIES)
def bench_sampler_step(bench, name):
    sampler = FACTORIES[name]()
    largest = max(sampler.batch_size, getattr(sampler, "pool_size", 0))
    scores = torch.from_numpy(np.random.default_rng(1).random(largest).astype(np.float32))
    iterator = [iter(sampler)]

    def step() -> None:
        draw = next(iterator[0], None)
        if draw is None:  # an epoch ended (Uniform, SoftRandom, HighLossBatches)
            iterator[0] = iter(sampler)
            draw = next(iterator[0])
        trained = len(draw)
        if sampler.scores_pools:
            trained = len(sampler.select(draw, scores[:len(draw)]).rows)
        sampler.update(draw, scores[:trained])

    bench(step, group=GROUP, method=name)


def bench_cnn_step(bench):
    torch.manual_seed(0)
    model = SmallCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(BATCH, 1, 28, 28), torch.randint(0, 10, (BATCH,))

    def step() -> None:
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    bench(step, group=GROUP, method="small CNN training step (reference)", baseline=True)


def bench_score_op(bench):
    logits, y = torch.randn(BATCH, 10), torch.randint(0, 10, (BATCH,))
    bench(lambda: fastis.ops.cross_entropy_scores(logits, y), group=GROUP,
          method="fastis.ops.cross_entropy_scores on the step's logits")


def _share(name: str):
    """A sampler's cost as a percentage of the CNN step."""
    return lambda r: 100 * r[GROUP][name] / r[GROUP]["small CNN training step (reference)"]


TARGETS = [Target(f"{name}: share of the CNN step", _share(name), 2.0, "%", False)
           for name in FACTORIES if "LSTM" not in name]
