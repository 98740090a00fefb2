"""Per-step cost of fastis.distributed.Sharded's collective at world size 2 on CPU (gloo).

Two processes each draw their shard of a global batch and call update(), which all-gathers
(position, index, score) and applies the whole batch; in the same run the script times the
wrapped sampler alone (one process, whole batch) and the bare all_gather of the same
payload, and prints the ratios. The same for a pool method (exact BiasedLoss, a pool of
4 x the batch every step): select() gathers the pool's scores, update() the picks' (two
collectives per step).

    python benchmarks/bench_distributed.py             # n = 1e6, global batch 256
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

import harness
import numpy as np
import torch
import torch.distributed as dist

from fastis.distributed import Sharded
from fastis.samplers import BiasedLoss, ImportanceSampler

SAMPLERS = {
    "ImportanceSampler": lambda n, batch: ImportanceSampler(n, batch, seed=0,
                                                            steps_per_epoch=10**6),
    "BiasedLoss exact, pool 4b": lambda n, batch: BiasedLoss(
        n, batch, pool_size=4 * batch, seed=0, steps_per_epoch=10**6),
}


def step_times(sampler, steps: int) -> list[float]:
    """Seconds per (draw [+ select] + update) step, after 50 warm-up steps."""
    pools = sampler.scores_pools
    iterator = iter(sampler)
    rng = np.random.default_rng(0)
    times = []
    for i in range(steps + 50):
        start = time.perf_counter()
        draw = next(iterator)
        trained = len(draw.index)
        if pools:
            trained = len(sampler.select(draw, rng.random(len(draw.index))).rows)
        sampler.update(draw, rng.random(trained))
        if i >= 50:
            times.append(time.perf_counter() - start)
    return times


def worker(rank: int, world: int, init: str, out: str, n: int, batch: int, steps: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    sharded = {name: step_times(Sharded(make(n, batch)), steps)
               for name, make in SAMPLERS.items()}
    payload = torch.zeros(-(-batch // world), 5, dtype=torch.float64)
    parts = [torch.empty_like(payload) for _ in range(world)]
    gather = []
    for i in range(steps + 50):
        start = time.perf_counter()
        dist.all_gather(parts, payload)
        if i >= 50:
            gather.append(time.perf_counter() - start)
    Path(out, f"rank{rank}.json").write_text(json.dumps({"sharded": sharded,
                                                         "all_gather": gather}))
    dist.destroy_process_group()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=256, help="global batch")
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args(argv[1:])
    env = harness.environment(argv)
    torch.set_num_threads(1)
    alone = {name: statistics.median(step_times(make(args.n, args.batch), args.steps))
             for name, make in SAMPLERS.items()}
    with tempfile.TemporaryDirectory() as tmp:
        context = multiprocessing.get_context("fork")
        procs = [context.Process(target=worker, args=(r, 2, f"{tmp}/init", tmp, args.n,
                                                      args.batch, args.steps)) for r in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        ranks = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(2)]
    sharded = {name: statistics.median(ranks[0]["sharded"][name] + ranks[1]["sharded"][name])
               for name in SAMPLERS}
    gather = statistics.median(ranks[0]["all_gather"] + ranks[1]["all_gather"])
    rows = []
    for name in SAMPLERS:
        base = alone[name]
        rows += [[f"{name}, 1 process, whole batch", f"{1e3 * base:.3f}", "1.00x"],
                 [f"Sharded({name}), world size 2 (per rank)", f"{1e3 * sharded[name]:.3f}",
                  f"{sharded[name] / base:.2f}x"]]
    rows.append(["bare all_gather of the ImportanceSampler payload (gloo)",
                 f"{1e3 * gather:.3f}", f"{gather / alone['ImportanceSampler']:.2f}x"])
    headers = ["step (draw [+ select] + update)", "ms (median)", "vs 1 process"]
    sections = [f"n = {args.n:,}, global batch {args.batch}, {args.steps:,} steps, 1 intra-op "
                "thread per process, both ranks on this machine.",
                harness.table(headers, rows)]
    print("\n\n".join(sections))
    path = harness.write_result("bench_distributed", "fastis distributed collective", env,
                                sections, record={"alone_s": alone, "sharded_s": sharded,
                                                  "all_gather_s": gather})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
