"""The "native" backend of the scoring ops: a C++ loop in the extension (csrc/row_scores.cpp)
that scores CPU logits row by row in double.

It exists for small inputs: a classification batch of [128, 10] logits costs the reference
~40 tensor operations (0.1-0.6 ms), the loop ~10 us plus ~1.5 ns per logit. It checks the
target and row values of a logits call itself (`validate=True`: the same errors as
`fastis.ops`'s own checks, without their tensor operations); with `validate=False` an
out-of-range row or target is never read and scores NaN. The linear layer's scores are formed
from row chunks of logits, each scored by the same loop.
"""

from __future__ import annotations

import torch

from fastis import _C
from fastis.ops.types import LinearScores, Scores

# Rows per chunk of the linear layer's logits: about this many logits at a time.
_CHUNK_ELEMENTS = 1 << 20
# The row loop checks the values of a logits call itself (fastis.ops skips its own checks).
CHECKS_LOGITS_VALUES = True


def runs_on(device: torch.device) -> bool:
    return device.type == "cpu"


def _row_layout(logits: torch.Tensor) -> torch.Tensor:
    """Logits as float32/float64 with contiguous rows (read in place when they are)."""
    z = logits.detach()
    if z.dtype in (torch.float16, torch.bfloat16):
        z = z.float()
    if z.shape[1] > 1 and z.stride(1) != 1:
        z = z.contiguous()
    return z


def cross_entropy_scores(logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int,
                         rows: torch.Tensor | None = None, lse_out: torch.Tensor | None = None,
                         validate: bool = True) -> Scores:
    loss, grad_norm, lse = _C.cross_entropy_row_scores(
        _row_layout(logits).numpy(), target.contiguous().numpy(),
        None if rows is None else rows.contiguous().numpy(), ignore_index, validate)
    if lse_out is not None:
        lse_out.copy_(torch.from_numpy(lse))
    return Scores(torch.from_numpy(loss), torch.from_numpy(grad_norm))


def cross_entropy_backward(logits: torch.Tensor, target: torch.Tensor, lse: torch.Tensor,
                           loss: torch.Tensor, row_scale: torch.Tensor, *,
                           ignore_index: int) -> torch.Tensor:
    """d/dz of sum_i row_scale_i * loss_i, in the logits' dtype (see the reference)."""
    grad = _C.cross_entropy_row_grad(
        _row_layout(logits).numpy(), target.contiguous().numpy(), lse.numpy(), loss.numpy(),
        row_scale.float().contiguous().numpy(), ignore_index)
    return torch.from_numpy(grad).to(logits.dtype)


def linear_cross_entropy_scores(hidden: torch.Tensor, weight: torch.Tensor,
                                target: torch.Tensor, *, bias: torch.Tensor | None = None,
                                ignore_index: int, rows: torch.Tensor | None = None,
                                validate: bool = True) -> LinearScores:
    """The scores of logits = hidden @ weight^T (+ bias), a chunk of rows at a time, and the
    exact last-layer gradient norm grad_norm * sqrt(||h||^2 (+ 1 with a bias)). Values were
    checked by fastis.ops when `validate`; unchecked bad ones score NaN."""
    count, num_rows = target.shape[0], hidden.shape[0]
    dtype = torch.float64 if torch.float64 in (hidden.dtype, weight.dtype) else torch.float32
    w = weight.detach().to(dtype)
    b = None if bias is None else bias.detach().to(dtype)
    out = [torch.empty(count, dtype=torch.float32) for _ in range(3)]
    step = max(1, _CHUNK_ELEMENTS // weight.shape[0])
    for begin in range(0, count, step):
        end = min(count, begin + step)
        picked = torch.arange(begin, end) if rows is None else rows[begin:end]
        inside = (picked >= 0) & (picked < num_rows)
        h = hidden.detach()[torch.where(inside, picked, 0)].to(dtype)
        z = h @ w.T if b is None else torch.addmm(b, h, w.T)
        # Rows outside the input are scored as row -1 of the chunk: the loop gives them NaN.
        local = torch.where(inside, torch.arange(end - begin), -1)
        loss, grad_norm = cross_entropy_scores(z, target[begin:end], ignore_index=ignore_index,
                                               rows=local, validate=False)
        h_norm = (h.square().sum(dim=1) + (0.0 if b is None else 1.0)).sqrt().float()
        out[0][begin:end], out[1][begin:end] = loss, grad_norm
        out[2][begin:end] = grad_norm * h_norm
    return LinearScores(*out)
