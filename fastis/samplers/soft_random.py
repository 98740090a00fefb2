"""Soft random sampling (SRS; Cui et al., arXiv 2311.12727) and its relative RS2, plus the
uniform baseline, which is the special case rate = 1.

SRS: each epoch draws round(rate * N) indices uniformly *with* replacement and trains on
them in batches; one epoch covers about 1 - e^-rate of the data (docs/methods.md).
RS2 (Okanovic et al., ICLR 2024; `replacement=False`): each epoch takes the next
round(rate * N) indices of a random permutation of the data, drawing a new permutation each
time the previous one is used up, so every example is seen once per 1/rate epochs.
Nothing is scored and every weight is 1 (uniform sampling is unbiased).
"""

from __future__ import annotations

import math

import numpy as np

from fastis.data import Draw
from fastis.samplers.base import BatchSampler
from fastis.samplers.draws import STREAM_EPOCH, Reshuffled, step_generator
from fastis.validation import probability


class SoftRandom(BatchSampler):
    """SRS / RS2 batch sampler.

    Args:
        num_examples: N, the data set size.
        batch_size: b; an epoch's last batch is smaller unless `drop_last`.
        rate: rho in (0, 1], the fraction of N drawn per epoch (default 0.5).
        replacement: True for SRS (default), False for RS2.
        drop_last: drop the epoch's last, partial batch.
        seed: the stream's seed (None: drawn from torch's global generator).

    Examples:
        >>> import fastis
        >>> sampler = fastis.samplers.SoftRandom(1000, 100, rate=0.3, seed=0)
        >>> len(sampler), sum(len(d) for d in sampler)   # 300 draws per epoch
        (3, 300)
    """

    def __init__(self, num_examples: int, batch_size: int, *, rate: float = 0.5,
                 replacement: bool = True, drop_last: bool = False,
                 seed: int | None = None) -> None:
        super().__init__(num_examples, batch_size, seed=seed)
        self.rate = probability(rate, "rate", allow_zero=False)
        self.replacement = bool(replacement)
        self.drop_last = bool(drop_last)
        self.epoch_size = max(1, round(self.rate * self.num_examples))
        rounding = math.floor if self.drop_last else math.ceil
        self._epoch_steps = max(1, rounding(self.epoch_size / self.batch_size))
        self._order_epoch = -1
        self._order = np.empty(0, np.int64)
        self._stream = Reshuffled(self.seed, self.num_examples, max_examples=None)

    def _config(self) -> dict:
        return {**super()._config(), "rate": self.rate, "replacement": self.replacement,
                "drop_last": self.drop_last}

    def _draw(self, step: int) -> Draw:
        epoch, position = divmod(step, self._epoch_steps)
        if epoch != self._order_epoch:
            self._order, self._order_epoch = self._epoch_order(epoch), epoch
        # Each draw owns its arrays: a caller changing one changes no other batch.
        index = self._order[position * self.batch_size:(position + 1) * self.batch_size].copy()
        return Draw(index, np.ones(len(index), np.float32), step)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        """The epoch's indices in training order, int64 [epoch_size]."""
        if self.replacement:
            rng = step_generator(self.seed, epoch, STREAM_EPOCH)
            return rng.integers(0, self.num_examples, self.epoch_size, dtype=np.int64)
        # RS2: positions [epoch * M, (epoch + 1) * M) of permutation 0, then 1, 2, ...
        first = epoch * self.epoch_size
        return self._stream.at(np.arange(first, first + self.epoch_size, dtype=np.int64),
                               None)

    def _stats(self) -> dict:
        return {"expected_epoch_coverage": -math.expm1(-self.rate) if self.replacement
                else min(self.rate, 1.0)}


class Uniform(SoftRandom):
    """The uniform baseline: every epoch goes through the data set once, in a fresh random
    order (`replacement=False`, the default), or draws N indices independently
    (`replacement=True`). Weights are 1. Same protocol as every other sampler.

    Examples:
        >>> import fastis
        >>> sampler = fastis.samplers.Uniform(10, 4, seed=0)
        >>> sorted(i for d in sampler for i in d.index.tolist())   # each example once
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    """

    def __init__(self, num_examples: int, batch_size: int, *, replacement: bool = False,
                 drop_last: bool = False, seed: int | None = None) -> None:
        super().__init__(num_examples, batch_size, rate=1.0, replacement=replacement,
                         drop_last=drop_last, seed=seed)
