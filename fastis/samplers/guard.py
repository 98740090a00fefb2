"""The variance guard: importance sampling only where it lowers the gradient estimator's
second moment below uniform sampling's, by an online estimate (docs/methods.md derives it).

A weighted method draws example i with probability p_i and weights it w_i = 1 / (N p_i), so
the estimator's second moment is E_p[w^2 g^2] = (1/N^2) sum_i g_i^2 / p_i, against uniform
sampling's E_u[g^2] (g_i: the norm of example i's gradient, or its bound). The guard
considers the mixtures q_lam = (1 - lam) p_scores + lam u of the method's score distribution
with uniform, for lam on a fixed grid (lam = 1 is uniform), and estimates for each

    rho(lam) = E_q[w_q^2 g^2] / E_u[g^2]

from each trained batch's *fresh* gradient norms (the scores of the same forward pass):

- batch mode (examples drawn from the current distribution p_cur, weights w_cur): both moments
  are importance-weighted expectations under p_cur,
      E_q[w_q^2 g^2] = E_pcur[w_cur w_q g^2],   E_u[g^2] = E_pcur[w_cur g^2],
  so rho(lam) ~ sum_batch w_cur w_q g^2 / sum_batch w_cur g^2;
- pool mode (a uniform pool, every row scored): exactly, over the pool,
      rho(lam) = sum_r g_r^2 / (B q_r) / sum_r g_r^2.

Both sums are exponential moving averages over steps. The guard then mixes with the lam
whose rho is lowest, provided it is below 1 - margin (a variance reduction worth the bias of
a noisy estimate); otherwise with lam = 1: uniform sampling. Every weight stays at most
1 / min(grid). Until `warmup` batches were seen the guard samples uniformly, which is also
where its estimates are the least noisy.

A step that costs more than a uniform one (a pool to score) must buy more progress than it
costs. At a learning rate tuned for uniform sampling, a variance reduction rho makes a step
at most 2 - rho times as productive as a uniform step (the descent lemma, derived in
docs/methods.md): `pays_for(cost_ratio)` holds when 2 - rho > cost_ratio * (1 + cost_margin).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fastis.samplers.state import Array, Field, Float, Int, StateError, read_fields

# Mixing weights with uniform that the guard chooses from (1.0: uniform sampling).
MIXES = (0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 1.0)


class VarianceGuard:
    """Chooses, step by step, how much a weighted method mixes its score distribution with
    uniform sampling (module docstring).

    Args:
        mixes: the candidate mixing weights lam, increasing, ending with 1.0.
        momentum: the EMA's decay per observed batch (0.98: about the last 50 batches).
        warmup: batches observed before the guard leaves uniform sampling.
        margin: the estimated variance reduction needed to leave uniform sampling.
        cost_margin: the share by which a costlier step's gain bound must exceed its cost
            ratio (0.2: the pool steps' measured cost exceeded the forward-count model by
            14-17%, docs/methods.md).

    Examples:
        >>> import numpy as np
        >>> from fastis.samplers.guard import VarianceGuard
        >>> guard = VarianceGuard(warmup=1)
        >>> # Uniform draws (weights 1) of examples whose gradient norms vary tenfold, and
        >>> # score probabilities proportional to those norms: importance sampling pays.
        >>> g = np.array([0.1, 0.1, 0.1, 1.0])
        >>> p = g / g.sum()
        >>> guard.observe_batch(np.ones(4), g, guard.candidate_weights(p, 1 / 4))
        >>> guard.mix < 1.0, round(guard.rho, 2)
        (True, 0.41)
    """

    def __init__(self, mixes: tuple[float, ...] = MIXES, momentum: float = 0.98,
                 warmup: int = 10, margin: float = 0.05, cost_margin: float = 0.2) -> None:
        self.mixes = np.asarray(mixes, np.float64)
        if self.mixes[-1] != 1.0 or (np.diff(self.mixes) <= 0).any() or self.mixes[0] <= 0:
            raise ValueError("mixes must increase from above 0 to 1.0")
        self.momentum, self.warmup, self.margin = momentum, warmup, margin
        self.cost_margin = cost_margin
        self._num = np.zeros(len(self.mixes))  # EMA of the estimator's second moment per lam
        self._den = 0.0  # EMA of the uniform estimator's second moment
        self.observations = 0
        self.mix = 1.0  # the mixing chosen for the next draws

    # ------------------------------------------------------------------ candidates
    def candidate_weights(self, score_probability: np.ndarray, uniform_probability: Any,
                          floor: float = 0.0) -> np.ndarray:
        """float64 [len(mixes), b]: the weight u / q_lam each candidate mixture would give the
        listed examples, from their probabilities under the score distribution and under
        uniform sampling (a scalar 1/N, or per example: n_c / N for groups...). A method's
        own floor on the mixing raises every candidate below it to it."""
        p = np.asarray(score_probability, np.float64)
        u = np.asarray(uniform_probability, np.float64)
        lam = np.maximum(self.mixes, floor)[:, None]
        return u / ((1.0 - lam) * p[None, :] + lam * u)

    # ------------------------------------------------------------------ observations
    def observe_batch(self, current_weight: np.ndarray, norm: np.ndarray,
                      candidate_weight: np.ndarray) -> None:
        """A trained batch drawn with weights w_cur [b], its fresh gradient norms [b], and the
        weights each candidate would have given it [len(mixes), b]."""
        w = np.asarray(current_weight, np.float64)
        g2 = np.square(np.asarray(norm, np.float64))
        if len(w) == 0 or not (w * g2).any():
            return  # no gradient signal: nothing to compare
        self._fold((candidate_weight * (w * g2)).mean(axis=1), float((w * g2).mean()))

    def observe_pool(self, sampling_scores: np.ndarray, norm: np.ndarray) -> None:
        """A scored uniform pool: its sampling scores and fresh gradient norms [B] (exact
        second moments of every candidate resampling, module docstring)."""
        s = np.asarray(sampling_scores, np.float64)
        g2 = np.square(np.asarray(norm, np.float64))
        if len(s) == 0 or not g2.any():
            return
        total = s.sum()
        p = s / total if total > 0 else np.full(len(s), 1.0 / len(s))
        weights = self.candidate_weights(p, 1.0 / len(s))  # 1 / (B q)
        self._fold((weights * g2).mean(axis=1), float(g2.mean()))

    def _fold(self, numerator: np.ndarray, denominator: float) -> None:
        a = self.momentum
        self._num = a * self._num + (1 - a) * numerator
        self._den = a * self._den + (1 - a) * denominator
        self.observations += 1
        self.mix = self._choose()

    def _choose(self) -> float:
        if self.observations < self.warmup:
            return 1.0
        rho = self.ratios()
        best = int(np.argmin(rho))
        return float(self.mixes[best]) if rho[best] < 1.0 - self.margin else 1.0

    def step_gain(self) -> float:
        """2 - rho of the best candidate: at a learning rate tuned for uniform sampling, the
        most one of its steps can lower the loss, in uniform steps (NaN before any
        observation)."""
        if self._den <= 0:
            return math.nan
        return 2.0 - float(self.ratios().min())

    def can_ever_pay_for(self, cost_ratio: float) -> bool:
        """Whether any estimate could pass pays_for(cost_ratio): the gain bound is below 2,
        so a step costing 2 / (1 + cost_margin) uniform steps or more never pays."""
        return cost_ratio * (1.0 + self.cost_margin) < 2.0

    def pays_for(self, cost_ratio: float) -> bool:
        """Whether a step that costs `cost_ratio` uniform steps pays (module docstring):
        after the warm-up, step_gain() > cost_ratio * (1 + cost_margin)."""
        return (self.observations >= self.warmup
                and self.step_gain() > cost_ratio * (1.0 + self.cost_margin))

    # ------------------------------------------------------------------ reporting
    def ratios(self) -> np.ndarray:
        """rho(lam) for every candidate (1 for lam = 1; NaN before any observation)."""
        if self._den <= 0:
            return np.full(len(self.mixes), math.nan)
        return self._num / self._den

    @property
    def rho(self) -> float:
        """The estimated second-moment ratio to uniform sampling at the chosen mix."""
        ratios = self.ratios()
        return float(ratios[int(np.searchsorted(self.mixes, self.mix))])

    def stats(self) -> dict[str, float]:
        return {"guard_mix": self.mix, "guard_rho": self.rho,
                "guard_rho_min_mix": float(self.ratios()[0]),
                "guard_step_gain": self.step_gain()}

    # ------------------------------------------------------------------ state
    def schema(self) -> dict[str, Field]:
        return {"numerators": Array("float", (len(self.mixes),), low=0),
                "denominator": Float(0.0), "observations": Int(0),
                "mix": Float(float(self.mixes[0]), 1.0)}

    def state(self) -> dict[str, Any]:
        return {"numerators": self._num.copy(), "denominator": self._den,
                "observations": self.observations, "mix": self.mix}

    @classmethod
    def from_state(cls, state: Any) -> VarianceGuard:
        """A new guard holding a state() checked against its schema (StateError, a
        ValueError, otherwise)."""
        guard = cls()
        fields = read_fields(state, guard.schema(), "variance guard")
        if fields["mix"] not in set(guard.mixes.tolist()):
            raise StateError(f"corrupted variance guard state: mix {fields['mix']} is not one "
                             f"of {guard.mixes.tolist()}")
        guard._num, guard._den = fields["numerators"], fields["denominator"]
        guard.observations, guard.mix = fields["observations"], fields["mix"]
        return guard
