"""The Triton kernels compiled for and run on a CUDA GPU against the float64 oracle, on the
acceptance shapes (skipped without a GPU; the CPU suite runs the same kernels through
Triton's interpreter)."""

from __future__ import annotations

import pytest
import torch
from test_ops import IGNORE, make_logits, make_target, oracle, relative_error

from fastis import ops

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


@pytest.mark.parametrize("c", [1, 2, 123, 507, 4099, 32000])
@pytest.mark.parametrize("n", [0, 1, 77, 289])
def test_cross_entropy_scores_on_cuda(n, c):
    logits, target = make_logits(n, c, seed=n + c), make_target(n, c, seed=c)
    s = ops.cross_entropy_scores(logits.cuda(), target.cuda(), backend="triton")
    loss, grad_norm = oracle(logits, target)
    assert relative_error(s.loss.cpu(), loss) <= 1e-5
    assert relative_error(s.grad_norm.cpu(), grad_norm) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cross_entropy_scores_half_on_cuda(dtype):
    logits = make_logits(289, 32000, seed=7).to(dtype)
    target = make_target(289, 32000, seed=7, ignored=0.0)
    s = ops.cross_entropy_scores(logits.cuda(), target.cuda(), backend="triton")
    loss, _ = oracle(logits, target)
    torch_loss = torch.nn.functional.cross_entropy(logits.cuda(), target.cuda(), reduction="none")
    err = (s.loss.cpu().double() - loss).abs().max()
    assert err <= 2 * (torch_loss.cpu().double() - loss).abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_scores_on_cuda(dtype):
    n, features, c = 289, 256, 4099
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(n, features, generator=g).to(dtype)
    weight = (torch.randn(c, features, generator=g) * 0.1).to(dtype)
    target = make_target(n, c, seed=5)
    s = ops.linear_cross_entropy_scores(
        hidden.cuda(), weight.cuda(), target.cuda(), backend="triton"
    )
    loss, grad_norm = oracle(hidden.double() @ weight.double().T, target)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert relative_error(s.loss.cpu(), loss) <= tol
    assert relative_error(s.grad_norm.cpu(), grad_norm) <= tol
    assert bool((s.loss.cpu()[target == IGNORE] == 0).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weighted_backward_on_cuda(dtype):
    n, c = 289, 32000
    logits = make_logits(n, c, seed=9).to(dtype)
    target = make_target(n, c, seed=9)
    weight = torch.rand(n, generator=torch.Generator().manual_seed(9)) * 3
    ours = logits.cuda().requires_grad_(True)
    loss, _ = ops.cross_entropy_with_scores(ours, target.cuda(), weight=weight.cuda())
    loss.sum().backward()
    theirs = logits.double().requires_grad_(True)
    ce = torch.nn.functional.cross_entropy(theirs, target, reduction="none", ignore_index=IGNORE)
    (ce * weight.double()).sum().backward()
    err = (ours.grad.cpu().double() - theirs.grad).abs().max() / theirs.grad.abs().max()
    assert float(err) <= (1e-5 if dtype == torch.float32 else 1e-2)
