"""The randomness of a step, and drawing in proportion to weights.

Every random choice a sampler makes at step s comes from numpy's Philox4x64 keyed by the
sampler's seed at counter (s, purpose): the stream does not depend on how calls interleave,
on the process or on the rank, so draws are a function of (seed, step, updates so far).
"""

from __future__ import annotations

import numpy as np

# Purposes of the per-step generators (the third word of the Philox counter).
STREAM_DRAW = 0
STREAM_SELECT = 1
STREAM_EPOCH = 2


def step_generator(seed: int, step: int, purpose: int) -> np.random.Generator:
    """numpy's Philox4x64 keyed by `seed`, at counter (step, purpose).

    Examples:
        >>> from fastis.samplers.draws import STREAM_DRAW, step_generator
        >>> a = step_generator(7, 3, STREAM_DRAW).integers(0, 100, 4)
        >>> b = step_generator(7, 3, STREAM_DRAW).integers(0, 100, 4)
        >>> bool((a == b).all())
        True
    """
    return np.random.Generator(np.random.Philox(key=seed, counter=[0, step, purpose, 0]))


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
