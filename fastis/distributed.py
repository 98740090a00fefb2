"""Global importance sampling under torch.distributed: every rank draws the same global
batch and trains on its own shard of it; score updates are merged across ranks.

    sampler = fastis.distributed.Sharded(fastis.samplers.ImportanceSampler(n, 256, seed=0))
    loader = DataLoader(fastis.data.Indexed(ds), batch_sampler=sampler)  # 256 / world each
    ...
    sampler.update(batch, scores)   # one all_gather; then every rank applies all updates

How it stays consistent without extra synchronisation: the wrapped sampler's draws are a
function of (seed, step, updates so far) only (fastis.samplers._base). Every rank wraps a
sampler with the same seed and configuration and applies the same merged updates in the
same order, so all ranks hold the same state and draw the same global batches. Rank r
takes positions r, r + W, r + 2W, ... of each global batch: disjoint shards that together
make the batch. `update()` gathers (position, index, score) from all ranks and hands the
wrapped sampler the whole batch in its original order, so the result does not depend on the
world size; the state_dict is the wrapped sampler's (global) one, and a run resumes at any
world size with the same global stream.

Pool methods (UpperBound, exact BiasedLoss) need the whole pool's scores in `select()`;
they are not supported here yet (BiasedLoss with a loss predictor is: it has no pools).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from fastis.data import Draw
from fastis.samplers._base import BatchSampler
from fastis.samplers._pool import PoolSampler


class Sharded:
    """A DataLoader batch sampler yielding this rank's shard of a fastis sampler's global
    batches, and merging every rank's score updates.

    Args:
        sampler: the global sampler (same class, configuration and seed on every rank).
        rank, world_size: default from torch.distributed (1 process when not initialised).
        group: the process group of the all-gathers (default: the world).
    """

    def __init__(self, sampler: BatchSampler, *, rank: int | None = None,
                 world_size: int | None = None, group: Any = None) -> None:
        if not isinstance(sampler, BatchSampler):
            raise TypeError(f"Sharded wraps a fastis sampler, got {type(sampler).__name__}")
        if isinstance(sampler, PoolSampler) and getattr(sampler, "predictor", None) is None:
            raise NotImplementedError(
                f"{type(sampler).__name__} resamples pools in select(), which needs every "
                "rank's pool scores; it is not supported under torch.distributed yet")
        initialised = dist.is_available() and dist.is_initialized()
        self.world_size = world_size if world_size is not None else (
            dist.get_world_size(group) if initialised else 1)
        self.rank = rank if rank is not None else (dist.get_rank(group) if initialised else 0)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside [0, {self.world_size})")
        if self.world_size > sampler.batch_size:
            raise ValueError(f"world size {self.world_size} exceeds the global batch size "
                             f"{sampler.batch_size}: some ranks would get empty shards")
        self.sampler, self.group = sampler, group
        self._collective = initialised and self.world_size > 1

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[Draw]:
        for draw in self.sampler:
            yield Draw(draw.index[self.rank::self.world_size],
                       draw.weight[self.rank::self.world_size], draw.step)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    @property
    def step(self) -> int:
        return self.sampler.step

    def update(self, batch: Any, scores: Any = None) -> None:
        """Merges this rank's scores with every other rank's (one all_gather), then updates
        the global sampler with the whole batch. Every rank must call it for every batch,
        all with scores or all without (then nothing is exchanged)."""
        index, step = self.sampler._batch_of(batch)
        if scores is None:
            self.sampler.update(Draw(index, np.ones(len(index), np.float32), step))
            return
        values = self.sampler.scores_of(scores, len(index), allow_invalid=True)
        positions = self.rank + self.world_size * np.arange(len(index))
        mine = np.stack([positions, index, values, np.full(len(index), step)], 1)
        merged = self._all_gather(mine)
        if not (merged[:, 3] == step).all():
            raise RuntimeError("ranks updated different steps: every rank must call update() "
                               "for the same batch")
        merged = merged[np.argsort(merged[:, 0], kind="stable")]
        self.sampler.update(Draw(merged[:, 1].astype(np.int64),
                                 np.ones(len(merged), np.float32), step), merged[:, 2])

    def _all_gather(self, rows: np.ndarray) -> np.ndarray:
        """Every rank's rows (float64 [m_r, 4]), concatenated; shards differ in length by at
        most one, so each is padded to the longest (marked by a NaN position)."""
        if not self._collective:
            return rows
        longest = -(-self.sampler.batch_size // self.world_size)
        padded = np.full((longest, 4), np.nan)
        padded[:len(rows)] = rows
        mine = torch.from_numpy(padded)
        parts = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(parts, mine, group=self.group)
        merged = torch.cat(parts).numpy()
        return merged[~np.isnan(merged[:, 0])]

    def stats(self) -> dict[str, float]:
        return self.sampler.stats()

    def state_dict(self) -> dict[str, Any]:
        """The global sampler's state (the same on every rank): save it from one rank."""
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a global state saved at any world size."""
        self.sampler.load_state_dict(state)
