"""Presample-and-resample, shared by UpperBound (KF18) and BiasedLoss (KF17).

On a pool step the sampler yields a pool of B indices drawn uniformly with replacement. The
training loop scores the pool with the model (a forward pass without backward) and calls
`select(batch, scores)`, which draws the b examples to train on from the pool with
replacement, P(row r) = g_r = s_r / sum(s), and gives each its weight. Drawing from a
uniform pool with replacement keeps the estimate exactly unbiased with w = 1 / (B g)
(ALGORITHMS.md, notation: E[w_j G_j] = full gradient).

On other steps `select` returns the batch as it is, so one loop serves both kinds of step.
"""

from __future__ import annotations

import math
import time
from typing import Any, NamedTuple

import numpy as np
import torch

from fastis.data import Draw
from fastis.samplers._base import STREAM_SELECT, BatchSampler, positive_int, step_generator


class Pick(NamedTuple):
    """The examples to train on, chosen from a batch by `select()`.

    rows: int64 [b], positions in the batch (repeats possible); index: int64 [b], their
    data set indices; weight: float32 [b], the loss weight of each.
    """

    rows: torch.Tensor
    index: torch.Tensor
    weight: torch.Tensor

    def take(self, data: Any) -> Any:
        """`data` (a tensor, or tuples / lists / dicts of batch-first tensors) at `rows`."""
        return take_rows(data, self.rows)


def take_rows(data: Any, rows: torch.Tensor) -> Any:
    """Rows `rows` (int64) of every batch-first tensor in `data` (a tensor, or tuples /
    lists / dicts of them), each indexed on its own device."""
    if isinstance(data, torch.Tensor):
        return data[rows.to(data.device)]
    if isinstance(data, dict):
        return {key: take_rows(value, rows) for key, value in data.items()}
    if isinstance(data, (tuple, list)):
        return type(data)(take_rows(value, rows) for value in data)
    raise TypeError(f"take_rows() handles tensors, tuples, lists and dicts, got "
                    f"{type(data).__name__}")


class PoolSampler(BatchSampler):
    """A sampler some of whose steps are pools to be scored and resampled by `select()`.

    Subclasses call `_draw_pool(step)` for a pool step, implement `_pool_weights()` and may
    override `_pool_scored()` (to learn from the pool's scores).
    """

    def __init__(self, num_examples: int, batch_size: int, *, pool_size: int,
                 forward_batch_size: int | None, seed: int | None) -> None:
        super().__init__(num_examples, batch_size, seed=seed)
        self.pool_size = positive_int(pool_size, "pool_size")
        self.forward_batch_size = positive_int(
            forward_batch_size if forward_batch_size is not None else batch_size,
            "forward_batch_size")
        self._pool_steps: set[int] = set()  # drawn pool steps not yet acknowledged
        self._picked: dict[int, Pick] = {}  # select() results of unacknowledged steps
        self.last_forward_seconds = 0.0  # time select() spent in a scoring callable
        # (step, time.perf_counter()) of the latest select(): a step's training time runs
        # from there to its update() (UpperBound's measured cost).
        self._selected_at: tuple[int, float] | None = None
        # (step, seconds): a step's training time given from outside (fastis.distributed:
        # the slowest rank's), used instead of the local clock; NaN: no rank timed it.
        self._given_seconds: tuple[int, float] | None = None

    def _config(self) -> dict:
        return {**super()._config(), "pool_size": self.pool_size,
                "forward_batch_size": self.forward_batch_size}

    def _draw_pool(self, step: int, rng: np.random.Generator) -> Draw:
        self._pool_steps.add(step)
        index = rng.integers(0, self.num_examples, self.pool_size, dtype=np.int64)
        return Draw(index, np.ones(self.pool_size, np.float32), step)

    def is_pool(self, batch: Any) -> bool:
        """Whether `batch` is a pool that `select()` resamples."""
        return self._batch_of(batch)[1] in self._pool_steps

    def select(self, batch: Any, scores: Any) -> Pick:
        """Chooses the examples of `batch` to train on, with their weights.

        Args:
            batch: what the loader yielded (fastis.data.Batch) or the sampler's Draw.
            scores: for a pool, its per-example scores, float [len(batch)] (tensor, array,
                or a fastis.ops.Scores), or a callable taking int64 row positions (a CPU
                tensor, at most `forward_batch_size` of them) and returning their scores;
                it is only called on pool steps, under torch.no_grad().
        Returns:
            a Pick; for a batch that is not a pool, all its rows with its own weights.
        """
        with self._lock:
            return self._select(batch, scores)

    def _select(self, batch: Any, scores: Any) -> Pick:
        index, step = self._batch_of(batch)
        pick = self._picked.get(step)  # a repeated call: the same answer, learned from once
        if pick is None:
            pick = self._pick(batch, index, step, scores)
        self._selected_at = (step, time.perf_counter())
        return pick

    def _pick(self, batch: Any, index: np.ndarray, step: int, scores: Any) -> Pick:
        if step not in self._pool_steps:
            weight = torch.as_tensor(np.asarray(batch.weight, np.float32)).reshape(-1)
            pick = Pick(torch.arange(len(index)), torch.from_numpy(index.copy()), weight)
        else:
            values = self._score_pool(scores, len(index))
            sampling = self._sampling_scores(values)
            rows = _resample(sampling, self.batch_size,
                             step_generator(self.seed, step, STREAM_SELECT))
            weight = self._pool_weights(sampling, rows)
            self._pool_scored(values)
            pick = Pick(torch.from_numpy(rows), torch.from_numpy(index[rows]),
                        torch.from_numpy(weight.astype(np.float32)))
        self._picked[step] = pick
        return pick

    def _training_seconds(self, step: int) -> float | None:
        """How long step `step` trained, from its select() to now (its update()); None
        when unknown."""
        if self._given_seconds is not None and self._given_seconds[0] == step:
            seconds = self._given_seconds[1]
            return None if math.isnan(seconds) else seconds
        if self._selected_at is not None and self._selected_at[0] == step:
            return time.perf_counter() - self._selected_at[1]
        return None

    def _trained_index(self, index: np.ndarray, step: int) -> np.ndarray:
        if step not in self._pool_steps:
            return index
        if step not in self._picked:
            raise ValueError(f"step {step} is a pool: call select() on it before update()")
        return self._picked[step].index.numpy()

    def _score_pool(self, scores: Any, size: int) -> np.ndarray:
        if callable(scores) and not isinstance(scores, torch.Tensor):
            start = time.perf_counter()
            parts = []
            with torch.no_grad():
                for first in range(0, size, self.forward_batch_size):
                    rows = torch.arange(first, min(first + self.forward_batch_size, size))
                    parts.append(self.scores_of(scores(rows), len(rows)))
            values = np.concatenate(parts)
            self.last_forward_seconds = time.perf_counter() - start
            return values
        return self.scores_of(scores, size)

    def _sampling_scores(self, scores: np.ndarray) -> np.ndarray:
        """The scores g is proportional to (default: as reported)."""
        return scores

    def _pool_weights(self, scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """float64 [b] loss weights of the chosen rows, from the sampling scores."""
        raise NotImplementedError

    def _pool_scored(self, scores: np.ndarray) -> None:
        """Learns from a scored pool (default: nothing)."""

    def _acknowledge(self, step: int) -> None:
        super()._acknowledge(step)
        self._pool_steps = {s for s in self._pool_steps if s > self._acked}
        self._picked = {s: p for s, p in self._picked.items() if s > self._acked}

    def _method_state(self) -> dict[str, Any]:
        return {"pool_steps": sorted(s for s in self._pool_steps if s > self._acked)}

    def _load_method_state(self, state: dict[str, Any]) -> None:
        """Parses and installs the pool steps; subclasses check their own part first, call
        this, then install theirs (so a bad state changes nothing)."""
        pool_steps = {int(s) for s in state["pool_steps"]}
        self._pool_steps, self._picked = pool_steps, {}
        self._selected_at = self._given_seconds = None


def resample_probabilities(scores: np.ndarray) -> np.ndarray:
    """g = s / sum(s), float64; uniform when every score is 0."""
    total = scores.sum()
    if total > 0:
        return scores / total
    return np.full(len(scores), 1.0 / len(scores))


def _resample(scores: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k row positions drawn with replacement, P(r) = g_r; a zero score is never drawn."""
    cumulative = np.cumsum(resample_probabilities(scores))
    # side="right" skips zero-width segments; the clamp guards the last one against a
    # cumulative sum that rounds below 1.
    rows = np.searchsorted(cumulative, rng.random(k) * cumulative[-1], side="right")
    return np.minimum(rows, len(scores) - 1).astype(np.int64)
