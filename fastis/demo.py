"""`fastis demo`: methods against uniform sampling on Fashion-MNIST.

Each method trains the same model from the same initial weights, for the same number of
epochs (the default) or the same training time (`--seconds`), with the learning rate cut
tenfold at half and at 80% of the budget (fastis.training). The runs alternate, 20 steps of
each in turn, so that drifts in the machine's speed hit all alike; each run's clock counts
its own data loading, sampling, scoring and optimizer steps, not evaluation. At evenly
spaced points a run measures the training loss on a fixed subset of the training set and
the accuracy on the whole test set. The table reports, for each method, the examples it
back-propagated, when it first reached uniform sampling's best test accuracy and the
speed-up that gives; a method that never reached it says so.

The default is the MLP and the methods of the README's "which method when" table at equal
epochs; `--model cnn --methods all --seconds 17` is the small CNN race of every method at
equal wall-clock.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from fastis import datasets
from fastis.recipes import METHODS, make_sampler, planned_epochs
from fastis.training import Budget, Run, Training, image_task, race

# What the demo races by default (the README's "which method when" says why): uniform
# sampling, and the methods that pay on this task at equal epochs.
DEFAULT_METHODS = ("uniform", "dynamic-pruning", "importance")
# RHO-LOSS needs a model trained on held-out data: the demo leaves it to the benchmarks.
DEMO_METHODS = tuple(m for m in METHODS if m != "rho-loss")


def summary_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """Per method: steps, back-propagated examples, final training-probe loss and test
    accuracy, time to uniform's best test accuracy and the speed-up over uniform."""
    uniform = next(r for r in runs if r.method == "uniform")
    target = max(uniform.metrics["test_accuracy"])
    uniform_time = uniform.first_reaching("test_accuracy", target)
    rows = []
    for r in runs:
        reach = r.first_reaching("test_accuracy", target)
        rows.append({"method": r.method, "steps": r.steps[-1], "backprops": r.backprops[-1],
                     "train_loss": r.metrics["train_loss"][-1],
                     "test_accuracy": r.metrics["test_accuracy"][-1],
                     "seconds_to_target": reach,
                     "speedup": uniform_time / reach if reach > 0 else math.nan,
                     "target": target})
    return rows


def render_table(rows: list[dict[str, Any]], markdown: bool = False) -> str:
    headers = ["method", "steps", "backprops", "train loss", "test acc",
               "time to uniform's best acc", "speed-up"]
    cells = [[r["method"], str(r["steps"]), str(r["backprops"]), f"{r['train_loss']:.4f}",
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


def plot(runs: list[Run], title: str, path: Path) -> None:
    """Training loss (log scale) and test accuracy against training seconds, one line per
    method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in runs:
        style = {"linewidth": 2.4, "color": "black"} if r.method == "uniform" else {}
        left.plot(r.seconds, r.metrics["train_loss"], label=r.method, **style)
        right.plot(r.seconds, [100 * a for a in r.metrics["test_accuracy"]], label=r.method,
                   **style)
    left.set(xlabel="training time (s)", ylabel="training loss (fixed subset)", yscale="log")
    right.set(xlabel="training time (s)", ylabel="test accuracy (%)")
    late = [100 * a for r in runs for a in r.metrics["test_accuracy"][
        len(r.metrics["test_accuracy"]) // 2:]]
    right.set_ylim(min(late) - 2, max(late) + 1)
    for axis in (left, right):
        axis.grid(alpha=0.3)
    right.legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclass
class DemoConfig:
    data: str | None = None
    model: str = "mlp"
    epochs: int = 30  # the budget of every method, unless seconds is given
    seconds: float | None = None  # training time per method instead
    methods: tuple[str, ...] = DEFAULT_METHODS
    batch_size: int = 128
    lr: float = 0.05
    evaluations: int = 12
    probe: int = 2500
    seed: int = 0
    out: str = "fastis-demo"
    device: str | None = None
    quiet: bool = False


def run(config: DemoConfig, split: datasets.Split | None = None) -> list[dict[str, Any]]:
    """The whole demo: loads the data (unless given), trains every method, prints the
    table, writes demo.png, demo.md and demo.json into config.out. Returns the table rows."""
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    split = split if split is not None else datasets.load_fashion_mnist(config.data)
    task = image_task(split, model=config.model, probe=config.probe, seed=config.seed,
                      device=device)
    methods = ("uniform", *[m for m in config.methods if m != "uniform"])
    budget = (Budget(seconds=config.seconds, evaluations=config.evaluations)
              if config.seconds is not None
              else Budget(epochs=config.epochs, evaluations=config.evaluations))
    epochs = planned_epochs(task, budget, config.batch_size)  # what DynamicPruning plans
    if not config.quiet:
        what = (f"{config.seconds:g} s" if config.seconds is not None
                else f"{config.epochs} epochs")
        print(f"fastis demo: {len(methods)} methods, {what} each, alternating 20 steps at "
              "a time ...", flush=True)
    trainings = [Training(task, make_sampler(m, task, config.batch_size, seed=config.seed,
                                             epochs=epochs),
                          m, budget=budget, lr=config.lr, seed=config.seed) for m in methods]
    runs = race(trainings)
    rows = summary_rows(runs)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    name = {"mlp": "MLP 784-256-128-10", "cnn": "small CNN", "linear": "softmax regression"}
    what = (f"{config.seconds:g} s of training" if config.seconds is not None
            else f"{config.epochs} epochs")
    title = f"fastis demo: Fashion-MNIST, {name[config.model]}, {what} per method"
    plot(runs, title, out / "demo.png")
    header = (f"Fashion-MNIST, {name[config.model]}, batch {config.batch_size}, {what} per "
              f"method on {device.type} (step decay); target: uniform's best test accuracy "
              f"({100 * rows[0]['target']:.2f}%)")
    (out / "demo.md").write_text(header + "\n\n" + render_table(rows, markdown=True) + "\n")
    (out / "demo.json").write_text(json.dumps(
        {"config": asdict(config), "device": device.type, "rows": rows,
         "runs": [asdict(r) for r in runs]}, indent=1, default=str))
    if not config.quiet:
        print(header)
        print(render_table(rows))
        print(f"\nwrote {out / 'demo.png'}, {out / 'demo.md'} and {out / 'demo.json'}")
    return rows
