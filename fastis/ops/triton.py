"""The "triton" backend of the scoring ops: the kernels of `fastis.triton_kernels`, one per
op, on CUDA tensors (and on CPU tensors under TRITON_INTERPRET=1, Triton's interpreter: how
the tests run them without a GPU). The kernels guard every read: with `validate=False` an
out-of-range row or target scores NaN, and the launch never synchronises with the device."""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

from fastis.ops.types import LinearScores, Scores

# fastis.ops checks target and row values on the host when validate is on (a device sync).
CHECKS_LOGITS_VALUES = False


@functools.cache
def installed() -> bool:
    # Looked up once: find_spec walks sys.path (~30 us), too slow to repeat every step.
    return importlib.util.find_spec("triton") is not None


def runs_on(device: torch.device) -> bool:
    return installed() and (device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")


def cross_entropy_scores(logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int,
                         rows: torch.Tensor | None = None, lse_out: torch.Tensor | None = None,
                         validate: bool = True) -> Scores:
    from fastis.triton_kernels import cross_entropy_scores as kernel

    return kernel.cross_entropy_scores(logits.detach(), target, ignore_index=ignore_index,
                                       rows=rows, lse_out=lse_out)


def cross_entropy_backward(logits: torch.Tensor, target: torch.Tensor, lse: torch.Tensor,
                           loss: torch.Tensor, row_scale: torch.Tensor, *,
                           ignore_index: int) -> torch.Tensor:
    from fastis.triton_kernels import cross_entropy_backward as kernel

    return kernel.cross_entropy_backward(logits.detach(), target, lse, loss, row_scale,
                                         ignore_index=ignore_index)


def linear_cross_entropy_scores(hidden: torch.Tensor, weight: torch.Tensor,
                                target: torch.Tensor, *, bias: torch.Tensor | None = None,
                                ignore_index: int, rows: torch.Tensor | None = None,
                                validate: bool = True) -> LinearScores:
    from fastis.triton_kernels import linear_cross_entropy_scores as kernel

    return kernel.linear_cross_entropy_scores(
        hidden.detach(), weight.detach(), target, bias=None if bias is None else bias.detach(),
        ignore_index=ignore_index, rows=rows)
