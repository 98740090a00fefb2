"""The result types of the scoring ops, shared by every backend."""

from __future__ import annotations

from typing import NamedTuple

import torch


class Scores(NamedTuple):
    """Per-example scores; float32 tensors [N] on the input's device.

    Examples:
        >>> import torch, fastis
        >>> s = fastis.ops.cross_entropy_scores(torch.zeros(2, 4), torch.tensor([0, 3]))
        >>> [round(v, 4) for v in s.loss.tolist()]   # log 4: a uniform guess
        [1.3863, 1.3863]
    """

    loss: torch.Tensor  # cross-entropy loss; 0 for ignored rows
    grad_norm: torch.Tensor  # ||softmax(z) - onehot(y)||_2; 0 for ignored rows


class LinearScores(NamedTuple):
    """Per-example scores of a linear layer followed by cross-entropy; float32 [N].

    Examples:
        >>> import torch, fastis
        >>> h, w = torch.ones(1, 3), torch.zeros(4, 3)
        >>> s = fastis.ops.linear_cross_entropy_scores(h, w, torch.tensor([1]))
        >>> round(s.weight_grad_norm.item() / s.grad_norm.item(), 4)   # ||h|| = sqrt(3)
        1.7321
    """

    loss: torch.Tensor
    grad_norm: torch.Tensor  # w.r.t. the logits
    weight_grad_norm: torch.Tensor  # exact per-example ||d loss / d (W, b)||_F
