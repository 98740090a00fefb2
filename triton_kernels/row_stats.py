"""Triton helpers both scoring kernels share: folding a tile of logits into the per-row
online-softmax statistics, and finishing them into the loss and gradient norm, exactly as
fastis/ops/reference.py does (see its docstring for the precision choices)."""

from __future__ import annotations

import triton
import triton.language as tl

# See fastis/ops/reference.py: below this gap m - z_y the loss is log1p(d_y * e^gap).
LOG1P_GAP = 60.0


@triton.jit
def log1p(x):
    # Kahan's accurate log1p from log (x >= 0): log(u) * x / (u - 1) with u = 1 + x rounded,
    # and x itself when u rounds to 1. libdevice's log1p is not available everywhere (not in
    # the interpreter).
    u = 1.0 + x
    exact = u == 1.0
    return tl.where(exact, x, tl.log(u) * x / tl.where(exact, 1.0, u - 1.0))


@triton.jit
def one_minus_exp_neg(x):
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
def fold_tile(m, d, d_y, q_y, z, is_y, AXIS: tl.constexpr):
    """Folds a tile of float32 logits z (reduced along AXIS; -inf where padded) into the
    running max m and d = sum e^(z - m), d_y and q_y = sum e^(2(z - m)) without the target
    (is_y marks it): each is rescaled to the new max first (Milakov & Gimelshein 2018), and
    e^(2x) is the square of e^x, never a second exp."""
    if AXIS == 0:
        m_new = tl.maximum(m, tl.max(z, axis=0))
        e = tl.exp(z - m_new)
    else:
        m_new = tl.maximum(m, tl.max(z, axis=1))
        e = tl.exp(z - m_new[:, None])
    rescale = tl.exp(m - m_new)
    e_not_y = tl.where(is_y, 0.0, e)
    d = d * rescale + tl.sum(e, axis=AXIS)
    d_y = d_y * rescale + tl.sum(e_not_y, axis=AXIS)
    q_y = q_y * rescale * rescale + tl.sum(e_not_y * e_not_y, axis=AXIS)
    return m_new, d, d_y, q_y


@triton.jit
def finish(m, d, d_y, q_y, z_y, LOG1P_GAP: tl.constexpr):
    """(loss, grad_norm) from the row statistics: loss = log1p(d_y e^(m - z_y)) near the max,
    else (m - z_y) + log d; grad_norm^2 = (1 - p_y)^2 + q_y / d^2 with 1 - p_y = -expm1(-loss)."""
    gap = m - z_y
    near_max = gap < LOG1P_GAP
    loss = tl.where(near_max, log1p(d_y * tl.exp(tl.where(near_max, gap, 0.0))), gap + tl.log(d))
    one_minus_p_y = one_minus_exp_neg(loss)
    return loss, tl.sqrt(one_minus_p_y * one_minus_p_y + q_y / (d * d))
