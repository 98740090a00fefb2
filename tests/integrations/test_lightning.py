"""fastis.integrations.lightning with the real Lightning Trainer on CPU: a tiny model trains
with a method, a mid-epoch checkpoint is taken, `fit(ckpt_path=...)` resumes, and the run
continues exactly as one that was never interrupted (same batches, same parameters)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pytest.importorskip("lightning")
import lightning

import fastis
from fastis.integrations.lightning import ImportanceSampling

N, BATCH, STEPS, CUT = 90, 10, 30, 13  # 9 steps per epoch: the cut is inside epoch 1

_gen = torch.Generator().manual_seed(0)
_labels = torch.randint(0, 3, (N,), generator=_gen)
DATA = TensorDataset(torch.randn(N, 4, generator=_gen) + _labels[:, None], _labels)

METHODS = {
    "ImportanceSampler": lambda: fastis.samplers.ImportanceSampler(N, BATCH, floor=0.1, seed=0),
    # The paper's switch (guard=False) at tau_th just above 1: most steps are pools.
    "UpperBound": lambda: fastis.samplers.UpperBound(N, BATCH, tau_th=1.01, momentum=0.5,
                                                     guard=False, seed=0),
}


class TinyModule(lightning.LightningModule):
    def __init__(self, sampler) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(4, 3)
        self.sampler = sampler
        self.trained: list[tuple[int, list[int]]] = []  # (step, examples) per batch

    def train_dataloader(self) -> DataLoader:
        return DataLoader(fastis.data.Indexed(DATA), batch_sampler=self.sampler)

    def training_step(self, batch, batch_idx):
        x, y = batch.data
        w = batch.weight
        if hasattr(self.sampler, "select"):  # a pool method: train on the picks
            pick = self.sampler.select(batch, lambda rows: fastis.ops.cross_entropy_scores(
                self.net(x[rows]), y[rows]))
            (x, y), w = pick.take((x, y)), pick.weight
        self.trained.append((int(batch.step[0]), batch.index.tolist()))
        loss, scores = fastis.ops.cross_entropy_with_scores(self.net(x), y, weight=w)
        return {"loss": loss.mean(), "scores": scores}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(method: str, max_steps: int, checkpoints=None, resume=None) -> TinyModule:
    module = TinyModule(METHODS[method]())
    callbacks = [ImportanceSampling(module.sampler)]
    if checkpoints is not None:
        callbacks.append(lightning.pytorch.callbacks.ModelCheckpoint(
            dirpath=checkpoints, every_n_train_steps=CUT, save_top_k=-1))
    trainer = lightning.Trainer(max_steps=max_steps, callbacks=callbacks, accelerator="cpu",
                                logger=False, enable_progress_bar=False,
                                enable_model_summary=False,
                                enable_checkpointing=checkpoints is not None)
    trainer.fit(module, ckpt_path=resume)
    return module


@pytest.mark.filterwarnings("ignore::UserWarning")  # Lightning's advice on mid-epoch resume
@pytest.mark.parametrize("method", sorted(METHODS))
def test_checkpoint_resume_continues_the_run_exactly(method, tmp_path):
    straight = fit(method, STEPS)
    assert straight.sampler.step == STEPS  # the callback acknowledged every batch
    head = fit(method, CUT, checkpoints=tmp_path)
    (checkpoint,) = tmp_path.glob("*.ckpt")
    saved = torch.load(checkpoint)["callbacks"]["ImportanceSampling"]["sampler"]
    assert saved["acked"] == CUT - 1  # the state advanced, and travels in the checkpoint
    assert head.trained == straight.trained[:CUT]
    tail = fit(method, STEPS, resume=checkpoint)
    # The restored sampler continued its stream mid-epoch: the same batches and picks, so
    # the same parameters, as the uninterrupted run.
    assert tail.trained == straight.trained[CUT:]
    assert tail.sampler.step == STEPS
    for a, b in zip(straight.parameters(), tail.parameters()):
        assert torch.equal(a, b)
    if method == "UpperBound":
        assert straight.sampler.stats()["importance_steps"] > 10


def test_callback_refuses_what_is_not_a_fastis_sampler():
    with pytest.raises(TypeError, match="fastis sampler"):
        ImportanceSampling(torch.utils.data.BatchSampler(range(4), 2, False))
    module = TinyModule(METHODS["ImportanceSampler"]())
    module.train_dataloader = lambda: DataLoader(DATA, batch_size=10)  # no fastis sampler
    trainer = lightning.Trainer(max_steps=1, callbacks=[ImportanceSampling()], logger=False,
                                enable_progress_bar=False, enable_checkpointing=False,
                                enable_model_summary=False, accelerator="cpu")
    with pytest.raises(TypeError, match="batch_sampler"):
        trainer.fit(module)


class ShardedModule(lightning.LightningModule):
    """For DDP: the Sharded sampler is built in train_dataloader(), once the process has
    joined the group; each rank writes what it trained on and its parameters."""

    def __init__(self, out: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(4, 3)
        self.out = out
        self.trained: list[list[int]] = []

    def train_dataloader(self) -> DataLoader:
        self.sampler = fastis.distributed.Sharded(METHODS["ImportanceSampler"]())
        return DataLoader(fastis.data.Indexed(DATA), batch_sampler=self.sampler)

    def training_step(self, batch, batch_idx):
        x, y = batch.data
        self.trained.append(batch.index.tolist())
        loss, scores = fastis.ops.cross_entropy_with_scores(self.net(x), y, weight=batch.weight)
        return {"loss": loss.mean(), "scores": scores}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def on_train_end(self) -> None:
        Path(self.out, f"rank{self.global_rank}.json").write_text(json.dumps({
            "trained": self.trained, "step": self.sampler.step,
            "parameters": [p.detach().flatten().tolist() for p in self.parameters()]}))


def fit_ddp(out: Path, max_steps: int, checkpoints=None, resume=None) -> list[dict]:
    out.mkdir()
    callbacks = [ImportanceSampling()]  # finds the sampler on the training DataLoader
    if checkpoints is not None:
        callbacks.append(lightning.pytorch.callbacks.ModelCheckpoint(
            dirpath=checkpoints, every_n_train_steps=max_steps, save_top_k=-1))
    trainer = lightning.Trainer(
        max_steps=max_steps, accelerator="cpu", devices=2, strategy="ddp_spawn",
        use_distributed_sampler=False, callbacks=callbacks, logger=False,
        enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=checkpoints is not None)
    trainer.fit(ShardedModule(str(out)), ckpt_path=resume)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_ddp_two_processes_share_one_stream_and_resume(tmp_path):
    """strategy="ddp_spawn" on 2 CPU processes with a Sharded sampler: each rank trains on
    positions r::2 of the one-process stream's first batch, the replicas stay equal, and a
    run resumed from a checkpoint continues as the uninterrupted run."""
    straight = fit_ddp(tmp_path / "straight", 12)
    whole = next(iter(METHODS["ImportanceSampler"]())).index.tolist()
    assert [r["trained"][0] for r in straight] == [whole[0::2], whole[1::2]]
    assert straight[0]["parameters"] == straight[1]["parameters"]
    assert straight[0]["step"] == straight[1]["step"] == 12
    fit_ddp(tmp_path / "head", 6, checkpoints=tmp_path / "ckpt")
    (checkpoint,) = (tmp_path / "ckpt").glob("*.ckpt")
    tail = fit_ddp(tmp_path / "tail", 12, resume=str(checkpoint))
    for rank in range(2):
        assert tail[rank]["trained"] == straight[rank]["trained"][6:]
        assert tail[rank]["parameters"] == straight[rank]["parameters"]
