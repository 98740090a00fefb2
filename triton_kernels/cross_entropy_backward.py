"""The backward of fastis.ops.cross_entropy_with_scores as one Triton program per row: the
gradient row_scale * (softmax(z) - onehot(y)) written in one pass over the logits, from the
forward's log-sum-exp (softmax = e^(z - lse)) and loss (the target's entry p_y - 1 =
expm1(-loss), exact when p_y rounds to 1). The gradient is the only [N, C] buffer."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from fastis.triton_kernels.row_stats import one_minus_exp_neg


@triton.jit
def _cross_entropy_backward_kernel(
    logits_ptr,
    stride_row,
    stride_col,
    grad_ptr,
    target_ptr,
    lse_ptr,
    loss_ptr,
    scale_ptr,
    num_classes,
    ignore_index,
    BLOCK: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64)
    y = tl.load(target_ptr + i).to(tl.int64)
    keep = y != ignore_index
    scale = tl.where(keep, tl.load(scale_ptr + i).to(tl.float32), 0.0)
    lse = tl.load(lse_ptr + i)
    target_entry = -one_minus_exp_neg(tl.load(loss_ptr + i))  # p_y - 1
    for start in range(0, num_classes, BLOCK):
        cols = start + tl.arange(0, BLOCK).to(tl.int64)
        inside = cols < num_classes
        z = tl.load(logits_ptr + i * stride_row + cols * stride_col, mask=inside, other=0.0).to(
            tl.float32
        )
        g = tl.where(cols == y, target_entry, tl.exp(z - lse)) * scale
        tl.store(grad_ptr + i * num_classes + cols, g.to(grad_ptr.dtype.element_ty), mask=inside)


def cross_entropy_backward(
    logits: torch.Tensor,
    target: torch.Tensor,
    lse: torch.Tensor,
    loss: torch.Tensor,
    row_scale: torch.Tensor,
    *,
    ignore_index: int = -100,
    block: int | None = None,
) -> torch.Tensor:
    """The Triton twin of fastis.ops.reference.cross_entropy_backward: the contiguous gradient
    [N, C] in the logits' dtype."""
    grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    if logits.shape[0] == 0:
        return grad
    if block is None:
        block = min(4096, triton.next_power_of_2(logits.shape[1]))
    _cross_entropy_backward_kernel[(logits.shape[0],)](
        logits,
        logits.stride(0),
        logits.stride(1),
        grad,
        target,
        lse,
        loss,
        row_scale.float().contiguous(),
        logits.shape[1],
        ignore_index,
        BLOCK=block,
    )
    return grad
