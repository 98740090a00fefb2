"""Time to accuracy of every method against uniform sampling, on Fashion-MNIST, in the regimes
where the literature expects importance sampling to pay and where it expects harm.

Regimes (fastis.training.image_task; the methods at the README's settings, fastis.recipes):
  convex     softmax regression on pixels whose rows are each scaled by a log-normal factor
             (sigma 1), 3,000 steps of 128, each method at its best learning rate of a grid
             (by mean final training loss over the seeds); full-batch gradient descent at the
             same steps as the floor of any unbiased estimator; ImportanceSampler without
             its guard as the control
  mlp        784-256-128-10 MLP on 25,000 training images, equal training time (> 40 epochs),
             step decay; and an epoch budget (40 epochs) for dynamic pruning against uniform
  imbalance  the same MLP, the rarest class keeping 5% of its images (geometric in between),
             balanced test accuracy
  noise      20% of the training labels replaced at random (10,000 held out for RHO-LOSS's
             irreducible-loss model, which trains before the race and is not timed)

Every run of a seed starts from the same weights, and the runs of a seed train alternately,
20 steps of each in turn (fastis.training.race), so that drifts in the machine's speed (20%
and more on this shared machine) hit every method alike; each run's clock counts its own
steps: data loading, sampling, scoring and the optimizer step, not evaluation.
DynamicPruning plans the epochs uniform sampling goes through in the budget (from 100 timed
steps). A run's time (steps,
back-propagated examples) to a target is interpolated between evaluations: the targets are
the same seed's uniform run's best test metric and its final training loss. The accuracy and
loss ratios are means of seeds against uniform's mean. torch runs one thread (--threads).

    python benchmarks/time_to_accuracy.py                       # everything, ~55 minutes
    python benchmarks/time_to_accuracy.py --regimes mlp --seeds 1 --seconds 3   # a smoke run
    python benchmarks/time_to_accuracy.py --regimes mlp --merge results/time_to_accuracy.json
        # reruns one regime, keeping the others of an earlier run
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
import torch

from fastis import datasets
from fastis.recipes import WEIGHTED, holdout_irreducible_losses, make_sampler, planned_epochs
from fastis.training import Budget, Run, Training, image_task, race, step_decay

# (label, method, options) per regime; labels are the tables' rows.
ALL = [("uniform", "uniform", {}), ("importance", "importance", {}),
       ("upper-bound", "upper-bound", {}), ("biased-loss", "biased-loss", {}),
       ("ras", "ras", {}), ("dynamic-pruning", "dynamic-pruning", {}),
       ("selective-backprop", "selective-backprop", {}),
       ("selective-backprop reweight", "selective-backprop", {"reweight": True}),
       ("soft-random", "soft-random", {}), ("high-loss-batches", "high-loss-batches", {})]
CONVEX = [("uniform", "uniform", {}), ("importance", "importance", {}),
          ("importance grad_norm", "importance", {"score": "grad_norm"}),
          ("upper-bound", "upper-bound", {}), ("biased-loss", "biased-loss", {}),
          # The controls: what the guard prevents.
          ("importance unguarded", "importance", {"guard": False}),
          ("importance grad_norm unguarded", "importance", {"score": "grad_norm",
                                                             "guard": False})]
REGIMES: dict[str, dict[str, Any]] = {
    "convex": {"task": {"model": "linear", "row_scale": 1.0, "probe": None,
                        "last_layer_norms": True}, "steps": 3000,
               "variants": CONVEX, "lrs": (0.01, 0.02, 0.05, 0.1), "metric": "test_accuracy"},
    "mlp": {"task": {"model": "mlp", "train_examples": 25000}, "seconds": 30.0,
            "variants": ALL, "lrs": (0.05,), "metric": "test_accuracy"},
    "imbalance": {"task": {"model": "mlp", "imbalance": 0.05}, "seconds": 20.0,
                  "variants": ALL, "lrs": (0.05,), "metric": "balanced_accuracy"},
    "noise": {"task": {"model": "mlp", "train_examples": 35000, "label_noise": 0.2,
                       "holdout": 10000},
              "seconds": 20.0, "lrs": (0.05,), "metric": "test_accuracy",
              "variants": [v for v in ALL if v[0] in (
                  "uniform", "importance", "upper-bound", "dynamic-pruning",
                  "selective-backprop", "selective-backprop reweight", "high-loss-batches")]
              # The README's setting for noisy labels: the reweighted selection, which the
              # cost test (guarded, the default) replaces by uniform batches.
              + [("selective-backprop reweight (guard off)", "selective-backprop",
                  {"reweight": True, "guard": False}), ("rho-loss", "rho-loss", {})]},
}
PRUNING_EPOCHS = 40
BATCH = 128


def budget_of(spec: dict[str, Any], args: argparse.Namespace) -> Budget:
    if "steps" in spec:
        return Budget(steps=args.steps or spec["steps"], evaluations=args.evaluations)
    return Budget(seconds=args.seconds or spec["seconds"], evaluations=args.evaluations)


def full_batch_descent(task: Any, budget: Budget, lr: float) -> Run:
    """Gradient descent on the whole training set (the same optimizer and schedule as the
    samplers' runs, budget.steps steps): a zero-variance gradient, the floor any unbiased
    sampler approaches at equal steps. Plain tensors, no loader: only its losses count."""
    torch.manual_seed(0)
    model = task.model()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    run, every = Run("full-batch GD"), max(1, budget.steps // budget.evaluations)
    for step in range(budget.steps + 1):
        if step % every == 0 or step == budget.steps:
            run.seconds.append(math.nan)
            run.steps.append(step)
            run.backprops.append(step * task.num_examples)
            for key, value in task.metrics(model).items():
                run.metrics.setdefault(key, []).append(value)
        if step == budget.steps:
            break
        for group in optimizer.param_groups:
            group["lr"] = lr * step_decay(step / budget.steps)
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(task.train_x), task.train_y).backward()
        optimizer.step()
    return run


def run_regime(name: str, split: datasets.Split, args: argparse.Namespace) -> dict[str, Any]:
    spec = REGIMES[name]
    budget = budget_of(spec, args)
    runs: list[dict[str, Any]] = []

    def race_all(task: Any, variants: list[tuple[str, str, dict[str, Any]]], seed: int,
                 lr: float, run_budget: Budget, **extra: Any) -> None:
        """Trains the variants alternately, a block of steps each (fastis.training.race)."""
        trainings = [Training(task, make_sampler(method, task, BATCH, seed=seed, **extra,
                                                 **options),
                              label, budget=run_budget, lr=lr, seed=seed)
                     for label, method, options in variants]
        for (label, method, _), run in zip(variants, race(trainings)):
            runs.append({"variant": label, "method": method, "seed": seed, "lr": lr,
                         "budget": asdict(run_budget), **asdict(run)})
            print(f"[{name}] {label} lr {lr:g} seed {seed}: {run.steps[-1]} steps, loss "
                  f"{run.metrics['train_loss'][-1]:.4f}, {spec['metric']} "
                  f"{100 * run.metrics[spec['metric']][-1]:.2f}%", file=sys.stderr, flush=True)

    extras: dict[str, Any] = {}
    for seed in range(args.seeds):
        task = image_task(split, seed=seed, **spec["task"])
        extra: dict[str, Any] = {}
        if name == "noise":
            start = time.perf_counter()
            extra["irreducible"] = holdout_irreducible_losses(task, seed=seed)
            extras["irreducible_seconds"] = time.perf_counter() - start
        variants = [v for v in spec["variants"]
                    if not args.only or v[0] in args.only or v[0] == "uniform"]
        for lr in spec["lrs"]:
            race_all(task, variants, seed, lr, budget,
                     epochs=planned_epochs(task, budget, BATCH), **extra)
        if name == "convex" and seed == 0 and args.gd:  # the floor: full-batch GD
            for lr in (0.05, 0.1):
                run = full_batch_descent(task, budget, lr)
                runs.append({"variant": "full-batch GD", "method": "full-batch GD", "seed": 0,
                             "lr": lr, "budget": asdict(budget), **asdict(run)})
                print(f"[{name}] full-batch GD lr {lr:g}: loss "
                      f"{run.metrics['train_loss'][-1]:.4f}", file=sys.stderr, flush=True)
        if name == "mlp" and not args.only:  # equal epochs: how much dynamic pruning saves
            epochs = Budget(epochs=args.epochs or PRUNING_EPOCHS, evaluations=args.evaluations)
            race_all(task, [("uniform (epochs)", "uniform", {}),
                            ("dynamic-pruning (epochs)", "dynamic-pruning", {})],
                     seed, spec["lrs"][0], epochs, epochs=epochs.epochs)
    return {"regime": name, "metric": spec["metric"], "task": spec["task"],
            "irreducible_seconds": extras.get("irreducible_seconds"), "runs": runs}


def mean(values: list[float]) -> float:
    return statistics.mean(values) if values else math.nan


def as_run(record: dict[str, Any]) -> Run:
    """The Run of a recorded run (its curves)."""
    return Run(**{k: record[k] for k in ("method", "seconds", "steps", "backprops", "metrics")})


def summarise(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per variant (at its best learning rate): final loss and metric (means), their ratios
    and differences to uniform's, time / steps / backprops to the targets against uniform's
    in the same seed (mean ratio and the worst seed), and the guard's statistics."""
    metric = result["metric"]
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for run in result["runs"]:
        groups.setdefault((run["variant"], run["lr"]), []).append(run)
    best: dict[str, list[dict[str, Any]]] = {}
    for (variant, _), runs in groups.items():
        final = mean([r["metrics"]["train_loss"][-1] for r in runs])
        if variant not in best or final < mean([r["metrics"]["train_loss"][-1]
                                                for r in best[variant]]):
            best[variant] = runs
    figures: dict[str, dict[str, Any]] = {}
    for variant, runs in best.items():
        reference = "uniform (epochs)" if variant.endswith("(epochs)") else "uniform"
        uniform = {r["seed"]: r for r in best.get(reference, [])}
        f: dict[str, Any] = {"lr": runs[0]["lr"], "seeds": len(runs),
                             "steps": mean([r["steps"][-1] for r in runs]),
                             "backprops": mean([r["backprops"][-1] for r in runs]),
                             "seconds": mean([r["seconds"][-1] for r in runs]),
                             "train_loss": mean([r["metrics"]["train_loss"][-1] for r in runs]),
                             "metric": mean([r["metrics"][metric][-1] for r in runs])}
        for key in ("guard_mix", "guard_rho", "uniform_share"):
            values = [r["sampler_stats"][key] for r in runs if key in r["sampler_stats"]]
            if values:
                f[key] = mean(values)
        if uniform and variant != "full-batch GD":
            u = list(uniform.values())
            f["loss_ratio"] = f["train_loss"] / mean([r["metrics"]["train_loss"][-1] for r in u])
            f["metric_diff"] = f["metric"] - mean([r["metrics"][metric][-1] for r in u])
            f["backprop_ratio"] = f["backprops"] / mean([r["backprops"][-1] for r in u])
            f["worst_seed_metric_diff"] = min(
                r["metrics"][metric][-1] - uniform[r["seed"]]["metrics"][metric][-1]
                for r in runs if r["seed"] in uniform)
            pairs = [(as_run(r), as_run(uniform[r["seed"]])) for r in runs if r["seed"] in uniform]
            for target_name, target_of, key, below in (
                    ("accuracy", lambda run: max(run.metrics[metric]), metric, False),
                    ("loss", lambda run: run.metrics["train_loss"][-1], "train_loss", True)):
                for axis in ("seconds", "steps", "backprops"):
                    ratios = [mine.first_reaching(key, target_of(theirs), below=below, axis=axis)
                              / theirs.first_reaching(key, target_of(theirs), below=below,
                                                      axis=axis)
                              for mine, theirs in pairs]
                    f[f"{target_name}_{axis}_ratio"] = mean(ratios)
                    f[f"{target_name}_{axis}_worst"] = (math.nan if any(map(math.isnan, ratios))
                                                        else max(ratios, default=math.nan))
        figures[variant] = f
    return figures


def ratio_cell(f: dict[str, Any], key: str) -> str:
    value, worst = f.get(f"{key}_ratio", math.nan), f.get(f"{key}_worst", math.nan)
    if math.isnan(value) and math.isnan(worst):
        return "-" if f"{key}_ratio" not in f else "not reached"
    return f"{value:.2f} (worst {worst:.2f})" if not math.isnan(worst) else "not in every seed"


def section(result: dict[str, Any], figures: dict[str, dict[str, Any]]) -> str:
    metric = result["metric"].replace("_", " ")
    headers = ["variant", "lr", "steps", "backprops", "train loss (x uniform)",
               f"{metric} % (pts vs uniform)", "time to uniform's best", "backprops to it",
               "time to uniform's loss", "guard mix / rho"]
    rows = []
    for variant, f in figures.items():
        guard = "-"
        if "guard_mix" in f:  # rho NaN: the guard observed nothing (every step uniform)
            guard = (f"{f['guard_mix']:.2f} / {f['guard_rho']:.2f}"
                     if not math.isnan(f["guard_rho"]) else "uniform steps only")
        rows.append([variant, f"{f['lr']:g}", f"{f['steps']:.0f}", f"{f['backprops']:.0f}",
                     f"{f['train_loss']:.4f}"
                     + (f" ({f['loss_ratio']:.2f}x)" if "loss_ratio" in f else ""),
                     f"{100 * f['metric']:.2f}"
                     + (f" ({100 * f['metric_diff']:+.2f})" if "metric_diff" in f else ""),
                     ratio_cell(f, "accuracy_seconds"), ratio_cell(f, "accuracy_backprops"),
                     ratio_cell(f, "loss_seconds"), guard])
    note = ""
    if result.get("irreducible_seconds"):
        note = (f"\n\nRHO-LOSS's irreducible-loss model trained for "
                f"{result['irreducible_seconds']:.1f} s per seed before the race (not timed).")
    return (f"## {result['regime']}: {json.dumps(result['task'])}\n\n"
            + harness.table(headers, rows) + note)


def acceptance(results: dict[str, dict[str, dict[str, Any]]]) -> list[list[str]]:
    """The issue's measured goals, each with its figure and verdict."""
    rows = []
    for regime, figures in results.items():
        for variant, f in figures.items():
            # The unguarded controls are not judged; nor, here, the equal-epochs runs, which
            # are not at equal wall-clock (the dynamic pruning row below judges them).
            judged = "unguarded" not in variant and not variant.endswith("(epochs)")
            if judged and (variant.split(" ")[0] in WEIGHTED
                            or variant.startswith("selective-backprop reweight")):
                if "loss_ratio" not in f:
                    continue
                ok = f["loss_ratio"] <= 1.03 and f["metric_diff"] >= -0.003
                rows.append([f"{regime}: {variant} never loses", "loss <= 1.03x, metric >= "
                             "-0.3 pts", f"{f['loss_ratio']:.3f}x, {100 * f['metric_diff']:+.2f}",
                             "PASS" if ok else "MISS"])
    if "convex" in results:
        convex = results["convex"]
        for variant in ("importance", "importance grad_norm", "upper-bound"):
            f = convex.get(variant, {})
            if "loss_ratio" in f:
                rows.append([f"convex: {variant} at its best lr", "<= 0.8x uniform's loss",
                             f"{f['loss_ratio']:.3f}x",
                             "PASS" if f["loss_ratio"] <= 0.8 else "MISS"])
        gd = convex.get("full-batch GD")
        if gd and "uniform" in convex:  # a zero-variance gradient: what no sampler can beat
            rows.append(["convex: full-batch gradient descent (the floor), at its best lr",
                         "reference", f"{gd['train_loss'] / convex['uniform']['train_loss']:.3f}x",
                         "-"])
    f = results.get("mlp", {}).get("dynamic-pruning (epochs)")
    if f and "backprop_ratio" in f:
        worst = f.get("worst_seed_metric_diff", f["metric_diff"])
        ok = f["backprop_ratio"] <= 0.75 and worst >= -0.002
        rows.append(["mlp: dynamic pruning, 40 epochs", ">= 25% fewer examples, >= -0.2 pts "
                     "(every seed)", f"{f['backprop_ratio']:.3f}x, worst {100 * worst:+.2f} "
                     f"(training loss {f['loss_ratio']:.2f}x)", "PASS" if ok else "MISS"])
    best = min(((f["accuracy_seconds_worst"], f"{regime}: {variant}")
                for regime, figures in results.items() for variant, f in figures.items()
                if not math.isnan(f.get("accuracy_seconds_worst", math.nan))
                and variant != "uniform"), default=(math.nan, "none"))
    rows.append(["best time to uniform's best accuracy (worst seed)", "<= 0.7x",
                 f"{best[0]:.2f}x ({best[1]})", "PASS" if best[0] <= 0.7 else "MISS"])
    return rows


def render(record: dict[str, Any], folder: Path, notes: list[str]) -> Path:
    notes = notes + [f"The {regime} regime comes from the run of {env['date']} "
                     f"(`{env['command']}`, commit {env['commit']})."
                     for regime, env in record.get("merged", {}).items()]
    sections, summaries = list(notes), {}
    for result in record["regimes"]:
        figures = summarise(result)
        summaries[result["regime"]] = figures
        sections.append(section(result, figures))
    sections.insert(len(notes), "## Acceptance\n\n" + harness.table(
        ["goal", "bound", "measured", "verdict"], acceptance(summaries)))
    print("\n\n".join(sections))
    record["summary"] = summaries
    return harness.write_result("time_to_accuracy", "fastis time to accuracy", record["env"],
                                sections, record={k: v for k, v in record.items() if k != "env"},
                                out=folder)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--regimes", nargs="*", choices=tuple(REGIMES), default=list(REGIMES))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--seconds", type=float, help="training time per run (default: "
                        "the regime's)")
    parser.add_argument("--steps", type=int, help="convex: steps per run (default 3000)")
    parser.add_argument("--epochs", type=int, help=f"mlp: the epoch budget (default "
                        f"{PRUNING_EPOCHS})")
    parser.add_argument("--only", nargs="*", help="only these variants (and uniform)")
    parser.add_argument("--evaluations", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-gd", dest="gd", action="store_false")
    parser.add_argument("--data", help="Fashion-MNIST folder (default: the Debian package's)")
    parser.add_argument("--from-json", metavar="JSON", help="re-render the report of a "
                        "finished run from its JSON (no training)")
    parser.add_argument("--merge", metavar="JSON", help="keep the regimes of this earlier "
                        "run that this one does not rerun")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv[1:])
    if args.from_json:
        source = Path(args.from_json)
        record = json.loads(source.read_text())
        note = (f"Re-rendered from `{source.name}` by `python {' '.join(argv)}` at commit "
                f"{harness.environment(argv)['commit']}.")
        print(f"wrote {render(record, source.parent, [note])}")
        return 0
    torch.set_num_threads(args.threads)
    split = datasets.load_fashion_mnist(args.data)
    record: dict[str, Any] = {"env": harness.environment(argv), "regimes": []}
    for name in args.regimes:
        record["regimes"].append(run_regime(name, split, args))
    if args.merge:
        earlier = json.loads(Path(args.merge).read_text())
        kept = [r for r in earlier["regimes"] if r["regime"] not in args.regimes]
        record["regimes"] = sorted(kept + record["regimes"],
                                   key=lambda r: list(REGIMES).index(r["regime"]))
        record["merged"] = {r["regime"]: earlier["env"] for r in kept}
    print(f"wrote {render(record, harness.RESULTS_DIR, [])}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
