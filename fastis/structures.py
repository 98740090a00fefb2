"""SumTree and AliasTable: weighted index structures backed by the C++ core (fastis._C).

Both draw indices with replacement, P(i) = w_i / total, from a seeded Philox4x64-10
generator (the same as numpy.random.Philox), so the same seed gives the same indices on
every platform and thread count. Inputs are checked before anything changes: a rejected
call leaves the structure exactly as it was. Results are new tensors, never views of
internal buffers. Calls from several Python threads are safe: each object runs one call at a
time (the C++ side holds a per-object lock and releases the GIL).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from fastis import _C
from fastis.validation import as_count, as_indices, as_seed, as_weights

_STATE_VERSION = 1
# The most examples a SumTree holds (csrc/sum_tree.hpp: far beyond any memory).
MAX_EXAMPLES = 2**60
# The most indices one sample() call draws (its output alone would take 2^65 bytes).
MAX_DRAWS = 2**62


class _WeightedIndex:
    """What SumTree and AliasTable share: drawing, probabilities, weights, RNG state."""

    _core: Any
    _build = None  # the _C class whose from_weights() builds a core

    def __init__(self, weights: Any, *, seed: int | None = None) -> None:
        core = self._build.from_weights(as_weights(weights))
        core.seed = as_seed(seed)
        self._core = core

    def __len__(self) -> int:
        return len(self._core)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={len(self)}, total={self.total!r}, seed={self.seed})"

    @property
    def total(self) -> float:
        """The sum of all weights (float64)."""
        return self._core.total

    @property
    def nbytes(self) -> int:
        """Bytes of memory the structure holds."""
        return self._core.nbytes

    @property
    def seed(self) -> int:
        """The generator's key; draws are a function of (seed, counter) alone."""
        return self._core.seed

    def sample(
        self, k: int, *, with_probabilities: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Draws k indices with replacement, P(i) = w_i / total.

        Returns an int64 tensor [k]; with `with_probabilities=True` also the float64 tensor
        [k] of w_i / total for each drawn index (found during the draw, at no extra lookup
        for SumTree). Raises ValueError if all weights are zero, OverflowError for k above
        2**62 or when the generator's counter would wrap past 2**64 - 1, and MemoryError when
        the k outputs do not fit in memory.
        """
        k = as_count(k)
        if k > MAX_DRAWS:
            raise OverflowError(f"k must be at most 2**62, got {k}")
        idx, prob = self._core.sample(k, bool(with_probabilities))
        if with_probabilities:
            return torch.from_numpy(idx), torch.from_numpy(prob)
        return torch.from_numpy(idx)

    def probabilities(self, indices: Any) -> torch.Tensor:
        """float64 tensor of w_i / total for the given int indices (1-D)."""
        return torch.from_numpy(self._core.probabilities(as_indices(indices)))

    def weights(self, indices: Any = None) -> torch.Tensor:
        """A float64 copy of all weights, or of the weights at `indices`."""
        if indices is None:
            return torch.from_numpy(self._core.weights())
        return torch.from_numpy(self._core.get(as_indices(indices)))

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: weights, seed and generator counter."""
        return {
            "kind": type(self).__name__,
            "version": _STATE_VERSION,
            "weights": self.weights(),
            "seed": self._core.seed,
            "counter": self._core.counter,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a state_dict of a structure of the same kind and size; the next draws
        equal those the saved structure would have made. On error nothing changes."""
        self._core = self._core_from_state(state, expected_size=len(self))

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]):
        """A new structure from a state_dict."""
        obj = cls.__new__(cls)
        obj._core = cls._core_from_state(state, expected_size=None)
        return obj

    @classmethod
    def _core_from_state(cls, state: dict[str, Any], expected_size: int | None):
        if not isinstance(state, dict):
            raise TypeError(f"a state_dict must be a dict, got {type(state).__name__}")
        missing = {"kind", "version", "weights", "seed", "counter"} - state.keys()
        if missing:
            raise ValueError(f"state_dict lacks {sorted(missing)}")
        if state["kind"] != cls.__name__:
            raise ValueError(f"state_dict is of a {state['kind']}, not a {cls.__name__}")
        if state["version"] != _STATE_VERSION:
            raise ValueError(
                f"state_dict has version {state['version']}; this fastis reads {_STATE_VERSION}"
            )
        weights = as_weights(state["weights"])
        if expected_size is not None and len(weights) != expected_size:
            raise ValueError(
                f"state_dict holds {len(weights)} weights; this {cls.__name__} has {expected_size}"
            )
        seed, counter = as_count(state["seed"], "seed"), as_count(state["counter"], "counter")
        if seed >= 2**64 or counter >= 2**64:
            raise ValueError(f"seed and counter must be below 2**64, got {seed} and {counter}")
        core = cls._build.from_weights(weights)
        core.seed, core.counter = seed, counter
        return core

    def __reduce__(self):
        return (type(self).from_state_dict, (self.state_dict(),))


class SumTree(_WeightedIndex):
    """A float64 sum tree: O(log n) draws and batched O(log n) updates.

    Args:
        weights: 1-D non-negative finite weights [n] (numpy array, torch CPU tensor or
            sequence; any real dtype, summed in float64). n >= 1, int64-indexed.
        seed: generator key in [0, 2^64); None draws one from torch's global generator.

    Memory: about 9.1 bytes per example (float64 leaves + 8-wide internal nodes).

    Examples:
        >>> import fastis
        >>> tree = fastis.SumTree([1.0, 0.0, 3.0], seed=0)
        >>> tree.update([1], [4.0])             # w = [1, 4, 3]
        >>> tree.total, tree.probabilities([1]).tolist()
        (8.0, [0.5])
        >>> idx, p = tree.sample(4, with_probabilities=True)
        >>> idx.shape, bool((p > 0).all())
        (torch.Size([4]), True)
    """

    _build = _C.SumTree

    @classmethod
    def zeros(cls, n: int, *, seed: int | None = None) -> SumTree:
        """A tree of n zero weights, to be filled by update(). Untouched parts of a large
        tree cost no memory until written."""
        obj = cls.__new__(cls)
        n = as_count(n, "n")
        if n > MAX_EXAMPLES:
            raise ValueError(f"a SumTree holds at most 2**60 examples, got n = {n}")
        core = _C.SumTree.zeros(n)
        core.seed = as_seed(seed)
        obj._core = core
        return obj

    def update(self, indices: Any, weights: Any) -> None:
        """Sets w[indices[i]] = weights[i] for all i, in order, so the last of duplicate
        indices wins. `weights` is 1-D of the same length, or a scalar for all of them.
        Checked first: a bad index or weight raises and changes nothing."""
        idx = as_indices(indices)
        if np.ndim(weights) == 0 and not isinstance(weights, (str, bytes)):
            # Checked as a 1-element array (dtype, device, value: also when no index is
            # given), then repeated.
            one = as_weights(weights.reshape(1) if isinstance(weights, torch.Tensor) else [weights])
            value = float(one[0])
            if not (math.isfinite(value) and value >= 0):
                what = ("NaN" if math.isnan(value) else ("+inf" if value > 0 else "-inf")
                        if math.isinf(value) else f"negative ({value})")
                raise ValueError(f"the weight is {what}; weights must be finite and "
                                 "non-negative")
            weights = np.full(len(idx), one[0], dtype=one.dtype)
        self._core.update(idx, as_weights(weights))


class AliasTable(_WeightedIndex):
    """Walker's alias table, Vose's O(n) build: O(1) draws, one random memory line each.

    For weights that stay fixed for a while (an epoch); use SumTree for per-step updates.
    Same arguments as SumTree. Memory: 16 bytes per example (float64 weights + an 8-byte
    entry; 24 bytes beyond 2^32 examples). Probabilities are exact to ~6e-8 relative (the
    keep-probabilities are float32); `probabilities()` reports exact w_i / total.

    Examples:
        >>> import fastis
        >>> table = fastis.AliasTable([1.0, 0.0, 3.0], seed=0)
        >>> sorted(set(table.sample(1000).tolist()))   # weight 0 is never drawn
        [0, 2]
        >>> table.probabilities([2]).tolist()
        [0.75]
    """

    _build = _C.AliasTable
