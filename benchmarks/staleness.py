"""Staleness: does re-scoring examples outside the training step pay for its forwards?

ImportanceSampler refreshes an example's score only when the example is drawn. The
alternative measured here spends a budget of no-grad forwards each step on R examples drawn
uniformly and feeds their fresh scores back with `sampler.observe()`. On the many-epoch MLP
of the time-to-accuracy suite (25,000 Fashion-MNIST images, equal wall-clock, step decay),
uniform sampling, the guarded ImportanceSampler, and the same with R = 128 and R = 512
train alternately, 20 steps each in turn (fastis.training.race); three seeds.

    python benchmarks/staleness.py            # ~5 minutes
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any

import harness
import numpy as np
import torch

from fastis import datasets, samplers
from fastis.training import Budget, ClassificationTask, Training, image_task, race

BATCH = 128


class Refreshing:
    """A sampler whose update() also re-scores `budget` uniformly drawn examples with the
    model (no grad) and observes their scores: the budgeted re-scoring policy."""

    def __init__(self, sampler: Any, task: ClassificationTask, model: torch.nn.Module,
                 budget: int, seed: int) -> None:
        self.sampler, self.task, self.model, self.budget = sampler, task, model, budget
        self.rng = np.random.default_rng(seed)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sampler, name)

    def update(self, batch: Any, scores: Any) -> None:
        self.sampler.update(batch, scores)
        index = torch.from_numpy(self.rng.integers(0, self.task.num_examples, self.budget))
        with torch.no_grad():
            fresh = self.task.scores(self.model, (self.task.train_x[index],
                                                  self.task.train_y[index]))
        self.sampler.observe(index.numpy(), fresh)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--data", help="Fashion-MNIST folder (default: the Debian package's)")
    args = parser.parse_args(argv[1:])
    torch.set_num_threads(1)
    env = harness.environment(argv)
    split = datasets.load_fashion_mnist(args.data)
    budget = Budget(seconds=args.seconds, evaluations=8)
    labels = ["uniform", "importance", "importance + re-score 128", "importance + re-score 512"]
    finals: dict[str, list[tuple[float, float, int]]] = {label: [] for label in labels}
    for seed in range(args.seeds):
        task = image_task(split, model="mlp", train_examples=25000, seed=seed)
        trainings = []
        for label in labels:
            torch.manual_seed(seed)
            model = task.model()
            n = task.num_examples
            sampler: Any = (samplers.Uniform(n, BATCH, seed=seed) if label == "uniform"
                            else samplers.ImportanceSampler(n, BATCH, seed=seed))
            if "re-score" in label:
                sampler = Refreshing(sampler, task, model, int(label.split()[-1]), seed)
            trainings.append(Training(task, sampler, label, budget=budget, lr=0.05,
                                      seed=seed, model=model))
        for label, run in zip(labels, race(trainings)):
            finals[label].append((run.metrics["train_loss"][-1],
                                  run.metrics["test_accuracy"][-1], run.steps[-1]))
            print(f"seed {seed} {label}: {run.steps[-1]} steps, loss "
                  f"{run.metrics['train_loss'][-1]:.4f}, test "
                  f"{100 * run.metrics['test_accuracy'][-1]:.2f}%", file=sys.stderr, flush=True)
    base_loss = statistics.mean(f[0] for f in finals["uniform"])
    base_acc = statistics.mean(f[1] for f in finals["uniform"])
    rows = [[label, f"{statistics.mean(f[2] for f in v):.0f}",
             f"{statistics.mean(f[0] for f in v):.4f}",
             f"{statistics.mean(f[0] for f in v) / base_loss:.2f}x",
             f"{100 * statistics.mean(f[1] for f in v):.2f}",
             f"{100 * (statistics.mean(f[1] for f in v) - base_acc):+.2f}"]
            for label, v in finals.items()]
    sections = [f"MLP 784-256-128-10 on 25,000 Fashion-MNIST images, {args.seconds:g} s of "
                f"training per run, {args.seeds} seeds (means), batch {BATCH}, torch 1 thread.",
                harness.table(["variant", "steps", "train loss", "vs uniform",
                               "test accuracy %", "points vs uniform"], rows)]
    print("\n\n".join(sections))
    path = harness.write_result("staleness", "fastis staleness policies", env, sections,
                                record={"finals": finals})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
