"""Per-example importance scores: cross-entropy loss and the norm of its gradient, from
logits or from a last linear layer, plus their reduction to per-sequence scores.

Scores are float32 tensors [N] on the input's device, never an extra [N, C] tensor beyond
bounded row chunks. Inputs are checked before any work: a wrong shape, dtype, device or
target raises an error that names the problem.

Backends: "reference" is the pure-PyTorch implementation in `fastis.reference` (float32,
chunked); "triton" runs the kernels in `fastis.triton_kernels`, on CUDA tensors, or on CPU
tensors when TRITON_INTERPRET=1 (slow: for tests); "native" (CPU tensors, logits only) is a
C++ loop in the extension that scores row by row in double, for small inputs, where the
reference's ~40 tensor operations cost far more than the arithmetic; "auto" takes Triton for
CUDA tensors when it is installed, "native" for CPU logits of at most 2^16 elements, the
reference otherwise. sequence_scores runs in PyTorch on every device.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

from fastis import reference
from fastis.reference import LinearScores, Scores

__all__ = [
    "LinearScores",
    "Scores",
    "cross_entropy_scores",
    "cross_entropy_with_scores",
    "linear_cross_entropy_scores",
    "sequence_scores",
]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_BACKENDS = ("auto", "reference", "triton", "native")
# Up to this many logits, "auto" scores CPU tensors with the native loop: ~1.5 ns per logit
# plus ~10 us per call, against ~40 tensor operations of the reference (0.2-0.6 ms).
_NATIVE_MAX_ELEMENTS = 1 << 16


def _require_tensor(x: object, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def _require_float(x: torch.Tensor, name: str, ndim: int) -> None:
    if x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(x.shape)}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {x.dtype}")


def _require_index(x: torch.Tensor, name: str) -> None:
    if x.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(x.shape)}")
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {x.dtype}")


def _require_same_device(tensors: dict[str, torch.Tensor | None]) -> None:
    present = {name: t.device for name, t in tensors.items() if t is not None}
    devices = set(present.values())
    if len(devices) > 1:
        listed = ", ".join(f"{name} on {device}" for name, device in present.items())
        raise ValueError(f"all inputs must be on one device, got {listed}")


def _check_backend(backend: str) -> None:
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")


@functools.cache
def _triton_installed() -> bool:
    # Looked up once: find_spec walks sys.path (~30 us), too slow to repeat every step.
    return importlib.util.find_spec("triton") is not None


def _use_triton(backend: str, device: torch.device) -> bool:
    """Whether to run the Triton kernel: backend "triton" (refused where it cannot run) or
    "auto" on a CUDA device with Triton installed."""
    installed = _triton_installed()
    runnable = installed and (device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")
    if backend == "triton" and not runnable:
        raise ValueError(
            "backend='triton' needs Triton installed and CUDA tensors (or TRITON_INTERPRET=1 "
            "for CPU tensors)"
        )
    return backend == "triton" or (backend == "auto" and installed and device.type == "cuda")


def _use_native(backend: str, logits: torch.Tensor) -> bool:
    """Whether to score with the extension's row loop: backend "native" (CPU only) or
    "auto" on small CPU logits."""
    if backend == "native":
        if logits.device.type != "cpu":
            raise ValueError(f"backend='native' runs on CPU tensors, got {logits.device}")
        return True
    return (backend == "auto" and logits.device.type == "cpu"
            and logits.numel() <= _NATIVE_MAX_ELEMENTS)


def _native_layout(logits: torch.Tensor) -> torch.Tensor:
    """Logits as float32/float64 with contiguous rows, for the extension's row loops."""
    z = logits.detach()
    if z.dtype in (torch.float16, torch.bfloat16):
        z = z.float()
    if z.shape[1] > 1 and z.stride(1) != 1:
        z = z.contiguous()
    return z


def _native_scores(logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int,
                   rows: torch.Tensor | None = None, lse_out: torch.Tensor | None = None,
                   validate: bool = False) -> Scores:
    """cross_entropy_scores on the extension's row loop (float32 or float64 logits are read
    in place when their rows are contiguous; half precision is widened first). With
    validate, the loop checks targets and rows itself (same errors as _checked_target and
    _checked_rows, without their tensor operations)."""
    from fastis import _C

    loss, grad_norm, lse = _C.cross_entropy_row_scores(
        _native_layout(logits).numpy(), target.contiguous().numpy(),
        None if rows is None else rows.contiguous().numpy(), int(ignore_index), validate)
    if lse_out is not None:
        lse_out.copy_(torch.from_numpy(lse))
    return Scores(torch.from_numpy(loss), torch.from_numpy(grad_norm))


def _native_backward(logits: torch.Tensor, target: torch.Tensor, lse: torch.Tensor,
                     loss: torch.Tensor, scale: torch.Tensor, *, ignore_index: int
                     ) -> torch.Tensor:
    """reference.cross_entropy_backward on the extension's row loop, in the logits' dtype."""
    from fastis import _C

    grad = _C.cross_entropy_row_grad(
        _native_layout(logits).numpy(), target.contiguous().numpy(), lse.numpy(),
        loss.numpy(), scale.float().contiguous().numpy(), int(ignore_index))
    return torch.from_numpy(grad).to(logits.dtype)


def _checked_rows(
    rows: torch.Tensor | None, num_rows: int, validate: bool = True
) -> torch.Tensor | None:
    """rows as int64, each in [0, num_rows) (checked if validate); IndexError names the first
    bad one."""
    if rows is None:
        return None
    _require_index(_require_tensor(rows, "rows"), "rows")
    rows = rows.long()
    if not validate:
        return rows
    bad = (rows < 0) | (rows >= num_rows)
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        raise IndexError(f"rows[{first}] = {int(rows[first])} is outside [0, {num_rows})")
    return rows


def _checked_target(
    target: torch.Tensor,
    expected: int,
    num_classes: int,
    ignore_index: int,
    what: str,
    validate: bool = True,
) -> torch.Tensor:
    """target as int64 of length `expected`, each in [0, num_classes) or ignore_index
    (values checked if validate: reading them is a device sync on CUDA)."""
    _require_index(target, "target")
    if target.shape[0] != expected:
        raise ValueError(f"target has {target.shape[0]} entries but {what} has {expected}")
    target = target.long()
    if not validate:
        return target
    bad = ((target < 0) | (target >= num_classes)) & (target != ignore_index)
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"target[{first}] = {int(target[first])} is outside [0, {num_classes}) and is not "
            f"ignore_index ({ignore_index})"
        )
    return target


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
        logits: [N, C] float16, bfloat16, float32 or float64, any strides; C >= 1.
        target: integer [N] (or [len(rows)]): class indices in [0, C), or ignore_index.
        ignore_index: rows with this target score loss 0 and grad_norm 0.
        rows: optional integer [M], rows of logits to score (target[i] belongs to row
            rows[i]); the other rows are never read.
        backend: "auto", "reference", "triton" or "native" (see the module docstring).
        validate: check target values and rows on the host (a device sync on CUDA). With
            False nothing synchronises (the call can be captured in a CUDA graph): an
            out-of-range target or row is never read, and its row scores NaN on the Triton
            backend (the reference backend still raises, from PyTorch's indexing).

    Returns:
        Scores(loss, grad_norm): float32 [N] (or [M]), accumulated in float32.
    """
    _check_backend(backend)
    logits = _require_tensor(logits, "logits")
    target = _require_tensor(target, "target")
    _require_float(logits, "logits", 2)
    _require_same_device({"logits": logits, "target": target, "rows": rows})
    num_rows, num_classes = logits.shape
    if num_classes < 1:
        raise ValueError("logits must have at least one class (C >= 1)")
    triton = _use_triton(backend, logits.device)
    native = not triton and _use_native(backend, logits)
    # The native loop checks values itself: here only shapes and dtypes.
    host_checks = validate and not native
    rows = _checked_rows(rows, num_rows, host_checks)
    expected, what = (num_rows, "logits") if rows is None else (rows.shape[0], "rows")
    target = _checked_target(target, expected, num_classes, ignore_index, what, host_checks)
    if triton:
        from fastis.triton_kernels import cross_entropy_scores as kernel

        return kernel.cross_entropy_scores(logits, target, ignore_index=ignore_index, rows=rows)
    if native:
        return _native_scores(logits, target, ignore_index=ignore_index, rows=rows,
                              validate=validate)
    return reference.cross_entropy_scores(logits, target, ignore_index=ignore_index, rows=rows)


class _CrossEntropyWithScores(torch.autograd.Function):
    """Per-example weighted cross-entropy whose forward also yields the scores. The backward
    reuses the forward's log-sum-exp and holds one [N, C] buffer, the gradient itself."""

    @staticmethod
    def forward(ctx, logits, target, weight, ignore_index, path):
        lse = torch.empty(target.shape[0], dtype=torch.float32, device=logits.device)
        triton = path == "triton"
        if triton:
            from fastis.triton_kernels import cross_entropy_scores as forward_kernel

            score = forward_kernel.cross_entropy_scores
        elif path == "native":
            score = functools.partial(_native_scores, validate=True)
        else:
            score = reference.cross_entropy_scores
        scores = score(logits.detach(), target, ignore_index=ignore_index, lse_out=lse)
        ctx.save_for_backward(logits, target, lse, scores.loss, weight)
        ctx.ignore_index = ignore_index
        ctx.path = path
        ctx.mark_non_differentiable(scores.loss, scores.grad_norm)
        # A separate tensor from the (non-differentiable) score, float32 like the scores.
        loss = scores.loss.clone() if weight is None else scores.loss * weight.float()
        return loss, scores.loss, scores.grad_norm

    @staticmethod
    def backward(ctx, grad_loss, _grad_score_loss, _grad_score_norm):
        logits, target, lse, loss, weight = ctx.saved_tensors
        scale = grad_loss.float() if weight is None else grad_loss.float() * weight.float()
        if ctx.path == "triton":
            from fastis.triton_kernels import cross_entropy_backward as backward_kernel

            backward = backward_kernel.cross_entropy_backward
        elif ctx.path == "native":
            backward = _native_backward
        else:
            backward = reference.cross_entropy_backward
        grad = backward(logits.detach(), target, lse, loss, scale, ignore_index=ctx.ignore_index)
        return grad, None, None, None, None


def cross_entropy_with_scores(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    backend: str = "auto",
) -> tuple[torch.Tensor, Scores]:
    """Differentiable per-example cross-entropy that also returns the scores of the same
    pass, for training on importance-sampled batches.

    Args:
        logits: [N, C] float, requiring grad or not.
        target: integer [N]; ignore_index rows have loss 0 and no gradient.
        weight: optional float [N], per-example weights (importance weights); the returned
            loss is weight * cross-entropy, and its gradient honours both the weights and
            the incoming gradient (they are folded in before anything is summed).
        backend: as in cross_entropy_scores; forward and backward run on the same one.

    Returns:
        (loss, scores): loss float32 [N], differentiable w.r.t. logits; scores
        (Scores, float32 [N], not differentiable) of the unweighted loss.
    """
    logits = _require_tensor(logits, "logits")
    target = _require_tensor(target, "target")
    _require_float(logits, "logits", 2)
    if weight is not None:
        _require_float(_require_tensor(weight, "weight"), "weight", 1)
        if weight.shape[0] != logits.shape[0]:
            raise ValueError(
                f"weight has {weight.shape[0]} entries but logits has {logits.shape[0]} rows"
            )
    _require_same_device({"logits": logits, "target": target, "weight": weight})
    if logits.shape[1] < 1:
        raise ValueError("logits must have at least one class (C >= 1)")
    _check_backend(backend)
    if _use_triton(backend, logits.device):
        path = "triton"
    else:
        path = "native" if _use_native(backend, logits) else "reference"
    # The native forward checks target values itself (see _native_scores).
    target = _checked_target(target, logits.shape[0], logits.shape[1], ignore_index, "logits",
                             validate=path != "native")
    loss, score_loss, grad_norm = _CrossEntropyWithScores.apply(
        logits, target, weight, ignore_index, path
    )
    return loss, Scores(score_loss, grad_norm)


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
    """
    _check_backend(backend)
    if backend == "native":
        raise ValueError("backend='native' scores logits only; linear_cross_entropy_scores "
                         "runs on 'auto', 'reference' or 'triton'")
    hidden = _require_tensor(hidden, "hidden")
    weight = _require_tensor(weight, "weight")
    target = _require_tensor(target, "target")
    _require_float(hidden, "hidden", 2)
    _require_float(weight, "weight", 2)
    if bias is not None:
        _require_float(_require_tensor(bias, "bias"), "bias", 1)
    _require_same_device(
        {"hidden": hidden, "weight": weight, "target": target, "bias": bias, "rows": rows}
    )
    num_rows, features = hidden.shape
    num_classes = weight.shape[0]
    if weight.shape[1] != features:
        raise ValueError(
            f"weight must be [C, {features}] to match hidden [N, {features}], "
            f"got {tuple(weight.shape)}"
        )
    if num_classes < 1:
        raise ValueError("weight must have at least one class (C >= 1)")
    if bias is not None and bias.shape[0] != num_classes:
        raise ValueError(f"bias has {bias.shape[0]} entries but weight has {num_classes} rows")
    rows = _checked_rows(rows, num_rows, validate)
    expected, what = (num_rows, "hidden") if rows is None else (rows.shape[0], "rows")
    target = _checked_target(target, expected, num_classes, ignore_index, what, validate)
    if _use_triton(backend, hidden.device):
        from fastis.triton_kernels import linear_cross_entropy_scores as kernel

        return kernel.linear_cross_entropy_scores(
            hidden, weight, target, bias=bias, ignore_index=ignore_index, rows=rows
        )
    return reference.linear_cross_entropy_scores(
        hidden, weight, target, bias=bias, ignore_index=ignore_index, rows=rows
    )


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
    """
    loss, grad_norm = (_require_tensor(t, name) for t, name in zip(scores, Scores._fields))
    target = _require_tensor(target, "target")
    if loss.shape != target.shape or grad_norm.shape != target.shape:
        raise ValueError(
            f"scores {tuple(loss.shape)} / {tuple(grad_norm.shape)} and target "
            f"{tuple(target.shape)} must have the same shape"
        )
    _require_same_device({"loss": loss, "grad_norm": grad_norm, "target": target})
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
        _require_index(_require_tensor(sequence_ids, "sequence_ids"), "sequence_ids")
        if loss.ndim != 1 or sequence_ids.shape != loss.shape:
            raise ValueError(
                f"with sequence_ids, scores, target and sequence_ids must all be [N], got "
                f"{tuple(loss.shape)} and {tuple(sequence_ids.shape)}"
            )
        if num_sequences is None or num_sequences < 0:
            raise ValueError("sequence_ids needs num_sequences >= 0")
        _require_same_device({"loss": loss, "sequence_ids": sequence_ids})
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
