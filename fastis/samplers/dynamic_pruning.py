"""Unbiased dynamic pruning in the manner of InfoBatch (Qin et al., ICLR 2024;
docs/methods.md).

Each example keeps its last observed loss. When an epoch starts, the examples whose loss is
below the mean of the known losses ("well learned") are each dropped from the epoch with
probability r (`prune_ratio`); the kept ones among them are weighted 1 / (1 - r), every
other example 1, so the weighted loss of an epoch is an unbiased estimate of the full
data's: each well-learned example is kept with probability 1 - r and then counts
1 / (1 - r) times. With `exact=True` exactly round(r L) of the L well-learned examples are
dropped (chosen uniformly) and the kept ones weighted L / (L - round(r L)): unbiased too.
The last epochs, from delta * epochs on, train on the full data with weights 1 (InfoBatch's
annealing: the final epochs see every example). Pruned examples never reach the loader:
the epoch is shorter, and `len(sampler)` (known when the epoch starts) says by how much.
An example never scored is never pruned.
"""

from __future__ import annotations

import bisect
import math
from typing import Any

import numpy as np

from fastis.data import Draw
from fastis.samplers.base import MAX_SCORE, BatchSampler
from fastis.samplers.draws import STREAM_EPOCH, step_generator
from fastis.samplers.state import MAX_STEP, Array, Field, Int, Records, StateError
from fastis.validation import positive_count, probability


class DynamicPruning(BatchSampler):
    """InfoBatch-style unbiased dynamic pruning; see the module docstring.

    Args:
        num_examples: N.
        batch_size: b; an epoch's last batch is smaller.
        epochs: the planned number of epochs E (annealing starts at delta * E).
        prune_ratio: r in [0, 1), the probability that a well-learned example is dropped
            from an epoch (default 0.5, InfoBatch's).
        delta: the fraction of the epochs that prune (default 0.875, InfoBatch's).
        exact: drop exactly round(r L) of the L well-learned examples.
        seed: the stream's seed.

    update(batch, scores): the trained examples' losses (`score_field = "loss"`).

    Examples:
        >>> import numpy as np, fastis
        >>> sampler = fastis.samplers.DynamicPruning(100, 10, epochs=4, exact=True, seed=0)
        >>> for draw in sampler:              # epoch 0: nothing scored, nothing pruned
        ...     sampler.update(draw, draw.index % 2 + 0.5)   # even examples learn well
        >>> sampler.set_epoch(1)
        >>> len(sampler), sorted(set(w for d in sampler for w in d.weight.tolist()))
        (8, [1.0, 2.0])
    """

    score_field = "loss"

    def __init__(self, num_examples: int, batch_size: int, *, epochs: int,
                 prune_ratio: float = 0.5, delta: float = 0.875, exact: bool = False,
                 seed: int | None = None) -> None:
        super().__init__(num_examples, batch_size, seed=seed)
        self.epochs = positive_count(epochs, "epochs")
        self.prune_ratio = probability(prune_ratio, "prune_ratio", allow_one=False)
        self.delta = probability(delta, "delta")
        self.exact = bool(exact)
        self.pruning_epochs = math.floor(self.delta * self.epochs)
        self._losses = np.full(self.num_examples, np.nan)  # last loss (NaN: never scored)
        self._starts = [0]  # the first step of every planned epoch, and the next one's
        # The planned epochs that may still be drawn: epoch -> (order of the kept examples,
        # their weights).
        self._plans: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._pruned = 0  # examples dropped by the planned epochs

    def _config(self) -> dict[str, Any]:
        return {**super()._config(), "epochs": self.epochs, "prune_ratio": self.prune_ratio,
                "delta": self.delta, "exact": self.exact}

    # ------------------------------------------------------------------ epochs
    def _plan_through(self, epoch: int) -> None:
        """Plans every epoch up to `epoch` not planned yet, from the losses known now."""
        while len(self._starts) <= epoch + 1:
            e = len(self._starts) - 1
            order, weight = self._plan(e)
            self._plans[e] = (order, weight)
            self._starts.append(self._starts[-1] + max(1, -(-len(order) // self.batch_size)))
            if self._starts[-1] > MAX_STEP:
                raise OverflowError("the sampler has run out of steps")

    def _plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """The epoch's kept examples in training order, int64, and their weights, float32."""
        rng = step_generator(self.seed, epoch, STREAM_EPOCH)
        order = rng.permutation(self.num_examples).astype(np.int64)
        weight = np.ones(self.num_examples, np.float32)
        known = ~np.isnan(self._losses)
        if epoch >= self.pruning_epochs or not known.any() or self.prune_ratio == 0:
            return order, weight[order]
        low = np.flatnonzero(known & (self._losses < self._losses[known].mean()))
        if self.exact:
            dropped = rng.permutation(low)[:round(self.prune_ratio * len(low))]
            kept_weight = len(low) / (len(low) - len(dropped)) if len(low) > len(dropped) \
                else 1.0
        else:
            dropped = low[rng.random(len(low)) < self.prune_ratio]
            kept_weight = 1.0 / (1.0 - self.prune_ratio)
        weight[low] = kept_weight
        keep = np.ones(self.num_examples, bool)
        keep[dropped] = False
        self._pruned += len(dropped)
        order = order[keep[order]]
        return order, weight[order]

    def _epoch_start(self, epoch: int) -> int:
        if epoch > 0:
            self._plan_through(epoch - 1)  # the start of `epoch` is the end of the one before
        return self._starts[epoch]

    def _epoch_of(self, step: int) -> int:
        while self._starts[-1] <= step:
            self._plan_through(len(self._starts) - 1)
        return bisect.bisect_right(self._starts, step) - 1

    def _draw(self, step: int) -> Draw:
        epoch = self._epoch_of(step)
        order, weight = self._plans[epoch]
        first = (step - self._starts[epoch]) * self.batch_size
        return Draw(order[first:first + self.batch_size].copy(),
                    weight[first:first + self.batch_size].copy(), step)

    # ------------------------------------------------------------------ feedback
    def _observe(self, index: np.ndarray, scores: Any, step: int,
                 weight: np.ndarray | None) -> None:
        if scores is None:
            raise ValueError("DynamicPruning.update() needs the trained examples' losses")
        values = self.scores_of(scores, len(index))
        self._losses[index] = values  # within an epoch every example comes once

    def _acknowledge(self, step: int) -> None:
        super()._acknowledge(step)
        current = self._epoch_of(self._acked + 1)
        self._plans = {e: p for e, p in self._plans.items() if e >= current}

    def _stats(self) -> dict[str, float]:
        planned = len(self._starts) - 1
        return {"pruned": self._pruned / (self.num_examples * max(planned, 1)),
                "epoch_steps": float(len(self)),
                "annealing": float(self.epoch >= self.pruning_epochs)}

    # ------------------------------------------------------------------ state
    def _method_schema(self) -> dict[str, Field]:
        n = self.num_examples
        return {"losses": Array("float", (n,), low=0, high=MAX_SCORE, nan=True),
                "starts": Array("int", (None,), low=0, high=MAX_STEP),
                "plans": Records((Int(0, MAX_STEP), Array("int", (None,), low=0, high=n - 1),
                                  Array("float32", (None,), low=1.0))),
                "pruned": Int(0)}

    def _method_state(self) -> dict[str, Any]:
        return {"losses": self._losses.copy(), "starts": np.array(self._starts, np.int64),
                "plans": [(e, order.copy(), weight.copy())
                          for e, (order, weight) in sorted(self._plans.items())],
                "pruned": self._pruned}

    def _load_method_state(self, fields: dict[str, Any]) -> None:
        starts = fields["starts"].tolist()
        plans = {e: (order, weight) for e, order, weight in fields["plans"]}
        if not starts or starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])):
            raise StateError("corrupted DynamicPruning state: epoch starts must increase "
                             "from 0")
        for e, (order, weight) in plans.items():
            steps = max(1, -(-len(order) // self.batch_size))
            if e + 1 >= len(starts) or starts[e + 1] - starts[e] != steps \
                    or len(order) != len(weight) or len(np.unique(order)) != len(order):
                raise StateError(f"corrupted DynamicPruning state: the plan of epoch {e} "
                                 "does not match its steps")
        self._losses, self._starts, self._plans = fields["losses"], starts, plans
        self._pruned = fields["pruned"]
