"""`fastis demo`: each sampler against uniform sampling, on Fashion-MNIST, at equal wall-clock.

A small CNN is trained from the same initial weights with uniform sampling and with each
method, for the same training time each (data loading, sampling, scoring and the optimizer
step all count; evaluation does not). At evenly spaced times the run measures the loss on a
fixed subset of the training set and the accuracy on a fixed subset of the test set; at the
end, the accuracy on the whole test set. The table reports, for each method, when it first
reached uniform sampling's final accuracy (on the same test subset) and the speed-up that
gives; a method that never reached it says so.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import fastis
from fastis import datasets, samplers
from fastis.data import take_rows


class SmallCNN(nn.Module):
    """Two 3x3 conv layers (16 and 32 channels, each followed by 2x2 max-pooling) and two
    linear layers, for 28 x 28 grey images: ~14 ms per training step of 128 on 2 CPU cores."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class ImageTask:
    """Classifying 28 x 28 grey images (Fashion-MNIST, MNIST) with SmallCNN: the data on the
    run's device, the per-example losses and scores of a batch, and the tracked metrics
    (loss on a fixed training subset, accuracy on a fixed test subset)."""

    metric = "accuracy"

    def __init__(self, split: datasets.Split, device: torch.device, *, mean: float,
                 std: float, probe: int = 2500, seed: int = 0) -> None:
        def images(raw: np.ndarray) -> torch.Tensor:
            x = torch.from_numpy(raw).float().div_(255).sub_(mean).div_(std)
            return x.unsqueeze(1).to(device)

        self.train_x, self.test_x = images(split.train_images), images(split.test_images)
        self.train_y = torch.from_numpy(split.train_labels).to(device)
        self.test_y = torch.from_numpy(split.test_labels).to(device)
        self.groups = split.train_labels  # side information for RAS: the class
        self.classes = int(split.train_labels.max()) + 1
        self.initial_loss = math.log(self.classes)  # an untrained model's loss
        self.num_examples = len(split.train_labels)
        rng = np.random.default_rng(seed)
        pick = lambda n: torch.from_numpy(np.sort(rng.choice(n, min(probe, n), replace=False)))  # noqa: E731
        self.train_probe, self.test_probe = pick(self.num_examples), pick(len(self.test_y))

    def dataset(self) -> TensorDataset:
        return TensorDataset(self.train_x, self.train_y)

    def model(self) -> nn.Module:
        return SmallCNN(self.classes).to(self.train_x.device)

    def example_losses(self, model: nn.Module, data: Any, weight: torch.Tensor
                       ) -> tuple[torch.Tensor, fastis.ops.Scores]:
        """(weight * cross-entropy per example [b], with autograd; the Scores [b] of the
        unweighted loss), from one fused pass over the logits."""
        x, y = data
        return fastis.ops.cross_entropy_with_scores(model(x), y, weight=weight.to(x.device))

    def scores(self, model: nn.Module, data: Any) -> fastis.ops.Scores:
        x, y = data
        return fastis.ops.cross_entropy_scores(model(x), y)

    @torch.no_grad()
    def _evaluate(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                  rows: torch.Tensor) -> tuple[float, float]:
        """(mean loss, accuracy) on rows of (x, y), 1,000 at a time."""
        loss, correct = 0.0, 0
        for chunk in rows.split(1000):
            logits = model(x[chunk.to(x.device)])
            target = y[chunk.to(y.device)]
            loss += F.cross_entropy(logits, target, reduction="sum").item()
            correct += int((logits.argmax(1) == target).sum())
        return loss / len(rows), correct / len(rows)

    def track(self, model: nn.Module) -> tuple[float, float]:
        """(loss on the training probe, accuracy on the test probe)."""
        loss = self._evaluate(model, self.train_x, self.train_y, self.train_probe)[0]
        return loss, self._evaluate(model, self.test_x, self.test_y, self.test_probe)[1]

    def final_metric(self, model: nn.Module) -> float:
        """Accuracy on the whole test set."""
        return self._evaluate(model, self.test_x, self.test_y, torch.arange(len(self.test_y)))[1]


def method_factories(task: Any) -> dict[str, Callable[..., Any]]:
    """Name -> sampler(num_examples, batch_size, seed, **options): each method at its
    defaults unless options say otherwise."""
    return {
        "uniform": lambda n, b, seed, **kw: samplers.Uniform(n, b, seed=seed, **kw),
        "soft-random": lambda n, b, seed, **kw: samplers.SoftRandom(
            n, b, seed=seed, **{"rate": 0.5, **kw}),
        # Unseen examples start at an untrained model's loss; the floor keeps every weight
        # below 10.
        "importance": lambda n, b, seed, **kw: samplers.ImportanceSampler(
            n, b, seed=seed, **{"initial_score": task.initial_loss, "floor": 0.1, **kw}),
        "upper-bound": lambda n, b, seed, **kw: samplers.UpperBound(n, b, seed=seed, **kw),
        "biased-loss": lambda n, b, seed, **kw: samplers.BiasedLoss(n, b, seed=seed, **kw),
        "ras": lambda n, b, seed, **kw: samplers.RAS(n, b, groups=task.groups, seed=seed, **kw),
        "high-loss-batches": lambda n, b, seed, **kw: samplers.HighLossBatches(
            n, b, seed=seed, **kw),
    }


METHODS = ("uniform", "soft-random", "importance", "upper-bound", "biased-loss", "ras",
           "high-loss-batches")


@dataclass
class Curve:
    """One run: evaluation points (training seconds, steps, training-probe loss, test-probe
    metric), and the final metric on the whole test set."""

    method: str
    seconds: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    final_test_accuracy: float = math.nan

    def first_time_reaching(self, accuracy: float) -> float:
        """Training seconds at the first evaluation with at least `accuracy`, or NaN."""
        return next((s for s, a in zip(self.seconds, self.test_accuracy) if a >= accuracy),
                    math.nan)


def train(task: Any, method: str, make_sampler: Callable[..., Any], *, seconds: float,
          evaluations: int, batch_size: int, lr: float, seed: int,
          progress: Callable[[float], None] | None = None) -> Curve:
    """Trains a fresh model of the task (initial weights from `seed`) for `seconds` of
    training time with the method's sampler (SGD, momentum 0.9, cosine learning rate over
    the time); returns its curve."""
    torch.manual_seed(seed)
    model = task.model()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    sampler = make_sampler(task.num_examples, batch_size, seed)
    loader = sampler.loader(task.dataset())
    curve = Curve(method)
    clock, steps, next_eval = 0.0, 0, seconds / evaluations

    def record() -> None:
        loss, metric = task.track(model)
        curve.seconds.append(clock)
        curve.steps.append(steps)
        curve.train_loss.append(loss)
        curve.test_accuracy.append(metric)

    record()
    while clock < seconds:
        iterator = iter(loader)
        while clock < seconds:
            start = time.perf_counter()
            batch = next(iterator, None)
            if batch is None:
                break  # the epoch ended: a new iterator starts the next one
            # The learning rate follows a cosine from lr to 0 over the training time, the
            # same schedule in wall-clock for every method: the final accuracies are then
            # settled values, not points of a noisy curve.
            for group in optimizer.param_groups:
                group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * min(clock / seconds, 1.0)))
            data, weight = batch.data, batch.weight
            if sampler.scores_pools:  # pool methods: score the pool, keep b of it
                pick = sampler.select(batch, pool_scorer(task, model, data))
                data, weight = pick.take(data), pick.weight
            losses, scores = task.example_losses(model, data, weight)
            optimizer.zero_grad(set_to_none=True)
            losses.mean().backward()
            optimizer.step()
            sampler.update(batch, scores)
            steps += 1
            elapsed = time.perf_counter() - start
            clock += elapsed
            if progress is not None:
                progress(elapsed)
            if clock >= next_eval:
                record()
                next_eval += seconds / evaluations
    if curve.seconds[-1] < clock:
        record()
    curve.final_test_accuracy = task.final_metric(model)
    return curve


def pool_scorer(task: Any, model: nn.Module, data: Any
                ) -> Callable[[torch.Tensor], fastis.ops.Scores]:
    """The scores of rows of a pool (select() calls it under no_grad, in chunks)."""
    return lambda rows: task.scores(model, take_rows(data, rows))


def summary_rows(curves: list[Curve]) -> list[dict[str, Any]]:
    """Per method: steps, final train-subset loss, whole-test accuracy, time to uniform's
    final test-subset accuracy and the speed-up over uniform."""
    uniform = next(c for c in curves if c.method == "uniform")
    target = uniform.test_accuracy[-1]
    uniform_time = uniform.first_time_reaching(target)
    rows = []
    for c in curves:
        reach = c.first_time_reaching(target)
        rows.append({"method": c.method, "steps": c.steps[-1], "train_loss": c.train_loss[-1],
                     "test_accuracy": c.final_test_accuracy, "seconds_to_target": reach,
                     "speedup": uniform_time / reach if reach > 0 else math.nan,
                     "target": target})
    return rows


def render_table(rows: list[dict[str, Any]], markdown: bool = False) -> str:
    headers = ["method", "steps", "train loss", "test acc", "time to uniform's acc",
               "speed-up"]
    cells = [[r["method"], str(r["steps"]), f"{r['train_loss']:.4f}",
              f"{100 * r['test_accuracy']:.2f}%",
              "not reached" if math.isnan(r["seconds_to_target"])
              else f"{r['seconds_to_target']:.1f} s",
              "-" if math.isnan(r["speedup"]) else f"{r['speedup']:.2f}x"] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells])
    widths = [max(len(x) for x in col) for col in zip(headers, *cells)]
    fmt = lambda row: "  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(headers), "-" * len(fmt(headers)), *map(fmt, cells)])


def plot(curves: list[Curve], path: Path) -> None:
    """Training loss (log scale) and test accuracy against training seconds, one line per
    method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for c in curves:
        style = {"linewidth": 2.4, "color": "black"} if c.method == "uniform" else {}
        left.plot(c.seconds, c.train_loss, label=c.method, **style)
        right.plot(c.seconds, [100 * a for a in c.test_accuracy], label=c.method, **style)
    left.set(xlabel="training time (s)", ylabel="training loss (fixed subset)", yscale="log")
    right.set(xlabel="training time (s)", ylabel="test accuracy (%, fixed subset)")
    final = [100 * a for c in curves for a in c.test_accuracy[len(c.test_accuracy) // 2:]]
    right.set_ylim(min(final) - 2, max(final) + 1)
    for axis in (left, right):
        axis.grid(alpha=0.3)
    right.legend(fontsize=8, loc="lower right")
    fig.suptitle("fastis demo: Fashion-MNIST, small CNN, equal training time per method")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclass
class DemoConfig:
    data: str | None = None
    seconds: float = 17.0  # training time per method
    methods: tuple[str, ...] = METHODS
    batch_size: int = 128
    lr: float = 0.05
    evaluations: int = 8
    probe: int = 2500
    seed: int = 0
    out: str = "fastis-demo"
    device: str | None = None
    quiet: bool = False


def run(config: DemoConfig, split: datasets.Split | None = None) -> list[dict[str, Any]]:
    """The whole demo: loads the data (unless given), trains every method, prints the
    table, writes demo.png, demo.md and demo.json into config.out. Returns the table rows."""
    from tqdm.auto import tqdm

    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    split = split if split is not None else datasets.load_fashion_mnist(config.data)
    task = ImageTask(split, device, mean=datasets.FASHION_MNIST_MEAN,
                     std=datasets.FASHION_MNIST_STD, probe=config.probe, seed=config.seed)
    factories = method_factories(task)
    methods = ("uniform", *[m for m in config.methods if m != "uniform"])
    curves = []
    for method in methods:
        with tqdm(total=round(config.seconds, 1), desc=f"{method:>17}", unit="s",
                  disable=config.quiet, mininterval=0.5,
                  bar_format="{desc} {bar} {n:.0f}/{total:.0f} s") as bar:
            curves.append(train(task, method, factories[method], seconds=config.seconds,
                                evaluations=config.evaluations, batch_size=config.batch_size,
                                lr=config.lr, seed=config.seed,
                                progress=lambda s: bar.update(min(s, bar.total - bar.n))))
    rows = summary_rows(curves)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    plot(curves, out / "demo.png")
    header = (f"Fashion-MNIST, SmallCNN, batch {config.batch_size}, {config.seconds:g} s of "
              f"training per method on {device.type}; target: uniform's final accuracy on "
              f"{len(task.test_probe)} test images ({100 * rows[0]['target']:.2f}%)")
    (out / "demo.md").write_text(header + "\n\n" + render_table(rows, markdown=True) + "\n")
    (out / "demo.json").write_text(json.dumps(
        {"config": asdict(config), "device": device.type, "rows": rows,
         "curves": [asdict(c) for c in curves]}, indent=1, default=str))
    if not config.quiet:
        print(header)
        print(render_table(rows))
        print(f"\nwrote {out / 'demo.png'}, {out / 'demo.md'} and {out / 'demo.json'}")
    return rows
