"""Soak test: many steps of draw + update on one sampler, with flat memory and no drift.

Runs ImportanceSampler (n = 1e6, batch 128, a SumTree underneath) for --steps steps (default
10^7), feeding scores that change every step. Every --every steps it records the process's
resident memory; at the end it checks the sampler against quantities recomputed from
scratch: the tree's total against an exact (math.fsum) sum of its leaves, the staleness sum
against the stamps, the seen count against the seen flags. Results go to benchmarks/results/.

    python benchmarks/soak_samplers.py                  # 10^7 steps, ~20 minutes here
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import time
from pathlib import Path

import harness
import numpy as np

from fastis.samplers import ImportanceSampler


def rss_mib() -> float:
    """Current resident set size (MiB), from /proc (Linux); falls back to the peak."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * resource.getpagesize() / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10**7)
    parser.add_argument("--n", type=int, default=10**6)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--every", type=int, default=10**6, help="memory sample period")
    args = parser.parse_args(argv[1:])
    env = harness.environment(argv)
    sampler = ImportanceSampler(args.n, args.batch, floor=0.05, steps_per_epoch=10**12, seed=0)
    iterator = iter(sampler)
    samples = [(0, rss_mib())]
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        draw = next(iterator)
        # Scores spanning six orders of magnitude, different at every step.
        sampler.update(draw, np.exp((draw.index % 97) / 7.0 - (step % 11)))
        if step % args.every == 0:
            samples.append((step, rss_mib()))
            print(f"{step:>11,} steps  {samples[-1][1]:.1f} MiB  "
                  f"{time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - start
    leaves = sampler._tree.weights().numpy()
    exact_total = math.fsum(leaves.tolist())
    stamps = sampler._stamp
    checks = {
        "tree total vs exact sum of leaves (relative)":
            abs(sampler._tree.total - exact_total) / exact_total,
        "staleness sum vs stamps": float(sampler._stamp_sum - stamps[stamps >= 0].sum()),
        "seen count vs flags": float(sampler._num_seen - int(sampler._seen.sum())),
        "acknowledged steps vs steps run": float(sampler.step - args.steps),
    }
    growth = samples[-1][1] - samples[1][1] if len(samples) > 1 else 0.0
    sections = [
        f"{args.steps:,} steps of draw + update, n = {args.n:,}, batch {args.batch}; "
        f"{seconds:.0f} s ({1e6 * seconds / args.steps:.1f} µs per step).",
        harness.table(["steps", "resident MiB"], [[f"{s:,}", f"{m:.1f}"] for s, m in samples]),
        f"Resident memory from the first sample to the last: {growth:+.1f} MiB.",
        harness.table(["check", "value"], [[k, f"{v:.3g}"] for k, v in checks.items()])]
    print("\n\n".join(sections))
    harness.write_result("soak_samplers", "fastis sampler soak test", env, sections,
                         record={"memory": samples, "checks": checks, "seconds": seconds})
    drift_free = checks["tree total vs exact sum of leaves (relative)"] < 1e-12 and all(
        v == 0 for k, v in checks.items() if "relative" not in k)
    return 0 if drift_free else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
