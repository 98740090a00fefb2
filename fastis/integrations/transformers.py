"""Hugging Face transformers: a Trainer that trains on a fastis sampler's batches, feeds the
sampler the scores of the same forward pass, and keeps its state in the Trainer's checkpoints.

    sampler = fastis.samplers.ImportanceSampler(len(train_set), 32, seed=0)
    trainer = ImportanceSamplingTrainer(model=model, args=args, train_dataset=train_set,
                                        sampler=sampler)
    trainer.train()                           # or train(resume_from_checkpoint=True)

What it changes in Trainer:
  - the training DataLoader is `fastis.data.Indexed(train_dataset)` with the sampler as its
    batch_sampler (args.per_device_train_batch_size is not used: the sampler's batch size
    is); the data collator makes the model inputs, and the batch's indices, weights and step
    ride along under `fastis_*` keys that compute_loss removes before calling the model;
  - compute_loss trains on mean(w * per-example loss) and calls `sampler.update()` with the
    scores of the same forward; for pool methods (UpperBound, exact BiasedLoss) it first
    scores the pool (a forward without gradients) and trains on `select()`'s picks;
  - every checkpoint folder gets `fastis_sampler.pt` (the sampler's state_dict), restored by
    `train(resume_from_checkpoint=...)`; the sampler continues its stream after the last
    trained batch, so the Trainer must not skip batches itself: `args.ignore_data_skip` is
    set to True.
The per-example loss is the cross-entropy of `outputs.logits` [b, C] against `labels` [b]
(sequence classification, `classification_loss`); pass `loss_fn=causal_lm_loss` for causal
language models (the mean next-token loss of each sequence), or any `loss_fn(outputs,
labels, weight) -> (w * loss [b], scores)`. Under DDP,
wrap the sampler in fastis.distributed.Sharded: the Trainer keeps accelerate from
re-sharding its batches.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import transformers
from torch.utils.data import DataLoader
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from fastis.data import Draw, Example, Indexed, take_rows
from fastis.distributed import Sharded
from fastis.ops import Scores, cross_entropy_with_scores, sequence_scores
from fastis.samplers import BatchSampler

__all__ = ["SAMPLER_FILE", "ImportanceSamplingMixin", "ImportanceSamplingTrainer",
           "causal_lm_loss", "classification_loss"]

SAMPLER_FILE = "fastis_sampler.pt"
_KEYS = ("fastis_index", "fastis_weight", "fastis_step")

LossFn = Callable[[Any, torch.Tensor, torch.Tensor], tuple[torch.Tensor, Any]]


def classification_loss(outputs: Any, labels: torch.Tensor,
                        weight: torch.Tensor) -> tuple[torch.Tensor, Scores]:
    """w * cross-entropy per example of `outputs.logits` [b, C] against `labels` [b], and
    the scores of the same pass."""
    logits = outputs.logits
    if logits.dim() != 2 or labels.dim() != 1:
        raise ValueError(f"the default loss_fn takes logits [b, C] and labels [b], got "
                         f"{list(logits.shape)} and {list(labels.shape)}: pass a loss_fn")
    return cross_entropy_with_scores(logits, labels, weight=weight.to(logits.device))


def causal_lm_loss(outputs: Any, labels: torch.Tensor,
                   weight: torch.Tensor) -> tuple[torch.Tensor, Scores]:
    """w * the mean next-token cross-entropy of each sequence, as transformers' causal LMs
    define it (logits [b, T, V] at position t predict labels[:, t + 1]; label -100 is not
    scored), and the per-sequence scores of the same pass (fastis.ops.sequence_scores:
    mean loss, root of the summed squared token gradient norms)."""
    logits = outputs.logits
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"causal_lm_loss takes logits [b, T, V] and labels [b, T], got "
                         f"{list(logits.shape)} and {list(labels.shape)}")
    batch, length = labels.shape
    logits = logits[:, :-1].reshape(batch * (length - 1), -1)
    targets = labels[:, 1:].reshape(-1).to(logits.device)
    token_weight = weight.to(logits.device).repeat_interleave(length - 1)
    token_losses, token_scores = cross_entropy_with_scores(logits, targets,
                                                           weight=token_weight)
    counted = (targets != -100).view(batch, length - 1).sum(dim=1).clamp(min=1)
    losses = token_losses.view(batch, length - 1).sum(dim=1) / counted
    scores = sequence_scores(Scores(*(f.view(batch, length - 1) for f in token_scores)),
                             targets.view(batch, length - 1))
    return losses, scores


class ImportanceSamplingMixin:
    """The fastis behaviour of ImportanceSamplingTrainer, to combine with another Trainer
    subclass: `class MyTrainer(ImportanceSamplingMixin, SomeTrainer)`. See the module
    docstring.

    Examples:
        >>> import transformers
        >>> from fastis.integrations.transformers import ImportanceSamplingMixin
        >>> class MyTrainer(ImportanceSamplingMixin, transformers.Trainer):
        ...     pass                                # MyTrainer(..., sampler=sampler)
        >>> MyTrainer.get_train_dataloader is ImportanceSamplingMixin.get_train_dataloader
        True
    """

    def __init__(self, *args: Any, sampler: BatchSampler | Sharded,
                 loss_fn: LossFn = classification_loss, **kwargs: Any) -> None:
        if not isinstance(sampler, (BatchSampler, Sharded)):
            raise TypeError(f"sampler must be a fastis sampler, got {type(sampler).__name__}")
        super().__init__(*args, **kwargs)
        self.sampler, self.loss_fn = sampler, loss_fn
        self._pools = sampler.scores_pools
        # The sampler resumes its own stream: skipping batches would skip twice.
        self.args.ignore_data_skip = True
        # The sampler's batch is the one trained on; the Trainer's own batch size only
        # feeds its counts (samples per second, epochs), which must then use the same.
        per_device = _per_device_batch(sampler)
        if self.args.per_device_train_batch_size != per_device:
            warnings.warn(
                f"per_device_train_batch_size = {self.args.per_device_train_batch_size} "
                f"differs from the {per_device} examples per device the fastis sampler "
                f"trains on: it is set to {per_device}, so that the Trainer's counts "
                "(samples per second, epochs) are right", UserWarning, stacklevel=2)
            self.args.per_device_train_batch_size = per_device
        # compute_loss returns the micro-batch's mean: the Trainer divides it by the
        # accumulation steps (the model's own normalisation by num_items_in_batch would
        # count a pool's examples, not the trained picks).
        self.loss_is_scaled_for_ga, self.model_accepts_loss_kwargs = False, False

    # ------------------------------------------------------------------ data
    def get_train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            raise ValueError("Trainer: training requires a train_dataset.")
        # The loader gets a generator of its own: creating its iterator would otherwise
        # draw a worker seed from torch's global generator, which a resumed run restores
        # (Trainer._load_rng_state) just before that draw, so the dropout masks after a
        # resume would differ from the uninterrupted run's. The sampler needs none.
        loader = DataLoader(
            Indexed(self.train_dataset), batch_sampler=self.sampler,
            generator=torch.Generator().manual_seed(self.args.seed),
            collate_fn=self._collate, num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
            persistent_workers=self.args.dataloader_persistent_workers,
            prefetch_factor=self.args.dataloader_prefetch_factor)
        prepared = self.accelerator.prepare(loader)
        # A Sharded sampler already yields this rank's shard: make accelerate's re-sharding
        # wrapper (if any) a passthrough, as transformers does for its own rank-aware
        # batch samplers.
        wrapper = getattr(prepared, "batch_sampler", None)
        if getattr(wrapper, "batch_sampler", None) is self.sampler:
            wrapper.num_processes, wrapper.process_index = 1, 0
        return prepared

    def _collate(self, items: list[Example]) -> dict[str, Any]:
        inputs = self.data_collator([item.data for item in items])
        inputs["fastis_index"] = torch.tensor([item.index for item in items])
        inputs["fastis_weight"] = torch.tensor(np.array([item.weight for item in items],
                                                        np.float32))
        inputs["fastis_step"] = torch.tensor([item.step for item in items])
        return inputs

    # ------------------------------------------------------------------ loss
    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any],
                     return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
        if "fastis_index" not in inputs:  # evaluation batches: the Trainer's own loss
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        inputs = dict(inputs)
        index, weight, step = (inputs.pop(key) for key in _KEYS)
        draw = Draw(index.cpu().numpy().astype(np.int64),
                    weight.cpu().numpy().astype(np.float32), int(step[0]))
        if self._pools:
            pick = self.sampler.select(draw, lambda rows: self._pool_scores(model, inputs, rows))
            inputs, weight = take_rows(inputs, pick.rows), pick.weight
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        losses, scores = self.loss_fn(outputs, labels, weight)
        self.sampler.update(draw, scores)
        loss = losses.mean()
        return (loss, outputs) if return_outputs else loss

    def _pool_scores(self, model: torch.nn.Module, inputs: dict[str, Any],
                     rows: torch.Tensor) -> Any:
        """The scores of pool rows `rows` (select() calls this under torch.no_grad()). The
        forward runs on the unwrapped model: DDP's own forward may run collectives (buffer
        broadcasts), and under Sharded the ranks score different numbers of rows."""
        chunk = take_rows(inputs, rows)
        labels = chunk.pop("labels")
        with torch.no_grad():
            outputs = self.accelerator.unwrap_model(model)(**chunk)
            _, scores = self.loss_fn(outputs, labels, torch.ones(len(rows)))
        return scores

    # ------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial),
                                  f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            torch.save(self.sampler.state_dict(), os.path.join(folder, SAMPLER_FILE))

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any,
              **kwargs: Any) -> Any:
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"no checkpoint found in {self.args.output_dir}")
        if resume_from_checkpoint:
            path = os.path.join(resume_from_checkpoint, SAMPLER_FILE)
            if not os.path.exists(path):
                raise ValueError(f"{resume_from_checkpoint} holds no fastis sampler state "
                                 f"({SAMPLER_FILE}): it was not saved by this trainer")
            self.sampler.load_state_dict(torch.load(path))
        return super().train(resume_from_checkpoint, *args, **kwargs)


def _per_device_batch(sampler: BatchSampler | Sharded) -> int:
    """The examples each process trains on per step (a pool method's picks, not its pool)."""
    if isinstance(sampler, Sharded):
        return -(-sampler.sampler.batch_size // sampler.world_size)
    return sampler.batch_size


class ImportanceSamplingTrainer(ImportanceSamplingMixin, transformers.Trainer):
    """transformers.Trainer training on a fastis sampler's batches; see the module
    docstring. Takes Trainer's arguments plus `sampler` and `loss_fn`.

    Examples:
        >>> import fastis, transformers
        >>> from fastis.integrations.transformers import ImportanceSamplingTrainer
        >>> # Measured costs: pool steps run where their forward is cheap enough to pay.
        >>> sampler = fastis.samplers.UpperBound(96, 8, cost="measured", seed=0)
        >>> # trainer = ImportanceSamplingTrainer(model=model, args=args,
        >>> #                                     train_dataset=ds, sampler=sampler)
        >>> issubclass(ImportanceSamplingTrainer, transformers.Trainer), sampler.scores_pools
        (True, True)
    """
