"""The `fastis` command: `fastis demo`, the main job. (The benchmarks run from a source
checkout: `pytest benchmarks/ --benchmark-only`, benchmarks/README.md.)"""

from __future__ import annotations

import argparse
import sys

from fastis import datasets


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def parser() -> argparse.ArgumentParser:
    from fastis.demo import DEFAULT_METHODS, DEMO_METHODS

    top = argparse.ArgumentParser(prog="fastis", description="fast importance sampling "
                                  "for PyTorch training")
    commands = top.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="train a model on Fashion-MNIST with uniform sampling and with fastis's "
        "methods, for equal wall-clock time each; print the table, write the plot")
    demo.add_argument("--data", metavar="DIR", help="folder with the four Fashion-MNIST "
                      f"IDX .gz files (default: {datasets.FASHION_MNIST_DIRS[0]})")
    demo.add_argument("--model", choices=("mlp", "cnn", "linear"), default="mlp",
                      help="mlp (784-256-128-10, the default), cnn (the small CNN race) or "
                      "linear (softmax regression)")
    demo.add_argument("--epochs", type=_positive_int, default=30,
                      help="epochs per method (default 30: under 2 minutes in all for the "
                      "MLP on 2 CPU cores)")
    demo.add_argument("--seconds", type=_positive_float,
                      help="train each method for this many seconds instead of --epochs")
    demo.add_argument("--methods", nargs="+", choices=(*DEMO_METHODS, "all"),
                      default=list(DEFAULT_METHODS), metavar="METHOD",
                      help=f"methods to run (uniform always runs; default "
                      f"{' '.join(DEFAULT_METHODS)}): {', '.join(DEMO_METHODS)}, or all")
    demo.add_argument("--batch-size", type=_positive_int, default=128)
    demo.add_argument("--lr", type=_positive_float, default=0.05)
    demo.add_argument("--evaluations", type=_positive_int, default=12,
                      help="evaluation points per method")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default="fastis-demo", help="folder for demo.png/.md/.json")
    demo.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if present")
    demo.add_argument("--quiet", action="store_true", help="no progress bars or table")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return _demo(args)


def _demo(args: argparse.Namespace) -> int:
    import torch

    from fastis.demo import DEMO_METHODS, DemoConfig, run

    if args.device == "cuda" and not torch.cuda.is_available():
        print("fastis demo: --device cuda, but no CUDA device is available", file=sys.stderr)
        return 2
    try:
        split = datasets.load_fashion_mnist(args.data)
    except datasets.DataMissing as missing:
        print(f"fastis demo: {missing}", file=sys.stderr)
        return 2
    methods = DEMO_METHODS if "all" in args.methods else tuple(args.methods)
    config = DemoConfig(data=args.data, model=args.model, epochs=args.epochs,
                        seconds=args.seconds, methods=methods,
                        batch_size=args.batch_size, lr=args.lr, evaluations=args.evaluations,
                        seed=args.seed, out=args.out, device=args.device, quiet=args.quiet)
    run(config, split)
    return 0


if __name__ == "__main__":
    sys.exit(main())
