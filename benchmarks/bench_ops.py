"""Per-example scores (loss and ||softmax - onehot||) on the CPU: fastis's backends against
the eager PyTorch code users write today (and, for the linear layer, against the bare
matmul that only forms the logits: the floor a fused op is compared with).

    pytest benchmarks/bench_ops.py --benchmark-only                  # ~1 minute
    pytest benchmarks/bench_ops.py --benchmark-only --compile        # + torch.compile(eager)

The GPU kernels' figures (cold L2, % of copy bandwidth) come from benchmarks/bench_kernels.py
on a machine with a GPU.
"""

from __future__ import annotations

import functools

import pytest
import torch
from baselines import eager_scores

from fastis import ops

# N x C: a classification batch (the native loop's case), an LLM-vocabulary batch, and a
# short batch of a very wide vocabulary.
SHAPES = [(128, 10), (1024, 32000), (256, 128256)]
LINEAR = (1024, 256, 32000)  # N x D x C


@functools.cache
def logits_case(n: int, c: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, c, generator=g) * 3, torch.randint(0, c, (n,), generator=g)


@functools.cache
def compiled_eager():
    return torch.compile(eager_scores, dynamic=False)


def _providers(n: int, c: int, with_compile: bool) -> dict[str, tuple]:
    out = {
        "fastis (auto)": (lambda z, y: ops.cross_entropy_scores(z, y), False),
        "fastis (reference)": (lambda z, y: ops.cross_entropy_scores(z, y, backend="reference"),
                               False),
        "eager PyTorch": (eager_scores, True),
    }
    if n * c <= ops.NATIVE_MAX_ELEMENTS * 16:
        out["fastis (native)"] = (lambda z, y: ops.cross_entropy_scores(z, y, backend="native"),
                                  False)
    if with_compile:
        out["torch.compile(eager)"] = (lambda z, y: compiled_eager()(z, y), True)
    return out


@pytest.mark.parametrize("provider", ["fastis (auto)", "fastis (reference)", "fastis (native)",
                                      "eager PyTorch", "torch.compile(eager)"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{n}x{c}" for n, c in SHAPES])
def bench_logits(bench, request, shape, provider):
    providers = _providers(*shape, request.config.getoption("--compile"))
    if provider not in providers:
        pytest.skip(f"{provider} is not run at {shape}")
    fn, baseline = providers[provider]
    logits, target = logits_case(*shape)
    bench(lambda: fn(logits, target), group=f"scores from logits, {shape[0]} x {shape[1]}",
          method=provider, baseline=baseline)


@pytest.mark.parametrize("provider", ["fastis (auto)", "fastis (native)", "bare matmul",
                                      "matmul + eager scores"])
def bench_linear(bench, provider):
    n, d, c = LINEAR
    g = torch.Generator().manual_seed(1)
    hidden, weight = torch.randn(n, d, generator=g), torch.randn(c, d, generator=g) * 0.05
    target = torch.randint(0, c, (n,), generator=g)
    fns = {
        "fastis (auto)": lambda: ops.linear_cross_entropy_scores(hidden, weight, target),
        "fastis (native)": lambda: ops.linear_cross_entropy_scores(hidden, weight, target,
                                                                   backend="native"),
        "bare matmul": lambda: hidden @ weight.T,
        "matmul + eager scores": lambda: eager_scores(hidden @ weight.T, target),
    }
    bench(fns[provider], group=f"scores of a linear layer, {n} x {d} x {c}", method=provider,
          baseline=not provider.startswith("fastis"))
