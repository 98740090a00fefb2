"""The libraries fastis is measured against, behind one small interface each: build from
float64 weights, draw k indices, and a training step (update 65,536 weights, then draw
1,024). Methods without an update API rebuild or re-normalise in the step, as users of those
libraries must. Also the eager PyTorch scores users write today."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

STEP_DRAWS = 1_024


@dataclass(frozen=True)
class Structure:
    """build(weights) -> state; draw(state, k); step(state, indices, new_weights)."""

    name: str
    build: Callable[[np.ndarray], Any]
    draw: Callable[[Any, int], Any]
    step: Callable[[Any, np.ndarray, np.ndarray], Any]
    max_n: int | None = None  # the library refuses larger n
    builds: bool = True  # False: no structure (every draw scans the n weights)


class Rebuilt:
    """A method with no update API: its own weight copy plus the derived object."""

    def __init__(self, w: np.ndarray, make: Callable[[np.ndarray], Any]) -> None:
        self.w, self.make, self.obj = w, make, make(w)

    def set(self, idx: np.ndarray, new: np.ndarray) -> Any:
        self.w[idx] = new
        self.obj = self.make(self.w)
        return self.obj


def multinomial() -> Structure:
    def step(w: torch.Tensor, idx: np.ndarray, new: np.ndarray) -> torch.Tensor:
        w[torch.from_numpy(idx)] = torch.from_numpy(new)
        return torch.multinomial(w, STEP_DRAWS, replacement=True)

    return Structure("torch.multinomial", torch.from_numpy,
                     lambda w, k: torch.multinomial(w, k, replacement=True), step, max_n=2**24,
                     builds=False)


def weighted_random_sampler() -> Structure:
    from torch.utils.data import WeightedRandomSampler

    def draw(s: WeightedRandomSampler, k: int) -> list[int]:
        s.num_samples = k
        return list(s)

    def step(s: WeightedRandomSampler, idx: np.ndarray, new: np.ndarray) -> list[int]:
        s.weights[torch.from_numpy(idx)] = torch.from_numpy(new)
        return draw(s, STEP_DRAWS)

    return Structure("WeightedRandomSampler",
                     lambda w: WeightedRandomSampler(torch.from_numpy(w), 1, replacement=True),
                     draw, step, max_n=2**24, builds=False)


def numpy_choice() -> Structure:
    rng = np.random.default_rng(1)

    def step(st: Rebuilt, idx: np.ndarray, new: np.ndarray) -> np.ndarray:
        return rng.choice(len(st.w), STEP_DRAWS, p=st.set(idx, new))

    return Structure("numpy Generator.choice", lambda w: Rebuilt(w, lambda v: v / v.sum()),
                     lambda st, k: rng.choice(len(st.w), k, p=st.obj), step, builds=False)


def scipy_alias() -> Structure:
    from scipy.stats.sampling import DiscreteAliasUrn

    rng = np.random.default_rng(2)
    warnings.filterwarnings("ignore", message=r".*round-off error.*")  # UNU.RAN, skewed w

    def make(w: np.ndarray) -> Any:
        return DiscreteAliasUrn(w, random_state=rng)

    def step(st: Rebuilt, idx: np.ndarray, new: np.ndarray) -> np.ndarray:
        return st.set(idx, new).rvs(STEP_DRAWS)

    return Structure("scipy DiscreteAliasUrn", lambda w: Rebuilt(w, make),
                     lambda st, k: st.obj.rvs(k), step)


def torchrl_trees() -> list[Structure]:
    """TorchRL's sum trees, when its C++ extension imports (its 0.14 wheel does not import
    with torch 2.13: benchmarks/TORCHRL.md rebuilds it)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torchrl._torchrl import SumSegmentTreeFp32, SumSegmentTreeFp64
    except Exception:
        return []
    rng = np.random.default_rng(3)

    def tree(cls: type, dtype: type, label: str) -> Structure:
        def build(w: np.ndarray) -> Any:
            t = cls.__new__(cls)  # the pickle path reaches the O(n) SegmentTree::LoadValues
            t.__setstate__((w.astype(dtype, copy=False),))
            return t

        def draw(t: Any, k: int) -> np.ndarray:
            total = dtype(t.query(0, t.size))
            return t.scan_lower_bound(rng.random(k, dtype=dtype) * total)

        def step(t: Any, idx: np.ndarray, new: np.ndarray) -> np.ndarray:
            t.update(idx, new.astype(dtype, copy=False))
            return draw(t, STEP_DRAWS)

        return Structure(f"TorchRL SumSegmentTree{label}", build, draw, step)

    return [tree(SumSegmentTreeFp64, np.float64, "Fp64"),
            tree(SumSegmentTreeFp32, np.float32, "Fp32")]


def all_structures() -> list[Structure]:
    return [scipy_alias(), multinomial(), weighted_random_sampler(), numpy_choice(),
            *torchrl_trees()]


def eager_scores(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """What users write today for the loss and ||softmax - onehot||: log-softmax, softmax,
    one-hot and their difference, each a full [N, C] float32 tensor."""
    loss = F.cross_entropy(logits.float(), target, reduction="none")
    g = logits.float().softmax(dim=1) - F.one_hot(target, logits.shape[1]).float()
    return loss, g.norm(dim=1)
