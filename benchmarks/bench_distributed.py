"""Per-step cost of fastis.distributed.Sharded's collective at world size 2 on CPU (gloo).

Two processes each draw their shard of a global batch and call update(), which all-gathers
(position, index, score) and applies the whole batch; in the same run the script times the
wrapped sampler alone (one process, whole batch) and the bare all_gather of the same
payload, and prints the ratios.

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

import benchlib
import numpy as np
import torch
import torch.distributed as dist

from fastis.distributed import Sharded
from fastis.samplers import ImportanceSampler


def step_times(sampler, steps: int) -> list[float]:
    """Seconds per (draw + update) step, after 50 warm-up steps."""
    iterator = iter(sampler)
    rng = np.random.default_rng(0)
    times = []
    for i in range(steps + 50):
        start = time.perf_counter()
        draw = next(iterator)
        sampler.update(draw, rng.random(len(draw.index)))
        if i >= 50:
            times.append(time.perf_counter() - start)
    return times


def worker(rank: int, world: int, init: str, out: str, n: int, batch: int, steps: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    sharded = step_times(Sharded(ImportanceSampler(n, batch, seed=0, steps_per_epoch=10**6)),
                         steps)
    payload = torch.zeros(-(-batch // world), 4, dtype=torch.float64)
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
    parser.add_argument("--out", help="Markdown file or folder (default benchmarks/results/)")
    args = parser.parse_args(argv[1:])
    env = benchlib.environment(argv)
    torch.set_num_threads(1)
    alone = statistics.median(step_times(
        ImportanceSampler(args.n, args.batch, seed=0, steps_per_epoch=10**6), args.steps))
    with tempfile.TemporaryDirectory() as tmp:
        context = multiprocessing.get_context("fork")
        procs = [context.Process(target=worker, args=(r, 2, f"{tmp}/init", tmp, args.n,
                                                      args.batch, args.steps)) for r in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        ranks = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(2)]
    sharded = statistics.median(ranks[0]["sharded"] + ranks[1]["sharded"])
    gather = statistics.median(ranks[0]["all_gather"] + ranks[1]["all_gather"])
    rows = [["ImportanceSampler, 1 process, whole batch", f"{1e3 * alone:.3f}", "1.00x"],
            ["Sharded(ImportanceSampler), world size 2 (per rank)", f"{1e3 * sharded:.3f}",
             f"{sharded / alone:.2f}x"],
            ["bare all_gather of the same payload (gloo)", f"{1e3 * gather:.3f}",
             f"{gather / alone:.2f}x"]]
    headers = ["step (draw + update)", "ms (median)", "vs 1 process"]
    print(benchlib.render_text(headers, rows))
    md_path, json_path = benchlib.output_paths(args.out, "bench_distributed")
    md = ["# fastis distributed collective benchmark", ""]
    md += [f"- **{k}**: `{v}`" if k == "command" else f"- **{k}**: {v}" for k, v in env.items()]
    md += [f"- **n**: {args.n}, **global batch**: {args.batch}, **steps**: {args.steps}, "
           "1 intra-op thread per process, both ranks on this machine", "",
           benchlib.render_md(headers, rows)]
    md_path.write_text("\n".join(md) + "\n")
    json_path.write_text(json.dumps({"env": env, "alone_s": alone, "sharded_s": sharded,
                                     "all_gather_s": gather}, indent=1))
    print(f"\nwrote {md_path} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
