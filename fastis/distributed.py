"""Global importance sampling under torch.distributed: every rank draws the same global
batch and trains on its own shard of it; score updates are merged across ranks.

    sampler = fastis.distributed.Sharded(fastis.samplers.ImportanceSampler(n, 256, seed=0))
    loader = DataLoader(fastis.data.Indexed(ds), batch_sampler=sampler)  # 256 / world each
    ...
    sampler.update(batch, scores)   # one all_gather; then every rank applies all updates

How it stays consistent without extra synchronisation: the wrapped sampler's draws are a
function of (seed, step, updates so far) only (fastis.samplers.draws). Every rank wraps a
sampler with the same seed and configuration and applies the same merged updates in the
same order, so all ranks hold the same state and draw the same global batches. Rank r
takes positions r, r + W, r + 2W, ... of each global batch: disjoint shards that together
make the batch. `update()` gathers (position, index, score) from all ranks and hands the
wrapped sampler the whole batch in its original order, so the result does not depend on the
world size; the state_dict is the wrapped sampler's (global) one, and a run resumes at any
world size with the same global stream.

Pool methods (UpperBound, exact BiasedLoss): rank r holds positions r::W of the global pool
and scores them; `select()` gathers the pool's scores (one all_gather) and every rank
resamples the same b picks from the whole pool. A pick is trained by the rank that holds
its pool row (its data and, with reuse_forward, its forward are there), so rank r trains on
m_r of the b picks, m_r varying from step to step around b / W. To keep the loop unchanged
(`loss.mean()`, DDP averaging the W ranks' gradients) and the gradient exactly the one-process
one, (1 / b) sum_j w_j grad l_j, each rank's picks are padded to M = max_r m_r rows (the
padding repeats a row of the rank's shard with weight 0: no NaN from an empty mean, and the
same shapes on every rank) and the weights scaled by M W / b:
    (1 / W) sum_r (1 / M) sum_{j on r} (M W / b) w_j grad l_j = (1 / b) sum_j w_j grad l_j.
The same holds for a plain batch that does not split evenly (an epoch's last batch, the
batches of a pruned epoch): rank r's m_r weights are scaled by m_r W / b, and a rank whose
shard would be empty (b < W) trains on one weight-0 row.
The second collective of a pool step is update()'s, so a pool step costs two, a plain step
one. UpperBound(cost="measured") times its steps: each gather carries the rank's time and
every rank takes the slowest rank's, so the switch stays identical on all ranks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist

from fastis.data import Draw, Indexed, collate
from fastis.ops import Scores
from fastis.samplers import BatchSampler, Pick, PoolSampler

__all__ = ["Sharded"]

# Columns of the gathered rows: the position in the global batch (or pool, or pick list),
# the data set index, the score, the gradient norm (for the variance guard), the step, and
# the rank's time for the step (NaN: none).
_POSITION, _INDEX, _SCORE, _NORM, _STEP, _SECONDS = range(6)


class _LocalPick(NamedTuple):
    """This rank's part of a pool step's picks: `pick` (padded, scaled weights) and the
    positions in the global pick list of its first `len(positions)` rows."""

    pick: Pick
    positions: np.ndarray


class Sharded:
    """A DataLoader batch sampler yielding this rank's shard of a fastis sampler's global
    batches, and merging every rank's score updates.

    Args:
        sampler: the global sampler (same class, configuration and seed on every rank).
        rank, world_size: default from torch.distributed (1 process when not initialised).
        group: the process group of the all-gathers (default: the world).

    Examples:
        >>> import fastis
        >>> sampler = fastis.distributed.Sharded(fastis.samplers.Uniform(100, 8, seed=0),
        ...                                      rank=1, world_size=2)
        >>> draw = next(iter(sampler))   # positions 1, 3, 5, 7 of the global batch
        >>> len(draw), sampler.scores_pools
        (4, False)
    """

    def __init__(self, sampler: BatchSampler, *, rank: int | None = None,
                 world_size: int | None = None, group: Any = None) -> None:
        if not isinstance(sampler, BatchSampler):
            raise TypeError(f"Sharded wraps a fastis sampler, got {type(sampler).__name__}")
        initialised = dist.is_available() and dist.is_initialized()
        self.world_size = world_size if world_size is not None else (
            dist.get_world_size(group) if initialised else 1)
        self.rank = rank if rank is not None else (dist.get_rank(group) if initialised else 0)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside [0, {self.world_size})")
        if self.world_size > sampler.batch_size:
            raise ValueError(f"world size {self.world_size} exceeds the global batch size "
                             f"{sampler.batch_size}: some ranks would get empty shards")
        if sampler.scores_pools and self.world_size > sampler.pool_size:
            raise ValueError(f"world size {self.world_size} exceeds the pool size "
                             f"{sampler.pool_size}: some ranks would get empty pool shards")
        self.sampler, self.group = sampler, group
        self._collective = initialised and self.world_size > 1
        self._local_picks: dict[int, _LocalPick] = {}  # select() results not yet updated
        self._selected_at: dict[int, float] = {}  # step -> perf_counter() when selected
        self._last_gather: dist.Work | None = None  # see _gather

    def __len__(self) -> int:
        return len(self.sampler)

    @property
    def scores_pools(self) -> bool:
        """Whether the wrapped sampler's steps include pools (select() resamples them)."""
        return self.sampler.scores_pools

    def loader(self, dataset: Any, *, collate_fn: Any = None,
               **kwargs: Any) -> torch.utils.data.DataLoader:
        """A DataLoader over `dataset` yielding this rank's shards (see BatchSampler.loader)."""
        return torch.utils.data.DataLoader(Indexed(dataset, batches=collate_fn is None),
                                           batch_sampler=self, collate_fn=collate(collate_fn),
                                           **kwargs)

    def __iter__(self) -> Iterator[Draw]:
        for draw in self.sampler:
            yield self._local(draw)

    def _local(self, draw: Draw) -> Draw:
        """This rank's shard of a global draw: positions r::W. A plain batch that does not
        split evenly (an epoch's last, a pruned epoch's) has its weights scaled by m_r W / b
        (module docstring) and an empty shard (b < W) is one weight-0 row, so that DDP's mean
        of the ranks' mean losses is still the batch's mean."""
        size, world = len(draw.index), self.world_size
        index, weight = draw.index[self.rank::world], draw.weight[self.rank::world]
        if size % world == 0 or self._is_pool_step(draw.step):
            return Draw(index, weight, draw.step)
        if len(index) == 0:
            return Draw(draw.index[:1].copy(), np.zeros(1, np.float32), draw.step)
        return Draw(index, (weight * (len(index) * world / size)).astype(np.float32),
                    draw.step)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    @property
    def step(self) -> int:
        return self.sampler.step

    def is_pool(self, batch: Any) -> bool:
        """Whether `batch` (this rank's shard) belongs to a pool step."""
        return self._is_pool_step(self._shard_of(batch)[1])

    def _shard_of(self, batch: Any) -> tuple[np.ndarray, int]:
        """(index, step) of this rank's shard, checked against the global draw of its step."""
        index, step = self.sampler.batch_of(batch)
        if not np.array_equal(index, self._local(self.sampler.drawn(step)).index):
            raise ValueError(f"batch.index is not rank {self.rank}'s shard of step {step}: "
                             "report each shard as the loader yielded it")
        return index, step

    def select(self, batch: Any, scores: Any) -> Pick:
        """PoolSampler.select() for this rank's shard of a pool (module docstring).

        Args:
            batch: this rank's shard, as the loader yielded it.
            scores: its scores, float [len(batch)], or a callable on its row positions.
        Returns:
            the Pick this rank trains on: rows of its shard, padded to the same length on
            every rank with weight-0 rows, weights scaled for DDP's mean (module docstring);
            on a step that is not a pool, the whole shard with its own weights.
        Every rank must call it for every pool step (it gathers); elsewhere it is local.
        """
        # A pool method whose every step is uniform (scores_pools False) still answers, as
        # PoolSampler.select does: a loop written for pools runs unchanged.
        if not isinstance(self.sampler, PoolSampler):
            raise TypeError(f"{type(self.sampler).__name__} has no select(): it draws "
                            "batches to train on as they are")
        index, step = self._shard_of(batch)
        if step in self._local_picks:  # a repeated call: the same answer, gathered once
            return self._local_picks[step].pick
        if self._is_pool_step(step):
            local = self._select_pool(index, step, scores)
        else:  # the shard as it is, with its own weights
            local = _LocalPick(Pick.whole(index, batch.weight), np.arange(len(index)))
        self._local_picks[step] = local
        self._selected_at[step] = time.perf_counter()
        return local.pick

    def _select_pool(self, index: np.ndarray, step: int, scores: Any) -> _LocalPick:
        sampler = self.sampler
        scored = sampler.score_pool(scores, len(index))
        mine = self._rows(self._positions(len(index)), index, scored.values, scored.norms, step,
                          math.nan if scored.seconds is None else scored.seconds)
        pool = self._gather(mine, -(-sampler.pool_size // self.world_size), step)
        # The slowest rank's forward is the pool's cost (None: no rank timed one).
        slowest = _slowest(pool)
        whole = sampler.select(Draw(pool[:, _INDEX].astype(np.int64),
                                    np.ones(len(pool), np.float32), step), self._scores(pool),
                               forward_seconds=None if math.isnan(slowest) else slowest)
        owner = whole.rows.numpy() % self.world_size
        padded_length = int(np.bincount(owner, minlength=self.world_size).max())
        positions = np.flatnonzero(owner == self.rank)
        padding = padded_length - len(positions)
        rows = torch.cat([whole.rows[positions] // self.world_size,
                          torch.zeros(padding, dtype=torch.int64)])
        local_index = torch.from_numpy(index[rows.numpy()])
        scale = padded_length * self.world_size / sampler.batch_size
        weight = torch.cat([whole.weight[positions] * scale, torch.zeros(padding)])
        return _LocalPick(Pick(rows, local_index, weight), positions)

    def update(self, batch: Any, scores: Any = None) -> None:
        """Merges this rank's scores with every other rank's (one all_gather), then updates
        the global sampler with the whole batch. Every rank must call it for every batch,
        all with scores or all without (then nothing is exchanged). On a pool step `scores`
        are aligned with the Pick's rows (its padding included)."""
        index, step = self._shard_of(batch)
        local = self._local_picks.get(step)
        if local is None and self._is_pool_step(step):
            raise ValueError(f"step {step} is a pool: call select() on it before update()")
        if scores is None:
            self.sampler.update(self.sampler.drawn(step))
        else:
            self._update_merged(index, step, scores, local if self._is_pool_step(step) else None)
        self._forget_before(self.sampler.step)

    def _update_merged(self, index: np.ndarray, step: int, scores: Any,
                       local: _LocalPick | None) -> None:
        """update() with scores; `local` is this rank's pick on a pool step, else None."""
        pool_step = local is not None
        trained = len(local.pick.rows) if pool_step else len(index)
        values = self.sampler.scores_of(scores, trained, allow_invalid=True)
        norms = self.sampler.norms_of(scores, trained, allow_invalid=True, values=values)
        if pool_step:
            positions, index = local.positions, local.pick.index.numpy()
            values, norms = values[:len(positions)], norms[:len(positions)]
            index = index[:len(positions)]
            longest = trained  # the padded length, the same on every rank
        else:  # without an empty shard's weight-0 row
            real = len(self.sampler.drawn(step).index[self.rank::self.world_size])
            index, values, norms = index[:real], values[:real], norms[:real]
            positions = self._positions(real)
            longest = -(-self.sampler.batch_size // self.world_size)
        selected_at = self._selected_at.get(step)
        seconds = time.perf_counter() - selected_at if selected_at is not None else math.nan
        merged = self._gather(self._rows(positions, index, values, norms, step, seconds),
                              longest, step)
        if self.sampler.scores_pools:
            # The step took as long as its slowest rank: every rank records that time.
            self.sampler.record_step_seconds(step, _slowest(merged))
        self.sampler.update(Draw(merged[:, _INDEX].astype(np.int64),
                                 np.ones(len(merged), np.float32), step), self._scores(merged))

    def _scores(self, rows: np.ndarray) -> Scores:
        """The gathered scores and gradient norms as a fastis.ops.Scores, the scores in the
        wrapped sampler's field (its guard reads the norms from grad_norm)."""
        values, norms = torch.from_numpy(rows[:, _SCORE]), torch.from_numpy(rows[:, _NORM])
        if self.sampler.score_field == "grad_norm":
            return Scores(torch.zeros_like(values), values)
        return Scores(values, norms)

    def _is_pool_step(self, step: int) -> bool:
        return self.sampler.scores_pools and self.sampler.is_pool_step(step)

    def _forget_before(self, step: int) -> None:
        """Drops the selections of acknowledged steps."""
        for kept in (self._local_picks, self._selected_at):
            for old in [s for s in kept if s < step]:
                del kept[old]

    def _positions(self, size: int) -> np.ndarray:
        """Positions in the global batch or pool of this rank's `size` rows."""
        return self.rank + self.world_size * np.arange(size)

    @staticmethod
    def _rows(positions: np.ndarray, index: np.ndarray, values: np.ndarray, norms: np.ndarray,
              step: int, seconds: float) -> np.ndarray:
        rows = np.empty((len(positions), 6))
        rows[:, _POSITION], rows[:, _INDEX], rows[:, _SCORE] = positions, index, values
        rows[:, _NORM], rows[:, _STEP], rows[:, _SECONDS] = norms, step, seconds
        return rows

    def _gather(self, rows: np.ndarray, longest: int, step: int) -> np.ndarray:
        """Every rank's rows (float64 [m_r, 6], m_r <= longest), concatenated and sorted by
        position: one all_gather, each rank's rows padded to `longest` (a NaN position
        marks the padding)."""
        if self._collective:
            padded = np.full((longest, rows.shape[1]), np.nan)
            padded[:len(rows)] = rows
            mine = torch.from_numpy(padded)
            parts = [torch.empty_like(mine) for _ in range(self.world_size)]
            work = dist.all_gather(parts, mine, group=self.group, async_op=True)
            work.wait()
            # The work (and with it the tensors) is held until the next gather, so that the
            # backend's worker thread never drops the last reference: releasing a tensor that
            # Python has seen takes the GIL, and a worker thread that waits for the GIL while
            # the interpreter shuts down (the process's last step) aborts it (std::terminate,
            # seen with gloo).
            self._last_gather = work
            rows = torch.cat(parts).numpy()
            rows = rows[~np.isnan(rows[:, _POSITION])]
        if not (rows[:, _STEP] == step).all():
            raise RuntimeError("ranks gathered different steps: every rank must call "
                               "select() and update() for the same batch")
        return rows[np.argsort(rows[:, _POSITION], kind="stable")]

    def stats(self) -> dict[str, float]:
        return self.sampler.stats()

    def state_dict(self) -> dict[str, Any]:
        """The global sampler's state (the same on every rank): save it from one rank."""
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a global state saved at any world size."""
        self.sampler.load_state_dict(state)
        self._local_picks.clear()
        self._selected_at.clear()


def _slowest(rows: np.ndarray) -> float:
    """The largest time among the gathered rows, NaN when no rank timed anything."""
    seconds = rows[:, _SECONDS]
    seconds = seconds[~np.isnan(seconds)]
    return float(seconds.max()) if len(seconds) else math.nan
