"""fastis.ops scores against an independent float64 computation: shapes, dtypes, hard rows
(ignored, all-equal, shifted, confident, NaN), row subsets and strides, the linear layer's
exact per-example gradient norm against autograd, sequence reduction, and bad input."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F

from fastis import ops
from fastis.ops import reference

# Every op runs on every backend; Triton (interpreted on CPU, see conftest.py) only where it
# is installed.
BACKENDS = [
    "reference",
    "native",
    pytest.param(
        "triton",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("triton") is None, reason="Triton is not installed"
        ),
    ),
]

LINEAR_BACKENDS = BACKENDS

torch.set_default_dtype(torch.float32)

IGNORE = -100


def oracle(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE):
    """(loss, grad_norm) in float64 by the textbook formulas, from the same (rounded)
    input values: log_softmax, and ||softmax - onehot|| as a plain vector norm."""
    z = logits.double()
    keep = target != ignore_index
    y = torch.where(keep, target, 0).long()
    log_p = z.log_softmax(dim=1)
    loss = -log_p.gather(1, y[:, None]).squeeze(1)
    g = log_p.exp() - F.one_hot(y, z.shape[1]).double()
    grad_norm = g.norm(dim=1)
    return torch.where(keep, loss, 0.0), torch.where(keep, grad_norm, 0.0)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / |want| over the entries (entries where want = 0 must be exact)."""
    got, want = got.detach().double(), want.detach().double()
    if got.numel() == 0:
        return 0.0
    zero = want == 0
    assert torch.equal(got[zero], want[zero])
    ratios = ((got - want).abs() / want.abs())[~zero]
    return float(ratios.max()) if ratios.numel() else 0.0


def make_logits(n: int, c: int, seed: int, scale: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g) * scale


def make_target(n: int, c: int, seed: int, ignored: float = 0.1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1)
    y = torch.randint(0, c, (n,), generator=g)
    y[torch.rand(n, generator=g) < ignored] = IGNORE
    return y


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("c", [1, 2, 123, 507, 4099, 32000])
@pytest.mark.parametrize("n", [0, 1, 77, 289])
def test_float32_matches_float64(n, c, backend):
    logits, target = make_logits(n, c, seed=n * 7 + c), make_target(n, c, seed=c)
    s = ops.cross_entropy_scores(logits, target, backend=backend)
    assert s.loss.dtype == s.grad_norm.dtype == torch.float32
    assert s.loss.shape == s.grad_norm.shape == (n,)
    loss, grad_norm = oracle(logits, target)
    assert relative_error(s.loss, loss) <= 1e-5
    assert relative_error(s.grad_norm, grad_norm) <= 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("c", [123, 4099])
def test_half_inputs_at_most_twice_torch_same_dtype_error(dtype, c, backend):
    # The flash-attention rule: the error of fastis on half-precision inputs is at most
    # twice that of PyTorch doing the same computation in that dtype. Both are compared with
    # float64 on the same rounded inputs.
    logits = make_logits(289, c, seed=c).to(dtype)
    target = make_target(289, c, seed=c, ignored=0.0)
    s = ops.cross_entropy_scores(logits, target, backend=backend)
    loss, grad_norm = oracle(logits, target)
    torch_loss = F.cross_entropy(logits, target, reduction="none")
    torch_grad_norm = (logits.softmax(dim=1) - F.one_hot(target, c).to(dtype)).norm(dim=1)

    def max_abs(a, b):
        return float((a.double() - b.double()).abs().max())

    assert max_abs(s.loss, loss) <= 2 * max_abs(torch_loss, loss)
    assert max_abs(s.grad_norm, grad_norm) <= 2 * max_abs(torch_grad_norm, grad_norm)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hard_rows(backend):
    c = 507
    rows, targets = [], []
    # all-equal logits: loss = log C, grad_norm = sqrt(1 - 1/C)
    rows.append(torch.full((c,), 0.25))
    targets.append(3)
    # targets at both ends
    rows.append(make_logits(1, c, 1)[0])
    targets.append(0)
    rows.append(make_logits(1, c, 2)[0])
    targets.append(c - 1)
    # logits shifted by +-100
    rows.append(make_logits(1, c, 3)[0] + 100.0)
    targets.append(7)
    rows.append(make_logits(1, c, 4)[0] - 100.0)
    targets.append(8)
    # confident rows: 1 - p_y ~ 1e-7 and ~1e-6
    for gap in (math.log(c / 1e-7), math.log(c / 1e-6)):
        z = torch.zeros(c)
        z[11] = gap
        rows.append(z)
        targets.append(11)
    # the target far below the maximum: loss ~ 200
    z = make_logits(1, c, 5)[0]
    z[12] = -200.0
    rows.append(z)
    targets.append(12)
    # an ignored row
    rows.append(make_logits(1, c, 6)[0])
    targets.append(IGNORE)
    logits, target = torch.stack(rows), torch.tensor(targets)
    s = ops.cross_entropy_scores(logits, target, backend=backend)
    loss, grad_norm = oracle(logits, target)
    assert relative_error(s.loss, loss) <= 1e-5
    assert relative_error(s.grad_norm, grad_norm) <= 1e-5
    assert math.isclose(s.loss[0], math.log(c), rel_tol=1e-6)
    assert math.isclose(s.grad_norm[0], math.sqrt(1 - 1 / c), rel_tol=1e-6)
    assert 0.5e-7 < float(s.grad_norm[5]) < 2e-7
    assert s.loss[-1] == 0 and s.grad_norm[-1] == 0


def test_naive_float32_formulas_would_fail_the_confident_rows():
    # The reason for log1p / expm1 / masking: computed as lse - z_y and
    # sqrt(sum p^2 - 2 p_y + 1) in float32, a row with 1 - p_y ~ 1e-7 is badly wrong.
    c = 507
    z = torch.zeros(1, c)
    z[0, 11] = math.log(c / 1e-7)
    y = torch.tensor([11])
    p = z.softmax(dim=1)
    naive_loss = torch.logsumexp(z, dim=1) - z[0, 11]
    naive_norm = torch.sqrt((p.square().sum() - 2 * p[0, 11] + 1).clamp(min=0))
    loss, grad_norm = oracle(z, y)
    assert relative_error(naive_loss, loss) > 1e-2 or relative_error(naive_norm, grad_norm) > 1e-2
    s = ops.cross_entropy_scores(z, y)
    assert relative_error(s.loss, loss) <= 1e-5 and relative_error(s.grad_norm, grad_norm) <= 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_row_stays_in_its_row(backend):
    logits = make_logits(5, 123, 9)
    logits[2, 17] = float("nan")
    target = torch.tensor([1, 2, 3, 4, 5])
    s = ops.cross_entropy_scores(logits, target, backend=backend)
    assert torch.isnan(s.loss[2]) and torch.isnan(s.grad_norm[2])
    others = torch.tensor([0, 1, 3, 4])
    clean = ops.cross_entropy_scores(logits[others], target[others], backend=backend)
    assert torch.equal(s.loss[others], clean.loss)
    assert torch.equal(s.grad_norm[others], clean.grad_norm)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_subset_equals_gathered_rows_and_any_strides(backend):
    logits = make_logits(289, 4099, 10)
    target = make_target(289, 4099, 10)
    rows = torch.tensor([288, 0, 5, 5, 100])
    s = ops.cross_entropy_scores(logits, target[rows], rows=rows, backend=backend)
    gathered = ops.cross_entropy_scores(logits[rows].contiguous(), target[rows], backend=backend)
    assert torch.equal(s.loss, gathered.loss) and torch.equal(s.grad_norm, gathered.grad_norm)
    # A strided view (every other column of a wider tensor) and a transposed layout: read
    # in place, as accurate as contiguous input (summation order may differ by an ulp).
    y = make_target(77, 123, 11)
    for strided in (make_logits(77, 2 * 123, 11)[:, ::2], make_logits(123, 77, 12).T):
        assert not strided.is_contiguous()
        s = ops.cross_entropy_scores(strided, y, backend=backend)
        loss, grad_norm = oracle(strided, y)
        assert relative_error(s.loss, loss) <= 1e-5
        assert relative_error(s.grad_norm, grad_norm) <= 1e-5


def test_chunking_does_not_change_results():
    logits, target = make_logits(289, 507, 13), make_target(289, 507, 13)
    whole = reference.cross_entropy_scores(logits, target, chunk_elements=1 << 30)
    pieces = reference.cross_entropy_scores(logits, target, chunk_elements=507 * 7)
    assert torch.equal(whole.loss, pieces.loss) and torch.equal(whole.grad_norm, pieces.grad_norm)


def per_example_weight_grad_norm(hidden, weight, bias, target):
    """||d loss_i / d (W, b)||_F for every example by autograd, one example at a time."""
    norms = []
    for h, y in zip(hidden.double(), target):
        if y == IGNORE:
            norms.append(0.0)
            continue
        w = weight.double().clone().requires_grad_(True)
        params = [w]
        logits = h @ w.T
        if bias is not None:
            b = bias.double().clone().requires_grad_(True)
            params.append(b)
            logits = logits + b
        loss = F.cross_entropy(logits[None], y[None])
        grads = torch.autograd.grad(loss, params)
        norms.append(math.sqrt(sum(float(g.square().sum()) for g in grads)))
    return torch.tensor(norms, dtype=torch.float64)


@pytest.mark.parametrize("backend", LINEAR_BACKENDS)
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("c", [1, 123, 507])
def test_linear_scores_match_logits_and_autograd(with_bias, c, backend):
    n, features = 77, 33
    g = torch.Generator().manual_seed(c)
    hidden = torch.randn(n, features, generator=g)
    weight = torch.randn(c, features, generator=g) * 0.3
    bias = torch.randn(c, generator=g) if with_bias else None
    target = make_target(n, c, seed=c)
    s = ops.linear_cross_entropy_scores(hidden, weight, target, bias=bias, backend=backend)
    logits = hidden.double() @ weight.double().T + (0 if bias is None else bias.double())
    loss, grad_norm = oracle(logits, target)
    assert relative_error(s.loss, loss) <= 1e-5
    assert relative_error(s.grad_norm, grad_norm) <= 1e-5
    exact = per_example_weight_grad_norm(hidden, weight, bias, target)
    assert relative_error(s.weight_grad_norm, exact) <= 1e-5
    # Class tiles of 7: the per-row statistics are merged across many tiles.
    tiled = reference.linear_cross_entropy_scores(
        hidden, weight, target, bias=bias, class_tile=7, chunk_elements=7 * 5
    )
    assert relative_error(tiled.loss, loss) <= 1e-5
    assert relative_error(tiled.grad_norm, grad_norm) <= 1e-5


def test_sequence_scores_from_batch_layout_and_from_ids():
    b, t, c = 3, 5, 11
    logits = make_logits(b * t, c, 20)
    target = make_target(b * t, c, 20, ignored=0.3)
    target[10:15] = IGNORE  # the last sequence has no scored token
    tokens = ops.cross_entropy_scores(logits, target)
    by_rows = ops.sequence_scores(
        ops.Scores(tokens.loss.view(b, t), tokens.grad_norm.view(b, t)), target.view(b, t)
    )
    loss, grad_norm = oracle(logits, target)
    for i in range(b):
        kept = target.view(b, t)[i] != IGNORE
        want_loss = loss.view(b, t)[i][kept].mean() if kept.any() else torch.tensor(0.0)
        want_norm = grad_norm.view(b, t)[i].square().sum().sqrt()
        assert math.isclose(by_rows.loss[i], want_loss, rel_tol=1e-5, abs_tol=1e-12)
        assert math.isclose(by_rows.grad_norm[i], want_norm, rel_tol=1e-5, abs_tol=1e-12)
    # The same tokens, shuffled, with sequence ids.
    order = torch.randperm(b * t, generator=torch.Generator().manual_seed(3))
    ids = torch.arange(b).repeat_interleave(t)[order]
    by_ids = ops.sequence_scores(
        ops.Scores(tokens.loss[order], tokens.grad_norm[order]),
        target[order],
        sequence_ids=ids,
        num_sequences=b,
    )
    assert torch.allclose(by_ids.loss, by_rows.loss, rtol=1e-6)
    assert torch.allclose(by_ids.grad_norm, by_rows.grad_norm, rtol=1e-6)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: (torch.zeros(3, 4, 5), torch.zeros(3, dtype=torch.long)), ValueError, "2-D"),
        (lambda: (torch.zeros(3, 4), torch.zeros(2, dtype=torch.long)), ValueError, "3"),
        (lambda: (torch.zeros(3, 4), torch.tensor([0, 4, 1])), ValueError, r"target\[1\] = 4"),
        (lambda: (torch.zeros(3, 4), torch.tensor([0, -1, 1])), ValueError, r"target\[1\] = -1"),
        (
            lambda: (torch.zeros(3, 4, dtype=torch.long), torch.zeros(3, dtype=torch.long)),
            TypeError,
            "float",
        ),
        (lambda: (torch.zeros(3, 4), torch.zeros(3)), TypeError, "integer"),
        (
            lambda: (torch.zeros(3, 4), torch.zeros(3, dtype=torch.long, device="meta")),
            ValueError,
            "meta tensor",
        ),
        (lambda: (torch.zeros(3, 0), torch.zeros(3, dtype=torch.long)), ValueError, "C >= 1"),
    ],
)
def test_bad_input_is_refused_before_any_read(make, error, match):
    logits, target = make()
    with pytest.raises(error, match=match):
        ops.cross_entropy_scores(logits, target)


def test_bad_rows_and_backend(monkeypatch):
    logits, target = torch.zeros(3, 4), torch.zeros(2, dtype=torch.long)
    with pytest.raises(IndexError, match=r"rows\[1\] = 3"):
        ops.cross_entropy_scores(logits, target, rows=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="backend"):
        ops.cross_entropy_scores(logits, torch.zeros(3, dtype=torch.long), backend="cuda")
    # Without the interpreter, Triton cannot run CPU tensors: refused, naming what it needs.
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="backend='triton' needs Triton installed and CUDA"):
        ops.linear_cross_entropy_scores(logits, torch.zeros(5, 4), torch.zeros(3).long(),
                                        backend="triton")


def test_auto_takes_the_native_loop_for_small_cpu_logits():
    # Small CPU logits go to the extension's row loop, large ones to the reference; both
    # give the same scores to float32 rounding (the loop works in double).
    small, large = torch.randn(128, 10), torch.randn(8, (1 << 16) // 8 + 1)
    cpu = torch.device("cpu")
    assert ops.backend_for("auto", cpu, logits_elements=small.numel()) is ops.native
    assert ops.backend_for("auto", cpu, logits_elements=large.numel()) is ops.reference
    assert ops.backend_for("reference", cpu, logits_elements=small.numel()) is ops.reference
    y = torch.randint(0, 10, (128,))
    auto = ops.cross_entropy_scores(small, y)
    ref = ops.cross_entropy_scores(small, y, backend="reference")
    native = ops.cross_entropy_scores(small, y, backend="native")
    for a, r, n in zip(auto, ref, native):
        assert torch.equal(a, n)
        torch.testing.assert_close(a, r, rtol=2e-6, atol=0)


def test_linear_bad_input():
    h, w, y = torch.zeros(3, 4), torch.zeros(5, 4), torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"weight must be \[C, 4\]"):
        ops.linear_cross_entropy_scores(h, torch.zeros(5, 3), y)
    with pytest.raises(ValueError, match="bias has 4 entries"):
        ops.linear_cross_entropy_scores(h, w, y, bias=torch.zeros(4))
    with pytest.raises(ValueError, match=r"target\[0\] = 5"):
        ops.linear_cross_entropy_scores(h, w, torch.tensor([5, 0, 0]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("weighted", [False, True])
def test_weighted_backward_equals_autograd(dtype, weighted, backend):
    n, c = 77, 123
    logits = make_logits(n, c, 30).to(dtype)
    target = make_target(n, c, 30, ignored=0.2)
    g = torch.Generator().manual_seed(31)
    weight = (torch.rand(n, generator=g) * 3).to(dtype) if weighted else None
    upstream = torch.randn(n, generator=g)  # an arbitrary incoming gradient per example

    ours = logits.clone().requires_grad_(True)
    loss, scores = ops.cross_entropy_with_scores(ours, target, weight=weight, backend=backend)
    (loss * upstream).sum().backward()

    theirs = logits.double().clone().requires_grad_(True)
    ce = F.cross_entropy(theirs, target, reduction="none", ignore_index=IGNORE)
    want = ce if weight is None else ce * weight.double()
    (want * upstream.double()).sum().backward()

    assert loss.dtype == torch.float32
    assert relative_error(loss, want.detach()) <= 1e-5
    # The same scores as cross_entropy_scores (to summation order: PyTorch's CPU sums may
    # differ in the last bit between two copies of the same values).
    plain = ops.cross_entropy_scores(logits, target)
    assert torch.allclose(scores.loss, plain.loss, rtol=1e-6, atol=0)
    assert torch.allclose(scores.grad_norm, plain.grad_norm, rtol=1e-6, atol=0)
    assert ours.grad.dtype == dtype
    tolerance = 1e-5 if dtype != torch.bfloat16 else 1e-2
    err = (ours.grad.double() - theirs.grad).abs().max() / theirs.grad.abs().max()
    assert float(err) <= tolerance
    assert torch.all(ours.grad[target == IGNORE] == 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_keeps_confident_rows_gradient(backend):
    # p_y rounds to 1 in float32; the target entry of the gradient must still be
    # -(1 - p_y) ~ -1e-7, not 0.
    c = 507
    z = torch.zeros(1, c)
    z[0, 3] = math.log(c / 1e-7)
    z.requires_grad_(True)
    loss, _ = ops.cross_entropy_with_scores(z, torch.tensor([3]), backend=backend)
    loss.sum().backward()
    want = torch.softmax(z.detach().double(), 1)[0, 3] - 1
    assert math.isclose(float(z.grad[0, 3]), float(want), rel_tol=1e-4)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
@pytest.mark.parametrize("block", [16, 128])
def test_triton_kernel_rescales_across_tiles(block):
    # Narrow tiles and rows whose maximum keeps moving (ascending logits): the online
    # statistics are rescaled at every tile, d and d_y by e^(m_old - m_new), q_y by its square.
    from fastis.triton_kernels import cross_entropy_scores as kernel

    c = 507
    ascending = torch.linspace(-30.0, 30.0, c).repeat(4, 1)
    logits = torch.cat([ascending, make_logits(4, c, 40)])
    target = torch.tensor([0, 250, c - 1, 100, 3, 4, 5, 6])
    s = kernel.cross_entropy_scores(logits, target, block=block)
    loss, grad_norm = oracle(logits, target)
    assert relative_error(s.loss, loss) <= 1e-5
    assert relative_error(s.grad_norm, grad_norm) <= 1e-5


@pytest.mark.parametrize("backend", LINEAR_BACKENDS)
def test_linear_rows_subset_and_half_inputs(backend):
    n, features, c = 77, 40, 300
    g = torch.Generator().manual_seed(41)
    hidden = torch.randn(n, features, generator=g)
    weight = torch.randn(c, features, generator=g) * 0.3
    target = make_target(n, c, seed=41)
    rows = torch.tensor([76, 0, 3, 3, 40])
    s = ops.linear_cross_entropy_scores(hidden, weight, target[rows], rows=rows, backend=backend)
    full = ops.linear_cross_entropy_scores(hidden, weight, target, backend=backend)
    for got, want in zip(s, full):
        assert torch.allclose(got, want[rows], rtol=1e-6, atol=0)
    # bfloat16 operands: float32 accumulation, so no worse than the bfloat16 logits' own error.
    h16, w16 = hidden.bfloat16(), weight.bfloat16()
    s16 = ops.linear_cross_entropy_scores(h16, w16, target, backend=backend)
    loss, grad_norm = oracle(h16.double() @ w16.double().T, target)
    assert relative_error(s16.loss, loss) <= 1e-4
    assert relative_error(s16.grad_norm, grad_norm) <= 1e-4


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
def test_triton_linear_kernel_merges_class_tiles():
    # Many class tiles, feature tiles and row blocks, with a ragged last tile of each.
    from fastis.triton_kernels import linear_cross_entropy_scores as kernel

    n, features, c = 37, 50, 211
    g = torch.Generator().manual_seed(42)
    hidden = torch.randn(n, features, generator=g) * 2
    weight = torch.randn(c, features, generator=g)
    bias = torch.randn(c, generator=g)
    target = make_target(n, c, seed=42)
    s = kernel.linear_cross_entropy_scores(
        hidden, weight, target, bias=bias, block_n=16, block_c=16, block_d=16
    )
    loss, grad_norm = oracle(hidden.double() @ weight.double().T + bias.double(), target)
    assert relative_error(s.loss, loss) <= 1e-5
    assert relative_error(s.grad_norm, grad_norm) <= 1e-5
    exact = per_example_weight_grad_norm(hidden, weight, bias, target)
    assert relative_error(s.weight_grad_norm, exact) <= 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_unvalidated_bad_targets_and_rows_score_nan_without_reading(backend):
    # validate=False skips the host-side checks (no device sync, CUDA-graph capturable); every
    # backend then guards every read and marks the offending rows NaN (ignored rows score 0).
    logits, hidden, weight = make_logits(6, 50, 50), make_logits(6, 8, 51), make_logits(50, 8, 52)
    target = torch.tensor([1, 50, -3, IGNORE, 4, 5])
    rows = torch.tensor([0, 1, 2, 3, 6, -1])
    for s in (
        ops.cross_entropy_scores(logits, target, rows=rows, backend=backend, validate=False),
        ops.linear_cross_entropy_scores(
            hidden, weight, target, rows=rows, backend=backend, validate=False
        ),
    ):
        for field in s:
            assert torch.isnan(field[[1, 2, 4, 5]]).all()
            assert field[3] == 0 and torch.isfinite(field[0])
    good = ops.cross_entropy_scores(logits[:1], target[:1], backend=backend)
    s = ops.cross_entropy_scores(logits, target, rows=rows, backend=backend, validate=False)
    assert torch.allclose(s.loss[:1], good.loss, rtol=1e-6)
    # Indices far out of range: a read there would leave the process's memory.
    huge = torch.tensor([0, 1, 2, 10**12])
    for s in (ops.cross_entropy_scores(logits[:4], huge, backend=backend, validate=False),
              ops.cross_entropy_scores(logits, torch.tensor([1, 4, 5, 1]), rows=huge,
                                       backend=backend, validate=False)):
        assert torch.isnan(s.loss[3]) and torch.isfinite(s.loss[:3]).all()
