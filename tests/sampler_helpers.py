"""Helpers for the sampler tests: state comparison, a synthetic least-squares problem whose
per-example gradients are known exactly, and a loop that drives a sampler through a
DataLoader the way a training loop does."""

from __future__ import annotations

import collections
import copy
import io
import itertools
import math
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from fastis.samplers import (
    RAS,
    BiasedLoss,
    DynamicPruning,
    HighLossBatches,
    ImportanceSampler,
    RhoLoss,
    SelectiveBackprop,
    SoftRandom,
    Uniform,
    UpperBound,
)


def same_state(a: Any, b: Any) -> bool:
    """Deep equality of state dicts holding dicts, lists, numpy arrays, tensors, floats."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(
            same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(
            same_state(x, y) for x, y in zip(a, b))
    if isinstance(a, (np.ndarray, torch.Tensor)):
        x, y = np.asarray(a), np.asarray(b)
        return x.shape == y.shape and x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True)
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def round_trip(state: dict) -> dict:
    """The state after torch.save / torch.load (weights_only, torch's default), as a
    checkpoint stores it."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


class LeastSquares:
    """L_i(theta) = (x_i . theta - y_i)^2 with fixed theta: G_i = 2 (x_i . theta - y_i) x_i,
    computed in float64 without fastis. Example scales differ by orders of magnitude so
    that importance sampling is far from uniform."""

    def __init__(self, n: int = 40, dim: int = 3, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        scale = np.exp(rng.normal(0.0, 1.0, n))[:, None]
        self.x = rng.normal(size=(n, dim)) * scale
        self.y = rng.normal(size=n)
        theta = rng.normal(size=dim)
        self.grads = 2 * (self.x @ theta - self.y)[:, None] * self.x  # [n, dim]
        self.norms = np.linalg.norm(self.grads, axis=1)
        self.losses = (self.x @ theta - self.y) ** 2
        self.full = self.grads.mean(axis=0)

    def assert_unbiased(self, estimates: np.ndarray, what: str, sigmas: float = 4.0) -> None:
        """`estimates` [T, dim], one per step: their mean must equal the full gradient within
        `sigmas` standard errors in every coordinate (two-sided 4 sigma: a false alarm
        probability of 6e-5 per coordinate)."""
        mean = estimates.mean(axis=0)
        error = estimates.std(axis=0, ddof=1) / math.sqrt(len(estimates))
        z = np.abs(mean - self.full) / error
        assert (z < sigmas).all(), f"{what}: mean {mean} vs full {self.full}, z = {z}"

    def estimate(self, index: np.ndarray, weight: np.ndarray) -> np.ndarray:
        return (np.asarray(weight, np.float64)[:, None] * self.grads[index]).mean(axis=0)


def loader_for(sampler, n: int, workers: int = 2) -> DataLoader:
    dataset = TensorDataset(torch.arange(n, dtype=torch.float64), torch.arange(n))
    return sampler.loader(dataset, num_workers=workers,
                          prefetch_factor=2 if workers else None, persistent_workers=False)


def run_loop(sampler, n: int, epochs: int, step_fn: Callable, *, workers: int = 2,
             stop_after: int | None = None) -> list:
    """Drives `sampler` through a DataLoader for `epochs` (from sampler.epoch), calling
    step_fn(sampler, batch) -> record for each batch; stops after the batch of global step
    `stop_after` (after its update). Returns the records."""
    records = []
    for _ in range(sampler.epoch, epochs):
        for batch in loader_for(sampler, n, workers):
            x, i = batch.data
            assert torch.equal(i, batch.index) and torch.equal(x.long(), batch.index)
            records.append(step_fn(sampler, batch))
            if stop_after is not None and int(batch.step[0]) == stop_after:
                return records
    return records


def train(sampler, num_steps: int, score_fn, prefetch: int = 0,
          save_after: int | None = None) -> tuple[list, dict | None]:
    """Consumes `num_steps` batches like a DataLoader with `prefetch` batches in flight (it
    asks for the next batch before the loop trains on the current one; 0: draw, then train),
    updating with `score_fn(draw)`. Returns the consumed draws and the state saved after
    update number `save_after`."""
    consumed, saved = [], None
    while len(consumed) < num_steps:
        epoch = iter(sampler)
        ahead = collections.deque(itertools.islice(epoch, prefetch))
        while len(consumed) < num_steps:
            ahead.extend(itertools.islice(epoch, 1))
            if not ahead:
                break
            draw = ahead.popleft()
            sampler.update(draw, score_fn(draw))
            consumed.append(draw)
            if len(consumed) == save_after:
                saved = copy.deepcopy(sampler.state_dict())
    return consumed, saved


# ---------------------------------------------------------------------- every sampler
# A small data set, and every sampler on it: the ones that learn from scores, then the rest.
N, B = 60, 6
LABELS = np.arange(N) % 3
# RHO-LOSS's irreducible losses: a fixed, varied profile.
IRREDUCIBLE = (np.arange(N) % 5) / 10.0

# Samplers that learn from scores; each after a few steps of training.
LEARNERS = {
    "ImportanceSampler": lambda: ImportanceSampler(N, B, floor=0.1, seed=0),
    # The paper's switch (every step a pool once tau > 1), and the guarded default (pools
    # only while the guard's cost test passes: after its warm-up, where rho < 0.8).
    "UpperBound": lambda: UpperBound(N, B, tau_th=1.0, momentum=0.0, guard=False, seed=0),
    "UpperBound guarded": lambda: UpperBound(N, B, tau_th=1.0, momentum=0.0, seed=0),
    # Paper mode (every step a pool), and the default (pools only while they pay).
    "BiasedLoss exact": lambda: BiasedLoss(N, B, pool_size=12, switch=False, seed=0),
    "BiasedLoss switched": lambda: BiasedLoss(N, B, pool_size=12, seed=0),
    "BiasedLoss gaussian": lambda: BiasedLoss(N, B, predictor="gaussian", labels=LABELS,
                                              pool_size=24, seed=0),
    "BiasedLoss lstm": lambda: BiasedLoss(N, B, predictor="lstm", labels=LABELS, pool_size=24,
                                          seed=0),
    "RAS": lambda: RAS(N, B, groups=LABELS, seed=0),
    "HighLossBatches": lambda: HighLossBatches(N, B, seed=0),
    "DynamicPruning": lambda: DynamicPruning(N, B, epochs=6, seed=0),
    "DynamicPruning exact": lambda: DynamicPruning(N, B, epochs=6, exact=True, seed=0),
    "SelectiveBackprop": lambda: SelectiveBackprop(N, B, history=16, seed=0),
    # F = 1.5 b: a guarded selection that can pay (cost 1.5); at the default F = 4 b no
    # selection can, and every batch is uniform.
    "SelectiveBackprop reweight": lambda: SelectiveBackprop(N, B, history=16, reweight=True,
                                                            pool_size=9, seed=0),
    "SelectiveBackprop reweight uniform": lambda: SelectiveBackprop(N, B, reweight=True,
                                                                    seed=0),
    "SelectiveBackprop stale": lambda: SelectiveBackprop(N, B, history=16, stale=True,
                                                         seed=0),
    "RhoLoss": lambda: RhoLoss(N, B, irreducible=IRREDUCIBLE, pool_size=18, seed=0),
}
ALL = {**LEARNERS, "Uniform": lambda: Uniform(N, B, seed=0),
       "SoftRandom": lambda: SoftRandom(N, B, rate=0.5, seed=0),
       "RS2": lambda: SoftRandom(N, B, rate=0.5, replacement=False, seed=0)}


def step(sampler, scores_of=lambda index: (index % 7 + 1) / 7.0):
    """One training step: draw, select (pools), update with scores; returns the draw."""
    draw = next(iter(sampler))
    index = draw.index
    if sampler.scores_pools:
        index = sampler.select(draw, scores_of(draw.index)).index.numpy()
    sampler.update(draw, scores_of(index))
    return draw


def trained(name: str, steps: int = 4):
    sampler = ALL[name]()
    for _ in range(steps):
        step(sampler)
    return sampler


def pending(sampler):
    """A drawn batch not yet reported (a pool already selected), and how many scores its
    update takes."""
    draw = next(iter(sampler))
    size = len(draw)
    if sampler.scores_pools:
        size = len(sampler.select(draw, np.ones(len(draw))).rows)
    return draw, size
