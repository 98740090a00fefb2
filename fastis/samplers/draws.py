"""The randomness of a step, and drawing in proportion to weights.

Every random choice a sampler makes at step s comes from numpy's Philox4x64 keyed by the
sampler's seed at counter (s, purpose): the stream does not depend on how calls interleave,
on the process or on the rank, so draws are a function of (seed, step, updates so far).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

# Purposes of the per-step generators (the third word of the Philox counter).
STREAM_DRAW = 0
STREAM_SELECT = 1
STREAM_EPOCH = 2


def step_generator(seed: int, step: int, purpose: int) -> np.random.Generator:
    """numpy's Philox4x64 keyed by `seed`, at counter (step, purpose): a fresh generator
    (the same stream as np.random.Philox(key=seed, counter=[0, step, purpose, 0])), made by
    resetting a cached one's state, ~5x cheaper than building it (a call per step). It is
    valid until the next step_generator() call with the same seed in the same thread: use
    it up first.

    Examples:
        >>> import numpy as np
        >>> from fastis.samplers.draws import STREAM_DRAW, step_generator
        >>> a = step_generator(7, 3, STREAM_DRAW).integers(0, 100, 4)
        >>> b = np.random.Generator(np.random.Philox(key=7, counter=[0, 3, STREAM_DRAW, 0]))
        >>> bool((a == b.integers(0, 100, 4)).all())
        True
    """
    generators = _CACHE.__dict__.setdefault("generators", {})
    cached = generators.get(seed)
    if cached is None:
        if len(generators) > 64:  # a bounded cache: a few seeds live at a time
            generators.clear()
        bits = np.random.Philox(key=seed)
        cached = generators[seed] = (bits, np.random.Generator(bits), bits.state)
    bits, generator, state = cached
    # A fresh stream: counter (0, step, purpose, 0), empty buffer, no cached half-word.
    state["state"]["counter"][:] = (0, step, purpose, 0)
    state["buffer_pos"], state["has_uint32"], state["uinteger"] = 4, 0, 0
    bits.state = state
    return generator


# Per thread, seed -> (its Philox bit generator, a Generator on it, a state dict to reset
# it with). A generator is used up before the next call in the same thread, so one per seed
# and thread suffices; two threads never share one.
_CACHE = threading.local()


def normalised(weights: np.ndarray) -> np.ndarray:
    """weights / sum(weights), float64; uniform when every weight is 0."""
    total = weights.sum()
    if total > 0:
        return weights / total
    return np.full(len(weights), 1.0 / len(weights))


def resample(weights: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k positions drawn with replacement, P(r) = weights[r] / sum(weights) (uniform when all
    are 0); a zero weight is never drawn. Uses k uniform numbers of `rng`.

    Examples:
        >>> import numpy as np
        >>> from fastis.samplers.draws import resample
        >>> rows = resample(np.array([0.0, 1.0, 0.0, 3.0]), 1000, np.random.default_rng(0))
        >>> sorted(set(rows.tolist())), round(float((rows == 3).mean()), 1)
        ([1, 3], 0.8)
    """
    p = normalised(weights)
    cumulative = np.cumsum(p)
    # side="right" skips zero-width segments; a number that rounds up to the total goes to
    # the last position that can be drawn.
    rows = np.searchsorted(cumulative, rng.random(k) * cumulative[-1], side="right")
    return np.minimum(rows, np.flatnonzero(p > 0)[-1]).astype(np.int64)


class EpochOrder:
    """Every example once per epoch, in a fresh random order per epoch (from the stream's
    seed); the orders of the last `keep` epochs asked for are cached.

    Examples:
        >>> from fastis.samplers.draws import EpochOrder
        >>> order = EpochOrder(seed=0, num_examples=5)
        >>> sorted(order(3).tolist()), bool((order(3) == order(3)).all())
        ([0, 1, 2, 3, 4], True)
    """

    def __init__(self, seed: int, num_examples: int, *, dtype: Any = np.int64,
                 keep: int = 1) -> None:
        self.seed, self.num_examples, self.dtype, self.keep = seed, num_examples, dtype, keep
        self._orders: dict[int, np.ndarray] = {}

    def __call__(self, epoch: int) -> np.ndarray:
        """The examples of `epoch` in training order, [N] of `dtype` (read, do not
        modify)."""
        order = self._orders.get(epoch)
        if order is None:
            if len(self._orders) >= self.keep:
                self._orders.pop(min(self._orders))
            rng = step_generator(self.seed, epoch, STREAM_EPOCH)
            order = self._orders[epoch] = rng.permutation(self.num_examples).astype(
                self.dtype, copy=False)
        return order


# Above this many examples, Reshuffled draws independently: its two cached permutations cost
# 8 bytes per example (128 MB at this limit; a billion examples would need 8 GB).
RESHUFFLE_MAX = 1 << 24


class Reshuffled:
    """Uniform draws without replacement within each pass: the examples at given positions
    of an endless stream made of one random permutation of the data set after another
    (permutation c from the seed's epoch stream at counter c, EpochOrder's). Each position
    alone is uniform over the examples, so a draw's probability, and every weight built on
    it, is that of an independent uniform draw; jointly the draws cover the data set evenly,
    which is random reshuffling's lower variance: on softmax regression, 3,000 steps with
    a step decay end at 0.599 training loss reshuffled against 0.622 drawn independently
    (docs/methods.md). Beyond `max_examples` (default RESHUFFLE_MAX; None: no limit) the
    draws are independent (`rng`).

    Examples:
        >>> import numpy as np
        >>> from fastis.samplers.draws import Reshuffled
        >>> stream = Reshuffled(seed=0, num_examples=5)
        >>> sorted(stream.at(np.arange(5, 10), None).tolist())   # the second pass
        [0, 1, 2, 3, 4]
    """

    def __init__(self, seed: int, num_examples: int,
                 max_examples: int | None = RESHUFFLE_MAX) -> None:
        self.seed, self.num_examples = seed, num_examples
        self.reshuffles = max_examples is None or num_examples <= max_examples
        # Pass c is EpochOrder's epoch c; a batch spans at most two passes. int32 halves the
        # cache below 2^31 examples.
        self._passes = EpochOrder(seed, num_examples, keep=2,
                                  dtype=np.int32 if num_examples < 2**31 else np.int64)

    def at(self, positions: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        """int64 examples at int64 `positions` (>= 0) of the stream; independent uniform
        draws from `rng` above max_examples."""
        n = self.num_examples
        if not self.reshuffles:
            return rng.integers(0, n, len(positions), dtype=np.int64)
        if len(positions) == 0:
            return np.empty(0, np.int64)
        cycle, offset = np.divmod(positions, n)
        if cycle.min() == cycle.max():  # within one pass: the usual batch
            return self._passes(int(cycle[0]))[offset].astype(np.int64)
        out = np.empty(len(positions), np.int64)
        for c in np.unique(cycle).tolist():
            chosen = cycle == c
            out[chosen] = self._passes(c)[offset[chosen]]
        return out

    def span(self, first: int, count: int,
             rng: Callable[[], np.random.Generator]) -> np.ndarray:
        """at(positions [first, first + count)), as one slice of a pass where the span lies
        in one (a plain batch's usual case: no position arrays); `rng` makes the generator
        of the independent draws above max_examples and is only called there."""
        if not self.reshuffles:
            return rng().integers(0, self.num_examples, count, dtype=np.int64)
        cycle, offset = divmod(first, self.num_examples)
        if offset + count <= self.num_examples:
            return self._passes(cycle)[offset:offset + count].astype(np.int64)
        return self.at(np.arange(first, first + count, dtype=np.int64), None)


def inclusion_probabilities(weights: np.ndarray, k: int) -> np.ndarray:
    """pi_i = min(1, c w_i) with sum pi = k (k <= len(weights)): the inclusion probabilities
    of a fixed-size sample proportional to the weights (uniform k / n when all are 0)."""
    w = np.asarray(weights, np.float64)
    n = len(w)
    if k >= n:
        return np.ones(n)
    pi = np.zeros(n)
    capped = np.zeros(n, bool)
    # The largest weights may reach 1: cap them and share the rest among the others.
    for _ in range(n):
        free = ~capped
        total = w[free].sum()
        if total <= 0:
            pi[free] = (k - capped.sum()) / free.sum()
            break
        pi[free] = w[free] * (k - capped.sum()) / total
        over = free & (pi >= 1.0)
        if not over.any():
            break
        capped |= over
        pi[capped] = 1.0
    return np.minimum(pi, 1.0)


def systematic_sample(pi: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """round(sum pi) distinct positions, position i included with probability pi_i exactly
    (Madow's systematic sampling, over a random order of the positions so that joint
    inclusions are random too). Uses one permutation and one uniform number of `rng`.

    Examples:
        >>> import numpy as np
        >>> from fastis.samplers.draws import systematic_sample
        >>> rng = np.random.default_rng(0)
        >>> picks = [systematic_sample(np.array([1.0, 0.5, 0.5, 0.0]), rng) for _ in range(400)]
        >>> sorted(set(len(p) for p in picks)), all(0 in p and 3 not in p for p in picks)
        ([2], True)
    """
    order = rng.permutation(len(pi))
    cumulative = np.cumsum(pi[order])
    k = round(float(cumulative[-1])) if len(pi) else 0
    points = rng.random() + np.arange(k)
    # Point t falls in position j when cumulative[j - 1] <= t < cumulative[j].
    positions = np.minimum(np.searchsorted(cumulative, points, side="right"), len(pi) - 1)
    return np.sort(order[positions]).astype(np.int64)
