"""Property-based fuzzing of the scoring ops on every backend (the native loop with
validate=False included): adversarial logits (every float dtype, extreme values, odd
strides, odd shapes), targets (out of range, huge, negative, ignored) and rows. Every call
raises a named error, or returns float32 scores that match a float64 reference where the
row is valid, NaN where its target or row is out of range (validate=False), 0 where
ignored."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from fuzz import FUZZ, NAMED
from hypothesis import given, settings
from hypothesis import strategies as st

from fastis import ops

IGNORE = -100
BACKENDS = ["reference", "native"] + (["triton"] if importlib.util.find_spec("triton") else [])
VALUES = [0.0, -0.0, 1.0, -1.0, 30.0, -30.0, 1e4, -1e4, 1e38, -1e38, float("inf"),
          float("-inf"), float("nan")]
TARGETS = [0, 1, 2, 5, -1, -3, IGNORE, 10**12, -(10**12), 2**62]


@st.composite
def logits_case(draw):
    n, c = draw(st.integers(0, 5)), draw(st.integers(1, 7))
    dtype = draw(st.sampled_from([torch.float16, torch.bfloat16, torch.float32,
                                  torch.float64]))
    base = torch.tensor([[draw(st.sampled_from(VALUES)) if draw(st.integers(0, 4)) == 0
                          else draw(st.floats(-20, 20)) for _ in range(c)] for _ in range(n)],
                        dtype=torch.float64).reshape(n, c)
    layout = draw(st.sampled_from(["contiguous", "transposed", "strided"]))
    if layout == "transposed":
        z = base.t().contiguous().t()
    elif layout == "strided":
        wide = torch.zeros(n, 2 * c, dtype=torch.float64)
        wide[:, ::2] = base
        z = wide[:, ::2]
    else:
        z = base
    target = torch.tensor([draw(st.sampled_from(TARGETS)) for _ in range(n)], dtype=torch.int64)
    if draw(st.booleans()):
        target = target.clamp(-(2**31), 2**31 - 1).to(torch.int32)
    rows = None
    if n and draw(st.booleans()):
        rows = torch.tensor([draw(st.sampled_from([0, n - 1, n, n + 1, -1, 10**12]))
                             for _ in range(draw(st.integers(1, 4)))], dtype=torch.int64)
        target = target[:len(rows)] if len(rows) <= n else torch.cat(
            [target, torch.zeros(len(rows) - n, dtype=target.dtype)])
    return z.to(dtype), target, rows


def reference(z: torch.Tensor, target: torch.Tensor, rows) -> tuple:
    """float64 loss and ||softmax - onehot|| per scored row, with masks of the rows that
    score a value (not NaN) and of the ignored ones; and whether every row and target is in
    range (what validate=True checks)."""
    rows = torch.arange(z.shape[0]) if rows is None else rows
    count = len(rows)
    n, c = z.shape
    loss, norm = torch.zeros(count, dtype=torch.float64), torch.zeros(count, dtype=torch.float64)
    valid, ignored = torch.ones(count, dtype=torch.bool), torch.zeros(count, dtype=torch.bool)
    in_range = all(0 <= int(r) < n for r in rows) and all(
        int(y) == IGNORE or 0 <= int(y) < c for y in target)
    for i in range(count):
        r, y = int(rows[i]), int(target[i])
        # An ignored row scores 0 whatever its row index; any other row needs both in range.
        ignored[i] = y == IGNORE
        valid[i] = bool(ignored[i]) or (0 <= r < n and 0 <= y < c)
        if valid[i] and not ignored[i]:
            row = z[r].double()
            loss[i] = torch.logsumexp(row, 0) - row[y]
            p = row.softmax(0)
            p[y] -= 1
            norm[i] = p.norm()
    return loss, norm, valid, ignored, in_range


@pytest.mark.parametrize("validate", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
@settings(FUZZ, max_examples=50)
@given(case=logits_case())
def test_scores_are_right_or_refused_by_name(case, backend, validate):
    z, target, rows = case
    try:
        s = ops.cross_entropy_scores(z, target, rows=rows, backend=backend, validate=validate)
    except NAMED:
        # Refusing is right only for out-of-range values when validating.
        assert validate and not reference(z, target, rows)[4]
        return
    loss, norm, valid, ignored, in_range = reference(z, target, rows)
    assert s.loss.dtype == s.grad_norm.dtype == torch.float32
    assert s.loss.shape == s.grad_norm.shape == loss.shape
    assert validate is False or in_range
    scored = valid & ~ignored
    assert torch.isnan(s.loss[~valid]).all() and torch.isnan(s.grad_norm[~valid]).all()
    assert (s.loss[valid & ignored] == 0).all() and (s.grad_norm[valid & ignored] == 0).all()
    # Where the row's logits are finite, the scores match float64 (to half precision's
    # rounding of the inputs); a non-finite input row gives NaN, not a crash.
    finite_rows = torch.tensor([bool(torch.isfinite(z[int(r)]).all()) if 0 <= int(r) < len(z)
                                else False for r in (rows if rows is not None
                                                     else range(len(z)))], dtype=torch.bool)
    check = scored & finite_rows & torch.isfinite(loss)
    # The reference reads the logits in their own dtype: the scores are exact to float32
    # accumulation (the oracle uses the same rounded inputs).
    assert torch.allclose(s.loss[check].double(), loss[check], rtol=1e-5, atol=1e-6)
    assert torch.allclose(s.grad_norm[check].double(), norm[check], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("validate", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
@settings(FUZZ, max_examples=30)
@given(case=logits_case(), bias=st.booleans())
def test_linear_scores_are_right_or_refused_by_name(case, backend, validate, bias):
    z, target, rows = case
    c = z.shape[1]
    hidden = torch.nan_to_num(z.float(), nan=0.0, posinf=3.0, neginf=-3.0)[:, :min(c, 3)]
    weight = torch.linspace(-1, 1, c * hidden.shape[1]).reshape(c, hidden.shape[1])
    b = torch.linspace(0, 1, c) if bias else None
    try:
        s = ops.linear_cross_entropy_scores(hidden, weight, target, bias=b, rows=rows,
                                            backend=backend, validate=validate)
    except NAMED:
        assert validate and not reference(z, target, rows)[4]
        return
    logits = hidden.double() @ weight.double().T + (0 if b is None else b.double())
    loss, norm, valid, ignored, _ = reference(logits, target, rows)
    assert torch.isnan(s.loss[~valid]).all()
    scored = valid & ~ignored
    assert torch.allclose(s.loss[scored].double(), loss[scored], rtol=1e-4, atol=1e-5)
    assert torch.allclose(s.grad_norm[scored].double(), norm[scored], rtol=1e-4, atol=1e-5)


@FUZZ
@given(logits=st.one_of(st.none(), st.integers(), st.just([[1.0, 2.0]]),
                        st.just(np.zeros((2, 3))), st.just(torch.zeros(2, 3, dtype=torch.int64)),
                        st.just(torch.zeros(2, 3, 1)), st.just(torch.zeros(2, 3,
                                                                           dtype=torch.complex64))),
       target=st.one_of(st.just(torch.tensor([0, 1])), st.just(torch.tensor([0.0, 1.0])),
                        st.just([0, 1]), st.just(torch.tensor([[0, 1]])),
                        st.just(torch.tensor([True, False]))))
def test_inputs_of_the_wrong_kind_are_refused_by_name(logits, target):
    for backend in BACKENDS:
        try:
            ops.cross_entropy_scores(logits, target, backend=backend)
        except NAMED:
            continue
        assert isinstance(logits, torch.Tensor) and logits.dtype.is_floating_point
        assert isinstance(target, torch.Tensor) and target.dtype == torch.int64
