"""RAS: minimum-variance adaptive sampling over groups, regularised toward the group prior
(Rojas-Dominguez et al., Soft Computing 27(18), 2023; docs/methods.md).

The paper's full text was not reachable: this is AS (Gopal, ICML 2016) plus the prior-mixture
regulariser, a reconstruction (docs/methods.md says which parts are ours).

Each example belongs to a group c = 1..K (a class label or any integer side information),
n_c = |group c|, pi_c = n_c / N. A step draws b groups from q, then one member uniformly
inside each group, so example i of group c has probability q_c / n_c per draw and the weight
w_i = n_c / (N q_c) makes the weighted batch mean an unbiased estimate of the full mean.

Minimising the trace of that estimator's variance, sum_c pi_c^2 E_c||G||^2 / q_c, over the
simplex gives q^AS_c ∝ n_c sqrt(E_c||G||^2) (Lagrange: pi_c^2 E_c / q_c^2 = const). E_c||G||^2
is unknown; V_c, an EMA of the batch mean of the squared KF18 gradient-norm bound of the
group's drawn examples, stands in for it. AS alone starves groups whose q_c becomes small
(their V_c is never refreshed, their weights explode); RAS mixes in the prior,
q = (1 - mix) q^AS + mix pi, so q_c >= mix pi_c, every weight is at most 1 / mix and every
group keeps being visited.
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar

import numpy as np

from fastis.data import Draw
from fastis.samplers.base import BatchSampler
from fastis.samplers.draws import STREAM_DRAW, resample, step_generator
from fastis.samplers.estimates import ema
from fastis.samplers.guard import VarianceGuard
from fastis.samplers.state import Array, Field, Nested, StateError
from fastis.validation import as_indices, positive_count, probability


class RAS(BatchSampler):
    """Regularised adaptive sampling over groups of examples.

    Args:
        num_examples: N, the data set size.
        batch_size: b, draws per step (with replacement).
        groups: int tensor / array / sequence [N], the group id of each example (class labels
            or any integer side information; ids need not be contiguous).
        mix: lambda in [0, 1], the weight of the prior pi in q. Default 0.3 is our choice
            (the paper's value is unknown; sweep {0.1, 0.3, 0.5}). It bounds every weight
            by 1 / mix. mix = 0 is plain AS (unbounded weights, starvation); mix = 1 is
            uniform instance sampling.
        momentum: beta in [0, 1), the EMA factor of V_c (default 0.9).
        guard: the variance guard (fastis.samplers.guard) raises the mix toward the prior
            where the fresh scores say the adaptive groups do not pay.
        steps_per_epoch: len() of the sampler (default ceil(N / b)).
        seed: the stream's seed (None: drawn from torch's global generator).

    update(batch, scores) takes the KF18 gradient-norm bound (`score_field = "grad_norm"`):
    a float [b] tensor/array or a `fastis.ops.Scores`. A group's first report sets V_c to its
    batch mean of squared scores; each later batch holding the group moves V_c one EMA step.
    Until every group has reported once, q = pi (uniform instance sampling, weights 1).
    q is recomputed at each draw from the reports received by then, so a loader that draws
    ahead uses slightly older estimates (deterministic for a fixed prefetch depth).

    Examples:
        >>> import torch, fastis
        >>> groups = torch.arange(300) % 3
        >>> sampler = fastis.samplers.RAS(300, 30, groups=groups, mix=0.3, guard=False, seed=0)
        >>> sampler.observe(torch.arange(300), (groups + 1.0) / 3)   # group 2 varies most
        >>> [round(q, 3) for q in sampler.group_distribution().tolist()]
        [0.217, 0.333, 0.45]
    """

    score_field: ClassVar[str] = "grad_norm"

    def __init__(self, num_examples: int, batch_size: int, *, groups: Any, mix: float = 0.3,
                 momentum: float = 0.9, guard: bool = True, steps_per_epoch: int | None = None,
                 seed: int | None = None) -> None:
        super().__init__(num_examples, batch_size, seed=seed, steps_per_epoch=steps_per_epoch)
        ids = as_indices(groups, "groups").astype(np.int64, copy=False)
        if len(ids) != self.num_examples:
            raise ValueError(f"groups must hold one id per example ({self.num_examples}), got "
                             f"{len(ids)}")
        self.mix = probability(mix, "mix")
        self.momentum = probability(momentum, "momentum", allow_one=False)
        self.steps_per_epoch = (None if steps_per_epoch is None
                                else positive_count(steps_per_epoch, "steps_per_epoch"))

        # Ids -> 0..K-1 in increasing id order; members of each group sorted, group after group.
        self.group_ids, self._group_of = np.unique(ids, return_inverse=True)
        self._group_of = self._group_of.reshape(-1).astype(np.int64)
        self.num_groups = len(self.group_ids)
        self.group_sizes = np.bincount(self._group_of, minlength=self.num_groups)
        self._members = np.argsort(self._group_of, kind="stable").astype(np.int64)
        self._offsets = np.concatenate(([0], np.cumsum(self.group_sizes)[:-1])).astype(np.int64)
        self.prior = self.group_sizes / self.num_examples  # pi_c, float64 [K]
        self._checksum = hashlib.sha256(ids.astype("<i8").tobytes()).hexdigest()

        self.guard = VarianceGuard() if guard else None
        self._v = np.zeros(self.num_groups)  # V_c, float64 [K]
        self._observed = np.zeros(self.num_groups, dtype=np.bool_)

    # ------------------------------------------------------------------ distribution
    @property
    def warming_up(self) -> bool:
        """True until every group has been observed once (q = pi meanwhile)."""
        return not bool(self._observed.all())

    @property
    def second_moments(self) -> np.ndarray:
        """V_c, float64 [K] (a copy): the running estimates of E_c ||G||^2 (0 where unseen)."""
        return self._v.copy()

    def _adaptive_distribution(self) -> np.ndarray:
        """q^AS, float64 [K]: proportional to n_c sqrt(V_c)."""
        root = np.sqrt(self._v)
        top = root.max()
        if top == 0:  # every V_c is 0: nothing to prefer, q^AS = pi
            return self.prior
        # Scaled by the largest sqrt(V_c) first so that n_c * sqrt(V_c) cannot overflow.
        q_as = self.group_sizes * (root / top)
        return q_as / q_as.sum()

    def effective_mix(self) -> float:
        """The weight of the prior in q: `mix`, raised by the variance guard where it backs
        off."""
        return self.mix if self.guard is None else max(self.mix, self.guard.mix)

    def group_distribution(self) -> np.ndarray:
        """q, float64 [K] summing to 1: the group distribution the next draw would use."""
        if self.warming_up:
            return self.prior.copy()
        mix = self.effective_mix()
        q = (1.0 - mix) * self._adaptive_distribution() + mix * self.prior
        return q / q.sum()

    # ------------------------------------------------------------------ draws
    def _draw(self, step: int) -> Draw:
        q = self.group_distribution()
        rng = step_generator(self.seed, step, STREAM_DRAW)
        c = resample(q, self.batch_size, rng)  # groups of zero probability (mix = 0) never
        member = rng.integers(0, self.group_sizes[c])
        index = self._members[self._offsets[c] + member]
        weight = (self.group_sizes[c] / (self.num_examples * q[c])).astype(np.float32)
        return Draw(index, weight, step)

    # ------------------------------------------------------------------ feedback
    def _observe(self, index: np.ndarray, scores: Any, step: int,
                 weight: np.ndarray | None) -> None:
        if scores is None:
            raise ValueError("RAS.update() needs scores: the per-example gradient-norm bound "
                             "(a float [b] tensor or a fastis.ops.Scores)")
        values = self.scores_of(scores, len(index))
        squares = values * values  # scores <= MAX_SCORE: no overflow, even summed
        if len(index) == 0:
            return
        if self.guard is not None and weight is not None and not self.warming_up:
            # Group-level candidates (1 - lam) q^AS + lam pi, before V moves.
            group = self._group_of[index]
            candidates = self.guard.candidate_weights(self._adaptive_distribution()[group],
                                                      self.prior[group], floor=self.mix)
            self.guard.observe_batch(weight, self.norms_of(scores, len(index), values=values),
                                     candidates)
        group = self._group_of[index]
        count = np.bincount(group, minlength=self.num_groups)
        present = count > 0
        mean = np.bincount(group, weights=squares, minlength=self.num_groups)[present]
        mean = mean / count[present]
        # The first observation of a group initialises V_c (no bias toward the 0 start);
        # later ones move it by one EMA step per batch.
        old = np.where(self._observed[present], self._v[present], np.nan)
        self._v[present] = ema(old, mean, self.momentum)
        self._observed[present] = True

    # ------------------------------------------------------------------ reporting
    def _stats(self) -> dict[str, float]:
        ratio = self.group_distribution() / self.prior
        return {
            "warming_up": float(self.warming_up),
            "groups_observed": float(self._observed.mean()),
            "min_q_over_prior": float(ratio.min()),
            "max_q_over_prior": float(ratio.max()),
            **(self.guard.stats() if self.guard is not None else {}),
        }

    # ------------------------------------------------------------------ state
    def _config(self) -> dict[str, Any]:
        return {**super()._config(), "mix": self.mix, "momentum": self.momentum,
                "guard": self.guard is not None,
                "steps_per_epoch": self.steps_per_epoch, "num_groups": self.num_groups,
                "groups_sha256": self._checksum}

    def _method_state(self) -> dict[str, Any]:
        state = {"second_moments": self._v.copy(), "observed": self._observed.copy()}
        if self.guard is not None:
            state["guard"] = self.guard.state()
        return state

    def _method_schema(self) -> dict[str, Field]:
        k = self.num_groups
        schema = {"second_moments": Array("float", (k,), low=0),
                  "observed": Array("bool", (k,))}
        if self.guard is not None:
            schema["guard"] = Nested()
        return schema

    def _load_method_state(self, fields: dict[str, Any]) -> None:
        v, observed = fields["second_moments"], fields["observed"]
        if (v[~observed] != 0).any():
            raise StateError("corrupted RAS state: second_moments must be 0 for unobserved "
                             "groups")
        guard = None
        if self.guard is not None:
            guard = VarianceGuard.from_state(fields["guard"])
        self._v, self._observed = v, observed
        if guard is not None:
            self.guard = guard
