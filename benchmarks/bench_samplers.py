"""Per-step bookkeeping of every fastis sampler against a small CNN's training step on CPU.

Bookkeeping = what a sampler adds to a training step: draw the next batch, choose from the
pool where the method has one (`select`, scores given), and `update` with the trained
examples' scores. In the same run, the script times one training step (forward, backward,
SGD) of the demo's small CNN (fastis.demo.SmallCNN) on Fashion-MNIST-sized images at the
same batch size, and fastis's score op on its logits, and prints each sampler's cost as a
share of that step.

    python benchmarks/bench_samplers.py            # n = 1e6, batch 128
    python benchmarks/bench_samplers.py --quick    # fewer steps, no file written
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Callable

import benchlib
import numpy as np
import torch
from torch import nn

import fastis
from fastis import samplers
from fastis.demo import SmallCNN


def factories(n: int, b: int) -> dict[str, Callable[[], samplers.BatchSampler]]:
    labels = np.random.default_rng(0).integers(0, 10, n)
    steps = 10**9  # one long epoch: the timing loop never restarts the iterator

    def upper_bound_on() -> samplers.UpperBound:
        sampler = samplers.UpperBound(n, b, tau_th=1.0, steps_per_epoch=steps, seed=0)
        sampler.tau = 10.0  # every step a pool of 3b, resampled
        return sampler

    return {
        "Uniform": lambda: samplers.Uniform(n, b, seed=0),
        "SoftRandom (rate 0.5)": lambda: samplers.SoftRandom(n, b, rate=0.5, seed=0),
        "ImportanceSampler": lambda: samplers.ImportanceSampler(
            n, b, floor=0.1, steps_per_epoch=steps, seed=0),
        "UpperBound, uniform steps": lambda: samplers.UpperBound(
            n, b, steps_per_epoch=steps, seed=0),
        "UpperBound, importance steps": upper_bound_on,
        "BiasedLoss exact (pool 256)": lambda: samplers.BiasedLoss(
            n, b, steps_per_epoch=steps, seed=0),
        "BiasedLoss + PerClassGaussian (pool 2048)": lambda: samplers.BiasedLoss(
            n, b, predictor="gaussian", labels=labels, steps_per_epoch=steps, seed=0),
        "BiasedLoss + LSTM predictor (pool 2048)": lambda: samplers.BiasedLoss(
            n, b, predictor="lstm", labels=labels, steps_per_epoch=steps, seed=0),
        "RAS": lambda: samplers.RAS(n, b, groups=labels, steps_per_epoch=steps, seed=0),
        "HighLossBatches (delta 0.5)": lambda: samplers.HighLossBatches(n, b, seed=0),
    }


def time_sampler(make: Callable[[], samplers.BatchSampler], steps: int,
                 warmup: int) -> list[float]:
    """Seconds per step of draw + select + update, one sample per step."""
    sampler = make()
    rng = np.random.default_rng(1)
    largest = max(sampler.batch_size, getattr(sampler, "pool_size", 0))
    scores = torch.from_numpy(rng.random(largest).astype(np.float32))
    times: list[float] = []
    iterator = iter(sampler)
    while len(times) < steps + warmup:
        start = time.perf_counter()
        draw = next(iterator, None)
        if draw is None:  # an epoch ended (Uniform, SoftRandom, HighLossBatches)
            iterator = iter(sampler)
            continue
        trained = len(draw)
        if hasattr(sampler, "select"):
            trained = len(sampler.select(draw, scores[: len(draw)]).rows)
        sampler.update(draw, scores[:trained])
        times.append(time.perf_counter() - start)
    return times[warmup:]


def time_cnn_steps(b: int, steps: int, warmup: int) -> tuple[list[float], list[float]]:
    """Seconds per training step of the small CNN, and of fastis's score op on each step's
    logits (timed on its own: the difference of two noisy step medians would hide it)."""
    torch.manual_seed(0)
    model = SmallCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(b, 1, 28, 28), torch.randint(0, 10, (b,))
    weight = torch.ones(b)
    step_times, score_times = [], []
    for i in range(steps + warmup):
        start = time.perf_counter()
        logits = model(x)
        loss = (nn.functional.cross_entropy(logits, y, reduction="none") * weight).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scored = time.perf_counter()
        fastis.ops.cross_entropy_scores(logits.detach(), y)
        if i >= warmup:
            step_times.append(scored - start)
            score_times.append(time.perf_counter() - scored)
    return step_times, score_times


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="data set size")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2000, help="timed steps per sampler")
    parser.add_argument("--quick", action="store_true", help="200 steps, nothing written")
    parser.add_argument("--out", help="Markdown file or folder (default benchmarks/results/)")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv[1:])
    steps = 200 if args.quick else args.steps
    env = benchlib.environment(argv)
    step_times, score_times = time_cnn_steps(args.batch, max(50, steps // 10), 10)
    cnn, score_op = statistics.median(step_times), statistics.median(score_times)
    print(f"small CNN training step, batch {args.batch}: {1e3 * cnn:.2f} ms; "
          f"fastis.ops.cross_entropy_scores on its logits: {1e3 * score_op:.3f} ms",
          file=sys.stderr)
    headers = ["sampler", "ms / step (median)", "p90 ms", "meets 0.2 ms", "% of CNN step"]
    rows, record = [], {}
    for name, make in factories(args.n, args.batch).items():
        times = time_sampler(make, steps, warmup=max(20, steps // 20))
        median, p90 = statistics.median(times), float(np.percentile(times, 90))
        record[name] = {"median_s": median, "p90_s": p90}
        rows.append([name, f"{1e3 * median:.3f}", f"{1e3 * p90:.3f}",
                     "yes" if median <= 2e-4 else "no", f"{100 * median / cnn:.2f}%"])
        print(f"{name}: {1e3 * median:.3f} ms", file=sys.stderr)
    rows.append(["(score op on the CNN's logits)", f"{1e3 * score_op:.3f}",
                 f"{1e3 * float(np.percentile(score_times, 90)):.3f}", "",
                 f"{100 * score_op / cnn:.2f}%"])
    table = benchlib.render_text(headers, rows)
    print(table)
    if args.quick:
        return 0
    md_path, json_path = benchlib.output_paths(args.out, "bench_samplers")
    md = ["# fastis sampler bookkeeping benchmark", ""]
    md += [f"- **{k}**: `{v}`" if k == "command" else f"- **{k}**: {v}" for k, v in env.items()]
    md += [f"- **n**: {args.n}, **batch**: {args.batch}, **timed steps**: {steps}",
           f"- **small CNN step** (forward + backward + SGD, batch {args.batch}): "
           f"{1e3 * cnn:.2f} ms; the score op on its logits: {1e3 * score_op:.3f} ms", "",
           benchlib.render_md(headers, rows), "", NOTES]
    md_path.write_text("\n".join(md) + "\n")
    json_path.write_text(json.dumps({"env": env, "cnn_s": cnn, "score_op_s": score_op,
                                     "samplers": record}, indent=1))
    print(f"\nwrote {md_path} and {json_path}")
    return 0


NOTES = """Notes: a step's bookkeeping is next(iterator) + select() (pool methods, scores
given as a tensor) + update() with the trained examples' scores; scores are random. The
model forward that scores a pool is the method's own cost, not bookkeeping, and is not
included. The LSTM predictor's time is a small model's forward on the pool and one Adam step
per update. The CNN step (forward, backward, SGD) is timed in the same process; the last row is
fastis.ops.cross_entropy_scores on each step's logits, timed on its own."""


if __name__ == "__main__":
    sys.exit(main(sys.argv))
