"""Katharopoulos & Fleuret 2018, "Not All Samples Are Created Equal" (docs/methods.md).

Score: the gradient-norm upper bound ||softmax(z) - onehot(y)|| (fastis.ops
cross_entropy_scores(...).grad_norm). A step either trains on b uniform examples, or, while
importance sampling pays off, presamples a uniform pool of B = presample * b, scores it with
a forward pass, and trains on b drawn from it with replacement in proportion to the scores,
with weights 1 / (B g).

The switch: tau = EMA_0.9 of sqrt(|U| sum g^2) = RMS(s) / mean(s) over the
scored set (the pool on importance steps, the trained batch on uniform ones; tau starts at
0, an implicit warm-up), and importance sampling runs while tau > tau_th. tau^2 is the
factor by which importance sampling would cut the gradient estimator's second moment if the
bound were tight. tau_th is the cost ratio of the two kinds of step (eq. 29 of the paper):
  - cost="paper": backward = 2 forwards, so B + 3b units against 3b: (B + 3b) / 3b;
  - reuse_forward=True: the pool's forward is kept and back-propagated through (no second
    forward of the b chosen examples: valid where the forward is deterministic, i.e. no
    dropout or batch statistics), so the step costs 3B against 3b: B / b;
  - cost="measured": t_f, the scoring callable's time per example, and t_s, the training
    step's time per example (from select() returning to update()), both EMAs, replace the
    1 : 2 assumption: (B t_f + b t_s) / (b t_s). Measured costs make the switch depend on
    timing, so runs are no longer bit-reproducible (resume continues the saved estimates).

With the variance guard (the default) the switch is the guard's instead (ours,
docs/methods.md): a pool step runs while the guard's bound on its gain, 2 - rho, exceeds
tau_th (the cost ratio) by its cost margin; where no gain can (a fixed tau_th >= 2 / 1.2),
every step is uniform, known when the sampler is built: `scores_pools` is False (the loop
may skip select()) and uniform steps skip the guard's and tau's bookkeeping (tau stays 0).
The paper's rule (tau^2 > tau_th^2, i.e. a second-moment cut worth the cost) assumes a
step's progress grows as 1 / rho; at a learning rate tuned for uniform sampling it grows at
most to 2 - rho, so with presample = 3 (cost 2) a pool step never pays at equal wall-clock,
and the guarded sampler stays uniform; it pays where pool forwards are cheap
(cost="measured", a small presample, rho well below 1).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fastis.data import Draw
from fastis.samplers.draws import STREAM_DRAW, normalised, step_generator
from fastis.samplers.estimates import ema
from fastis.samplers.guard import VarianceGuard
from fastis.samplers.pool import PoolSampler, PoolScores
from fastis.samplers.state import MAX_STEP, Field, Float, Int
from fastis.validation import probability, real_number


class UpperBound(PoolSampler):
    """KF18 importance sampling with the tau switch; see the module docstring.

    Args:
        num_examples: N.
        batch_size: b, examples trained per step.
        presample: B / b (default 3.0, as in the official code); B = round(presample * b).
        tau_th: the switch threshold: the cost ratio of a pool step to a uniform one
            (eq. 29); default from the cost model.
        momentum: a_tau, the EMA momentum of tau (0.9).
        cost: "paper" (backward = 2 forwards) or "measured".
        reuse_forward: the loop back-propagates through the pool's own forward (see above).
        max_weight: None (default: unbiased weights 1 / (B g)), or a bound on the picks'
            weights. Clipping trades a bias (examples with tiny scores count less than their
            share) for a bounded variance: a pick whose score is near 0 would otherwise get
            a huge weight. `stats()["max_weight"]` shows the weights trained on.
        guard: the variance guard (fastis.samplers.guard): pool steps run only while the
            guard says they pay for their cost (module docstring), and the resampling is
            mixed with uniform over the pool as far as the pools' fresh scores say it pays
            (with fresh gradient-norm scores that is little: every weight stays <= 50).
        forward_batch_size: rows per call of a scoring callable (default b).
        steps_per_epoch: len(); default ceil(N / b).
        seed: the stream's seed.

    Examples:
        >>> import torch, fastis
        >>> # The paper's switch (guard=False): tau starts at 0, so a uniform batch first.
        >>> sampler = fastis.samplers.UpperBound(1000, 32, tau_th=1.0, momentum=0.0,
        ...                                      guard=False, seed=0)
        >>> first = next(iter(sampler))
        >>> sampler.update(first, torch.rand(32))  # its gradient-norm scores move tau
        >>> pool = next(iter(sampler))         # tau > tau_th now: a pool of 96 to score
        >>> pick = sampler.select(pool, torch.rand(96))
        >>> len(pool), len(pick.rows)
        (96, 32)
        >>> # The default: no gain pays for a pool step at presample 3 (cost 2 * 1.2 > 2):
        >>> # uniform steps, whose scores are checked but need no bookkeeping.
        >>> guarded = fastis.samplers.UpperBound(1000, 32, seed=0)
        >>> for _ in range(20):
        ...     draw = next(iter(guarded))
        ...     guarded.update(draw, torch.rand(32) ** 4)
        >>> guarded.importance_on, guarded.guard.observations, guarded.scores_pools
        (False, 0, False)
    """

    score_field = "grad_norm"

    def __init__(self, num_examples: int, batch_size: int, *, presample: float = 3.0,
                 tau_th: float | None = None, momentum: float = 0.9, cost: str = "paper",
                 reuse_forward: bool = False, max_weight: float | None = None,
                 guard: bool = True,
                 forward_batch_size: int | None = None,
                 steps_per_epoch: int | None = None, seed: int | None = None) -> None:
        presample = real_number(presample, "presample")
        if not (math.isfinite(presample) and presample >= 1):
            raise ValueError(f"presample must be finite and >= 1, got {presample}")
        super().__init__(num_examples, batch_size, pool_size=round(presample * batch_size),
                         forward_batch_size=forward_batch_size, seed=seed,
                         steps_per_epoch=steps_per_epoch)
        if tau_th is not None:
            tau_th = real_number(tau_th, "tau_th")
            if not (math.isfinite(tau_th) and tau_th >= 1):
                raise ValueError(f"tau_th must be finite and >= 1 (tau is >= 1), got {tau_th}")
        if cost not in ("paper", "measured"):
            raise ValueError(f"cost must be 'paper' or 'measured', got {cost!r}")
        self.presample, self.tau_th, self.cost = presample, tau_th, cost
        self.momentum = probability(momentum, "momentum", allow_one=False)
        self.reuse_forward = bool(reuse_forward)
        self.max_weight = None if max_weight is None else real_number(max_weight, "max_weight")
        if self.max_weight is not None and not (math.isfinite(self.max_weight)
                                                and self.max_weight >= 1):
            raise ValueError(f"max_weight must be finite and >= 1 (the mean weight is 1), got "
                             f"{max_weight}")
        self.guard = VarianceGuard() if guard else None
        self.tau = 0.0
        # Guarded, with a fixed cost ratio no gain can pay for (presample 3: 2 * 1.2 > 2):
        # known now, and for the sampler's life.
        self._every_step_uniform = (self.guard is not None and cost != "measured"
                                    and not self.guard.can_ever_pay_for(self.threshold()))
        self._forward_cost = math.nan  # seconds per example, scoring forward (EMA)
        self._step_cost = math.nan  # seconds per example, training step (EMA)
        self._importance_steps = 0

    def _config(self) -> dict:
        return {**super()._config(), "presample": self.presample, "tau_th": self.tau_th,
                "momentum": self.momentum, "cost": self.cost,
                "reuse_forward": self.reuse_forward, "max_weight": self.max_weight,
                "guard": self.guard is not None,
                "steps_per_epoch": self._epoch_steps}

    def threshold(self) -> float:
        """tau_th now: the given one, or the cost model's (module docstring)."""
        if self.tau_th is not None:
            return self.tau_th
        ratio = self.pool_size / self.batch_size
        if self.reuse_forward:
            return ratio
        if self.cost == "measured" and math.isfinite(self._forward_cost * self._step_cost):
            return (self.pool_size * self._forward_cost + self.batch_size * self._step_cost) / (
                self.batch_size * self._step_cost)
        return super().threshold()

    @property
    def importance_on(self) -> bool:
        """Whether the next drawn step will be a pool: the guard says it pays for tau_th
        (with the guard), tau > tau_th (without)."""
        if self.guard is not None:
            return self.guard.pays_for(self.threshold())
        return self.tau > self.threshold()

    def _draw(self, step: int) -> Draw:
        if not self._every_step_uniform and self.importance_on:
            self._importance_steps += 1
            return self._draw_pool(step, step_generator(self.seed, step, STREAM_DRAW))
        return self._uniform_draw(step)

    def _choose(self, pool: PoolScores, index: np.ndarray, step: int
                ) -> tuple[np.ndarray, np.ndarray]:
        rows, weights = self._resample(pool.values, step)
        return rows, weights if self.max_weight is None else np.minimum(weights,
                                                                          self.max_weight)

    def _pool_scored(self, pool: PoolScores, forward_seconds: float | None) -> None:
        self._update_tau(pool.values)
        if self.guard is not None:
            self.guard.observe_pool(pool.values, pool.norms)
        if forward_seconds:
            self._forward_cost = ema(self._forward_cost, forward_seconds / len(pool.values),
                                     0.9)

    def _update_tau(self, scores: np.ndarray) -> None:
        if len(scores) == 0:
            return  # an empty batch says nothing about the scores' spread
        g = normalised(scores)
        # tau's update (docs/methods.md): (1 - ||g - u||^2 / ||g||^2)^(-1/2) = sqrt(|U| sum g^2).
        self.tau = self.momentum * self.tau + (1 - self.momentum) * math.sqrt(
            len(g) * float(g @ g))

    def _observe(self, index: np.ndarray, scores: Any, step: int,
                 weight: np.ndarray | None) -> None:
        if scores is None:
            raise ValueError("UpperBound.update() needs the scores of the trained examples "
                             "(they drive tau on uniform steps)")
        values = self.scores_of(scores, len(index))
        if self._every_step_uniform:
            return  # the scores cannot change anything: checked only
        seconds = self._training_seconds(step)
        if seconds is not None and len(index):
            self._step_cost = ema(self._step_cost, seconds / len(index), 0.9)
        if step not in self._pool_steps:
            self._update_tau(values)
            if self.guard is not None:  # the trained batch, scored as if it were a pool
                self.guard.observe_pool(values, self.norms_of(scores, len(index), values=values))

    def _stats(self) -> dict[str, float]:
        return {"tau": self.tau, "tau_th": self.threshold(),
                "importance_on": float(self.importance_on),
                "importance_steps": float(self._importance_steps),
                **(self.guard.stats() if self.guard is not None else {})}

    def _method_state(self) -> dict[str, Any]:
        return {**super()._method_state(), "tau": self.tau,
                "forward_cost": self._forward_cost, "step_cost": self._step_cost,
                "importance_steps": self._importance_steps}

    def _method_schema(self) -> dict[str, Field]:
        # tau is 0 before any score, else an EMA of values in [1, sqrt(|U|)].
        return {**super()._method_schema(), "tau": Float(0.0, math.sqrt(self.pool_size) + 1),
                "forward_cost": Float(0.0, nan=True), "step_cost": Float(0.0, nan=True),
                "importance_steps": Int(0, MAX_STEP)}

    def _load_method_state(self, fields: dict[str, Any]) -> None:
        super()._load_method_state(fields)
        self.tau, self._importance_steps = fields["tau"], fields["importance_steps"]
        self._forward_cost, self._step_cost = fields["forward_cost"], fields["step_cost"]
