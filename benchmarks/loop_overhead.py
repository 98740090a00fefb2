#!/usr/bin/env python
"""The per-step cost of fastis's machinery in a training loop: a plain PyTorch loop
(shuffled DataLoader, F.cross_entropy) against the same model trained through fastis's
Uniform and ImportanceSampler with per-example scores, on Fashion-MNIST (the demo's small
CNN, batch 128). Blocks of 50 steps of each loop alternate in one process, so that drifts
in machine speed hit all alike.

    python benchmarks/loop_overhead.py            # ~1 minute
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import harness
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import fastis
from fastis import datasets
from fastis.demo import ImageTask


def measure_overhead(args: argparse.Namespace, device: torch.device, steps: int
                     ) -> dict[str, float]:
    """Median seconds per training step on Fashion-MNIST: a plain PyTorch loop (shuffled
    DataLoader, no fastis), fastis Uniform with scoring and update, and ImportanceSampler;
    blocks of 50 steps of each alternate so that drifts in machine speed hit all alike."""
    task = ImageTask(datasets.load_fashion_mnist(args.data), device,
                     mean=datasets.FASHION_MNIST_MEAN, std=datasets.FASHION_MNIST_STD)
    torch.manual_seed(0)
    model = task.model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    plain = iter(DataLoader(task.dataset(), batch_size=128, shuffle=True, drop_last=True))
    loops = {}
    for name, sampler in (("fastis Uniform + scores", fastis.samplers.Uniform(
            task.num_examples, 128, seed=0)), ("fastis ImportanceSampler + scores",
            fastis.samplers.ImportanceSampler(task.num_examples, 128, floor=0.1, seed=0,
                                              steps_per_epoch=10**6))):
        loops[name] = (sampler, iter(DataLoader(fastis.data.Indexed(task.dataset()),
                                                batch_sampler=sampler)))
    times: dict[str, list[float]] = {"plain PyTorch loop": [], **{k: [] for k in loops}}
    for block in range(steps // 50 + 1):
        for name in times:
            for _ in range(50):
                start = time.perf_counter()
                if name == "plain PyTorch loop":
                    x, y = next(plain)
                    loss = F.cross_entropy(model(x), y)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                else:
                    sampler, iterator = loops[name]
                    batch = next(iterator)
                    losses, scores = task.example_losses(model, batch.data, batch.weight)
                    optimizer.zero_grad()
                    losses.mean().backward()
                    optimizer.step()
                    sampler.update(batch, scores)
                if block:  # the first block warms up
                    times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="Fashion-MNIST folder (default: the Debian package's)")
    parser.add_argument("--steps", type=int, default=300, help="timed steps per loop")
    args = parser.parse_args(argv[1:])
    env = harness.environment(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    medians = measure_overhead(args, device, args.steps)
    base = medians["plain PyTorch loop"]
    rows = [[name, f"{1e3 * v:.2f}", f"{100 * (v / base - 1):+.1f}%"]
            for name, v in medians.items()]
    sections = ["Fashion-MNIST, the demo's small CNN, batch 128, median ms per step.",
                harness.table(["loop", "ms / step", "vs plain"], rows)]
    print("\n\n".join(sections))
    path = harness.write_result("loop_overhead", "fastis per-step loop overhead", env,
                                sections, record={"median_s": medians})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
