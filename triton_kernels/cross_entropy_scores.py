"""cross_entropy_scores as one Triton program per scored row: a single read of the row's
logits in BLOCK-wide tiles, with the online-softmax statistics (running max m, d = sum e^(z-m),
and, with the target masked out, d_y and q_y = sum e^(2(z-m)) as squares of the same
exponentials: no second exp) rescaled whenever the max moves (Milakov & Gimelshein 2018).
The finish is the reference's (fastis/ops/reference.py, via row_stats.finish). Row offsets are
int64, and the launcher never synchronises with the device."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from fastis.triton_kernels.row_stats import LOG1P_GAP, finish, fold_tile

from fastis.ops.types import Scores


@triton.jit
def _cross_entropy_scores_kernel(
    logits_ptr,
    stride_row,
    stride_col,
    target_ptr,
    rows_ptr,
    loss_ptr,
    grad_norm_ptr,
    lse_ptr,
    num_rows,
    num_classes,
    ignore_index,
    LOG1P_GAP: tl.constexpr,
    HAS_ROWS: tl.constexpr,
    STORE_LSE: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64)
    y = tl.load(target_ptr + i).to(tl.int64)
    if HAS_ROWS:  # noqa: SIM108 (a compile-time branch: HAS_ROWS is constexpr)
        row = tl.load(rows_ptr + i).to(tl.int64)
    else:
        row = i
    keep = y != ignore_index
    # An out-of-range target or row (possible when the caller skipped validation to avoid
    # a device sync) is never read: the row scores NaN instead.
    valid = (y >= 0) & (y < num_classes) & (row >= 0) & (row < num_rows)
    y = tl.where(keep & valid, y, 0)
    row = tl.where(valid, row, 0)
    base = logits_ptr + row * stride_row
    # ACC: float64 for float64 logits (their range kept, as the other backends do), else
    # float32.
    z_y = tl.load(base + y * stride_col).to(ACC)
    m = tl.full((), float("-inf"), ACC)
    d = tl.zeros((), ACC)
    d_y = tl.zeros((), ACC)
    q_y = tl.zeros((), ACC)
    for start in range(0, num_classes, BLOCK):
        cols = start + tl.arange(0, BLOCK).to(tl.int64)
        inside = cols < num_classes
        z = tl.load(base + cols * stride_col, mask=inside, other=float("-inf")).to(ACC)
        m, d, d_y, q_y = fold_tile(m, d, d_y, q_y, z, cols == y, AXIS=0)
    loss, grad_norm = finish(m, d, d_y, q_y, z_y, LOG1P_GAP=LOG1P_GAP)
    if STORE_LSE:  # for a backward pass: log sum_j e^(z_j)
        tl.store(lse_ptr + i, m + tl.log(d))
    tl.store(loss_ptr + i, tl.where(keep, tl.where(valid, loss, float("nan")), 0.0))
    tl.store(grad_norm_ptr + i, tl.where(keep, tl.where(valid, grad_norm, float("nan")), 0.0))


def cross_entropy_scores(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    ignore_index: int = -100,
    rows: torch.Tensor | None = None,
    block: int | None = None,
    lse_out: torch.Tensor | None = None,
) -> Scores:
    """The Triton twin of fastis.ops.reference.cross_entropy_scores (same arguments and result;
    inputs already validated; lse_out, float32 [M], receives each row's log-sum-exp).
    block: the tile width (a power of two), by default up to 4,096 classes at a time."""
    count = target.shape[0]
    num_classes = logits.shape[1]
    loss = torch.empty(count, dtype=torch.float32, device=logits.device)
    grad_norm = torch.empty_like(loss)
    if count == 0:
        return Scores(loss, grad_norm)
    if block is None:
        block = min(4096, triton.next_power_of_2(num_classes))
    _cross_entropy_scores_kernel[(count,)](
        logits,
        logits.stride(0),
        logits.stride(1),
        target,
        target if rows is None else rows,  # not read without rows
        loss,
        grad_norm,
        loss if lse_out is None else lse_out,  # not written without lse_out
        logits.shape[0],
        num_classes,
        ignore_index,
        LOG1P_GAP=LOG1P_GAP,
        HAS_ROWS=rows is not None,
        STORE_LSE=lse_out is not None,
        ACC=tl.float64 if logits.dtype == torch.float64 else tl.float32,
        BLOCK=block,
    )
    return Scores(loss, grad_norm)
