"""Every method of fastis.samplers by name, at the settings the README recommends, for the
demo and the experiments: one place that says how each is configured for a task.

Examples:
    >>> import torch
    >>> from fastis.recipes import make_sampler
    >>> from fastis.training import ClassificationTask, MLP
    >>> x, y = torch.randn(40, 5), torch.arange(40) % 2
    >>> task = ClassificationTask(x, y, x, y, lambda: MLP(5, (), classes=2))
    >>> type(make_sampler("importance", task, 8, seed=0)).__name__
    'ImportanceSampler'
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fastis import samplers
from fastis.samplers.rho_loss import irreducible_losses
from fastis.training import Budget, ClassificationTask, Training, train

__all__ = ["METHODS", "WEIGHTED", "holdout_irreducible_losses", "make_sampler",
           "planned_epochs"]

# The order of the tables: uniform first, then the unbiased (weighted) methods, then the
# biased ones.
METHODS = ("uniform", "importance", "upper-bound", "biased-loss", "ras", "dynamic-pruning",
           "selective-backprop", "soft-random", "high-loss-batches", "rho-loss")
# The methods whose weights make the trained loss an unbiased (or, biased-loss, a guarded)
# estimate of the full-data loss: the variance guard is on in each of them.
# (selective-backprop weights with reweight=True.)
WEIGHTED = ("importance", "upper-bound", "biased-loss", "ras", "dynamic-pruning")


def make_sampler(method: str, task: Any, batch_size: int, *, seed: int,
                 epochs: int | None = None, irreducible: np.ndarray | None = None,
                 **options: Any) -> Any:
    """The sampler of `method` for `task` (its num_examples; RAS: its groups), at its
    defaults unless `options` say otherwise.

    Args:
        method: a name of METHODS.
        task: has num_examples (and groups, for "ras").
        batch_size: examples trained per step.
        seed: the sampler's stream.
        epochs: the planned epochs ("dynamic-pruning" needs them).
        irreducible: float [N] irreducible losses ("rho-loss" needs them).
        options: keyword arguments of the sampler's constructor.
    """
    n = task.num_examples
    if method == "dynamic-pruning" and epochs is None:
        raise ValueError("dynamic-pruning needs the planned number of epochs")
    if method == "rho-loss" and irreducible is None:
        raise ValueError("rho-loss needs irreducible losses (fastis.samplers.rho_loss)")
    factories = {
        "uniform": lambda: samplers.Uniform(n, batch_size, seed=seed, **options),
        "importance": lambda: samplers.ImportanceSampler(n, batch_size, seed=seed, **options),
        "upper-bound": lambda: samplers.UpperBound(n, batch_size, seed=seed, **options),
        "biased-loss": lambda: samplers.BiasedLoss(n, batch_size, seed=seed, **options),
        "ras": lambda: samplers.RAS(n, batch_size, groups=task.groups, seed=seed, **options),
        "dynamic-pruning": lambda: samplers.DynamicPruning(n, batch_size, epochs=epochs,
                                                           seed=seed, **options),
        "selective-backprop": lambda: samplers.SelectiveBackprop(n, batch_size, seed=seed,
                                                                 **options),
        "soft-random": lambda: samplers.SoftRandom(n, batch_size, seed=seed, **options),
        "high-loss-batches": lambda: samplers.HighLossBatches(n, batch_size, seed=seed,
                                                              **options),
        "rho-loss": lambda: samplers.RhoLoss(n, batch_size, irreducible=irreducible, seed=seed,
                                             **options),
    }
    if method not in factories:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    return factories[method]()


def holdout_irreducible_losses(task: ClassificationTask, *, epochs: int = 10,
                               batch_size: int = 128, lr: float = 0.05,
                               seed: int = 0) -> np.ndarray:
    """float64 [N]: RHO-LOSS's irreducible losses of the task's training examples, from a
    model of the task trained (uniform sampling, `epochs` over the task's holdout split,
    step decay) on held-out data only.

    Examples:
        >>> import torch
        >>> from fastis.recipes import holdout_irreducible_losses
        >>> from fastis.training import ClassificationTask, MLP
        >>> x, y = torch.randn(60, 5), torch.arange(60) % 2
        >>> task = ClassificationTask(x[:40], y[:40], x, y, lambda: MLP(5, (), classes=2),
        ...                           holdout=(x[40:], y[40:]))
        >>> holdout_irreducible_losses(task, epochs=2, batch_size=10).shape
        (40,)
    """
    if task.holdout is None:
        raise ValueError("the task has no holdout split (image_task(holdout=...))")
    x, y = task.holdout
    helper = ClassificationTask(x, y, x[:1], y[:1], task.model, probe=1)
    sampler = samplers.Uniform(len(y), batch_size, seed=seed)
    torch.manual_seed(seed)
    model = task.model()
    train(helper, sampler, "irreducible", budget=Budget(epochs=epochs, evaluations=1), lr=lr,
          seed=seed, model=model)
    return irreducible_losses(model, task.dataset(), batch_size=4096)


def planned_epochs(task: ClassificationTask, budget: Budget, batch_size: int) -> int:
    """The epochs uniform sampling goes through in `budget` (for a budget of seconds: from
    100 timed steps after 20 of warm-up), what DynamicPruning plans for when it must be
    built before the run.

    Examples:
        >>> import torch
        >>> from fastis.recipes import planned_epochs
        >>> from fastis.training import Budget, ClassificationTask, MLP
        >>> x, y = torch.randn(40, 5), torch.arange(40) % 2
        >>> task = ClassificationTask(x, y, x, y, lambda: MLP(5, (), classes=2))
        >>> planned_epochs(task, Budget(steps=20), 8), planned_epochs(task, Budget(epochs=3), 8)
        (4, 3)
    """
    if budget.epochs is not None:
        return budget.epochs
    if budget.steps is not None:
        return max(1, round(budget.steps * batch_size / task.num_examples))
    probe = Training(task, make_sampler("uniform", task, batch_size, seed=0), "probe",
                     budget=Budget(steps=120, evaluations=1), lr=0.0)
    probe.advance(20)  # warm-up
    start, steps = probe.clock, probe.steps
    probe.advance(100)
    per_step = (probe.clock - start) / max(probe.steps - steps, 1)
    return max(1, round(budget.seconds / per_step * batch_size / task.num_examples))
