"""Selective-Backprop (Jiang et al., "Accelerating Deep Learning by Focusing on the Biggest
Losers", arXiv 1910.00762; docs/methods.md).

Every example is forwarded once per epoch; the ones to back-propagate are chosen by their
loss: an example whose loss is at percentile q among the last R = `history` losses seen is
kept with probability P = q^beta (beta = 3 in the authors' example script). The paper keeps
each example independently and back-propagates once b were kept. fastis draws exactly b of
each pool of F forwarded examples instead, with inclusion probabilities proportional to P
(capped at 1; Madow's systematic sampling), so every step back-propagates b examples and
costs the same: F = 4b (the default) matches the paper's average keep rate of 1/4 at
beta = 3.

- `reweight=False` (the paper): the kept examples count 1 each, a bias toward high losses.
- `reweight=True`: each kept example is weighted b / (F pi), its Horvitz-Thompson weight, so
  the weighted loss is an unbiased estimate of the pool's (hence the data's) mean loss; the
  variance guard then mixes pi with uniform as far as the fresh scores say it pays. An
  unbiased step's progress at an unchanged learning rate is at most 2 - rho times a uniform
  step's (docs/methods.md, "When a costlier step pays"), and a step forwarding F and
  training b costs (F + 3b) / (3b) uniform steps: 2.33 at F = 4b. Where that cost is beyond
  any gain (the guard's can_ever_pay_for: F >= 2b), the guarded sampler trains on plain
  uniform batches of b (`scores_pools` is False); `guard=False` selects anyway.
- `stale=True` (the paper's StaleSB): the choice uses each example's last observed loss
  (never observed: kept), so no pool is forwarded: the sampler yields the b chosen examples.

Until R / 4 losses were seen, every example is equally likely (a warm-up).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fastis.data import Draw
from fastis.samplers.base import MAX_SCORE
from fastis.samplers.draws import (
    STREAM_SELECT,
    EpochOrder,
    inclusion_probabilities,
    step_generator,
    systematic_sample,
)
from fastis.samplers.guard import VarianceGuard
from fastis.samplers.pool import PoolSampler, PoolScores, pool_step_cost
from fastis.samplers.state import Array, Field, Int
from fastis.validation import positive_count, real_number


class SelectiveBackprop(PoolSampler):
    """Selective-Backprop at a fixed back-propagated batch size; see the module docstring.

    Args:
        num_examples: N.
        batch_size: b, the examples back-propagated per step.
        pool_size: F >= b, the examples forwarded per step (default 4b).
        beta: the exponent of the percentile rule (default 3).
        history: R, the number of recent losses the percentile is taken among (1024).
        reweight: unbiased Horvitz-Thompson weights instead of 1.
        stale: choose from each example's last observed loss (no pool forward).
        guard: the variance guard (with `reweight`): mixes with uniform, and trains on
            uniform batches where no selection can pay for its pool (module docstring).
        forward_batch_size: rows per call of a scoring callable (default b).
        seed: the stream's seed.

    Examples:
        >>> import torch, fastis
        >>> sampler = fastis.samplers.SelectiveBackprop(1000, 8, seed=0)   # the paper's rule
        >>> pool = next(iter(sampler))               # 32 examples to forward
        >>> pick = sampler.select(pool, torch.rand(32))
        >>> len(pool), len(pick.rows), sampler.scores_pools
        (32, 8, True)
        >>> # Reweighted and guarded at F = 4b: no unbiased selection pays for its pool.
        >>> fastis.samplers.SelectiveBackprop(1000, 8, reweight=True, seed=0).scores_pools
        False
    """

    score_field = "loss"

    def __init__(self, num_examples: int, batch_size: int, *, pool_size: int | None = None,
                 beta: float = 3.0, history: int = 1024, reweight: bool = False,
                 stale: bool = False, guard: bool = True, forward_batch_size: int | None = None,
                 seed: int | None = None) -> None:
        b = positive_count(batch_size, "batch_size")
        pool = pool_size if pool_size is not None else 4 * b
        if positive_count(pool, "pool_size") < b:
            raise ValueError(f"pool_size ({pool}) must be >= batch_size ({b})")
        reweight, stale = bool(reweight), bool(stale)
        selection_guard = VarianceGuard() if guard and reweight and not stale else None
        # Where no selection can pay, a step trains on b uniform examples: an epoch is N / b
        # steps instead of N / F.
        self._every_step_uniform = (selection_guard is not None
                                    and not selection_guard.can_ever_pay_for(
                                        pool_step_cost(pool, b)))
        super().__init__(num_examples, b, pool_size=pool,
                         forward_batch_size=forward_batch_size, seed=seed,
                         steps_per_epoch=-(-positive_count(num_examples, "num_examples")
                                           // (b if self._every_step_uniform else pool)))
        self.beta = real_number(beta, "beta")
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"beta must be finite and > 0, got {beta}")
        self.history_size = positive_count(history, "history")
        self.reweight, self.stale = reweight, stale
        self.guard = selection_guard
        self._order = EpochOrder(self.seed, self.num_examples)
        self._history = np.zeros(self.history_size)  # a ring of the latest losses
        self._history_count = 0  # losses seen (the ring holds the last history_size)
        self._losses = np.full(self.num_examples, np.nan)  # last loss (stale mode)

    @property
    def scores_pools(self) -> bool:  # type: ignore[override]
        """Pools to score, except in stale mode (the choice is made when drawing) and where
        every batch is uniform."""
        return not self.stale and super().scores_pools

    def _config(self) -> dict[str, Any]:
        return {**super()._config(), "beta": self.beta, "history": self.history_size,
                "reweight": self.reweight, "stale": self.stale,
                "guard": self.guard is not None, "steps_per_epoch": self._epoch_steps}

    # ------------------------------------------------------------------ choosing
    def keep_probability(self, losses: np.ndarray) -> np.ndarray:
        """P = q^beta, q each loss's percentile among the recent losses (1 for a loss never
        observed, NaN; 1 for all during the warm-up)."""
        losses = np.asarray(losses, np.float64)
        seen = min(self._history_count, self.history_size)
        if seen < self.history_size // 4 or seen == 0:
            return np.ones(len(losses))
        recent = np.sort(self._history[:seen])
        quantile = np.searchsorted(recent, losses, side="right") / seen
        return np.where(np.isnan(losses), 1.0, quantile ** self.beta)

    def _chosen(self, losses: np.ndarray, step: int, norms: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        """b rows of a pool, and their weights (module docstring)."""
        size, b = len(losses), min(self.batch_size, len(losses))
        pi = inclusion_probabilities(self.keep_probability(losses), b)
        if self.guard is not None:
            if norms is not None:
                self.guard.observe_pool(pi, norms)
            pi = (1.0 - self.guard.mix) * pi + self.guard.mix * b / size
        rows = systematic_sample(pi, step_generator(self.seed, step, STREAM_SELECT))
        weights = b / (size * pi[rows]) if self.reweight else np.ones(len(rows))
        return rows, weights

    def _remember(self, losses: np.ndarray) -> None:
        for loss in np.asarray(losses, np.float64)[-self.history_size:]:
            self._history[self._history_count % self.history_size] = loss
            self._history_count += 1

    def _draw(self, step: int) -> Draw:
        epoch, position = divmod(step, self._epoch_steps)
        if self._every_step_uniform:
            b = self.batch_size
            index = self._order(epoch)[position * b:(position + 1) * b].copy()
            return Draw(index, np.ones(len(index), np.float32), step)
        index = self._order(epoch)[position * self.pool_size:(position + 1) * self.pool_size]
        if not self.stale:
            return self._pool_draw(step, index.copy())
        rows, weights = self._chosen(self._losses[index], step)
        return Draw(index[rows].copy(), weights.astype(np.float32), step)

    def _choose(self, pool: PoolScores, index: np.ndarray, step: int
                ) -> tuple[np.ndarray, np.ndarray]:
        rows, weights = self._chosen(pool.values, step, pool.norms)
        self._remember(pool.values)  # after the choice: a pool is ranked among earlier ones
        return rows, weights

    # ------------------------------------------------------------------ feedback
    def _observe(self, index: np.ndarray, scores: Any, step: int,
                 weight: np.ndarray | None) -> None:
        if scores is None:
            raise ValueError("SelectiveBackprop.update() needs the trained examples' losses")
        values = self.scores_of(scores, len(index))
        if self.stale or weight is None:  # stale mode, or scores given through observe()
            self._losses[index] = values
            self._remember(values)

    def _stats(self) -> dict[str, float]:
        return {"losses_seen": float(self._history_count),
                "uniform_batches": float(self._every_step_uniform),
                **(self.guard.stats() if self.guard is not None else {})}

    # ------------------------------------------------------------------ state
    def _method_schema(self) -> dict[str, Field]:
        return {**super()._method_schema(),
                "history": Array("float", (self.history_size,), low=0, high=MAX_SCORE),
                "history_count": Int(0),
                "losses": Array("float", (self.num_examples,), low=0, high=MAX_SCORE, nan=True)}

    def _method_state(self) -> dict[str, Any]:
        return {**super()._method_state(), "history": self._history.copy(),
                "history_count": self._history_count, "losses": self._losses.copy()}

    def _load_method_state(self, fields: dict[str, Any]) -> None:
        super()._load_method_state(fields)
        self._history, self._history_count = fields["history"], fields["history_count"]
        self._losses = fields["losses"]
