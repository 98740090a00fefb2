"""cross_entropy_scores as one Triton program per scored row: a single read of the row's
logits in BLOCK-wide tiles, with the online-softmax statistics (running max m, d = sum e^(z-m),
and, with the target masked out, d_y and q_y = sum e^(2(z-m)) as squares of the same
exponentials: no second exp) rescaled whenever the max moves (Milakov & Gimelshein 2018).
The finish is the reference's (fastis/reference.py): loss = log1p(d_y e^(m - z_y)) near the
max, 1 - p_y = -expm1(-loss), grad_norm^2 = (1 - p_y)^2 + q_y / d^2. Row offsets are int64,
and the launcher never synchronises with the device."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastis.reference import Scores

# See fastis/reference.py: below this gap the loss is log1p(d_y * e^gap).
_LOG1P_GAP = 60.0


@triton.jit
def _log1p(x):
    # Kahan's accurate log1p from log (x >= 0): log(u) * x / (u - 1) with u = 1 + x rounded,
    # and x itself when u rounds to 1. libdevice's log1p is not available everywhere.
    u = 1.0 + x
    exact = u == 1.0
    return tl.where(exact, x, tl.log(u) * x / tl.where(exact, 1.0, u - 1.0))


@triton.jit
def _one_minus_exp_neg(x):
    # 1 - e^(-x) = -expm1(-x) for x >= 0. Below 1/2, where 1 - u cancels, Kahan's trick:
    # with u = e^(-x) rounded, (1 - u) * x / -log(u), and x itself when u rounds to 1. Above,
    # 1 - u is exact enough, and u may underflow to 0 (the trick would then divide by inf).
    u = tl.exp(-x)
    small = x < 0.5
    exact = u == 1.0
    safe_log = -tl.log(tl.where(small & ~exact, u, 0.5))
    kahan = tl.where(exact, x, (1.0 - u) * x / safe_log)
    return tl.where(small, kahan, 1.0 - u)


@triton.jit
def _cross_entropy_scores_kernel(
    logits_ptr,
    stride_row,
    stride_col,
    target_ptr,
    rows_ptr,
    loss_ptr,
    grad_norm_ptr,
    num_rows,
    num_classes,
    ignore_index,
    LOG1P_GAP: tl.constexpr,
    HAS_ROWS: tl.constexpr,
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
    z_y = tl.load(base + y * stride_col).to(tl.float32)
    m = tl.full((), float("-inf"), tl.float32)
    d = tl.zeros((), tl.float32)
    d_y = tl.zeros((), tl.float32)
    q_y = tl.zeros((), tl.float32)
    for start in range(0, num_classes, BLOCK):
        cols = start + tl.arange(0, BLOCK).to(tl.int64)
        inside = cols < num_classes
        z = tl.load(base + cols * stride_col, mask=inside, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(z, axis=0))
        rescale = tl.exp(m - m_new)
        e = tl.exp(z - m_new)
        e_not_y = tl.where(cols == y, 0.0, e)
        d = d * rescale + tl.sum(e, axis=0)
        d_y = d_y * rescale + tl.sum(e_not_y, axis=0)
        q_y = q_y * rescale * rescale + tl.sum(e_not_y * e_not_y, axis=0)
        m = m_new
    gap = m - z_y
    near_max = gap < LOG1P_GAP
    loss = tl.where(near_max, _log1p(d_y * tl.exp(tl.where(near_max, gap, 0.0))), gap + tl.log(d))
    one_minus_p_y = _one_minus_exp_neg(loss)
    grad_norm = tl.sqrt(one_minus_p_y * one_minus_p_y + q_y / (d * d))
    tl.store(loss_ptr + i, tl.where(keep, tl.where(valid, loss, float("nan")), 0.0))
    tl.store(grad_norm_ptr + i, tl.where(keep, tl.where(valid, grad_norm, float("nan")), 0.0))


def cross_entropy_scores(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    ignore_index: int = -100,
    rows: torch.Tensor | None = None,
    block: int | None = None,
) -> Scores:
    """The Triton twin of fastis.reference.cross_entropy_scores (same arguments and result;
    inputs already validated). block: the tile width (a power of two), by default up to
    4,096 classes at a time."""
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
        logits.shape[0],
        num_classes,
        ignore_index,
        LOG1P_GAP=_LOG1P_GAP,
        HAS_ROWS=rows is not None,
        BLOCK=block,
    )
    return Scores(loss, grad_norm)
