"""RHO-LOSS: training on the examples with the highest reducible loss (Mindermann et al.,
"Prioritized Training on Points that are Learnable, Worth Learning, and Not Yet Learnt",
ICML 2022; docs/methods.md).

The reducible loss of an example is its training loss (the model being trained, now) minus
its irreducible loss: the loss of a model trained on a held-out split, computed once before
training (`irreducible_losses()` computes it with such a model). Each step forwards a big
batch of n_B examples (every example once per epoch), and back-propagates the b with the
highest reducible loss, with weights 1. Noisy and ambiguous examples have a high
irreducible loss too, so, unlike loss-seeking methods, RHO-LOSS does not chase them.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from fastis.samplers.draws import EpochOrder
from fastis.samplers.pool import PoolSampler, PoolScores
from fastis.validation import positive_count

__all__ = ["RhoLoss", "irreducible_losses"]


def irreducible_losses(model: torch.nn.Module, dataset: Any, *, batch_size: int = 1024,
                       loss: Callable[..., torch.Tensor] | None = None) -> np.ndarray:
    """float64 [len(dataset)]: the per-example loss of `model` (trained on held-out data)
    on every example of a map-style dataset of (input, target) pairs, in order, without
    gradients and in eval mode; `loss(outputs, targets)` per example (default:
    cross-entropy).

    Examples:
        >>> import torch
        >>> from fastis.samplers.rho_loss import irreducible_losses
        >>> data = torch.utils.data.TensorDataset(torch.zeros(3, 2), torch.tensor([0, 1, 0]))
        >>> model = torch.nn.Linear(2, 2)
        >>> with torch.no_grad():
        ...     _ = model.weight.zero_(), model.bias.zero_()   # a uniform guess: log 2
        >>> irreducible_losses(model, data).round(4).tolist()
        [0.6931, 0.6931, 0.6931]
    """
    loss = loss or (lambda out, y: torch.nn.functional.cross_entropy(out, y, reduction="none"))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    was_training = model.training
    model.eval()
    parts = []
    with torch.no_grad():
        for x, y in loader:
            parts.append(loss(model(x), y).double().cpu().numpy())
    model.train(was_training)
    return np.concatenate(parts) if parts else np.empty(0)


class RhoLoss(PoolSampler):
    """Reducible-loss selection; see the module docstring.

    Args:
        num_examples: N.
        batch_size: b, examples back-propagated per step.
        irreducible: float [N], each example's irreducible loss (finite, >= 0).
        pool_size: n_B >= b, examples forwarded per step (default 10b: the paper's top 10%).
        forward_batch_size: rows per call of a scoring callable (default b).
        seed: the stream's seed.

    Examples:
        >>> import numpy as np, torch, fastis
        >>> irreducible = np.where(np.arange(100) < 50, 2.0, 0.0)  # the first half is noise
        >>> sampler = fastis.samplers.RhoLoss(100, 5, irreducible=irreducible, seed=0)
        >>> pool = next(iter(sampler))
        >>> pick = sampler.select(pool, torch.full((50,), 2.5))   # equal training losses
        >>> bool((pick.index >= 50).all())      # the learnable half is chosen
        True
    """

    score_field = "loss"

    def __init__(self, num_examples: int, batch_size: int, *, irreducible: Any,
                 pool_size: int | None = None, forward_batch_size: int | None = None,
                 seed: int | None = None) -> None:
        pool = pool_size if pool_size is not None else 10 * positive_count(batch_size,
                                                                           "batch_size")
        n = positive_count(num_examples, "num_examples")
        super().__init__(n, batch_size, pool_size=pool, forward_batch_size=forward_batch_size,
                         seed=seed, steps_per_epoch=-(-n // positive_count(pool, "pool_size")))
        if self.pool_size < self.batch_size:
            raise ValueError(f"pool_size ({self.pool_size}) must be >= batch_size "
                             f"({self.batch_size})")
        self.irreducible = self.scores_of(irreducible, self.num_examples, name="irreducible")
        # The configuration records a checksum: a state from other losses is refused.
        self._checksum = f"{zlib.crc32(self.irreducible.tobytes()):08x}"
        self._order = EpochOrder(self.seed, self.num_examples)

    def _config(self) -> dict[str, Any]:
        return {**super()._config(), "irreducible_crc32": self._checksum,
                "steps_per_epoch": self._epoch_steps}

    def _draw(self, step: int):
        epoch, position = divmod(step, self._epoch_steps)
        index = self._order(epoch)[position * self.pool_size:(position + 1) * self.pool_size]
        return self._pool_draw(step, index.copy())

    def reducible(self, losses: np.ndarray, index: np.ndarray) -> np.ndarray:
        """The training losses minus the examples' irreducible losses."""
        return np.asarray(losses, np.float64) - self.irreducible[index]

    def _choose(self, pool: PoolScores, index: np.ndarray, step: int
                ) -> tuple[np.ndarray, np.ndarray]:
        # The b highest reducible losses; ties go to the earlier row (stable).
        rows = np.argsort(-self.reducible(pool.values, index), kind="stable")[:self.batch_size]
        return np.sort(rows), np.ones(len(rows))

    def _observe(self, index: np.ndarray, scores: Any, step: int,
                 weight: np.ndarray | None) -> None:
        if scores is not None:
            self.scores_of(scores, len(index))  # learns nothing from them, but checks them
