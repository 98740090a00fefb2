"""Training a model with a fastis sampler, for the demo and the experiments: classification
tasks on real data (models, regimes, metrics) and one loop that trains with any sampler under
a budget of steps or of wall-clock seconds.

The loop is the README's: each step draws a batch, lets a pool method choose from it, trains
on mean(w * per-example loss), and reports the scores of the same forward back. Data loading,
sampling, scoring and the optimizer step count against the budget; evaluation does not.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import fastis
from fastis import datasets
from fastis.data import take_rows

__all__ = ["MLP", "Budget", "ClassificationTask", "Run", "SmallCNN", "Training", "image_task",
           "race", "train"]


class SmallCNN(nn.Module):
    """Two 3x3 conv layers (16 and 32 channels, each followed by 2x2 max-pooling) and two
    linear layers, for 28 x 28 grey images: ~14 ms per training step of 128 on 2 CPU cores.

    Examples:
        >>> import torch
        >>> from fastis.training import SmallCNN
        >>> SmallCNN()(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class MLP(nn.Sequential):
    """Flattened inputs through hidden layers with ReLU; no hidden layer is softmax
    regression (a convex problem).

    Examples:
        >>> import torch
        >>> from fastis.training import MLP
        >>> MLP(784, (256, 128)).forward(torch.zeros(3, 784)).shape
        torch.Size([3, 10])
    """

    def __init__(self, inputs: int, hidden: tuple[int, ...] = (256, 128),
                 classes: int = 10) -> None:
        widths = (inputs, *hidden)
        layers: list[nn.Module] = []
        for a, b in zip(widths, widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        super().__init__(*layers, nn.Linear(widths[-1], classes))


class ClassificationTask:
    """A classification task held in memory: training and test tensors, the model to train,
    the per-example losses and scores of a batch, and the metrics (training loss on a fixed
    probe of the training set, or on all of it; test accuracy; balanced test accuracy).

    Examples:
        >>> import torch
        >>> from fastis.training import ClassificationTask, MLP
        >>> x, y = torch.randn(40, 5), torch.arange(40) % 2
        >>> task = ClassificationTask(x, y, x, y, lambda: MLP(5, (), classes=2))
        >>> sorted(task.metrics(task.model()))
        ['balanced_accuracy', 'test_accuracy', 'train_loss']
    """

    def __init__(self, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                 test_y: torch.Tensor, model: Callable[[], nn.Module], *,
                 probe: int | None = None, holdout: tuple[torch.Tensor, torch.Tensor] | None = None,
                 last_layer_norms: bool = False, seed: int = 0) -> None:
        self.train_x, self.train_y, self.test_x, self.test_y = train_x, train_y, test_x, test_y
        self.holdout = holdout  # (x, y) kept out of training (RHO-LOSS's irreducible model)
        self.last_layer_norms = last_layer_norms
        self._model = model
        self.num_examples = len(train_y)
        self.classes = int(max(train_y.max(), test_y.max())) + 1
        self.groups = train_y.cpu().numpy()  # side information for RAS: the class
        self.initial_loss = math.log(self.classes)  # an untrained model's loss
        rng = np.random.default_rng(seed)
        rows = (np.arange(self.num_examples) if probe is None or probe >= self.num_examples
                else np.sort(rng.choice(self.num_examples, probe, replace=False)))
        self.train_probe = torch.from_numpy(rows)

    def dataset(self) -> TensorDataset:
        return TensorDataset(self.train_x, self.train_y)

    def model(self) -> nn.Module:
        return self._model()

    def example_losses(self, model: nn.Module, data: Any, weight: torch.Tensor
                       ) -> tuple[torch.Tensor, fastis.ops.Scores]:
        """(weight * cross-entropy per example [b], with autograd; the Scores [b] of the
        unweighted loss), from one fused pass over the logits."""
        x, y = data
        hidden, head = self._last_layer(model, x)
        loss, scores = fastis.ops.cross_entropy_with_scores(head(hidden), y,
                                                            weight=weight.to(y.device))
        return loss, self._scaled(scores, hidden)

    def scores(self, model: nn.Module, data: Any) -> fastis.ops.Scores:
        x, y = data
        hidden, head = self._last_layer(model, x)
        return self._scaled(fastis.ops.cross_entropy_scores(head(hidden), y), hidden)

    def _last_layer(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """(the last linear layer's input, that layer) with last_layer_norms (the model an
        nn.Sequential ending in it, as MLP), else (x, the model)."""
        if not self.last_layer_norms:
            return x, model
        *body, head = model
        for layer in body:
            x = layer(x)
        return x, head

    def _scaled(self, scores: fastis.ops.Scores, hidden: torch.Tensor) -> fastis.ops.Scores:
        """With last_layer_norms, grad_norm becomes the exact norm of the example's gradient
        w.r.t. the last layer's weight and bias: ||dL/dz|| sqrt(||h||^2 + 1), since
        dL/dW = (dL/dz) h^T is an outer product and dL/db = dL/dz."""
        if not self.last_layer_norms:
            return scores
        h = hidden.detach().flatten(1)
        return fastis.ops.Scores(scores.loss, scores.grad_norm * h.square().sum(1).add(1).sqrt())

    @torch.no_grad()
    def metrics(self, model: nn.Module) -> dict[str, float]:
        was_training = model.training
        model.eval()
        loss = sum(F.cross_entropy(model(self.train_x[rows]), self.train_y[rows],
                                   reduction="sum").item()
                   for rows in self.train_probe.split(4096)) / len(self.train_probe)
        predicted = torch.cat([model(chunk).argmax(1) for chunk in self.test_x.split(4096)])
        correct = predicted == self.test_y
        per_class = [correct[self.test_y == c].float().mean().item() for c in range(self.classes)
                     if (self.test_y == c).any()]
        model.train(was_training)
        return {"train_loss": loss, "test_accuracy": correct.float().mean().item(),
                "balanced_accuracy": float(np.mean(per_class))}


def image_task(split: datasets.Split, *, model: str = "cnn", row_scale: float = 0.0,
               train_examples: int | None = None, imbalance: float = 1.0,
               label_noise: float = 0.0, holdout: int = 0, probe: int | None = 2500,
               last_layer_norms: bool = False, seed: int = 0, data_seed: int = 1234,
               device: torch.device | str = "cpu") -> ClassificationTask:
    """A task on 28 x 28 grey images (Fashion-MNIST, MNIST): normalised pixels, and the
    regime's changes to the data, each drawn once from `data_seed`.

    Args:
        split: the images and labels.
        model: "cnn" (SmallCNN), "mlp" (784-256-128-10) or "linear" (softmax regression).
        row_scale: sigma of a log-normal factor multiplying each image (train and test), so
            that examples differ in scale (0: none).
        train_examples: keep this many training images (a fixed random subset).
        imbalance: the rarest class keeps this fraction of its images, the others in
            between geometrically (1: balanced); the test set stays as it is.
        label_noise: this fraction of training labels replaced by another class at random.
        holdout: this many of the (noisy) training examples, drawn at random, go to
            task.holdout instead of the training set.
        probe: training examples of the tracked training loss (None: all of them).
        last_layer_norms: the scores' grad_norm is the exact norm of each example's
            gradient w.r.t. the last linear layer (for softmax regression: w.r.t. all the
            parameters), not w.r.t. the logits.
        seed: the probe's draw.
        device: where the data and the model live.

    Examples:
        >>> import numpy as np
        >>> from fastis.datasets import Split
        >>> from fastis.training import image_task
        >>> images = np.random.default_rng(0).integers(0, 255, (100, 28, 28)).astype(np.uint8)
        >>> split = Split(images, np.arange(100) % 10, images[:20], np.arange(20) % 10)
        >>> task = image_task(split, model="linear", label_noise=0.2, probe=None)
        >>> task.num_examples, int((task.train_y.numpy() != split.train_labels).sum())
        (100, 20)
    """
    rng = np.random.default_rng(data_seed)
    train_images, train_labels = split.train_images, split.train_labels.copy()
    keep = np.arange(len(train_labels))
    if imbalance < 1.0:
        classes = int(train_labels.max()) + 1
        fraction = imbalance ** (np.arange(classes) / max(classes - 1, 1))
        keep = np.concatenate([rng.permutation(np.flatnonzero(train_labels == c))[
            :max(1, round(fraction[c] * (train_labels == c).sum()))] for c in range(classes)])
    if train_examples is not None:
        keep = rng.permutation(keep)[:train_examples]
    keep = np.sort(keep)
    train_images, train_labels = train_images[keep], train_labels[keep]
    if label_noise > 0:
        classes = int(split.train_labels.max()) + 1
        flip = rng.permutation(len(train_labels))[:round(label_noise * len(train_labels))]
        train_labels[flip] = (train_labels[flip] + rng.integers(1, classes, len(flip))) % classes

    def pixels(raw: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(raw).float().div_(255).sub_(datasets.FASHION_MNIST_MEAN)
        x = x.div_(datasets.FASHION_MNIST_STD)
        if row_scale > 0:
            scale = rng.lognormal(0.0, row_scale, len(raw)).astype(np.float32)
            x = x * torch.from_numpy(scale).view(-1, 1, 1)
        return x.unsqueeze(1) if model == "cnn" else x.reshape(len(raw), -1)

    train_x, test_x = pixels(train_images), pixels(split.test_images)
    train_y = torch.from_numpy(train_labels)
    held = None
    if holdout > 0:
        rows = torch.from_numpy(rng.permutation(len(train_labels)))
        held = (train_x[rows[:holdout]], train_y[rows[:holdout]])
        kept = rows[holdout:].sort().values
        train_x, train_y = train_x[kept], train_y[kept]
    classes = int(split.train_labels.max()) + 1
    make = {"cnn": lambda: SmallCNN(classes), "mlp": lambda: MLP(784, (256, 128), classes),
            "linear": lambda: MLP(784, (), classes)}[model]
    if held is not None:
        held = (held[0].to(device), held[1].to(device))
    test_y = torch.from_numpy(split.test_labels.astype(np.int64))
    return ClassificationTask(train_x.to(device), train_y.to(device), test_x.to(device),
                              test_y.to(device), lambda: make().to(device),
                              probe=probe, holdout=held, last_layer_norms=last_layer_norms,
                              seed=seed)


@dataclass(frozen=True)
class Budget:
    """Train for `steps` optimizer steps, `seconds` of training time, or `epochs` of the
    sampler's (one of them), with `evaluations` evenly spaced measurements."""

    steps: int | None = None
    seconds: float | None = None
    epochs: int | None = None
    evaluations: int = 8

    def __post_init__(self) -> None:
        if sum(v is not None for v in (self.steps, self.seconds, self.epochs)) != 1:
            raise ValueError("a budget is a number of steps, seconds or epochs (one of them)")

    def progress(self, steps: int, seconds: float, sampler: Any = None) -> float:
        """The fraction of the budget used (epochs: the sampler's, and how far into the
        current one it is)."""
        if self.steps is not None:
            return steps / self.steps
        if self.seconds is not None:
            return seconds / self.seconds
        epoch = sampler.epoch
        done = sampler.step - sampler.epoch_start(epoch)
        return (epoch + done / len(sampler)) / self.epochs


@dataclass
class Run:
    """One training run: at each evaluation the training seconds, steps and back-propagated
    examples so far, and the task's metrics; the sampler's stats at the end."""

    method: str
    seconds: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    backprops: list[int] = field(default_factory=list)
    metrics: dict[str, list[float]] = field(default_factory=dict)
    sampler_stats: dict[str, float] = field(default_factory=dict)

    def first_reaching(self, metric: str, target: float, *, below: bool = False,
                       axis: str = "seconds") -> float:
        """The `axis` value (seconds, steps or backprops) at which `metric` first reaches
        `target` (at or above it; at or below with `below`), interpolated linearly between
        the evaluations around the crossing; NaN if it never does."""
        xs, ys = getattr(self, axis), self.metrics[metric]
        for i, value in enumerate(ys):
            if (value <= target) if below else (value >= target):
                if i == 0:
                    return float(xs[0])
                x0, y0 = xs[i - 1], ys[i - 1]
                return float(x0 + (target - y0) / (value - y0) * (xs[i] - x0))
        return math.nan


def step_decay(progress: float) -> float:
    """The learning rate's factor: 1, then 0.1 from half the budget, 0.01 from 80%."""
    return 1.0 if progress < 0.5 else (0.1 if progress < 0.8 else 0.01)


def cosine(progress: float) -> float:
    """The learning rate's factor: a cosine from 1 to 0 over the budget."""
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


class Training:
    """One training run that advances a block of steps at a time, so that race() can
    alternate several runs in one process: drifts in machine speed then hit every run alike,
    and each run's clock counts its own steps only. Trains a fresh model of the task (initial
    weights from `seed`; or `model`, in place) with `sampler`: SGD with momentum, the
    learning rate lr * schedule(fraction of the budget used).

    Examples:
        >>> import torch, fastis
        >>> from fastis.training import Budget, ClassificationTask, MLP, Training
        >>> x, y = torch.randn(64, 5), torch.arange(64) % 2
        >>> task = ClassificationTask(x, y, x, y, lambda: MLP(5, (), classes=2))
        >>> run = Training(task, fastis.samplers.Uniform(64, 16, seed=0), "uniform",
        ...                budget=Budget(steps=8, evaluations=2), lr=0.1)
        >>> while run.advance(3):
        ...     pass
        >>> run.result().steps
        [0, 4, 8]
    """

    def __init__(self, task: ClassificationTask | Any, sampler: Any, method: str, *,
                 budget: Budget, lr: float, schedule: Callable[[float], float] = step_decay,
                 momentum: float = 0.9, seed: int = 0,
                 progress: Callable[[float], None] | None = None,
                 model: nn.Module | None = None) -> None:
        torch.manual_seed(seed)
        self.task, self.sampler, self.budget = task, sampler, budget
        self.model = task.model() if model is None else model
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=momentum)
        self.lr, self.schedule, self.progress = lr, schedule, progress
        self.loader = sampler.loader(task.dataset())
        self.run = Run(method)
        self.clock, self.steps, self.backprops = 0.0, 0, 0
        self._iterator: Any = None
        self._next_eval = 1.0 / budget.evaluations
        self._record()

    def _record(self) -> None:
        run = self.run
        run.seconds.append(self.clock)
        run.steps.append(self.steps)
        run.backprops.append(self.backprops)
        for name, value in self.task.metrics(self.model).items():
            run.metrics.setdefault(name, []).append(value)

    def _used(self) -> float:
        return self.budget.progress(self.steps, self.clock, self.sampler)

    def advance(self, steps: int) -> bool:
        """Trains up to `steps` more steps; False once the budget is used (then the run is
        final)."""
        task, model, optimizer, sampler = self.task, self.model, self.optimizer, self.sampler
        for _ in range(steps):
            if self._used() >= 1.0:
                break
            start = time.perf_counter()
            if self._iterator is None:
                self._iterator = iter(self.loader)
            batch = next(self._iterator, None)
            if batch is None:  # the epoch ended: a new iterator starts the next one
                self._iterator = None
                self.clock += time.perf_counter() - start
                continue
            for group in optimizer.param_groups:
                group["lr"] = self.lr * self.schedule(self._used())
            data, weight = batch.data, batch.weight
            if sampler.scores_pools:  # pool methods: score the pool, keep part of it
                pick = sampler.select(batch, lambda rows, data=data: task.scores(
                    model, take_rows(data, rows)))
                data, weight = pick.take(data), pick.weight
            losses, scores = task.example_losses(model, data, weight)
            optimizer.zero_grad(set_to_none=True)
            losses.mean().backward()
            optimizer.step()
            sampler.update(batch, scores)
            self.steps += 1
            self.backprops += len(weight)
            elapsed = time.perf_counter() - start
            self.clock += elapsed
            if self.progress is not None:
                self.progress(elapsed)
            if self._used() >= self._next_eval - 1e-9:
                self._record()
                self._next_eval += 1.0 / self.budget.evaluations
        if self._used() < 1.0:
            return True
        if self.run.steps[-1] < self.steps:
            self._record()
        return False

    def result(self) -> Run:
        """The Run so far, with the sampler's stats now."""
        self.run.sampler_stats = self.sampler.stats()
        return self.run


def race(trainings: list[Training], block: int = 20) -> list[Run]:
    """Runs every Training to the end of its budget, `block` steps of each in turn; returns
    their Runs in order.

    Examples:
        >>> import torch, fastis
        >>> from fastis.training import Budget, ClassificationTask, MLP, Training, race
        >>> x, y = torch.randn(64, 5), torch.arange(64) % 2
        >>> task = ClassificationTask(x, y, x, y, lambda: MLP(5, (), classes=2))
        >>> runs = race([Training(task, fastis.samplers.Uniform(64, 16, seed=s), f"u{s}",
        ...                       budget=Budget(steps=6, evaluations=1), lr=0.1, seed=s)
        ...              for s in range(2)], block=4)
        >>> [r.steps[-1] for r in runs]
        [6, 6]
    """
    active = list(trainings)
    while active:
        active = [t for t in active if t.advance(block)]
    return [t.result() for t in trainings]


def train(task: ClassificationTask | Any, sampler: Any, method: str, *, budget: Budget,
          lr: float, schedule: Callable[[float], float] = step_decay, momentum: float = 0.9,
          seed: int = 0, progress: Callable[[float], None] | None = None,
          model: nn.Module | None = None) -> Run:
    """One Training run to the end of its budget (its arguments); returns its Run.

    Examples:
        >>> import torch, fastis
        >>> from fastis.training import Budget, ClassificationTask, MLP, train
        >>> x, y = torch.randn(64, 5), torch.arange(64) % 2
        >>> task = ClassificationTask(x, y, x, y, lambda: MLP(5, (), classes=2))
        >>> run = train(task, fastis.samplers.Uniform(64, 16, seed=0), "uniform",
        ...             budget=Budget(steps=8, evaluations=2), lr=0.1)
        >>> run.steps, run.backprops
        ([0, 4, 8], [0, 64, 128])
    """
    training = Training(task, sampler, method, budget=budget, lr=lr, schedule=schedule,
                        momentum=momentum, seed=seed, progress=progress, model=model)
    while training.advance(1 << 30):
        pass
    return training.result()
