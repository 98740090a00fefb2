"""linear_cross_entropy_scores as one Triton program per block of BLOCK_N rows: it forms the
logits hidden @ weight^T a BLOCK_N x BLOCK_C tile at a time on chip (tl.dot over D in BLOCK_D
steps) and folds each tile into per-row online-softmax statistics (max m, d, and with the
target masked out d_y and q_y), so the [N, C] logits are never written to memory. The
finish is the reference's (fastis/ops/reference.py), plus the exact last-layer norm
grad_norm * sqrt(||h||^2 (+ 1 with a bias)) (Goodfellow 2015: one example's gradient w.r.t.
W is the rank-1 (p - e_y) h^T)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from fastis.triton_kernels.row_stats import LOG1P_GAP, finish, fold_tile

from fastis.ops.types import LinearScores


@triton.jit
def _linear_cross_entropy_scores_kernel(
    hidden_ptr,
    stride_hn,
    stride_hd,
    weight_ptr,
    stride_wc,
    stride_wd,
    bias_ptr,
    target_ptr,
    rows_ptr,
    loss_ptr,
    grad_norm_ptr,
    weight_grad_norm_ptr,
    count,
    num_rows,
    num_classes,
    features,
    ignore_index,
    LOG1P_GAP: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_ROWS: tl.constexpr,
    IEEE_DOT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    live = i < count
    y = tl.load(target_ptr + i, mask=live, other=ignore_index).to(tl.int64)
    if HAS_ROWS:  # a compile-time branch: HAS_ROWS is constexpr
        row = tl.load(rows_ptr + i, mask=live, other=0).to(tl.int64)
    else:
        row = tl.where(live, i, 0)
    keep = live & (y != ignore_index)
    # An out-of-range target or row (validation skipped by the caller) is never read: its
    # scores are NaN.
    valid = (y >= 0) & (y < num_classes) & (row >= 0) & (row < num_rows)
    y = tl.where(keep & valid, y, 0)
    row = tl.where(valid, row, 0)
    dims = tl.arange(0, BLOCK_D).to(tl.int64)

    # ||h||^2 per row, in float32.
    h_norm_sq = tl.zeros((BLOCK_N,), tl.float32)
    for d0 in range(0, features, BLOCK_D):
        h = tl.load(
            hidden_ptr + row[:, None] * stride_hn + (d0 + dims)[None, :] * stride_hd,
            mask=live[:, None] & ((d0 + dims) < features)[None, :],
            other=0.0,
        ).to(tl.float32)
        h_norm_sq += tl.sum(h * h, axis=1)

    m = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    d = tl.zeros((BLOCK_N,), tl.float32)
    d_y = tl.zeros((BLOCK_N,), tl.float32)
    q_y = tl.zeros((BLOCK_N,), tl.float32)
    z_y = tl.zeros((BLOCK_N,), tl.float32)
    for c0 in range(0, num_classes, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C).to(tl.int64)
        inside = cols < num_classes
        z = tl.zeros((BLOCK_N, BLOCK_C), tl.float32)
        for d0 in range(0, features, BLOCK_D):
            in_dims = (d0 + dims) < features
            h = tl.load(
                hidden_ptr + row[:, None] * stride_hn + (d0 + dims)[None, :] * stride_hd,
                mask=live[:, None] & in_dims[None, :],
                other=0.0,
            )
            w = tl.load(
                weight_ptr + cols[None, :] * stride_wc + (d0 + dims)[:, None] * stride_wd,
                mask=inside[None, :] & in_dims[:, None],
                other=0.0,
            )
            if IEEE_DOT:  # float32 inputs: no TF32 rounding of the products
                z += tl.dot(h, w, input_precision="ieee")
            else:
                z += tl.dot(h, w)
        if HAS_BIAS:
            z += tl.load(bias_ptr + cols, mask=inside, other=0.0).to(tl.float32)[None, :]
        z = tl.where(inside[None, :], z, float("-inf"))
        is_y = cols[None, :] == y[:, None]
        z_y += tl.sum(tl.where(is_y, z, 0.0), axis=1)
        m, d, d_y, q_y = fold_tile(m, d, d_y, q_y, z, is_y, AXIS=1)

    loss, grad_norm = finish(m, d, d_y, q_y, z_y, LOG1P_GAP=LOG1P_GAP)
    if HAS_BIAS:
        h_norm_sq += 1.0
    weight_grad_norm = grad_norm * tl.sqrt(h_norm_sq)
    nan = float("nan")
    tl.store(loss_ptr + i, tl.where(keep, tl.where(valid, loss, nan), 0.0), mask=live)
    tl.store(grad_norm_ptr + i, tl.where(keep, tl.where(valid, grad_norm, nan), 0.0), mask=live)
    weight_grad_norm = tl.where(valid, weight_grad_norm, nan)
    tl.store(weight_grad_norm_ptr + i, tl.where(keep, weight_grad_norm, 0.0), mask=live)


def linear_cross_entropy_scores(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    rows: torch.Tensor | None = None,
    block_n: int | None = None,
    block_c: int | None = None,
    block_d: int | None = None,
) -> LinearScores:
    """The Triton twin of fastis.ops.reference.linear_cross_entropy_scores (same arguments and
    result; inputs already validated). Tile sizes are powers of two, at least 16; the
    defaults are 64 x 128 x 64 on a GPU (not yet tuned on one) and 32 x 64 x 32 in the
    interpreter."""
    on_gpu = hidden.device.type == "cuda"
    block_n = block_n or (64 if on_gpu else 32)
    block_c = block_c or (128 if on_gpu else 64)
    block_d = block_d or (64 if on_gpu else 32)
    count = target.shape[0]
    out = [torch.empty(count, dtype=torch.float32, device=hidden.device) for _ in range(3)]
    if count == 0:
        return LinearScores(*out)
    # The two matmul operands in one dtype (tl.dot needs it), the wider of the two. On CPU
    # tensors (Triton's interpreter, for tests) half-precision operands go in as float32:
    # the interpreter's tl.dot reads bfloat16 as raw integers.
    dtype = torch.promote_types(hidden.dtype, weight.dtype)
    if hidden.device.type == "cpu" and dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32
    hidden, weight = hidden.to(dtype), weight.to(dtype)
    _linear_cross_entropy_scores_kernel[(triton.cdiv(count, block_n),)](
        hidden,
        hidden.stride(0),
        hidden.stride(1),
        weight,
        weight.stride(0),
        weight.stride(1),
        weight if bias is None else bias,  # not read without a bias
        target,
        target if rows is None else rows,  # not read without rows
        *out,
        count,
        hidden.shape[0],
        weight.shape[0],
        weight.shape[1],
        ignore_index,
        LOG1P_GAP=LOG1P_GAP,
        HAS_BIAS=bias is not None,
        HAS_ROWS=rows is not None,
        IEEE_DOT=dtype in (torch.float32, torch.float64),
        BLOCK_N=block_n,
        BLOCK_C=block_c,
        BLOCK_D=block_d,
    )
    return LinearScores(*out)
