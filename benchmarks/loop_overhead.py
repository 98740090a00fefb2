#!/usr/bin/env python
"""The per-step cost of fastis's machinery in a training loop, on Fashion-MNIST at batch 128:
plain PyTorch loops (indexing the data tensors by a shuffled permutation, the fastest plain
loop; and a shuffled DataLoader, the common one) against the same model trained through
fastis's Uniform, ImportanceSampler and UpperBound (defaults; at its default the guarded
UpperBound's steps are all uniform, `scores_pools` is False and the loop skips the pool
lines: what a pool method costs where no pool step can pay) with per-example scores from the
fused op, for the MLP (784-256-128-10) and the demo's small CNN (fastis.training). Blocks of
25 steps of each loop alternate in one process, so that drifts in machine speed hit all
alike; the figure is the median step.

    python benchmarks/loop_overhead.py            # ~2 minutes
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import harness
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import fastis
from fastis import datasets
from fastis.data import take_rows
from fastis.training import ClassificationTask, image_task

BATCH, BLOCK = 128, 25


def endless(make: Callable[[], object]):
    """Batches of an iterable remade whenever it runs out (an epoch ends)."""
    while True:
        yield from make()


def loops(task: ClassificationTask) -> dict[str, Callable[[], None]]:
    """name -> one training step, all on one model (the weights' values do not matter)."""
    torch.manual_seed(0)
    model = task.model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x_all, y_all, n = task.train_x, task.train_y, task.num_examples

    def train_plain(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    rows = endless(lambda: torch.randperm(n).split(BATCH))
    shuffled = endless(lambda: DataLoader(task.dataset(), batch_size=BATCH, shuffle=True))

    def through(sampler) -> Callable[[], None]:
        batches = endless(lambda: sampler.loader(task.dataset()))

        def step() -> None:
            batch = next(batches)
            data, weight = batch.data, batch.weight
            if sampler.scores_pools:  # the README's pool lines
                pick = sampler.select(batch, lambda rows: task.scores(model,
                                                                      take_rows(data, rows)))
                data, weight = pick.take(data), pick.weight
            losses, scores = task.example_losses(model, data, weight)
            optimizer.zero_grad(set_to_none=True)
            losses.mean().backward()
            optimizer.step()
            sampler.update(batch, scores)
        return step

    def indexed() -> None:
        index = next(rows)
        # index_select: the fastest gather of rows (x_all[index] takes 4-5x longer).
        train_plain(x_all.index_select(0, index), y_all.index_select(0, index))

    return {"plain loop (tensor indexing)": indexed,
            "plain loop (DataLoader, shuffle)": lambda: train_plain(*next(shuffled)),
            "fastis Uniform + scores": through(fastis.samplers.Uniform(n, BATCH, seed=0)),
            "fastis ImportanceSampler + scores": through(
                fastis.samplers.ImportanceSampler(n, BATCH, seed=0)),
            "fastis UpperBound (guarded) + scores": through(
                fastis.samplers.UpperBound(n, BATCH, seed=0))}


def measure(task: ClassificationTask, steps: int) -> dict[str, float]:
    steps_of = loops(task)
    times: dict[str, list[float]] = {name: [] for name in steps_of}
    for block in range(steps // BLOCK + 1):
        for name, step in steps_of.items():
            for _ in range(BLOCK):
                start = time.perf_counter()
                step()
                if block:  # the first block warms up
                    times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="Fashion-MNIST folder (default: the Debian package's)")
    parser.add_argument("--steps", type=int, default=400, help="timed steps per loop and model")
    parser.add_argument("--models", nargs="*", default=["mlp", "cnn"])
    args = parser.parse_args(argv[1:])
    env = harness.environment(argv)
    split = datasets.load_fashion_mnist(args.data)
    results, sections = {}, []
    for model in args.models:
        medians = measure(image_task(split, model=model), args.steps)
        results[model] = medians
        base = medians["plain loop (tensor indexing)"]
        rows = [[name, f"{1e3 * v:.3f}", f"{100 * (v / base - 1):+.1f}%"]
                for name, v in medians.items()]
        sections += [f"## {model}: median ms per step (batch {BATCH})",
                     harness.table(["loop", "ms / step", "vs plain (tensor indexing)"], rows)]
    targets = [harness.Target(
        f"{model}: ImportanceSampler + scores vs plain loop",
        lambda r, m=model: 100 * (r[m]["fastis ImportanceSampler + scores"]
                                  / r[m]["plain loop (tensor indexing)"] - 1),
        3.0, "%", at_least=False) for model in args.models]
    sections.insert(0, harness.target_table(targets, results))
    print("\n\n".join(sections))
    path = harness.write_result("loop_overhead", "fastis per-step loop overhead", env,
                                sections, record={"median_s": results})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
