#!/usr/bin/env python
"""Per-example scoring (loss and ||softmax - onehot||) from logits: fastis against eager
PyTorch, torch.compile of the same eager code, and Liger-Kernel's cross-entropy where it
imports, side by side in one run.

For each shape it reports the median time (and p20 / p80) of one scoring call, the effective
bandwidth from logical bytes (the logits read once: N * C * itemsize), and on a GPU the share
of a device-to-device copy's bandwidth measured in the same run. On a GPU the L2 cache is
flushed before every timed call (cold L2).

    python benchmarks/bench_kernels.py              # CPU: the reference vs eager PyTorch
    python benchmarks/bench_kernels.py --compile    # also torch.compile (slow to compile)
    python benchmarks/bench_kernels.py --shapes 65536x128256 --dtype bfloat16   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import benchlib
import torch
import torch.nn.functional as F

from fastis import ops

CPU_SHAPES = "1024x32000,4096x4096,256x128256"
GPU_SHAPES = "8192x32000,65536x128256"
# N x D x C of the fused linear layer + scores.
CPU_LINEAR_SHAPES = "1024x256x32000"
GPU_LINEAR_SHAPES = "16384x4096x128256"


def eager_scores(logits: torch.Tensor, target: torch.Tensor):
    """What users write today: log_softmax, gather, softmax, one-hot and a norm, each a
    full-size [N, C] tensor."""
    loss = F.cross_entropy(logits.float(), target, reduction="none")
    g = logits.float().softmax(dim=1) - F.one_hot(target, logits.shape[1]).float()
    return loss, g.norm(dim=1)


def liger_scores() -> Callable | None:
    """Liger-Kernel's cross-entropy loss (per row; it has no gradient-norm output)."""
    try:
        from liger_kernel.transformers.functional import liger_cross_entropy
    except Exception:
        return None
    return lambda logits, target: liger_cross_entropy(logits, target, reduction="none")


@dataclass
class Row:
    provider: str
    shape: str
    dtype: str
    median_ms: float | None
    p20_ms: float | None
    p80_ms: float | None
    gb_per_s: float | None
    note: str = ""


def timed(fn: Callable[[], object], repeats: int, device: torch.device) -> list[float]:
    """Seconds per call over `repeats` calls after a warm-up; on CUDA each call follows an
    L2 flush (a 256 MiB write) and is timed with events."""
    fn()
    times = []
    flush = (
        torch.empty(256 << 20, dtype=torch.int8, device=device) if device.type == "cuda" else None
    )
    for _ in range(repeats):
        if flush is not None:
            flush.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


def copy_bandwidth(nbytes: int, device: torch.device, repeats: int) -> float:
    """GB/s of a device-to-device copy of nbytes (read + write counted), the achievable
    ceiling a memory-bound kernel is compared with."""
    src = torch.empty(nbytes, dtype=torch.int8, device=device)
    dst = torch.empty_like(src)
    seconds = statistics.median(timed(lambda: dst.copy_(src), repeats, device))
    return 2 * nbytes / seconds / 1e9


def measure(
    provider: str, fn: Callable, logits: torch.Tensor, target: torch.Tensor, repeats: int
) -> Row:
    shape = f"{logits.shape[0]}x{logits.shape[1]}"
    dtype = str(logits.dtype).removeprefix("torch.")
    try:
        times = timed(lambda: fn(logits, target), repeats, logits.device)
    except Exception as exc:  # a provider that cannot run this case says why
        return Row(provider, shape, dtype, None, None, None, None, f"failed: {exc}"[:80])
    q = statistics.quantiles(times, n=5) if len(times) >= 5 else [min(times)] * 4
    median = statistics.median(times)
    gb = logits.numel() * logits.element_size() / median / 1e9
    return Row(provider, shape, dtype, median * 1e3, q[0] * 1e3, q[3] * 1e3, gb)


def providers(device: torch.device, compile_too: bool) -> dict[str, Callable]:
    out: dict[str, Callable] = {}
    if device.type == "cuda":
        out["fastis (triton)"] = lambda z, y: ops.cross_entropy_scores(z, y, backend="triton")
    out["fastis (reference)"] = lambda z, y: ops.cross_entropy_scores(z, y, backend="reference")
    out["eager PyTorch"] = eager_scores
    if compile_too:
        out["torch.compile(eager)"] = torch.compile(eager_scores, dynamic=False)
    liger = liger_scores() if device.type == "cuda" else None
    if liger is not None:
        out["Liger CE (loss only)"] = liger
    return out


def linear_providers(device: torch.device) -> dict[str, Callable]:
    """Scores of logits = hidden @ weight^T: fastis (never holding the logits), the bare
    matmul alone (the floor the fused op is compared with), and matmul + eager scores."""
    backend = "triton" if device.type == "cuda" else "reference"
    return {
        f"fastis linear ({backend})": lambda h, w, y: ops.linear_cross_entropy_scores(
            h, w, y, backend=backend
        ),
        "bare matmul h @ W^T": lambda h, w, y: h @ w.T,
        "matmul + eager scores": lambda h, w, y: eager_scores(h @ w.T, y),
    }


def measure_linear(text: str, dtype: torch.dtype, device: torch.device, repeats: int) -> list:
    n, features, c = (int(x) for x in text.lower().split("x"))
    g = torch.Generator(device=device).manual_seed(0)
    hidden = torch.randn(n, features, generator=g, device=device).to(dtype)
    weight = (torch.randn(c, features, generator=g, device=device) * 0.02).to(dtype)
    target = torch.randint(0, c, (n,), generator=g, device=device)
    rows = []
    for name, fn in linear_providers(device).items():
        try:
            times = timed(lambda fn=fn: fn(hidden, weight, target), repeats, device)
            median = statistics.median(times)
            flops = 2 * n * features * c
            rows.append([name, text, f"{median * 1e3:.3f}", f"{flops / median / 1e12:.2f}"])
        except Exception as exc:
            rows.append([name, text, f"failed: {exc}"[:60], ""])
        print(f"{text} {name}: {rows[-1][2]} ms", file=sys.stderr)
    floor = next(float(r[2]) for r in rows if r[0].startswith("bare"))
    for r in rows:
        r.append(f"{float(r[2]) / floor:.2f}x" if not r[2].startswith("failed") else "")
    return rows


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", help="comma-separated NxC (default: by device)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per case")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--linear-shapes", help="comma-separated NxDxC (default: by device)")
    parser.add_argument("--out", help="Markdown file or folder (default benchmarks/results/)")
    parser.add_argument("--no-save", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv[1:])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shapes = args.shapes or (GPU_SHAPES if device.type == "cuda" else CPU_SHAPES)
    repeats = args.repeats or (50 if device.type == "cuda" else 7)
    dtype = getattr(torch, args.dtype)
    env = benchlib.environment(argv)
    rows: list[Row] = []
    copy_gbs: dict[str, float] = {}
    for text in shapes.split(","):
        n, c = (int(x) for x in text.lower().split("x"))
        g = torch.Generator(device=device).manual_seed(0)
        logits = (torch.randn(n, c, generator=g, device=device) * 3).to(dtype)
        target = torch.randint(0, c, (n,), generator=g, device=device)
        if device.type == "cuda":
            copy_gbs[text] = copy_bandwidth(logits.numel() * logits.element_size(), device, 20)
        for name, fn in providers(device, args.compile).items():
            rows.append(measure(name, fn, logits, target, repeats))
            print(f"{text} {name}: {rows[-1].median_ms} ms", file=sys.stderr)
        del logits, target
    headers = ["provider", "N x C", "dtype", "ms (median)", "p20 / p80 ms", "GB/s", "vs eager"]
    if device.type == "cuda":
        headers.append("% of copy")
    cells = []
    for r in rows:
        eager = next((e for e in rows if e.shape == r.shape and e.provider == "eager PyTorch"), r)
        ratio = (
            f"{eager.median_ms / r.median_ms:.2f}x" if r.median_ms and eager.median_ms else "n/a"
        )
        cell = [
            r.provider,
            r.shape,
            r.dtype,
            f"{r.median_ms:.3f}" if r.median_ms else r.note,
            f"{r.p20_ms:.3f} / {r.p80_ms:.3f}" if r.median_ms else "",
            f"{r.gb_per_s:.1f}" if r.gb_per_s else "",
            ratio,
        ]
        if device.type == "cuda":
            # The copy moves 2x the bytes: a read-once kernel at the copy's speed scores 100%.
            share = r.gb_per_s / (copy_gbs[r.shape] / 2) if r.gb_per_s else None
            cell.append(f"{100 * share:.0f}%" if share else "")
        cells.append(cell)
    print(benchlib.render_text(headers, cells))
    linear_shapes = args.linear_shapes or (
        GPU_LINEAR_SHAPES if device.type == "cuda" else CPU_LINEAR_SHAPES
    )
    linear_headers = ["provider", "N x D x C", "ms (median)", "TFLOP/s (matmul)", "vs matmul"]
    linear_cells = [
        row
        for text in linear_shapes.split(",")
        for row in measure_linear(text, dtype, device, repeats)
    ]
    print()
    print(benchlib.render_text(linear_headers, linear_cells))
    if args.no_save:
        return 0
    md_path, json_path = benchlib.output_paths(args.out, "bench_kernels")
    md = ["# fastis scoring-kernel benchmark", ""]
    md += [f"- **{k}**: `{v}`" if k == "command" else f"- **{k}**: {v}" for k, v in env.items()]
    md += ["", "## Scores from logits", "", benchlib.render_md(headers, cells)]
    md += ["", "## Scores of a linear layer (logits = hidden @ weight^T)", ""]
    md += [benchlib.render_md(linear_headers, linear_cells), "", NOTES]
    md_path.write_text("\n".join(md) + "\n")
    record = {"env": env, "rows": [asdict(r) for r in rows], "linear": linear_cells}
    json_path.write_text(json.dumps(record, indent=1))
    print(f"\nwrote {md_path} and {json_path}")
    return 0


NOTES = """Notes: one call scores every row (loss and ||softmax - onehot||); the time is the
median of the timed calls after one warm-up. GB/s counts the logits read once (N * C *
itemsize), the least any scoring pass must move. The eager baseline materialises several
[N, C] float32 tensors (log-softmax, softmax, one-hot, their difference). On CPU, fastis
runs its float32 PyTorch reference (chunked rows); its Triton kernels need a GPU. The linear
table compares scoring straight from hidden states with the bare matmul that only forms the
logits (the floor), and with that matmul followed by the eager scores."""


if __name__ == "__main__":
    sys.exit(main(sys.argv))
