"""Helpers shared by the fastis tests.

Everything here that computes an expected value does so without fastis: exact float64
probabilities, last-write-wins reference updates, Philox words from numpy, a pure-Python
replay of SumTree draws, and the statistics that compare draws with a distribution.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import numpy as np
import torch
from scipy import stats

import fastis

STRUCTURES = (fastis.SumTree, fastis.AliasTable)
STRUCTURE_IDS = tuple(cls.__name__ for cls in STRUCTURES)

# Significance level of every goodness-of-fit test: a correct sampler fails one such test
# with probability at most ALPHA = 1e-4. The suite makes about 60 of them (assert_fits
# calls), so its false-alarm rate is below 60 * 1e-4 = 0.6%. All seeds are fixed, so a given
# build passes or fails deterministically; ALPHA bounds the chance that the fixed seeds
# happen to be unlucky for a correct sampler.
ALPHA = 1e-4

# Width of the normal-approximation checks (counts, shares, distinct items). Two-sided,
# 5 sigma is a false-alarm rate of 5.7e-7 per check.
SIGMAS = 5.0

# The kinds of weight vectors every statistical test runs on.
WEIGHT_KINDS = ("constant", "uniform", "lognormal", "loguniform", "mostly_zero", "one_hot")


def seed_of(*parts: object) -> int:
    """A fixed 32-bit seed derived from a test's parameters (stable across runs)."""
    return zlib.crc32(repr(parts).encode())


def make_weights(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """A float64 weight vector of the given kind with a positive total."""
    if kind == "constant":
        return np.full(n, 2.5)
    if kind == "uniform":
        return rng.random(n)
    if kind == "lognormal":
        return rng.lognormal(0.0, 2.0, n)
    if kind == "loguniform":
        # Spread over 18 orders of magnitude, 1e-9 .. 1e9.
        return 10.0 ** rng.uniform(-9.0, 9.0, n)
    if kind == "mostly_zero":
        w = np.zeros(n)
        positive = rng.choice(n, size=max(2, n // 30), replace=False)
        w[positive] = rng.lognormal(0.0, 1.0, len(positive))
        return w
    if kind == "one_hot":
        w = np.zeros(n)
        w[rng.integers(n)] = 3.75
        return w
    raise ValueError(kind)


def update_batches(
    kind: str, weights: np.ndarray, rng: np.random.Generator, batches: int = 6
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Update batches (indices, new weights) that keep the vector of the given kind, each
    holding repeated indices whose later value must win."""
    n = len(weights)
    out = []
    current = weights.copy()
    for _ in range(batches):
        if kind == "one_hot":
            hot = int(np.flatnonzero(current)[0])
            new = int((hot + 1 + rng.integers(n - 1)) % n)
            # The new item is written twice (first 0, then its weight) and the old one is
            # set to 7 before it is cleared: only the last writes may count.
            idx = np.array([new, hot, new, hot], dtype=np.int64)
            val = np.array([0.0, 7.0, 1.5, 0.0])
        else:
            idx = rng.integers(0, n, size=n // 2)
            idx = np.concatenate([idx, idx[: n // 10]])  # explicit repeats
            val = make_weights(kind, len(idx), rng)
        current = last_write_wins(current, idx, val)
        out.append((idx, val))
    return out


def last_write_wins(weights: np.ndarray, indices: Sequence, values: Sequence) -> np.ndarray:
    """weights after w[indices[i]] = values[i] for i in order (a plain Python loop, so it
    does not depend on how numpy treats repeated indices)."""
    out = np.array(weights, dtype=np.float64, copy=True)
    for i, v in zip(indices, values):
        out[int(i)] = float(v)
    return out


def last_write_wins_fast(weights: np.ndarray, indices: np.ndarray, values: np.ndarray):
    """Vectorised last_write_wins for long update streams: for each index, the value of its
    last occurrence (found as the first occurrence in the reversed stream)."""
    out = np.array(weights, dtype=np.float64, copy=True)
    rev_idx = np.asarray(indices).ravel()[::-1]
    rev_val = np.asarray(values, dtype=np.float64).ravel()[::-1]
    uniq, first = np.unique(rev_idx, return_index=True)
    out[uniq] = rev_val[first]
    return out


def exact_probabilities(weights: np.ndarray) -> np.ndarray:
    """w_i / sum(w) with the sum correctly rounded (math.fsum)."""
    w = np.asarray(weights, dtype=np.float64)
    return w / math.fsum(w)


def rebuilt_or_updated(structure, seed: int, initial: np.ndarray, batches):
    """A structure holding `initial` with `batches` applied, and the final reference
    weights. A SumTree applies the batches with update(); an AliasTable has no update, so it
    is built from the final weights (what a user does between epochs)."""
    final = initial
    for idx, val in batches:
        final = last_write_wins(final, idx, val)
    if structure is fastis.SumTree:
        obj = fastis.SumTree(initial, seed=seed)
        for idx, val in batches:
            obj.update(idx, val)
    else:
        obj = structure(final, seed=seed)
    return obj, final


# ----------------------------------------------------------------------------- RNG


def philox_words(seed: int, counter: int, count: int) -> list[int]:
    """The random words of draws 0..count-1 of a call that starts at generator `counter`:
    draw d uses word d % 4 of Philox4x64-10 block counter + d // 4, and fastis block b is
    numpy's Philox(key=seed, counter=b - 1) (numpy increments before each block)."""
    blocks = (count + 3) // 4
    bitgen = np.random.Philox(key=seed, counter=(counter - 1) % 2**256)
    return [int(x) for x in bitgen.random_raw(4 * blocks)[:count]]


def replay_sum_tree(weights: np.ndarray, seed: int, counter: int, count: int) -> np.ndarray:
    """SumTree draws recomputed in Python: u = (r >> 11) * 2^-53 * total, clamped below the
    total, and the index is the first i with cumsum[i] > u. Exact when every partial sum is
    exact (e.g. small integer weights), because the tree's sums then equal the flat ones."""
    w = np.asarray(weights, dtype=np.float64)
    cumsum = np.cumsum(w)
    total = float(cumsum[-1])
    below_total = math.nextafter(total, 0.0)
    out = []
    for r in philox_words(seed, counter, count):
        u = min(float(r >> 11) * 2.0**-53 * total, below_total)
        out.append(int(np.searchsorted(cumsum, u, side="right")))
    return np.array(out, dtype=np.int64)


def replay_alias_uniform(n: int, seed: int, counter: int, count: int) -> np.ndarray:
    """AliasTable draws for n equal weights: every bucket keeps its own item, so a draw is
    the bucket alone, the high 64 bits of the 128-bit product r * n."""
    return np.array([(r * n) >> 64 for r in philox_words(seed, counter, count)], dtype=np.int64)


# ---------------------------------------------------------------------- statistics


def pooled_chisquare(counts: np.ndarray, p: np.ndarray, min_expected: float = 5.0) -> float:
    """The p-value of Pearson's chi-square test of `counts` against probabilities `p`,
    with every cell of expected count < min_expected pooled into one cell (merged into the
    smallest remaining cell if the pool itself stays below min_expected)."""
    counts = np.asarray(counts, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    assert counts.shape == p.shape
    draws = counts.sum()
    expected = draws * p
    small = expected < min_expected
    obs = list(counts[~small])
    exp = list(expected[~small])
    pooled_obs, pooled_exp = counts[small].sum(), expected[small].sum()
    if small.any():
        if pooled_exp >= min_expected or not exp:
            obs.append(pooled_obs)
            exp.append(pooled_exp)
        else:
            j = int(np.argmin(exp))
            obs[j] += pooled_obs
            exp[j] += pooled_exp
    if len(obs) == 1:
        # One cell: no degrees of freedom; the draws fit only if every one of them is in it.
        return 1.0 if obs[0] == draws else 0.0
    exp_arr = np.array(exp)
    exp_arr *= draws / exp_arr.sum()  # remove float64 rounding so scipy's sum check holds
    return float(stats.chisquare(np.array(obs), exp_arr).pvalue)


def assert_fits(draws: torch.Tensor | np.ndarray, p: np.ndarray, what: str = "") -> None:
    """Asserts that draws are valid indices, never hit a zero-probability index, and pass
    the pooled chi-square test against p at level ALPHA."""
    d = np.asarray(draws)
    n = len(p)
    assert d.min() >= 0 and d.max() < n, f"{what}: index out of [0, {n})"
    counts = np.bincount(d, minlength=n)
    zero_hits = counts[p == 0].sum()
    assert zero_hits == 0, f"{what}: {zero_hits} draws landed on zero-weight indices"
    pvalue = pooled_chisquare(counts, p)
    assert pvalue > ALPHA, f"{what}: chi-square p-value {pvalue:.3g} <= alpha {ALPHA}"


def assert_within_sigmas(observed: float, expected: float, sigma: float, what: str) -> None:
    assert abs(observed - expected) <= SIGMAS * sigma, (
        f"{what}: observed {observed}, expected {expected:.6g} +- {SIGMAS} * {sigma:.4g}"
    )


# ------------------------------------------------------------------------- state


def counter_of(obj) -> int:
    return obj.state_dict()["counter"]


def assert_same_structure(a, b, draws: int = 257) -> None:
    """a and b hold the same weights, total, seed and counter, and (when the total is
    positive) make identical next draws. Advances both generators."""
    assert type(a) is type(b)
    assert len(a) == len(b)
    wa, wb = a.weights(), b.weights()
    assert wa.dtype == wb.dtype == torch.float64
    assert torch.equal(wa, wb)
    assert a.total == b.total
    assert a.seed == b.seed
    assert counter_of(a) == counter_of(b)
    if a.total > 0:
        ia, pa = a.sample(draws, with_probabilities=True)
        ib, pb = b.sample(draws, with_probabilities=True)
        assert torch.equal(ia, ib)
        assert torch.equal(pa, pb)


def replay(structure, weights, seed: int, counter: int, count: int) -> np.ndarray:
    """Exact replay for either structure: any small-integer weights for a SumTree, equal
    weights only for an AliasTable."""
    if structure is fastis.SumTree:
        return replay_sum_tree(weights, seed, counter, count)
    assert np.all(np.asarray(weights) == weights[0]), "alias replay needs equal weights"
    return replay_alias_uniform(len(weights), seed, counter, count)


def assert_matches_reference(obj, ref: np.ndarray, exact: float, draws: int) -> None:
    """Total, probabilities and drawn (index, probability) pairs of `obj` against the float64
    weights `ref` whose exact sum is `exact`; no draw may land on a zero weight."""
    assert math.isclose(obj.total, exact, rel_tol=1e-12)
    prob = obj.probabilities(np.arange(len(ref))).numpy()
    assert np.array_equal(prob, ref / obj.total)
    assert np.allclose(prob, ref / exact, rtol=1e-12, atol=1e-323)
    idx, p = obj.sample(draws, with_probabilities=True)
    idx = idx.numpy()
    assert idx.min() >= 0 and idx.max() < len(ref)
    assert np.all(ref[idx] > 0), "a draw landed on a zero weight"
    assert np.array_equal(p.numpy(), ref[idx] / obj.total)


def alias_sweep_reference(weights: np.ndarray, total: float, keep_dtype=np.float32):
    """The alias table of `weights` by the textbook sequential sweep: a light cursor and a
    heavy cursor moving forward (Vose's method as in Hübschle-Schneider & Sanders 2022,
    section 4), with masses in exact integers of 2^-52 units. Independent of fastis's
    prefix-sum formulation and its split across threads, and must agree with it bit for
    bit. `total` is the structure's own float64 total (its summation order is part of the
    build). Returns (keep, alias) with keep rounded to keep_dtype as the table stores it.
    """
    w = np.asarray(weights, dtype=np.float64)
    n = len(w)
    exponent = math.frexp(total)[1] - 1  # ilogb(total)
    shift = -exponent
    half_shift = int(shift / 2)  # C++ division truncates toward zero
    pre_a, pre_b = math.ldexp(1.0, half_shift), math.ldexp(1.0, shift - half_shift)
    scale = n / ((total * pre_a) * pre_b)
    units = ((w * pre_a) * pre_b) * scale
    one = 1 << 52

    def fixed(u: float) -> int:
        scaled = u * 2.0**52
        return int(scaled + 0.5) if scaled < 2.0**52 else int(scaled)

    heavy = units >= 1.0
    lights = [k for k in range(n) if not heavy[k]]
    heavies = [k for k in range(n) if heavy[k]]
    keep = np.zeros(n, dtype=np.float64)
    alias = np.zeros(n, dtype=np.int64)
    li, hi = 0, 0
    rest = fixed(units[heavies[0]]) if heavies else 0
    while hi < len(heavies):
        j = heavies[hi]
        if rest >= one:
            if li >= len(lights):
                break
            i = lights[li]
            keep[i], alias[i] = keep_dtype(units[i]), j
            rest -= one - fixed(units[i])
            li += 1
        else:
            if hi + 1 >= len(heavies):
                break
            following = heavies[hi + 1]
            keep[j], alias[j] = keep_dtype(float(rest) * 2.0**-52), following
            rest = fixed(units[following]) - (one - rest)
            hi += 1
    for j in heavies[hi:]:
        keep[j], alias[j] = 1.0, j
    for i in lights[li:]:
        keep[i], alias[i] = (1.0, i) if w[i] > 0 else (0.0, heavies[-1])
    return keep, alias
