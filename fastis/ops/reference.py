"""The "reference" backend of the scoring ops: pure PyTorch, on every device. It is the CPU
path of `fastis.ops` for large inputs, the oracle the Triton kernels are tested against, and
the baseline they are benchmarked against.

Like every backend it takes inputs whose types, shapes and devices `fastis.ops` checked.
With `validate=False` the values of targets and rows were not checked: a row whose target or
row index is out of range scores NaN and its row is never read. Work is done in float32 on
row chunks, so the extra memory stays bounded (about three chunk-sized float32 tensors,
`chunk_elements` entries each) whatever N and C are.

The math, for one row with logits z (C classes) and target y (docs/scoring.md):
    m = max_j z_j,  d = sum_j e^(z_j - m),  lse = m + log d,  p = softmax(z)
    loss = lse - z_y
    grad_norm^2 = ||p - onehot(y)||^2 = (1 - p_y)^2 + sum_{j != y} p_j^2
Precision, in float32 (the kernels do the same):
- sum_{j != y} p_j^2 is summed with the target masked out, rather than as
  sum_j p_j^2 - p_y^2, which cancels as p_y -> 1;
- the loss of a row whose target is (near) the maximum is log1p(d_y * e^(m - z_y)), with
  d_y = sum_{j != y} e^(z_j - m): lse - z_y would cancel to a few ulps of lse when the loss
  is ~1e-7 (a confident row);
- 1 - p_y = -expm1(-loss), exact to float32 precision even when p_y rounds to 1.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from fastis.ops.types import LinearScores, Scores

# fastis.ops checks target and row values for this backend (when validate is on).
CHECKS_LOGITS_VALUES = False

# Rows per chunk are chosen so a chunk holds about this many logits (float32: 16 MiB).
DEFAULT_CHUNK_ELEMENTS = 1 << 22

# Below this gap m - z_y the loss is taken as log1p(d_y * e^(m - z_y)): e^60 * C stays far
# below the float32 maximum for any C up to 1e9.
_LOG1P_GAP = 60.0


def runs_on(device: torch.device) -> bool:
    return True


def _accumulated(x: torch.Tensor) -> torch.Tensor:
    """x in the precision its statistics are accumulated in: float64 for float64 input (its
    range and precision kept, so a loss beyond float32's range becomes inf, not NaN, once
    stored as float32), float32 otherwise."""
    return x.double() if x.dtype == torch.float64 else x.float()


def _chunk_rows(num_classes: int, chunk_elements: int) -> int:
    return max(1, chunk_elements // max(1, num_classes))


class _RowStats(NamedTuple):
    """Per-row statistics of logits relative to their maximum m (all float32 [n])."""

    m: torch.Tensor  # max_j z_j
    d: torch.Tensor  # sum_j e^(z_j - m)
    d_y: torch.Tensor  # sum_{j != y} e^(z_j - m)
    q_y: torch.Tensor  # sum_{j != y} e^(2 (z_j - m))
    z_y: torch.Tensor  # the target's logit


def _stats(z: torch.Tensor, target: torch.Tensor, inside: torch.Tensor | None = None) -> _RowStats:
    """_RowStats of float32 logits z [n, C] for targets in [0, C). With `inside` (bool [n]),
    only rows where it is true hold their target in z; the others get z_y = 0 and nothing
    masked (z is then one class tile of wider logits)."""
    m = z.amax(dim=1)
    e = torch.exp(z - m[:, None])
    d = e.sum(dim=1)
    z_y = z.gather(1, target[:, None]).squeeze(1)
    is_target = torch.zeros_like(e, dtype=torch.bool)
    if inside is None:
        is_target.scatter_(1, target[:, None], True)
    else:
        is_target.scatter_(1, target[:, None], inside[:, None])
        z_y = torch.where(inside, z_y, 0.0)
    e.masked_fill_(is_target, 0.0)
    d_y = e.sum(dim=1)
    # e^(2x) as the square of e^x: no second exponential (the kernels do the same).
    q_y = e.square_().sum(dim=1)
    return _RowStats(m, d, d_y, q_y, z_y)


def _merge(a: _RowStats, b: _RowStats) -> _RowStats:
    """Statistics of the concatenation of two column ranges of the same rows (online
    softmax: each part is rescaled to the common maximum). The target lies in one part."""
    m = torch.maximum(a.m, b.m)
    sa, sb = torch.exp(a.m - m), torch.exp(b.m - m)
    return _RowStats(
        m,
        a.d * sa + b.d * sb,
        a.d_y * sa + b.d_y * sb,
        a.q_y * sa * sa + b.q_y * sb * sb,
        a.z_y + b.z_y,  # the part without the target carries 0
    )


def log_sum_exp(s: _RowStats) -> torch.Tensor:
    """log sum_j e^(z_j) per row."""
    return s.m + torch.log(s.d)


def _finish(s: _RowStats) -> Scores:
    """Loss and gradient norm from row statistics (see the module docstring)."""
    gap = s.m - s.z_y
    near_max = gap < _LOG1P_GAP
    loss = torch.where(
        near_max,
        torch.log1p(s.d_y * torch.exp(torch.where(near_max, gap, 0.0))),
        gap + torch.log(s.d),
    )
    one_minus_p_y = -torch.expm1(-loss)
    grad_norm = torch.sqrt(one_minus_p_y.square() + s.q_y / s.d.square())
    return Scores(loss, grad_norm)


class _Chunk(NamedTuple):
    """One chunk of scored rows: output positions [begin, end), the rows of the input they
    read, their targets (ignored and out-of-range ones replaced by class 0), which are not
    ignored, and which have a target and row in range (the others score NaN)."""

    begin: int
    end: int
    picked: slice | torch.Tensor
    target: torch.Tensor
    keep: torch.Tensor
    valid: torch.Tensor


def _chunks(target: torch.Tensor, rows: torch.Tensor | None, step: int, ignore_index: int,
            num_rows: int, num_classes: int):
    """The scored rows, `step` at a time. Out-of-range rows are read as row 0 and
    out-of-range targets as class 0 (never out of bounds); `valid` marks them."""
    count = target.shape[0]
    for begin in range(0, count, step):
        end = min(count, begin + step)
        y = target[begin:end]
        keep = y != ignore_index
        valid = ~keep | ((y >= 0) & (y < num_classes))
        if rows is None:
            picked: slice | torch.Tensor = slice(begin, end)
        else:
            picked = rows[begin:end]
            inside = (picked >= 0) & (picked < num_rows)
            valid &= inside
            picked = torch.where(inside, picked, 0)
        yield _Chunk(begin, end, picked, torch.where(keep & valid, y, 0), keep, valid)


def _blank(values: tuple[torch.Tensor, ...], c: _Chunk) -> tuple[torch.Tensor, ...]:
    """Ignored rows score 0, rows with an out-of-range target or row NaN."""
    return tuple(torch.where(c.keep, torch.where(c.valid, t, torch.nan), 0.0) for t in values)


def cross_entropy_scores(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    ignore_index: int = -100,
    rows: torch.Tensor | None = None,
    lse_out: torch.Tensor | None = None,
    validate: bool = True,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> Scores:
    """Per-row cross-entropy loss and ||softmax - onehot|| of logits [N, C] (float32, float16
    or bfloat16, any strides) against int64 target [M]; M = N, or M = len(rows) when rows
    (int64 [M]) selects the rows to score (target[i] belongs to row rows[i]). Returns
    float32 Scores [M]; rows whose target is ignore_index score 0. lse_out (float32 [M]),
    if given, receives each row's log-sum-exp (for a backward pass). `validate` is not
    read: out-of-range values score NaN either way (module docstring)."""
    num_rows, num_classes = logits.shape
    count = target.shape[0]
    loss = torch.zeros(count, dtype=torch.float32, device=logits.device)
    grad_norm = torch.zeros_like(loss)
    step = _chunk_rows(num_classes, chunk_elements)
    for c in _chunks(target, rows, step, ignore_index, num_rows, num_classes):
        stats = _stats(_accumulated(logits[c.picked].detach()), c.target)
        loss[c.begin : c.end], grad_norm[c.begin : c.end] = _blank(_finish(stats), c)
        if lse_out is not None:
            lse_out[c.begin : c.end] = torch.where(c.valid, log_sum_exp(stats), torch.nan)
    return Scores(loss, grad_norm)


def cross_entropy_backward(
    logits: torch.Tensor,
    target: torch.Tensor,
    lse: torch.Tensor,
    loss: torch.Tensor,
    row_scale: torch.Tensor,
    *,
    ignore_index: int = -100,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """d/dz of sum_i row_scale_i * loss_i: row_scale_i * (softmax(z_i) - onehot(y_i)), from
    the forward's log-sum-exp and loss (float32 [N]); rows with ignore_index get 0. One
    [N, C] buffer in the logits' dtype (the result), filled a row chunk at a time."""
    grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    step = _chunk_rows(logits.shape[1], chunk_elements)
    for begin in range(0, logits.shape[0], step):
        end = min(logits.shape[0], begin + step)
        y = target[begin:end]
        keep = y != ignore_index
        scale = torch.where(keep, row_scale[begin:end].float(), 0.0)
        g = torch.exp(logits[begin:end].float() - lse[begin:end, None])
        # The target's entry p_y - 1 = expm1(-loss): exact even when p_y rounds to 1 (the
        # loss itself was computed without cancellation).
        y_safe = torch.where(keep, y, 0)[:, None]
        g.scatter_(1, y_safe, torch.expm1(-loss[begin:end, None]))
        grad[begin:end] = g * scale[:, None]
    return grad


def linear_cross_entropy_scores(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    rows: torch.Tensor | None = None,
    validate: bool = True,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    class_tile: int = 8192,
) -> LinearScores:
    """Scores of logits = hidden @ weight^T (+ bias) without ever holding them whole:
    hidden [N, D], weight [C, D], bias [C]; the logits are formed a tile of rows x classes at
    a time and their row statistics merged across class tiles. Also returns the exact
    per-example norm of the last layer's gradient, grad_norm * sqrt(||h||^2 (+ 1 with a
    bias)): the gradient of one example's loss w.r.t. W is the rank-1 (p - e_y) h^T
    (Goodfellow 2015). Same target / rows conventions as cross_entropy_scores."""
    num_classes = weight.shape[0]
    count = target.shape[0]
    out = [torch.zeros(count, dtype=torch.float32, device=hidden.device) for _ in range(3)]
    # Tiles of about chunk_elements logits: class tiles of up to class_tile, then as many rows.
    class_step = min(num_classes, class_tile)
    row_step = _chunk_rows(class_step, chunk_elements)
    wide = torch.float64 in (hidden.dtype, weight.dtype)
    w32 = weight.detach().to(torch.float64 if wide else torch.float32)
    b32 = None if bias is None else bias.detach().to(w32.dtype)
    for c in _chunks(target, rows, row_step, ignore_index, hidden.shape[0], num_classes):
        h = hidden[c.picked].detach().to(w32.dtype)
        y_safe = c.target
        merged = None
        for first in range(0, num_classes, class_step):
            last = min(num_classes, first + class_step)
            z = h @ w32[first:last].T
            if b32 is not None:
                z += b32[first:last]
            inside = (y_safe >= first) & (y_safe < last)
            part = _stats(z, torch.where(inside, y_safe - first, 0), inside)
            merged = part if merged is None else _merge(merged, part)
        scores = _finish(merged)
        h_norm_sq = h.square().sum(dim=1) + (0.0 if bias is None else 1.0)
        weight_grad_norm = scores.grad_norm * torch.sqrt(h_norm_sq)
        results = _blank((*scores, weight_grad_norm), c)
        for tensor, result in zip(out, results):
            tensor[c.begin : c.end] = result
    return LinearScores(*out)
