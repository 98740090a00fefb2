#!/usr/bin/env python
"""The Triton scoring kernels on a GPU, at the targets' shapes: fastis against eager PyTorch,
torch.compile of the same eager code, and Liger-Kernel's cross-entropy where it installs;
for the linear layer, against the bare `hidden @ weight.T` that only forms the logits.

For each case: median / p20 / p80 ms with a cold L2 (a 256 MiB write before every timed
call, events around the call), GB/s from logical bytes (the logits read once), and the
share of a device-to-device copy's bandwidth measured in the same run; the linear op's
extra memory (peak allocated beyond its inputs). CPU figures: benchmarks/bench_ops.py.

    python benchmarks/bench_kernels.py                   # bf16, the targets' shapes
    python benchmarks/bench_kernels.py --quick           # small shapes, a smoke test
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable

import harness
import torch
from baselines import eager_scores

from fastis import ops

LOGITS_SHAPES = [(65_536, 128_256), (8_192, 32_000)]
LINEAR_SHAPES = [(16_384, 4_096, 128_256)]
QUICK_LOGITS, QUICK_LINEAR = [(4_096, 32_000)], [(2_048, 1_024, 32_000)]


def cold_times(fn: Callable[[], object], repeats: int) -> list[float]:
    """Seconds per call, each after an L2 flush, timed with CUDA events (one warm-up)."""
    fn()
    flush = torch.empty(256 << 20, dtype=torch.int8, device="cuda")
    times = []
    for _ in range(repeats):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return times


def copy_bandwidth(nbytes: int) -> float:
    """GB/s (read + write) of a device-to-device copy of nbytes: the achievable ceiling of a
    memory-bound kernel on this GPU, measured the same way."""
    src = torch.empty(nbytes, dtype=torch.int8, device="cuda")
    dst = torch.empty_like(src)
    return 2 * nbytes / statistics.median(cold_times(lambda: dst.copy_(src), 20)) / 1e9


def summary(times: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(times, n=5)
    return statistics.median(times), q[0], q[3]


def logits_rows(n: int, c: int, dtype: torch.dtype, repeats: int) -> list[list[str]]:
    g = torch.Generator(device="cuda").manual_seed(0)
    logits = (torch.randn(n, c, generator=g, device="cuda") * 3).to(dtype)
    target = torch.randint(0, c, (n,), generator=g, device="cuda")
    nbytes = logits.numel() * logits.element_size()
    copy_gbs = copy_bandwidth(nbytes)
    providers = {"fastis (triton)": lambda: ops.cross_entropy_scores(logits, target,
                                                                     validate=False),
                 "eager PyTorch": lambda: eager_scores(logits, target)}
    compiled = torch.compile(eager_scores, dynamic=False)
    providers["torch.compile(eager)"] = lambda: compiled(logits, target)
    try:
        from liger_kernel.transformers.functional import liger_cross_entropy
        providers["Liger CE (loss only)"] = lambda: liger_cross_entropy(logits, target,
                                                                        reduction="none")
    except Exception as err:  # not installed, or fails on this torch
        print(f"Liger-Kernel unavailable: {err}", file=sys.stderr)
    medians, rows = {}, []
    for name, fn in providers.items():
        try:
            median, p20, p80 = summary(cold_times(fn, repeats))
        except Exception as err:
            rows.append([name, f"{n} x {c}", f"failed: {err}"[:70], "", "", "", ""])
            continue
        medians[name] = median
        gbs = nbytes / median / 1e9
        rows.append([name, f"{n} x {c}", f"{median * 1e3:.3f}", f"{p20 * 1e3:.3f} / "
                     f"{p80 * 1e3:.3f}", f"{gbs:.0f}", f"{100 * gbs / (copy_gbs / 2):.0f}%", ""])
    for row in rows:
        if row[0] in medians and "eager PyTorch" in medians:
            row[6] = f"{medians['eager PyTorch'] / medians[row[0]]:.2f}x"
    rows.append([f"(device-to-device copy of the logits' bytes: {copy_gbs:.0f} GB/s, read + "
                 "write)", "", "", "", "", "", ""])
    return rows


def linear_rows(n: int, d: int, c: int, dtype: torch.dtype, repeats: int) -> list[list[str]]:
    g = torch.Generator(device="cuda").manual_seed(0)
    hidden = torch.randn(n, d, generator=g, device="cuda").to(dtype)
    weight = (torch.randn(c, d, generator=g, device="cuda") * 0.02).to(dtype)
    target = torch.randint(0, c, (n,), generator=g, device="cuda")
    providers = {"fastis linear (triton)": lambda: ops.linear_cross_entropy_scores(
                     hidden, weight, target, validate=False),
                 "bare matmul h @ W^T": lambda: hidden @ weight.T,
                 "matmul + eager scores": lambda: eager_scores(hidden @ weight.T, target)}
    rows, floor = [], None
    for name, fn in providers.items():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        median, p20, p80 = summary(cold_times(fn, repeats))
        extra = torch.cuda.max_memory_allocated() - base - (256 << 20)  # minus the flush
        floor = median if name.startswith("bare") else floor
        rows.append([name, f"{n} x {d} x {c}", f"{median * 1e3:.3f}",
                     f"{p20 * 1e3:.3f} / {p80 * 1e3:.3f}",
                     f"{2 * n * d * c / median / 1e12:.0f}", f"{extra / 2**20:.0f} MiB", ""])
    for row in rows:
        row[6] = f"{float(row[2]) / (floor * 1e3):.2f}x"
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small shapes (a smoke test)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16",
                                                                 "float32"])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv[1:])
    if not torch.cuda.is_available():
        print("bench_kernels.py needs a CUDA GPU (the Triton kernels); CPU figures: "
              "pytest benchmarks/bench_ops.py --benchmark-only", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype)
    env = harness.environment(argv)
    logits = [r for n, c in (QUICK_LOGITS if args.quick else LOGITS_SHAPES)
              for r in logits_rows(n, c, dtype, args.repeats)]
    linear = [r for n, d, c in (QUICK_LINEAR if args.quick else LINEAR_SHAPES)
              for r in linear_rows(n, d, c, dtype, args.repeats)]
    sections = [
        f"## Scores from {args.dtype} logits (cold L2)\n\n" + harness.table(
            ["provider", "N x C", "ms (median)", "p20 / p80 ms", "GB/s", "% of copy",
             "vs eager"], logits),
        "## Scores of a linear layer\n\n" + harness.table(
            ["provider", "N x D x C", "ms (median)", "p20 / p80 ms", "TFLOP/s", "extra memory",
             "vs bare matmul"], linear)]
    print("\n\n".join(sections))
    path = harness.write_result("bench_kernels", "fastis scoring kernels on a GPU", env,
                                sections, record={"logits": logits, "linear": linear})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
