"""fastis.distributed.Sharded with real torch.distributed processes (gloo, CPU), for every
sampler: identical global streams on every rank, disjoint shards that make each global batch
(and, for pool methods, the global picks), every rank's updates applied everywhere, the
DDP-averaged gradient equal to the one-process one, and resume at another world size
continuing the stream."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from process_helpers import run_ranks
from sampler_helpers import same_state

from fastis.data import Draw
from fastis.distributed import Sharded
from fastis.samplers import (
    RAS,
    BiasedLoss,
    DynamicPruning,
    HighLossBatches,
    ImportanceSampler,
    PoolSampler,
    RhoLoss,
    SelectiveBackprop,
    SoftRandom,
    Uniform,
    UpperBound,
)

N, BATCH = 120, 12
KINDS = {
    "uniform": lambda: Uniform(N, BATCH, seed=1),
    # Batches of 7 (uneven shards) and an epoch's last batch of 1 (empty shards).
    "uniform-uneven": lambda: Uniform(N, 7, seed=15),
    "soft-random": lambda: SoftRandom(N, BATCH, rate=0.5, seed=2),
    "importance": lambda: ImportanceSampler(N, BATCH, floor=0.1, seed=7),
    "ras": lambda: RAS(N, BATCH, groups=np.arange(N) % 5, seed=8),
    "high-loss": lambda: HighLossBatches(N, BATCH, delta=0.5, seed=9),
    "biased-gaussian": lambda: BiasedLoss(N, BATCH, predictor="gaussian",
                                          labels=np.arange(N) % 4, pool_size=48, seed=4),
    "biased-lstm": lambda: BiasedLoss(N, BATCH, predictor="lstm", labels=np.arange(N) % 4,
                                      pool_size=48, seed=5),
    # Pools of 40 and 36 rows: uneven shards at world size 3 (14, 13, 13) and 2.
    "biased-exact": lambda: BiasedLoss(N, BATCH, pool_size=40, switch=False, seed=6),
    "biased-switched": lambda: BiasedLoss(N, BATCH, pool_size=40, seed=6),
    "upper-bound": lambda: UpperBound(N, BATCH, tau_th=1.1, momentum=0.5, seed=3),
    # Measured costs (recorded, with the switch kept at tau_th so the stream is comparable).
    "upper-bound-measured": lambda: UpperBound(N, BATCH, cost="measured", tau_th=1.1,
                                               momentum=0.5, seed=3),
    # 25 steps: epochs of 10 steps, the second and third pruned.
    "dynamic-pruning": lambda: DynamicPruning(N, BATCH, epochs=4, seed=10),
    "selective-backprop": lambda: SelectiveBackprop(N, BATCH, history=64, seed=11),
    # Pools of 18 (cost 1.5): a guarded selection that can pay.
    "selective-backprop-reweight": lambda: SelectiveBackprop(N, BATCH, history=64,
                                                             reweight=True, pool_size=18,
                                                             seed=12),
    "selective-backprop-stale": lambda: SelectiveBackprop(N, BATCH, history=64, stale=True,
                                                          seed=13),
    "rho-loss": lambda: RhoLoss(N, BATCH, irreducible=np.arange(N) % 4 / 8, pool_size=36,
                                seed=14),
    # Pool methods whose every step is uniform (their guarded defaults): select() still
    # answers on every rank.
    "uniform-only-upper-bound": lambda: UpperBound(N, BATCH, seed=16),
    "uniform-only-selective-backprop": lambda: SelectiveBackprop(N, BATCH, reweight=True,
                                                                 seed=17),
}

# A fixed softmax-regression problem: the gradient each step trains with.
_gen = torch.Generator().manual_seed(0)
FEATURES = torch.randn(N, 5, generator=_gen, dtype=torch.float64)
LABELS = torch.randint(0, 3, (N,), generator=_gen)
MODEL = torch.randn(3, 5, generator=_gen, dtype=torch.float64)


def scores_of(index: np.ndarray, step: int, positions: np.ndarray) -> np.ndarray:
    """Deterministic heavy-tailed scores that change with the step and with the position in
    the global batch, so that an index drawn twice in a batch gets two scores and the order
    in which updates are applied (the last write wins) shows."""
    return ((index * 7919) % 101 + 1.0) ** 2 * (1 + step % 3) + 0.001 * positions


def gradient(index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The gradient of the README loop's loss, mean(w * cross-entropy), at MODEL."""
    model = MODEL.clone().requires_grad_()
    losses = F.cross_entropy(FEATURES[index] @ model.T, LABELS[index], reduction="none")
    (weight.double() * losses).mean().backward()
    return model.grad


def run(sampler, steps: int, save_after: int | None = None, save_to: Path | None = None,
        slow_forward: float = 0.0):
    """Drives a (sharded or plain) sampler for `steps` batches the way the README loop does
    (select() on every step of a pool method); returns per step (step, batch index, batch
    weight, whether a pool, pick rows, pick weight, gradient averaged over the ranks). Saves
    the state after step `save_after`."""
    records = []
    rank, world = getattr(sampler, "rank", 0), getattr(sampler, "world_size", 1)
    # Every pool method, as the README's pool lines do (select() also answers a method
    # whose steps are all uniform, scores_pools False).
    pools = isinstance(getattr(sampler, "sampler", sampler), PoolSampler)
    while len(records) < steps:
        for draw in sampler:
            positions = rank + world * np.arange(len(draw.index))
            pick_rows, pick_weight = [], []
            pool = pools and sampler.is_pool(draw)
            if pools:  # records the pick before update() acknowledges the pool
                def score_rows(rows, draw=draw, positions=positions):
                    time.sleep(slow_forward)
                    return scores_of(draw.index[rows], draw.step, positions[rows])
                # The exact BiasedLoss gets an array, the others a callable.
                exact = isinstance(getattr(sampler, "sampler", sampler), BiasedLoss)
                pick = sampler.select(draw, score_rows(np.arange(len(draw.index))) if exact
                                      else score_rows)
                pick_rows, pick_weight = pick.rows.tolist(), pick.weight.tolist()
                index, weight = pick.index, pick.weight
            else:
                index, weight = torch.from_numpy(draw.index), torch.from_numpy(draw.weight)
            grad = gradient(index, weight)
            if world > 1:
                dist.all_reduce(grad)
                grad /= world
            sampler.update(draw, scores_of(index.numpy(), draw.step, np.zeros(len(index))))
            records.append((draw.step, draw.index.tolist(), draw.weight.tolist(),
                            pool, pick_rows, pick_weight,
                            grad.flatten().tolist()))
            if draw.step == save_after and save_to is not None:
                torch.save(sampler.state_dict(), save_to)
            if len(records) == steps:
                break
    return records


def digest(state) -> dict:
    """The numbers of a method state (nested dicts flattened), as JSON-able lists."""
    out = {}
    for key, value in state.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in digest(value).items()})
        elif isinstance(value, (np.ndarray, torch.Tensor, float, int)):
            out[key] = np.asarray(value).tolist()
    return out


def _worker(rank: int, world: int, init: str, out: str, kind: str, steps: int,
            resume: str | None, save_after: int | None, save_to: str | None) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        sampler = Sharded(KINDS[kind]())
        if resume:
            sampler.load_state_dict(torch.load(resume))
        records = run(sampler, steps, save_after,
                      Path(save_to) if save_to and rank == 0 else None,
                      slow_forward=0.002 * rank)
        Path(out, f"rank{rank}.json").write_text(json.dumps(
            {"records": records, "state": digest(sampler.state_dict()["method"])}))
    finally:
        dist.destroy_process_group()
def launch(world: int, tmp: Path, kind: str, steps: int, *, resume: Path | None = None,
           save_after: int | None = None, save_to: Path | None = None) -> list[dict]:
    out = tmp / f"w{world}-{len(list(tmp.iterdir()))}"
    out.mkdir()
    run_ranks(_worker, world, str(out / "init"), str(out), kind, steps,
              str(resume) if resume else None, save_after, str(save_to) if save_to else None)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


def assert_same_stream(ranks: list[dict], reference: list, *, timed: bool = False) -> None:
    """The ranks' records put together equal the one-process `reference` step by step:
    the global batch from the shards (rank r holds positions r::W), the global picks of pool
    steps from the ranks' picks, and the DDP-averaged gradient; all ranks end in the same
    state. `timed`: the state holds measured costs, compared between ranks only."""
    world = len(ranks)
    assert all(len(r["records"]) == len(reference) for r in ranks)
    for step, per_rank in enumerate(zip(*(r["records"] for r in ranks))):
        want_step, want_index, want_weight, pool, want_rows, want_pick_weight, want_grad = \
            reference[step]
        assert {rec[0] for rec in per_rank} == {want_step}, "ranks consumed different steps"
        index, weight = [None] * len(want_index), [None] * len(want_index)
        size = len(want_index)
        for rank, rec in enumerate(per_rank):
            mine = len(want_index[rank::world])
            if not pool and size % world and mine == 0:  # an empty shard: one weight-0 row
                assert rec[1] == want_index[:1] and rec[2] == [0.0]
                continue
            # Uneven plain shards: weights scaled by m_r W / b for DDP's mean of means.
            scale = mine * world / size if not pool and size % world else 1.0
            index[rank::world] = rec[1]
            weight[rank::world] = [w / scale for w in rec[2]]
        assert index == want_index
        np.testing.assert_allclose(weight, want_weight, rtol=1e-6)
        assert {rec[3] for rec in per_rank} == {pool}
        if pool:
            assert_picks_make_the_global_pick(per_rank, want_rows, want_pick_weight)
        for rec in per_rank:
            assert rec[6] == per_rank[0][6]  # one all_reduce: the same gradient everywhere
        # float32 weights: 1e-6 of the gradient's size (a wrong scale is off by 10% or more)
        np.testing.assert_allclose(per_rank[0][6], want_grad, rtol=0,
                                   atol=1e-6 * np.abs(want_grad).max())
    for other in ranks[1:]:
        assert other["state"] == ranks[0]["state"]


def assert_picks_make_the_global_pick(per_rank, want_rows, want_weight) -> None:
    """Rank r's pick rows are positions r::W of the pool; together, without the weight-0
    padding, they are the global pick, their weights scaled by M W / b (M: the padded
    length, the same on every rank)."""
    world, batch = len(per_rank), len(want_rows)
    padded = {len(rec[4]) for rec in per_rank}
    assert len(padded) == 1, "picks padded to different lengths"
    scale = padded.pop() * world / batch
    got = sorted((rank + world * row, w / scale) for rank, rec in enumerate(per_rank)
                 for row, w in zip(rec[4], rec[5]) if w != 0)
    want = sorted(zip(want_rows, want_weight))
    assert [r for r, _ in got] == [r for r, _ in want]
    np.testing.assert_allclose([w for _, w in got], [w for _, w in want], rtol=1e-6)


def reference_run(kind: str, steps: int) -> tuple[list, dict]:
    sampler = KINDS[kind]()
    return run(sampler, steps), digest(sampler.state_dict()["method"])


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("world", [2, 3])
def test_ranks_share_one_global_stream_and_all_updates(kind, world, tmp_path):
    steps = 25
    reference, state = reference_run(kind, steps)
    if kind.startswith("upper-bound"):
        assert sum(rec[3] for rec in reference) >= 10, "the test needs pool steps"
    ranks = launch(world, tmp_path, kind, steps)
    assert_same_stream(ranks, reference)
    # UpperBound records measured costs in every mode: compared between ranks only.
    timed = {"forward_cost", "step_cost"} if "upper-bound" in kind else set()
    got = {k: v for k, v in ranks[0]["state"].items() if k not in timed}
    want = {k: v for k, v in state.items() if k not in timed}
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-9, err_msg=key)
    if kind == "upper-bound-measured":
        # Every rank recorded the slowest rank's times (rank 1 sleeps in its forward).
        assert ranks[0]["state"]["forward_cost"] >= 0.002 / 36
        assert np.isfinite(ranks[0]["state"]["step_cost"])


@pytest.mark.parametrize("before, after, kind, cut", [
    (2, 3, "importance", 9), (3, 1, "importance", 9), (2, 3, "upper-bound", 9),
    (3, 1, "biased-exact", 9),
    (2, 3, "dynamic-pruning", 13),  # mid epoch 1, a pruned one with uneven batches
    (3, 2, "selective-backprop", 9), (2, 3, "selective-backprop-reweight", 9),
    (2, 1, "selective-backprop-stale", 9), (3, 2, "rho-loss", 9)])
def test_resume_at_another_world_size_continues_the_stream(before, after, kind, cut, tmp_path):
    steps = 24
    reference, _ = reference_run(kind, steps)
    state = tmp_path / "state.pt"
    head = launch(before, tmp_path, kind, cut + 1, save_after=cut, save_to=state)
    assert_same_stream(head, reference[:cut + 1])
    tail = launch(after, tmp_path, kind, steps - cut - 1, resume=state)
    assert_same_stream(tail, reference[cut + 1:])


def test_single_process_and_refusals():
    sharded = Sharded(ImportanceSampler(N, BATCH, seed=1), rank=0, world_size=1)
    assert run(sharded, 5) == run(ImportanceSampler(N, BATCH, seed=1), 5)
    with pytest.raises(TypeError, match="no select"):
        sharded.select(next(iter(sharded)), np.ones(BATCH))
    # A pool method whose steps are all uniform (the guarded UpperBound's default) answers
    # select() with the shard itself, as unwrapped: a loop written for pools runs unchanged.
    uniform_only = Sharded(UpperBound(N, BATCH, seed=1), rank=0, world_size=1)
    assert not uniform_only.scores_pools
    shard = next(iter(uniform_only))
    pick = uniform_only.select(shard, lambda rows: pytest.fail("no pool to score"))
    assert pick.index.tolist() == shard.index.tolist() and pick.weight.tolist() == [1.0] * BATCH
    uniform_only.update(shard, np.ones(BATCH))
    with pytest.raises(ValueError, match="exceeds the global batch"):
        Sharded(ImportanceSampler(N, 2), rank=0, world_size=3)
    with pytest.raises(ValueError, match="exceeds the pool size"):
        Sharded(BiasedLoss(N, 4, pool_size=2), rank=0, world_size=3)
    with pytest.raises(ValueError, match="outside"):
        Sharded(ImportanceSampler(N, BATCH), rank=3, world_size=3)
    with pytest.raises(TypeError, match="fastis sampler"):
        Sharded(torch.utils.data.BatchSampler(range(4), 2, False))
    shard = next(iter(Sharded(ImportanceSampler(N, BATCH, seed=1), rank=1, world_size=3)))
    whole = next(iter(ImportanceSampler(N, BATCH, seed=1)))
    assert isinstance(shard, Draw) and shard.step == whole.step == 0
    assert shard.index.tolist() == whole.index[1::3].tolist()


def test_pool_step_without_select_is_refused_and_changes_nothing():
    sharded = Sharded(BiasedLoss(N, BATCH, pool_size=40, switch=False, seed=6), rank=0,
                      world_size=1)
    draw = next(iter(sharded))
    before = sharded.state_dict()
    with pytest.raises(ValueError, match="call select"):
        sharded.update(draw, np.ones(BATCH))
    with pytest.raises(ValueError, match="shape"):
        sharded.select(draw, np.ones(3))
    after = sharded.state_dict()
    assert same_state(after, before)
    pick = sharded.select(draw, np.arange(40.0))
    assert sharded.select(draw, np.ones(40)) is pick  # repeated: the same answer
    with pytest.raises(ValueError, match="shape"):
        sharded.update(draw, np.ones(BATCH + 1))
    sharded.update(draw, np.ones(BATCH))
    assert sharded.step == 1
