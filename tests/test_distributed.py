"""fastis.distributed.Sharded with real torch.distributed processes (gloo, CPU): identical
global streams on every rank, disjoint shards that make each global batch, every rank's
updates applied everywhere, and resume at another world size continuing the stream."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from fastis.data import Draw
from fastis.distributed import Sharded
from fastis.samplers import RAS, HighLossBatches, ImportanceSampler, UpperBound

N, BATCH = 120, 12
KINDS = {
    "importance": lambda: ImportanceSampler(N, BATCH, floor=0.1, seed=7),
    "ras": lambda: RAS(N, BATCH, groups=np.arange(N) % 5, seed=8),
    "high-loss": lambda: HighLossBatches(N, BATCH, delta=0.5, seed=9),
}


def scores_of(index: np.ndarray, step: int, positions: np.ndarray) -> np.ndarray:
    """Deterministic scores that change with the step and with the position in the global
    batch, so that an index drawn twice in a batch gets two scores and the order in which
    updates are applied (the last write wins) shows."""
    return ((index * 7919) % 101 + 1.0) * (1 + step % 3) + 0.001 * positions


def run(sampler, steps: int, save_after: int | None = None, save_to: Path | None = None):
    """Drives a (sharded or plain) sampler for `steps` batches; returns per step its
    (index, weight); saves the state after step `save_after`."""
    records = []
    while len(records) < steps:
        rank, world = getattr(sampler, "rank", 0), getattr(sampler, "world_size", 1)
        for draw in sampler:
            positions = rank + world * np.arange(len(draw.index))
            sampler.update(draw, scores_of(draw.index, draw.step, positions))
            records.append((draw.step, draw.index.tolist(), draw.weight.tolist()))
            if draw.step == save_after and save_to is not None:
                torch.save(sampler.state_dict(), save_to)
            if len(records) == steps:
                break
    return records


def _worker(rank: int, world: int, init: str, out: str, kind: str, steps: int,
            resume: str | None, save_after: int | None, save_to: str | None) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        sampler = Sharded(KINDS[kind]())
        if resume:
            sampler.load_state_dict(torch.load(resume, weights_only=False))
        records = run(sampler, steps, save_after,
                      Path(save_to) if save_to and rank == 0 else None)
        state = sampler.state_dict()["method"]
        digest = {k: np.asarray(v).tolist() for k, v in state.items()
                  if isinstance(v, (np.ndarray, torch.Tensor))}
        Path(out, f"rank{rank}.json").write_text(json.dumps({"records": records,
                                                             "state": digest}))
    finally:
        dist.destroy_process_group()


def launch(world: int, tmp: Path, kind: str, steps: int, *, resume: Path | None = None,
           save_after: int | None = None, save_to: Path | None = None) -> list[dict]:
    out = tmp / f"w{world}-{len(list(tmp.iterdir()))}"
    out.mkdir()
    context = multiprocessing.get_context("fork")
    procs = [context.Process(target=_worker, args=(
        r, world, str(out / "init"), str(out), kind, steps,
        str(resume) if resume else None, save_after, str(save_to) if save_to else None))
        for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0, f"rank exited with {p.exitcode}"
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


def global_batches(ranks: list[dict]) -> list[tuple]:
    """Each step's global batch rebuilt from the shards (rank r holds positions r::W)."""
    world = len(ranks)
    out = []
    for per_rank in zip(*(r["records"] for r in ranks)):
        steps = {rec[0] for rec in per_rank}
        assert len(steps) == 1, "ranks consumed different steps together"
        size = sum(len(rec[1]) for rec in per_rank)
        index, weight = [None] * size, [None] * size
        for rank, (_, idx, w) in enumerate(per_rank):
            index[rank::world], weight[rank::world] = idx, w
        out.append((steps.pop(), index, weight))
    return out


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("world", [2, 3])
def test_ranks_share_one_global_stream_and_all_updates(kind, world, tmp_path):
    steps = 25
    reference = run(KINDS[kind](), steps)  # one process, the whole batch
    ranks = launch(world, tmp_path, kind, steps)
    assert global_batches(ranks) == reference
    # Shards are disjoint positions of the batch and together make it (checked above), and
    # every rank applied every rank's updates: all hold the same state.
    for other in ranks[1:]:
        assert other["state"] == ranks[0]["state"]


@pytest.mark.parametrize("before, after", [(2, 3), (3, 1)])
def test_resume_at_another_world_size_continues_the_stream(before, after, tmp_path):
    steps, cut = 24, 9
    reference = run(KINDS["importance"](), steps)
    state = tmp_path / "state.pt"
    head = launch(before, tmp_path, "importance", cut + 1, save_after=cut, save_to=state)
    assert global_batches(head) == reference[:cut + 1]
    tail = launch(after, tmp_path, "importance", steps - cut - 1, resume=state)
    assert global_batches(tail) == reference[cut + 1:]


def test_single_process_and_refusals():
    sharded = Sharded(ImportanceSampler(N, BATCH, seed=1), rank=0, world_size=1)
    assert run(sharded, 5) == run(ImportanceSampler(N, BATCH, seed=1), 5)
    with pytest.raises(NotImplementedError, match="select"):
        Sharded(UpperBound(N, BATCH))
    with pytest.raises(ValueError, match="exceeds the global batch"):
        Sharded(ImportanceSampler(N, 2), rank=0, world_size=3)
    with pytest.raises(ValueError, match="outside"):
        Sharded(ImportanceSampler(N, BATCH), rank=3, world_size=3)
    with pytest.raises(TypeError, match="fastis sampler"):
        Sharded(torch.utils.data.BatchSampler(range(4), 2, False))
    shard = next(iter(Sharded(ImportanceSampler(N, BATCH, seed=1), rank=1, world_size=3)))
    whole = next(iter(ImportanceSampler(N, BATCH, seed=1)))
    assert isinstance(shard, Draw) and shard.step == whole.step == 0
    assert shard.index.tolist() == whole.index[1::3].tolist()
