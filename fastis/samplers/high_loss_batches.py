"""DyBAT: train on the delta-fraction of fixed mini-batches with the highest last-seen loss
(Sahayam, Zakkam, Jayaraman, "Can we learn better with hard samples?", arXiv 2304.03486;
official code github.com/imjohnzakkam/DyBAT `run.py:turbo_train`; docs/methods.md).

The data set is cut once into M = floor(N / b) batches that never change (the paper's
DataLoader(shuffle=False, drop_last=True); `shuffle=True` cuts one fixed random partition
instead). Pass 0 trains every batch in order and records each batch's mean loss. Every later
pass sorts the batches by their stored loss, keeps the top K = max(1, floor(delta * M)) and
trains them in batch-id order, overwriting their stored losses; the others keep their old,
stale losses. Passes run on across epoch boundaries; an epoch is M steps,
so E epochs make the paper's budget of E * M steps. Weights are all 1: the method is
deliberately biased toward high-loss batches.

Unlike the official code, unselected batches are skipped at the sampler level (never read),
and `refresh_after=r` (opt-in, off in paper mode) forces a batch that was not trained in the
last r passes back into the next one, fixing the starvation of batches whose loss was low
after pass 0 (docs/methods.md).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from fastis.data import Draw
from fastis.samplers.base import MAX_SCORE, BatchSampler
from fastis.samplers.draws import STREAM_EPOCH, step_generator
from fastis.samplers.state import MAX_STEP, Array, Field, Int, StateError
from fastis.validation import positive_count, probability


class HighLossBatches(BatchSampler):
    """DyBAT batch sampler (fixed batches, top-delta by last-seen loss per pass).

    Args:
        num_examples: N, the data set size (the last N - M*b examples are never used).
        batch_size: b; must be <= N.
        delta: in (0, 1], the fraction of the M batches trained per pass after pass 0
            (paper default 0.5; delta = 1 is standard training in a fixed order).
        shuffle: False (paper): batch m holds examples [m*b, (m+1)*b). True: batches of one
            random partition drawn once from `seed`.
        refresh_after: None (paper) or r >= 1: a batch not trained in the last r passes is
            forced into the next pass, in place of the lowest-loss selected batches.
        seed: the stream's seed (used only by `shuffle=True`; None: drawn from torch).

    update(batch, scores): `scores` is the batch's mean loss (a float, a 0-d tensor/array),
    its per-example losses (float [b]; their mean is stored) or a `fastis.ops.Scores`
    (field "loss"). Batches whose loss is still unknown when a pass is chosen rank first.

    The pass is chosen when its first batch is drawn, from the losses reported by then; with
    a DataLoader drawing ahead, the last batches of a pass may not be reported yet. For a
    fixed prefetch depth this is deterministic, and state_dict() resumes it exactly.

    Examples:
        >>> import fastis
        >>> sampler = fastis.samplers.HighLossBatches(40, 10, delta=0.5, seed=0)
        >>> for draw in sampler:                  # pass 0: every batch, in order
        ...     sampler.update(draw, float(draw.index[0]))   # a batch's mean loss
        >>> sampler.set_epoch(1)
        >>> [int(d.index[0]) for d in sampler][:2]   # pass 1: the two highest-loss batches
        [20, 30]
    """

    def __init__(self, num_examples: int, batch_size: int, *, delta: float = 0.5,
                 shuffle: bool = False, refresh_after: int | None = None,
                 seed: int | None = None) -> None:
        super().__init__(num_examples, batch_size, seed=seed)
        if self.batch_size > self.num_examples:
            raise ValueError(f"batch_size ({self.batch_size}) must be <= num_examples "
                             f"({self.num_examples}): DyBAT needs at least one full batch")
        self.delta = probability(delta, "delta", allow_zero=False)
        self.shuffle = bool(shuffle)
        self.refresh_after = (None if refresh_after is None
                              else positive_count(refresh_after, "refresh_after"))
        self.num_batches = self.num_examples // self.batch_size  # M
        # K as in the official code, int(delta * M), but at least one batch per pass.
        self.batches_per_pass = max(1, math.floor(self.delta * self.num_batches))
        self._epoch_steps = self.num_batches

        used = self.num_batches * self.batch_size
        order = (step_generator(self.seed, 0, STREAM_EPOCH).permutation(self.num_examples)[:used]
                 if self.shuffle else np.arange(used))
        self._partition = order.astype(np.int64).reshape(self.num_batches, self.batch_size)
        self._batch_of_example = np.full(self.num_examples, -1, dtype=np.int64)
        self._batch_of_example[self._partition] = np.arange(self.num_batches)[:, None]

        m = self.num_batches
        self._losses = np.full(m, np.nan)  # last reported mean loss per batch (NaN: none)
        self._loss_pass = np.full(m, -1, dtype=np.int64)  # pass that reported it
        self._last_trained = np.full(m, -1, dtype=np.int64)  # last pass that scheduled it
        self._pass = -1  # the pass being drawn (-1: none started)
        self._selection = np.empty(0, dtype=np.int64)  # its batch ids, increasing

    # ------------------------------------------------------------------ schedule
    def pass_of(self, step: int) -> tuple[int, int]:
        """(pass, position in the pass) of a step: pass 0 has M steps, later ones K each."""
        if step < self.num_batches:
            return 0, step
        p, position = divmod(step - self.num_batches, self.batches_per_pass)
        return p + 1, position

    def batch(self, batch_id: int) -> np.ndarray:
        """The example indices of batch `batch_id`, int64 [b] (a copy)."""
        return self._partition[batch_id].copy()

    @property
    def losses(self) -> np.ndarray:
        """The stored loss of each batch, float64 [M] (NaN where none reported yet)."""
        return self._losses.copy()

    @property
    def selection(self) -> np.ndarray:
        """Batch ids of the pass being drawn, int64 [M] in pass 0, [K] later, increasing."""
        return self._selection.copy()

    def _choose_pass(self, p: int) -> np.ndarray:
        """The batch ids of pass p (>= 1), chosen from the losses known now."""
        k = self.batches_per_pass
        # Unknown losses rank above every known one: a batch never reported is worth a look.
        key = np.where(np.isnan(self._losses), np.inf, self._losses)
        by_loss = np.argsort(-key, kind="stable")  # descending; ties -> lower batch id
        if self.refresh_after is None:
            return np.sort(by_loss[:k])
        # Starved: not scheduled in passes p - r .. p - 1; the longest-starved go first.
        starved = np.flatnonzero(self._last_trained < p - self.refresh_after)
        starved = starved[np.argsort(self._last_trained[starved], kind="stable")][:k]
        rest = by_loss[~np.isin(by_loss, starved)][:k - len(starved)]
        return np.sort(np.concatenate([starved, rest]))

    def _draw(self, step: int) -> Draw:
        p, position = self.pass_of(step)
        if p != self._pass:
            # A new pass (or a jump by set_epoch): chosen now, from the losses known now.
            selection = np.arange(self.num_batches) if p == 0 else self._choose_pass(p)
            self._selection, self._pass = selection.astype(np.int64), p
            self._last_trained[selection] = p
        batch_id = self._selection[position]
        return Draw(self._partition[batch_id].copy(), np.ones(self.batch_size, np.float32), step)

    # ------------------------------------------------------------------ feedback
    def _observe(self, index: np.ndarray, scores: Any, step: int,
                 weight: np.ndarray | None) -> None:
        batch_id = self._batch_id(index)
        loss = self._batch_loss(scores, len(index))
        self._losses[batch_id] = loss
        self._loss_pass[batch_id] = self.pass_of(step)[0]

    def _batch_id(self, index: np.ndarray) -> int:
        ids = self._batch_of_example[index]
        batch_id = int(ids[0]) if len(ids) else -1
        if batch_id < 0 or not np.array_equal(np.sort(index), np.sort(self._partition[batch_id])):
            raise ValueError("batch.index is not one of this sampler's fixed batches")
        return batch_id

    def _batch_loss(self, scores: Any, size: int) -> float:
        """The batch's mean loss from a scalar, per-example losses or a Scores."""
        if scores is None:
            raise ValueError("HighLossBatches.update() needs the batch's loss (a float, or "
                             "per-example losses [b], or a fastis.ops.Scores)")
        if hasattr(scores, self.score_field) and not isinstance(scores, (torch.Tensor,
                                                                        np.ndarray)):
            scores = getattr(scores, self.score_field)
        if isinstance(scores, torch.Tensor) and scores.dim() == 0:
            # The training loss itself (unweighted: DyBAT's weights are 1) is this method's
            # score: detached here.
            return float(self.scores_of(scores.detach().reshape(1), 1, name="the loss")[0])
        if not isinstance(scores, torch.Tensor) and np.ndim(scores) == 0:
            return float(self.scores_of([scores], 1, name="the loss")[0])
        # The mean of scores <= MAX_SCORE cannot overflow.
        return float(self.scores_of(scores, size, name="losses").mean())

    # ------------------------------------------------------------------ reporting
    def _stats(self) -> dict[str, float]:
        known = self._loss_pass >= 0
        staleness = (max(self._pass, 0) - self._loss_pass[known]).clip(min=0)
        return {
            "pass": float(self._pass),
            "loss_staleness": float(staleness.mean()) if known.any() else math.nan,
            "never_refreshed": float((self._loss_pass <= 0).sum()),
        }

    # ------------------------------------------------------------------ state
    def _config(self) -> dict[str, Any]:
        return {**super()._config(), "delta": self.delta, "shuffle": self.shuffle,
                "refresh_after": self.refresh_after}

    def _method_state(self) -> dict[str, Any]:
        return {"losses": self._losses.copy(), "loss_pass": self._loss_pass.copy(),
                "last_trained": self._last_trained.copy(), "pass": self._pass,
                "selection": self._selection.copy()}

    def _method_schema(self) -> dict[str, Field]:
        m = self.num_batches
        return {"losses": Array("float", (m,), low=0, high=MAX_SCORE, nan=True),
                "loss_pass": Array("int", (m,), low=-1, high=MAX_STEP),
                "last_trained": Array("int", (m,), low=-1, high=MAX_STEP),
                "pass": Int(-1, MAX_STEP),
                "selection": Array("int", (None,), low=0, high=m - 1)}

    def _load_method_state(self, fields: dict[str, Any]) -> None:
        losses, loss_pass, selection = fields["losses"], fields["loss_pass"], fields["selection"]
        current = fields["pass"]
        expected_size = {-1: 0, 0: self.num_batches}.get(current, self.batches_per_pass)
        if len(selection) != expected_size or (np.diff(selection) <= 0).any():
            raise StateError("corrupted HighLossBatches state: inconsistent pass or selection")
        if (np.isnan(losses) == (loss_pass >= 0)).any():
            raise StateError("corrupted HighLossBatches state: a loss without its pass, or a "
                             "pass without its loss")
        self._losses, self._loss_pass = losses, loss_pass
        self._last_trained = fields["last_trained"]
        self._pass, self._selection = current, selection
