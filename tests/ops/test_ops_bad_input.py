"""Bad and extreme input to the scoring ops: every backend gives the same named error, or
the same result (NaN for an unread bad row, inf for a loss beyond float32's range), and
out-of-range indices are never read, also with validate=False."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from process_helpers import run_python

from fastis import ops

BACKENDS = ["reference", "native", pytest.param("triton", marks=pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="Triton is not installed"))]


def test_out_of_range_targets_and_rows_with_validate_off_never_crash_the_native_loop():
    # Once these read far outside the logits: a segfault, or 3.1e32 from a negative row.
    out = run_python(
        "import torch, fastis\n"
        "z = torch.randn(4, 10)\n"
        "for target, rows in ((torch.tensor([0, 1, 2, 10**12]), None),\n"
        "                     (torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 2, 10**12])),\n"
        "                     (torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 2, -3]))):\n"
        "    s = fastis.ops.cross_entropy_scores(z, target, rows=rows, backend='native',\n"
        "                                        validate=False)\n"
        "    print(bool(s.loss[3].isnan()), bool(s.loss[:3].isfinite().all()))\n")
    assert out.split() == ["True", "True"] * 3


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("ignore_index", "exc"), [(1.5, TypeError), (True, TypeError),
                                                   ("1", TypeError), (2**63, OverflowError),
                                                   (-(2**63) - 1, OverflowError)])
def test_ignore_index_must_be_an_int64(backend, ignore_index, exc):
    z, y = torch.randn(3, 4), torch.tensor([0, 1, 2])
    with pytest.raises(exc, match="ignore_index"):
        ops.cross_entropy_scores(z, y, ignore_index=ignore_index, backend=backend)
    with pytest.raises(exc, match="ignore_index"):
        ops.linear_cross_entropy_scores(z, torch.randn(5, 4), y, ignore_index=ignore_index,
                                        backend=backend)
    with pytest.raises(exc, match="ignore_index"):
        ops.cross_entropy_with_scores(z, y, ignore_index=ignore_index, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_numpy_integer_ignore_index_is_an_ignore_index(backend):
    import numpy as np

    z, y = torch.randn(3, 4), torch.tensor([0, 1, 2])
    s = ops.cross_entropy_scores(z, y, ignore_index=np.int64(1), backend=backend)
    assert s.loss[1] == 0 and s.loss[0] > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_logits_beyond_float32_keep_their_range(backend):
    # The loss of the first row is 1e300: beyond float32, so +inf once stored; its gradient
    # norm is sqrt(2). Every backend accumulates float64 logits in float64.
    z = torch.tensor([[1e300, 0.0], [1.0, 2.0]], dtype=torch.float64)
    y = torch.tensor([1, 0])
    s = ops.cross_entropy_scores(z, y, backend=backend)
    assert torch.isinf(s.loss[0]) and s.loss[0] > 0
    assert s.grad_norm[0] == pytest.approx(2**0.5, rel=1e-6)
    want = torch.nn.functional.cross_entropy(z[1:], y[1:], reduction="none").float()
    torch.testing.assert_close(s.loss[1:], want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_weight_that_requires_grad_gets_its_gradient(backend):
    g = torch.Generator().manual_seed(3)
    z = torch.randn(5, 7, generator=g, dtype=torch.float64).requires_grad_(True)
    y = torch.tensor([0, 3, 6, -100, 2])
    w = torch.rand(5, generator=g, dtype=torch.float64).requires_grad_(True)
    loss, _ = ops.cross_entropy_with_scores(z, y, weight=w, backend=backend, reduction="mean")
    loss.backward()
    z2, w2 = z.detach().clone().requires_grad_(True), w.detach().clone().requires_grad_(True)
    ce = torch.nn.functional.cross_entropy(z2, y, reduction="none", ignore_index=-100)
    (ce * w2).mean().backward()
    torch.testing.assert_close(w.grad, w2.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(z.grad, z2.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_meta_tensors_are_refused_by_name(backend):
    z = torch.randn(3, 4, device="meta")
    with pytest.raises(ValueError, match="meta tensor"):
        ops.cross_entropy_scores(z, torch.tensor([0, 1, 2]), backend=backend)
    with pytest.raises(ValueError, match="meta tensor"):
        ops.linear_cross_entropy_scores(torch.randn(3, 4), torch.randn(5, 4),
                                        torch.zeros(3, dtype=torch.long, device="meta"),
                                        backend=backend)


def test_bad_reduction_is_refused():
    with pytest.raises(ValueError, match="reduction"):
        ops.cross_entropy_with_scores(torch.randn(2, 3), torch.tensor([0, 1]), reduction="sum")
