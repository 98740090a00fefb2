"""PyTorch Lightning: a callback that feeds a fastis sampler and keeps its state in the
Trainer's checkpoints.

    sampler = fastis.samplers.ImportanceSampler(len(train_set), 128, seed=0)
    # in the LightningModule:
    #   train_dataloader(): DataLoader(fastis.data.Indexed(train_set), batch_sampler=sampler)
    #   training_step(batch, i): x, y = batch.data; loss, scores = cross_entropy_with_scores(
    #       self(x), y, weight=batch.weight); return {"loss": loss.mean(), "scores": scores}
    trainer = lightning.Trainer(callbacks=[ImportanceSampling(sampler)])

After each training batch the callback calls `sampler.update(batch, outputs["scores"])`
(before any checkpoint callback of the same batch runs: Lightning runs those last), and the
sampler's state_dict travels in every checkpoint as this callback's state; `trainer.fit(...,
ckpt_path=...)` restores it, and the sampler continues its stream after the last trained
batch, also from a checkpoint taken mid-epoch.

Under DDP, build the sampler where each process has joined the process group, inside
`train_dataloader()`: `fastis.distributed.Sharded(fastis.samplers.ImportanceSampler(...))`,
construct the callback without a sampler (`ImportanceSampling()`: it takes the training
DataLoader's batch_sampler when training starts, and applies a restored state then), and
pass `use_distributed_sampler=False` to the Trainer (Lightning would otherwise try to
replace the batch sampler with its own DistributedSampler).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl

from fastis.distributed import Sharded
from fastis.samplers import BatchSampler

__all__ = ["ImportanceSampling"]


class ImportanceSampling(pl.Callback):
    """Updates the sampler after every training batch and checkpoints its state.

    Args:
        sampler: the DataLoader's batch_sampler (a fastis sampler, or Sharded under DDP);
            None: the training DataLoader's batch_sampler, found when training starts.
        scores_key: the key of the training_step output holding the per-example scores (a
            fastis.ops.Scores or float [b]); when the output has no such key the batch is
            acknowledged without scores (Uniform, SoftRandom).

    Examples:
        >>> import fastis
        >>> from fastis.integrations.lightning import ImportanceSampling
        >>> sampler = fastis.samplers.ImportanceSampler(100, 10, seed=0)
        >>> callback = ImportanceSampling(sampler)   # lightning.Trainer(callbacks=[callback])
        >>> callback.state_dict()["sampler"]["kind"]
        'ImportanceSampler'
    """

    def __init__(self, sampler: BatchSampler | Sharded | None = None,
                 scores_key: str = "scores") -> None:
        if sampler is not None:
            _check_sampler(sampler)
        self.sampler, self.scores_key = sampler, scores_key
        self._restored: dict[str, Any] | None = None  # a state loaded before the sampler

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.sampler is None:
            self.sampler = _check_sampler(getattr(trainer.train_dataloader, "batch_sampler",
                                                  None))
        if self._restored is not None:
            self.sampler.load_state_dict(self._restored)
            self._restored = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        scores = outputs.get(self.scores_key) if isinstance(outputs, Mapping) else None
        self.sampler.update(batch, scores)

    def state_dict(self) -> dict[str, Any]:
        if self.sampler is None:  # saved before training started
            return {"sampler": self._restored} if self._restored is not None else {}
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "sampler" not in state_dict:
            return  # saved before any sampler existed: nothing to restore
        if self.sampler is None:
            self._restored = state_dict["sampler"]
        else:
            self.sampler.load_state_dict(state_dict["sampler"])


def _check_sampler(sampler: Any) -> BatchSampler | Sharded:
    if not isinstance(sampler, (BatchSampler, Sharded)):
        raise TypeError(f"ImportanceSampling needs a fastis sampler (the training "
                        f"DataLoader's batch_sampler), got {type(sampler).__name__}")
    return sampler
