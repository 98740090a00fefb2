"""Statistical correctness: chi-square goodness of fit against exact float64 probabilities
(before and after updates), meta-checks that the same machinery rejects wrong samplers, the
float32 trap ("block test") at n = 1e7, and scale invariance.

Every chi-square test here has level helpers.ALPHA = 1e-4 (see helpers.py for the suite's
false-alarm rate); normal-approximation checks are 5 sigma wide. Seeds are fixed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import (
    ALPHA,
    WEIGHT_KINDS,
    assert_fits,
    assert_within_sigmas,
    exact_probabilities,
    make_weights,
    pooled_chisquare,
    rebuilt_or_updated,
    seed_of,
    update_batches,
)

from fastis import SumTree

N_ITEMS = 1000
N_DRAWS = 200_000


def fit_case(structure, kind: str, phase: str):
    """The structure for one chi-square case and its exact reference weights."""
    rng = np.random.default_rng(seed_of("fit", kind))
    initial = make_weights(kind, N_ITEMS, rng)
    seed = seed_of("fit-seed", structure.__name__, kind, phase)
    if phase == "built":
        return structure(initial, seed=seed), initial
    return rebuilt_or_updated(structure, seed, initial, update_batches(kind, initial, rng))


@pytest.mark.parametrize("phase", ["built", "after_updates"])
@pytest.mark.parametrize("kind", WEIGHT_KINDS)
def test_chi_square_goodness_of_fit(structure, kind, phase):
    obj, weights = fit_case(structure, kind, phase)
    assert np.array_equal(obj.weights().numpy(), weights)
    p = exact_probabilities(weights)
    idx, prob = obj.sample(N_DRAWS, with_probabilities=True)
    assert_fits(idx, p, f"{structure.__name__} {kind} {phase}")
    assert np.allclose(prob.numpy(), p[idx.numpy()], rtol=1e-12, atol=0)


@pytest.mark.parametrize("kind", ["uniform", "lognormal", "mostly_zero"])
def test_chi_square_after_draws_and_updates_interleaved(kind):
    # SumTree: updates between draw calls; each call must follow the weights of its time.
    rng = np.random.default_rng(seed_of("interleaved", kind))
    weights = make_weights(kind, N_ITEMS, rng)
    tree = SumTree(weights, seed=seed_of("interleaved-seed", kind))
    for idx, val in update_batches(kind, weights, rng, batches=4):
        assert_fits(tree.sample(50_001), exact_probabilities(weights), f"SumTree {kind}")
        tree.update(idx, val)
        for i, v in zip(idx, val):
            weights[i] = v
    assert_fits(tree.sample(50_001), exact_probabilities(weights), f"SumTree {kind} final")


def test_chi_square_small_n_many_draws(structure):
    # Few items and 4e6 draws: sensitive to probability errors of ~0.2% per item.
    rng = np.random.default_rng(seed_of("small"))
    weights = np.array([3.0, 0.0, 1.0, 7.5, 0.1, 2.0, 0.0, 12.0, 0.6, 5.0, 1e-3, 4.0])
    rng.shuffle(weights)
    obj = structure(weights, seed=seed_of("small", structure.__name__))
    assert_fits(obj.sample(4_000_000), exact_probabilities(weights), structure.__name__)


# ------------------------------------------------------------------ meta-checks


def test_meta_chi_square_rejects_a_perturbed_distribution(structure):
    # The same draws that pass against the exact p must fail against p perturbed by +-5%.
    rng = np.random.default_rng(seed_of("meta"))
    weights = make_weights("lognormal", N_ITEMS, rng)
    p = exact_probabilities(weights)
    draws = structure(weights, seed=3).sample(N_DRAWS).numpy()
    counts = np.bincount(draws, minlength=N_ITEMS)
    assert pooled_chisquare(counts, p) > ALPHA
    wrong = p * (1 + 0.05 * (-1) ** np.arange(N_ITEMS))
    wrong /= wrong.sum()
    assert pooled_chisquare(counts, wrong) < ALPHA
    with pytest.raises(AssertionError, match="chi-square"):
        assert_fits(draws, wrong)


def test_meta_zero_weight_hits_are_reported(structure):
    weights = np.ones(50)
    draws = structure(weights, seed=4).sample(10_000).numpy()
    claimed = weights.copy()
    claimed[draws[0]] = 0.0  # pretend a drawn index had weight zero
    with pytest.raises(AssertionError, match="zero-weight"):
        assert_fits(draws, exact_probabilities(claimed))


def test_meta_chi_square_accepts_an_exact_numpy_sampler():
    # The machinery must not reject a correct sampler (numpy's, an independent one).
    rng = np.random.default_rng(seed_of("numpy-sampler"))
    for kind in WEIGHT_KINDS:
        p = exact_probabilities(make_weights(kind, N_ITEMS, rng))
        assert_fits(rng.choice(N_ITEMS, size=N_DRAWS, p=p), p, f"numpy {kind}")


# ------------------------------------------------------- the float32 trap (block test)

HEAD, TAIL = 9_000_000, 1_000_000  # 9e6 weights of 1.0, then 1e6 of 0.25
HEAD_W, TAIL_W = 1.0, 0.25
BLOCK_DRAWS = 20_000_000


def check_block_test(draws: np.ndarray) -> None:
    """Tail share, distinct tail items drawn, and distinct tail items of each residue of the
    index mod 4, each within 5 sigma of its exact expectation for len(draws) draws."""
    n_draws = len(draws)
    total = HEAD * HEAD_W + TAIL * TAIL_W
    p_item = TAIL_W / total
    p_tail = TAIL * TAIL_W / total
    assert draws.min() >= 0 and draws.max() < HEAD + TAIL
    tail = draws[draws >= HEAD] - HEAD
    assert_within_sigmas(
        len(tail), n_draws * p_tail, math.sqrt(n_draws * p_tail * (1 - p_tail)), "tail draws"
    )
    # P(a given tail item is drawn at least once); the occupancy count's variance is below
    # the binomial m q (1 - q) used here (the items compete), so the check is conservative.
    q = -math.expm1(n_draws * math.log1p(-p_item))
    hit = np.bincount(tail, minlength=TAIL) > 0
    assert_within_sigmas(int(hit.sum()), TAIL * q, math.sqrt(TAIL * q * (1 - q)), "distinct tail")
    residue = (np.arange(TAIL) + HEAD) % 4
    for r in range(4):
        m = int((residue == r).sum())
        distinct = int(hit[residue == r].sum())
        assert distinct > 0, f"no tail item with index % 4 == {r} was ever drawn"
        assert_within_sigmas(
            distinct, m * q, math.sqrt(m * q * (1 - q)), f"distinct tail, residue {r}"
        )


def block_weights() -> np.ndarray:
    w = np.full(HEAD + TAIL, HEAD_W)
    w[HEAD:] = TAIL_W
    return w


def test_float32_trap_block_test(structure):
    obj = structure(block_weights(), seed=seed_of("block", structure.__name__))
    assert obj.total == HEAD * HEAD_W + TAIL * TAIL_W
    check_block_test(obj.sample(BLOCK_DRAWS).numpy())


def exact_block_sampler(rng: np.random.Generator, n_draws: int) -> np.ndarray:
    """An exact sampler of the block distribution (uniform within each block)."""
    p_tail = TAIL * TAIL_W / (HEAD * HEAD_W + TAIL * TAIL_W)
    in_tail = rng.random(n_draws) < p_tail
    return np.where(in_tail, HEAD + rng.integers(0, TAIL, n_draws), rng.integers(0, HEAD, n_draws))


def test_meta_block_test_accepts_exact_and_rejects_float32_samplers():
    rng = np.random.default_rng(seed_of("block-meta"))
    n_draws = 4_000_000
    exact = exact_block_sampler(rng, n_draws)
    check_block_test(exact)
    # A sampler that reaches only one tail item in four (like a float32 tree whose leaves
    # pair up): right tail share, wrong coverage.
    one_in_four = np.where(exact >= HEAD, exact - (exact - HEAD) % 4, exact)
    with pytest.raises(AssertionError, match="distinct tail"):
        check_block_test(one_in_four)
    # A float32 prefix-sum sampler: 9e6 + 0.25 rounds back to 9e6, the tail is unreachable.
    cum = np.cumsum(block_weights().astype(np.float32), dtype=np.float32)
    u = rng.random(n_draws, dtype=np.float32) * cum[-1]
    float32_draws = np.minimum(np.searchsorted(cum, u, side="right"), HEAD + TAIL - 1)
    with pytest.raises(AssertionError, match="tail"):
        check_block_test(float32_draws)


# ------------------------------------------------------------------ scale

SCALES = [2.0**-1000, 2.0**-500, 2.0**-60, 2.0**60, 2.0**500, 2.0**1000]


@pytest.mark.parametrize("scale", SCALES, ids=lambda s: f"2^{int(math.log2(s))}")
def test_scaling_by_a_power_of_two_changes_no_draw(structure, scale):
    # Multiplying every weight by 2^s is exact (no overflow, no subnormal), so every sum and
    # every ratio the structures compute is scaled exactly: the draws must be identical.
    rng = np.random.default_rng(seed_of("scale"))
    weights = rng.integers(0, 1000, 500).astype(np.float64) * (rng.random(500) < 0.8)
    plain = structure(weights, seed=12)
    scaled = structure(weights * scale, seed=12)
    assert scaled.total == plain.total * scale
    assert np.array_equal(scaled.probabilities(np.arange(500)), plain.probabilities(np.arange(500)))
    assert np.array_equal(scaled.sample(50_000).numpy(), plain.sample(50_000).numpy())


@pytest.mark.parametrize("positives", [1, 7])
def test_tiny_normal_weights(structure, positives):
    # Normal (not subnormal) weights whose total is below n / DBL_MAX ~ n * 5.6e-309: any
    # weights may be scaled so, and the distribution must not change. (Found: AliasTable
    # computes n / total = inf, every zero weight gets NaN units and is drawn; with one
    # weight of 1e-305 among 1e5 items every draw is a zero-weight index.)
    n = 100_000
    rng = np.random.default_rng(seed_of("tiny", positives))
    weights = np.zeros(n)
    weights[rng.choice(n, positives, replace=False)] = rng.uniform(1.0, 4.0, positives) * 1e-305
    assert weights.sum() < n / np.finfo(np.float64).max
    obj = structure(weights, seed=14)
    p = exact_probabilities(weights)
    assert_fits(obj.sample(100_000), p, f"{structure.__name__} {positives} tiny weights")


def test_subnormal_weights_follow_their_ratios(structure):
    # Weights 0, 1, 2, 0, 3 times the smallest subnormal (5e-324) are finite, non-negative,
    # exactly representable and exactly summed: P must be 0, 1/6, 2/6, 0, 3/6 as for 0, 1,
    # 2, 0, 3. (Found: AliasTable's n / total overflows to inf, SumTree's u = U * total is
    # quantised to multiples of 5e-324.)
    tiny = 5e-324
    weights = np.array([0.0, 1.0, 2.0, 0.0, 3.0]) * tiny
    obj = structure(weights, seed=13)
    assert obj.total == 6 * tiny
    assert_fits(
        obj.sample(60_000), np.array([0, 1, 2, 0, 3]) / 6, f"{structure.__name__} subnormal"
    )
