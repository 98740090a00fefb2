"""Per-example importance scores: cross-entropy loss and the norm of its gradient, from
logits or from a last linear layer, plus their reduction to per-sequence scores.

Scores are float32 tensors [N] on the input's device, never an extra [N, C] tensor beyond
bounded row chunks. Inputs are checked before any work (`fastis.ops.inputs`): a wrong type,
shape, dtype, device or target raises an error that names the problem.

Backends, each a module with the same functions (`cross_entropy_scores`,
`cross_entropy_backward`, `linear_cross_entropy_scores`, `runs_on`):
  - "reference" (`fastis.ops.reference`): pure PyTorch, float32, chunked, any device;
  - "native" (`fastis.ops.native`): a C++ loop that scores CPU logits row by row in double,
    for small inputs, where the reference's ~40 tensor operations cost far more than the
    arithmetic;
  - "triton" (`fastis.ops.triton`): the kernels of `fastis.triton_kernels`, on CUDA tensors
    (or CPU tensors under TRITON_INTERPRET=1: slow, for tests).
`backend_for()` is the one place that chooses: "auto" takes Triton for CUDA tensors when it
is installed, "native" for CPU logits of at most 2^16 elements, the reference otherwise.
sequence_scores runs in PyTorch on every device.
"""

from __future__ import annotations

from types import ModuleType

import torch

from fastis.ops import inputs, native, reference, triton
from fastis.ops.types import LinearScores, Scores

__all__ = [
    "BACKENDS",
    "LinearScores",
    "Scores",
    "backend_for",
    "cross_entropy_scores",
    "cross_entropy_with_scores",
    "linear_cross_entropy_scores",
    "sequence_scores",
]

BACKENDS: dict[str, ModuleType] = {"reference": reference, "native": native, "triton": triton}
# Up to this many logits, "auto" scores CPU logits with the native loop: ~1.5 ns per logit
# plus ~10 us per call, against ~40 tensor operations of the reference (0.2-0.6 ms).
NATIVE_MAX_ELEMENTS = 1 << 16


def backend_for(backend: str, device: torch.device, *, logits_elements: int | None = None
                ) -> ModuleType:
    """The backend module that runs a call on `device`.

    Args:
        backend: "auto", or a key of BACKENDS (refused where it cannot run).
        device: the inputs' device.
        logits_elements: N * C for a call on given logits (small CPU logits go to the
            native loop under "auto"); None for the linear layer's scores.

    Examples:
        >>> import torch, fastis
        >>> fastis.ops.backend_for("auto", torch.device("cpu"), logits_elements=1280).__name__
        'fastis.ops.native'
        >>> fastis.ops.backend_for("auto", torch.device("cpu")).__name__
        'fastis.ops.reference'
    """
    if backend == "auto":
        if device.type == "cuda" and triton.installed():
            return triton
        small = logits_elements is not None and logits_elements <= NATIVE_MAX_ELEMENTS
        return native if device.type == "cpu" and small else reference
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {sorted(BACKENDS)}, got {backend!r}")
    chosen = BACKENDS[backend]
    if not chosen.runs_on(device):
        needs = {"native": "CPU tensors",
                 "triton": "Triton installed and CUDA tensors (or TRITON_INTERPRET=1 for CPU "
                           "tensors)"}
        raise ValueError(f"backend={backend!r} needs {needs[backend]}, got tensors on {device}")
    return chosen


def cross_entropy_scores(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    ignore_index: int = -100,
    rows: torch.Tensor | None = None,
    backend: str = "auto",
    validate: bool = True,
) -> Scores:
    """Per-row cross-entropy loss and the Katharopoulos & Fleuret (2018) upper-bound score
    ||softmax(z) - onehot(y)||_2 (the norm of the loss gradient w.r.t. the logits).

    Args:
        logits: [N, C] float16, bfloat16, float32 or float64, any strides; C >= 1. Not
            differentiated through (the scores carry no gradient).
        target: integer [N] (or [len(rows)]): class indices in [0, C), or ignore_index.
        ignore_index: rows with this target score loss 0 and grad_norm 0.
        rows: optional integer [M], rows of logits to score (target[i] belongs to row
            rows[i]); the other rows are never read.
        backend: "auto", "reference", "triton" or "native" (see the module docstring).
        validate: check target values and rows (on the host: a device sync on CUDA), raising
            ValueError / IndexError. With False nothing synchronises (the call can be
            captured in a CUDA graph): on every backend an out-of-range target or row is
            never read, and its row scores NaN.

    Returns:
        Scores(loss, grad_norm): float32 [N] (or [M]).

    Examples:
        >>> import torch, fastis
        >>> logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
        >>> s = fastis.ops.cross_entropy_scores(logits, torch.tensor([0, 2]))
        >>> [round(v, 4) for v in s.loss.tolist()], [round(v, 4) for v in s.grad_norm.tolist()]
        ([0.2395, 1.0986], [0.2609, 0.8165])
    """
    inputs.float_tensor(logits, "logits", 2)
    chosen = backend_for(backend, logits.device, logits_elements=logits.numel())
    logits, target, rows, ignore_index = inputs.logits_call(
        logits, target, rows, ignore_index,
        check_values=validate and not chosen.CHECKS_LOGITS_VALUES)
    return chosen.cross_entropy_scores(logits, target, ignore_index=ignore_index, rows=rows,
                                       validate=validate)


class _CrossEntropyWithScores(torch.autograd.Function):
    """Per-example weighted cross-entropy whose forward also yields the scores. The backward
    reuses the forward's log-sum-exp and holds one [N, C] buffer, the gradient itself."""

    @staticmethod
    def forward(ctx, logits, target, weight, ignore_index, chosen):
        lse = torch.empty(target.shape[0], dtype=torch.float32, device=logits.device)
        scores = chosen.cross_entropy_scores(logits.detach(), target, ignore_index=ignore_index,
                                             lse_out=lse, validate=True)
        ctx.save_for_backward(logits, target, lse, scores.loss, weight)
        ctx.ignore_index, ctx.backend = ignore_index, chosen
        ctx.mark_non_differentiable(scores.loss, scores.grad_norm)
        # A separate tensor from the (non-differentiable) score, float32 like the scores.
        loss = scores.loss.clone() if weight is None else scores.loss * weight.float()
        return loss, scores.loss, scores.grad_norm

    @staticmethod
    def backward(ctx, grad_loss, _grad_score_loss, _grad_score_norm):
        logits, target, lse, loss, weight = ctx.saved_tensors
        grad_logits = grad_weight = None
        if ctx.needs_input_grad[0]:
            scale = grad_loss.float() if weight is None else grad_loss.float() * weight.float()
            grad_logits = ctx.backend.cross_entropy_backward(
                logits.detach(), target, lse, loss, scale, ignore_index=ctx.ignore_index)
        if weight is not None and ctx.needs_input_grad[2]:
            # d(w_i * l_i) / d w_i = l_i: a learned or differentiable weight gets its gradient.
            grad_weight = (grad_loss.float() * loss).to(weight.dtype)
        return grad_logits, None, grad_weight, None, None


def cross_entropy_with_scores(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "none",
    backend: str = "auto",
) -> tuple[torch.Tensor, Scores]:
    """Differentiable per-example cross-entropy that also returns the scores of the same
    pass, for training on importance-sampled batches.

    Args:
        logits: [N, C] float, requiring grad or not.
        target: integer [N] in [0, C) or ignore_index (checked); ignore_index rows have loss
            0 and no gradient.
        weight: optional float [N], per-example weights (importance weights); the loss is
            weight * cross-entropy, and its gradient honours both the weights and the
            incoming gradient (they are folded in before anything is summed). A weight that
            requires grad receives d loss / d weight.
        reduction: "none": the loss per example, float32 [N]; "mean": their mean over the N
            rows, a scalar (the weighted mini-batch loss (1/N) sum_i w_i l_i).
        backend: as in cross_entropy_scores; forward and backward run on the same one.

    Returns:
        (loss, scores): loss differentiable w.r.t. logits (and weight); scores (Scores,
        float32 [N], not differentiable) of the unweighted loss.

    Examples:
        >>> import torch, fastis
        >>> logits = torch.zeros(2, 3, requires_grad=True)
        >>> loss, s = fastis.ops.cross_entropy_with_scores(
        ...     logits, torch.tensor([0, 1]), weight=torch.tensor([1.0, 3.0]), reduction="mean")
        >>> loss.backward()
        >>> round(loss.item(), 4), logits.grad[1].tolist()
        (2.1972, [0.5, -1.0, 0.5])
    """
    logits = inputs.float_tensor(logits, "logits", 2)
    if weight is not None:
        weight = inputs.float_tensor(weight, "weight", 1)
        if weight.shape[0] != logits.shape[0]:
            raise ValueError(
                f"weight has {weight.shape[0]} entries but logits has {logits.shape[0]} rows")
    if reduction not in ("none", "mean"):
        raise ValueError(f"reduction must be 'none' or 'mean', got {reduction!r}")
    inputs.same_device({"logits": logits, "weight": weight})
    chosen = backend_for(backend, logits.device, logits_elements=logits.numel())
    # The forward validates targets: the native loop itself, the others here.
    logits, target, _, ignore_index = inputs.logits_call(
        logits, target, None, ignore_index, check_values=not chosen.CHECKS_LOGITS_VALUES)
    loss, score_loss, grad_norm = _CrossEntropyWithScores.apply(
        logits, target, weight, ignore_index, chosen)
    return (loss.mean() if reduction == "mean" else loss), Scores(score_loss, grad_norm)


def linear_cross_entropy_scores(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    rows: torch.Tensor | None = None,
    backend: str = "auto",
    validate: bool = True,
) -> LinearScores:
    """Scores of a last linear layer followed by cross-entropy, logits = hidden @ weight^T
    (+ bias), computed a tile at a time so the [N, C] logits are never held whole.

    Args:
        hidden: [N, D] float; weight: [C, D] float; bias: optional [C] float.
        target, ignore_index, rows, backend, validate: as in cross_entropy_scores.

    Returns:
        LinearScores(loss, grad_norm, weight_grad_norm): float32 [N] (or [M]);
        weight_grad_norm is the exact per-example Frobenius norm of the gradient of the
        loss w.r.t. the layer's weight (and bias), grad_norm * sqrt(||h||^2 (+ 1)).

    Examples:
        >>> import torch, fastis
        >>> hidden, weight = torch.tensor([[3.0, 4.0]]), torch.zeros(2, 2)
        >>> s = fastis.ops.linear_cross_entropy_scores(hidden, weight, torch.tensor([0]))
        >>> round(s.loss.item(), 4), round(s.weight_grad_norm.item(), 4)   # 5 * sqrt(1/2)
        (0.6931, 3.5355)
    """
    inputs.float_tensor(hidden, "hidden", 2)
    chosen = backend_for(backend, hidden.device)
    hidden, weight, target, bias, rows, ignore_index = inputs.linear_call(
        hidden, weight, target, bias, rows, ignore_index, check_values=validate)
    return chosen.linear_cross_entropy_scores(hidden, weight, target, bias=bias,
                                              ignore_index=ignore_index, rows=rows,
                                              validate=validate)


def sequence_scores(
    scores: Scores,
    target: torch.Tensor,
    *,
    ignore_index: int = -100,
    sequence_ids: torch.Tensor | None = None,
    num_sequences: int | None = None,
) -> Scores:
    """Token scores reduced to per-sequence scores: the mean loss over the sequence's
    scored tokens (0 if none) and the root of the sum of squared token gradient norms (the
    Katharopoulos & Fleuret bound w.r.t. all of the sequence's logits).

    Args:
        scores: token Scores, each field [B, T] (one sequence per row) or [N].
        target: the tokens' targets, same shape; ignore_index marks tokens not scored.
        sequence_ids: with [N] scores, int64 [N] in [0, num_sequences): each token's
            sequence (tokens of a sequence need not be contiguous).
        num_sequences: the number of sequences S (given, so no device sync is needed).

    Returns:
        Scores [B] or [S], float32.

    Examples:
        >>> import torch, fastis
        >>> tokens = fastis.ops.Scores(torch.tensor([[1.0, 3.0]]), torch.tensor([[0.6, 0.8]]))
        >>> fastis.ops.sequence_scores(tokens, torch.tensor([[4, 2]]))
        Scores(loss=tensor([2.]), grad_norm=tensor([1.]))
    """
    loss, grad_norm = (inputs.tensor(t, name) for t, name in zip(scores, Scores._fields))
    target = inputs.tensor(target, "target")
    if loss.shape != target.shape or grad_norm.shape != target.shape:
        raise ValueError(
            f"scores {tuple(loss.shape)} / {tuple(grad_norm.shape)} and target "
            f"{tuple(target.shape)} must have the same shape"
        )
    inputs.same_device({"loss": loss, "grad_norm": grad_norm, "target": target})
    counted = (target != ignore_index).float()
    squares = grad_norm.float().square() * counted
    if sequence_ids is None:
        if loss.ndim != 2:
            raise ValueError(
                "without sequence_ids, scores must be [B, T] (one sequence per row), "
                f"got shape {tuple(loss.shape)}"
            )
        if num_sequences is not None:
            raise ValueError("num_sequences goes with sequence_ids")
        tokens = counted.sum(dim=1)
        loss_sum = (loss.float() * counted).sum(dim=1)
        square_sum = squares.sum(dim=1)
    else:
        inputs.index_tensor(sequence_ids, "sequence_ids")
        if loss.ndim != 1 or sequence_ids.shape != loss.shape:
            raise ValueError(
                f"with sequence_ids, scores, target and sequence_ids must all be [N], got "
                f"{tuple(loss.shape)} and {tuple(sequence_ids.shape)}"
            )
        if num_sequences is None or num_sequences < 0:
            raise ValueError("sequence_ids needs num_sequences >= 0")
        inputs.same_device({"loss": loss, "sequence_ids": sequence_ids})
        ids = sequence_ids.long()
        bad = (ids < 0) | (ids >= num_sequences)
        if bool(bad.any()):
            first = int(bad.nonzero()[0, 0])
            raise IndexError(
                f"sequence_ids[{first}] = {int(ids[first])} is outside [0, {num_sequences})"
            )

        def per_sequence(values: torch.Tensor) -> torch.Tensor:
            out = torch.zeros(num_sequences, dtype=torch.float32, device=values.device)
            return out.index_add_(0, ids, values)

        tokens = per_sequence(counted)
        loss_sum = per_sequence(loss.float() * counted)
        square_sum = per_sequence(squares)
    mean_loss = torch.where(tokens > 0, loss_sum / tokens.clamp(min=1.0), 0.0)
    return Scores(mean_loss, torch.sqrt(square_sum))
