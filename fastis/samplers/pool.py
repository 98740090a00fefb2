"""Presample-and-resample, shared by UpperBound (KF18) and BiasedLoss (KF17).

On a pool step the sampler yields a pool of B indices drawn uniformly with replacement. The
training loop scores the pool with the model (a forward pass without backward) and calls
`select(batch, scores)`, which draws the b examples to train on from the pool with
replacement, P(row r) = g_r = s_r / sum(s), and gives each its weight. Drawing from a
uniform pool with replacement keeps the estimate exactly unbiased with w = 1 / (B g):
E[w_j G_j] = (1 / B) sum_{i in pool} G_i, whose expectation over the pool is the full
gradient (docs/methods.md).

On other steps `select` returns the batch as it is, so one loop serves both kinds of step.
"""

from __future__ import annotations

import abc
import math
import time
from typing import Any, NamedTuple

import numpy as np
import torch

from fastis.data import Draw, take_rows
from fastis.samplers.base import BatchSampler
from fastis.samplers.draws import (
    STREAM_DRAW,
    STREAM_SELECT,
    Reshuffled,
    normalised,
    resample,
    step_generator,
)
from fastis.samplers.guard import VarianceGuard
from fastis.samplers.state import MAX_STEP, Array, Field, Nested
from fastis.validation import positive_count


def pool_step_cost(pool_size: int, batch_size: int) -> float:
    """The cost of a pool step in uniform steps, by counting forwards (a backward costs two):
    the pool's scoring forward, then the b chosen trained, (B + 3b) / (3b)."""
    return (pool_size + 3 * batch_size) / (3 * batch_size)


class Pick(NamedTuple):
    """The examples to train on, chosen from a batch by `select()`.

    rows: int64 [b], positions in the batch (repeats possible); index: int64 [b], their
    data set indices; weight: float32 [b], the loss weight of each; every_row: the rows
    are the whole batch, in order (then `take` returns the data itself, no copy).

    Examples:
        >>> import torch
        >>> from fastis.samplers import Pick
        >>> pick = Pick(torch.tensor([1, 1]), torch.tensor([40, 40]), torch.ones(2))
        >>> pick.take(torch.tensor([10, 11, 12])).tolist()
        [11, 11]
    """

    rows: torch.Tensor
    index: torch.Tensor
    weight: torch.Tensor
    every_row: bool = False

    def take(self, data: Any) -> Any:
        """`data` (a tensor, or tuples / lists / dicts of batch-first tensors) at `rows`;
        with every_row, `data` itself."""
        return data if self.every_row else take_rows(data, self.rows)

    @classmethod
    def whole(cls, index: np.ndarray, weight: Any) -> Pick:
        """Every row of a batch (int64 index [b]), with its own weights (float [b])."""
        weight = torch.as_tensor(weight, dtype=torch.float32).reshape(-1).clone()
        return cls(torch.arange(len(index)), torch.from_numpy(index.copy()), weight, True)


class PoolScores(NamedTuple):
    """A scored pool: `values`, the method's scores (its score_field), float64 [B]; `norms`,
    the gradient norms (the grad_norm field of a fastis.ops.Scores, else the values);
    `seconds` spent in the scoring callable (None when scores were given)."""

    values: np.ndarray
    norms: np.ndarray
    seconds: float | None


class PoolSampler(BatchSampler):
    """A sampler some of whose steps are pools to be scored and resampled by `select()`.

    Public calls, beyond BatchSampler's: `select(batch, scores, forward_seconds=None)`;
    `is_pool(batch)` / `is_pool_step(step)`; `score_pool(scores, size)` (a pool's scores,
    from values or a scoring callable, with the time spent in it); `record_step_seconds(step,
    seconds)` (a step's measured training time, from outside: fastis.distributed gives the
    slowest rank's).

    Hooks a method implements, beyond BatchSampler's:
        `_choose(pool, index, step) -> (rows, weights)`  abstract: the rows of a scored
                                   pool (PoolScores, of examples `index`) to train on and
                                   their loss weights, float64 [b]; `_resample()` draws
                                   them with replacement in proportion to sampling scores.
        `_pool_scored(pool, forward_seconds)`  learn from a scored pool (default: nothing).
    A method whose configuration trains on plain uniform batches only sets
    `self._every_step_uniform` (default False; fixed for the sampler's life): then
    `scores_pools` is False.
    A method's `_draw` calls `_draw_pool(step, rng)` (or `_pool_draw(step, index)` for a
    pool of its own choosing) for a pool step, `_uniform_draw(step)` for a plain one. A
    method with a variance guard sets `self.guard` (fastis.samplers.guard.VarianceGuard):
    `_resample` then mixes with uniform as it chooses.

    Examples:
        >>> import torch, fastis
        >>> sampler = fastis.samplers.BiasedLoss(100, 4, pool_size=16, switch=False, seed=0)
        >>> pool = next(iter(sampler))
        >>> pick = sampler.select(pool, torch.rand(16))   # the pool's 16 scores
        >>> len(pick.rows), sampler.is_pool(pool)
        (4, True)
    """

    # Set by a method whose configuration trains on plain uniform batches only.
    _every_step_uniform = False

    @property
    def scores_pools(self) -> bool:  # type: ignore[override]
        """Whether steps can be pools for the loop to score and pass to select(): False
        where this configuration trains on plain uniform batches only (e.g. UpperBound
        whose pool steps can never pay for their cost), so the loop trains on each batch as
        it would a uniform sampler's, without select()."""
        return not self._every_step_uniform

    def __init__(self, num_examples: int, batch_size: int, *, pool_size: int,
                 forward_batch_size: int | None, seed: int | None,
                 steps_per_epoch: int | None = None) -> None:
        super().__init__(num_examples, batch_size, seed=seed, steps_per_epoch=steps_per_epoch)
        self.pool_size = positive_count(pool_size, "pool_size")
        self.forward_batch_size = positive_count(
            forward_batch_size if forward_batch_size is not None else batch_size,
            "forward_batch_size")
        self._pool_steps: set[int] = set()  # drawn pool steps not yet acknowledged
        self._picked: dict[int, Pick] = {}  # select() results of unacknowledged steps
        # (step, time.perf_counter()) of the latest select(): a step's training time runs
        # from there to its update() (UpperBound's measured cost).
        self._selected_at: tuple[int, float] | None = None
        # (step, seconds): a step's training time recorded from outside (NaN: unknown).
        self._recorded_seconds: tuple[int, float] | None = None
        self.guard: VarianceGuard | None = None  # set by methods that resample by scores
        self._uniform_stream = Reshuffled(self.seed, self.num_examples)

    def threshold(self) -> float:
        """A pool step's cost in uniform steps (pool_step_cost; UpperBound refines it)."""
        return pool_step_cost(self.pool_size, self.batch_size)

    def _config(self) -> dict:
        return {**super()._config(), "pool_size": self.pool_size,
                "forward_batch_size": self.forward_batch_size}

    def _draw_pool(self, step: int, rng: np.random.Generator) -> Draw:
        """A pool of pool_size examples drawn uniformly with replacement."""
        return self._pool_draw(step, rng.integers(0, self.num_examples, self.pool_size,
                                                  dtype=np.int64))

    def _uniform_draw(self, step: int) -> Draw:
        """A plain batch of batch_size uniform examples, weights 1: positions [s b, s b + b)
        of the reshuffled stream (a method that samples uniformly most of the time goes
        through the data set without replacement, as a shuffled epoch does)."""
        b = self.batch_size
        index = self._uniform_stream.span(step * b, b, lambda: step_generator(
            self.seed, step, STREAM_DRAW))
        return Draw(index, np.ones(b, np.float32), step)

    def _pool_draw(self, step: int, index: np.ndarray) -> Draw:
        self._pool_steps.add(step)
        return Draw(index, np.ones(len(index), np.float32), step)

    def is_pool_step(self, step: int) -> bool:
        """Whether step `step` (drawn, not yet reported) is a pool."""
        return step in self._pool_steps

    def is_pool(self, batch: Any) -> bool:
        """Whether `batch` is a pool that `select()` resamples."""
        return self.is_pool_step(self.batch_of(batch)[1])

    def select(self, batch: Any, scores: Any, *, forward_seconds: float | None = None) -> Pick:
        """Chooses the examples of `batch` to train on, with their weights.

        Args:
            batch: what the loader yielded (fastis.data.Batch) or the sampler's Draw.
            scores: for a pool, its per-example scores, float [len(batch)] (tensor, array,
                or a fastis.ops.Scores), or a callable taking int64 row positions (a CPU
                tensor, at most `forward_batch_size` of them) and returning their scores;
                it is only called on pool steps, under torch.no_grad().
            forward_seconds: with given scores, the time their forward took (a cost some
                methods learn from); a callable is timed instead.
        Returns:
            a Pick; for a batch that is not a pool, all its rows with its own weights. A
            repeated call for the same step returns the same Pick (learned from once).
        """
        with self._lock:
            index, step = self.batch_of(batch)
            pick = self._picked.get(step)
            if pick is None:
                self._check_drawn(index, self.drawn(step))
                pick = self._pick(batch, index, step, scores, forward_seconds)
            self._selected_at = (step, time.perf_counter())
            return pick

    def _pick(self, batch: Any, index: np.ndarray, step: int, scores: Any,
              forward_seconds: float | None) -> Pick:
        if step not in self._pool_steps:
            pick = Pick.whole(index, batch.weight)
        else:
            pool = self.score_pool(scores, len(index))
            rows, weight = self._choose(pool, index, step)
            weight = np.asarray(weight, np.float32)
            self._pool_scored(pool, pool.seconds if pool.seconds is not None
                              else forward_seconds)
            self._last_weights = weight
            pick = Pick(torch.from_numpy(np.asarray(rows, np.int64)),
                        torch.from_numpy(index[rows]), torch.from_numpy(weight.copy()))
        self._picked[step] = pick
        return pick

    def score_pool(self, scores: Any, size: int) -> PoolScores:
        """The checked scores (and gradient norms) of a pool of `size` rows: `scores` are
        values (a tensor, array or fastis.ops.Scores), or a callable scored in chunks of
        forward_batch_size rows under torch.no_grad(), timed."""
        if callable(scores) and not isinstance(scores, torch.Tensor):
            start = time.perf_counter()
            values, norms = [], []
            with torch.no_grad():
                for first in range(0, size, self.forward_batch_size):
                    rows = torch.arange(first, min(first + self.forward_batch_size, size))
                    chunk = scores(rows)
                    values.append(self.scores_of(chunk, len(rows)))
                    norms.append(self.norms_of(chunk, len(rows), values=values[-1]))
            return PoolScores(np.concatenate(values), np.concatenate(norms),
                              time.perf_counter() - start)
        values = self.scores_of(scores, size)
        return PoolScores(values, self.norms_of(scores, size, values=values), None)

    def _resample(self, sampling: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
        """b rows drawn with replacement from a pool, P(r) = g_r: the sampling scores
        normalised, mixed with uniform as the guard chooses; (rows, unbiased weights
        1 / (B g))."""
        g = normalised(sampling)
        if self.guard is not None and self.guard.mix > 0:
            g = (1.0 - self.guard.mix) * g + self.guard.mix / len(g)
        rows = resample(g, self.batch_size, step_generator(self.seed, step, STREAM_SELECT))
        return rows, 1.0 / (len(g) * g[rows])

    def record_step_seconds(self, step: int, seconds: float) -> None:
        """Records how long step `step` trained (NaN: unknown), instead of the time this
        process measured from its select() to its update()."""
        with self._lock:
            self._recorded_seconds = (int(step), float(seconds))

    def _training_seconds(self, step: int) -> float | None:
        """How long step `step` trained, from its select() to now (its update()); None
        when unknown."""
        if self._recorded_seconds is not None and self._recorded_seconds[0] == step:
            seconds = self._recorded_seconds[1]
            return None if math.isnan(seconds) else seconds
        if self._selected_at is not None and self._selected_at[0] == step:
            return time.perf_counter() - self._selected_at[1]
        return None

    def _check_drawn(self, index: np.ndarray, draw: Draw) -> None:
        # A pool step is reported with the pool, or with the picks trained on.
        pick = self._picked.get(draw.step)
        if pick is None or not np.array_equal(index, pick.index.numpy()):
            super()._check_drawn(index, draw)

    def _trained_index(self, index: np.ndarray, step: int) -> np.ndarray:
        if step not in self._pool_steps:
            return index
        if step not in self._picked:
            raise ValueError(f"step {step} is a pool: call select() on it before update()")
        return self._picked[step].index.numpy()

    def _trained_weight(self, index: np.ndarray, draw: Draw) -> np.ndarray:
        if draw.step not in self._pool_steps:
            return super()._trained_weight(index, draw)
        return self._picked[draw.step].weight.numpy().astype(np.float64)

    @abc.abstractmethod
    def _choose(self, pool: PoolScores, index: np.ndarray, step: int
                ) -> tuple[np.ndarray, np.ndarray]:
        """The rows of a scored pool (of examples `index`) to train on, int64, and their
        loss weights, float64."""

    def _pool_scored(self, pool: PoolScores, forward_seconds: float | None) -> None:
        """Learns from a scored pool and the time its forward took (default: nothing)."""

    def _acknowledge(self, step: int) -> None:
        super()._acknowledge(step)
        if self._pool_steps:  # (a uniform step of a uniform-only method has none)
            self._pool_steps = {s for s in self._pool_steps if s > self._acked}
        if self._picked:
            self._picked = {s: p for s, p in self._picked.items() if s > self._acked}

    def _method_schema(self) -> dict[str, Field]:
        schema: dict[str, Field] = {"pool_steps": Array("int", (None,), low=0, high=MAX_STEP)}
        if self.guard is not None:
            schema["guard"] = Nested()
        return schema

    def _method_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"pool_steps": np.array(
            sorted(s for s in self._pool_steps if s > self._acked), np.int64)}
        if self.guard is not None:
            state["guard"] = self.guard.state()
        return state

    def _load_method_state(self, fields: dict[str, Any]) -> None:
        """Installs the pool steps and the guard; a subclass checks its own part and calls
        _parsed_guard() first, then _install_pool_state(), then installs its own (so that a
        bad state changes nothing)."""
        self._install_pool_state(fields, self._parsed_guard(fields))

    def _parsed_guard(self, fields: dict[str, Any]) -> VarianceGuard | None:
        """A new guard holding the state's (checked; nothing installed)."""
        if self.guard is None:
            return None
        return VarianceGuard.from_state(fields["guard"])

    def _install_pool_state(self, fields: dict[str, Any], guard: VarianceGuard | None) -> None:
        self._pool_steps, self._picked = set(fields["pool_steps"].tolist()), {}
        self._selected_at = self._recorded_seconds = None
        self.guard = guard
