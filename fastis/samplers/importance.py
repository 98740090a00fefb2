"""Importance sampling over the whole data set from per-example scores kept in a SumTree.

Each example i has a score s_i (its last reported loss, gradient-norm bound, or any score
the user feeds), initially `initial_score`. Each step draws b indices with replacement from

    p_i = (1 - u) * s_i / S + u / N,    S = sum_j s_j,
    u   = floor + (1 - floor) * N c / (S + N c)

which is the distribution of the smoothed scores s_i + c mixed with uniform at weight
`floor`; both are mixtures with the uniform distribution, so a draw is a coin flip between
the tree (O(log N)) and a uniform index, and p_i >= u / N keeps every weight below 1 / u.
The uniform indices come from a reshuffled stream (fastis.samplers.draws.Reshuffled): each
is uniform, and together they go through the data set without replacement, so that where
the guard backs off fully this is random reshuffling, not the noisier draws with replacement.
The weights w_i = 1 / (N p_i) make the weighted loss an unbiased estimate of the full-data
mean loss (docs/methods.md). Smoothing by a multiple of the *current* mean score,
c = a * S / N, gives u = a / (1 + a): it is `floor = a / (1 + a)`.

The variance guard (`guard=True`, the default; fastis.samplers.guard) raises u above that
floor whenever the trained batches' fresh gradient norms say the score distribution does not
beat uniform sampling's second moment: stale or heavy-tailed scores make it back off, up to
uniform sampling; scores that match the gradient norms keep it.

Scores go through `power` (s ** gamma, gamma in (0, 1] flattens the distribution) before they
are stored. Staleness (steps since each example's score was written) is tracked in O(1) per
update for `stats()`.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import numpy as np

from fastis.data import Draw
from fastis.samplers.base import MAX_SCORE, BatchSampler
from fastis.samplers.draws import STREAM_DRAW, Reshuffled, step_generator
from fastis.samplers.guard import VarianceGuard
from fastis.samplers.state import MAX_STEP, Array, Field, Nested
from fastis.structures import SumTree
from fastis.validation import as_indices, non_negative, probability


class ImportanceSampler(BatchSampler):
    """Draws batches in proportion to per-example scores; unbiased weights 1 / (N p_i).

    Args:
        num_examples: N.
        batch_size: b, indices drawn (with replacement) per step.
        initial_score: the score of examples never scored (default 1.0: with losses or
            gradient-norm bounds as scores, unseen examples are about as likely as average
            ones), or a float array [N] of prior scores (e.g. from an earlier run).
        smoothing: c >= 0 added to every score (in score units).
        floor: mixing weight with the uniform distribution, in [0, 1).
        power: exponent gamma in (0, 1] applied to reported scores.
        score: which field of a fastis.ops.Scores result update() takes ("loss" or
            "grad_norm").
        invalid: "raise" (default): NaN, inf or negative scores raise ValueError and change
            nothing; "skip": those examples keep their previous score.
        guard: the variance guard (module docstring); it reads the gradient norms of a
            fastis.ops.Scores given to update() (plain scores stand in for them).
        steps_per_epoch: len(); default ceil(N / b).
        seed: the stream's seed.

    Examples:
        >>> import torch, fastis
        >>> sampler = fastis.samplers.ImportanceSampler(1000, 32, seed=0)
        >>> draw = next(iter(sampler))         # 32 indices, weights 1 / (N p_i)
        >>> scores = fastis.ops.Scores(torch.rand(32), torch.rand(32))  # loss, grad norm
        >>> sampler.update(draw, scores)       # the scores of the same forward pass
        >>> sampler.step, sampler.stats()["uniform_share"]   # the guard is still warming up
        (1, 1.0)
    """

    def __init__(self, num_examples: int, batch_size: int, *, initial_score: Any = 1.0,
                 smoothing: float = 0.0, floor: float = 0.0, power: float = 1.0,
                 score: str = "loss", invalid: str = "raise", guard: bool = True,
                 steps_per_epoch: int | None = None, seed: int | None = None) -> None:
        super().__init__(num_examples, batch_size, seed=seed, steps_per_epoch=steps_per_epoch)
        initial = self._initial_scores(initial_score)
        self.smoothing = non_negative(smoothing, "smoothing")
        self.floor = probability(floor, "floor", allow_one=False)
        self.power = probability(power, "power", allow_zero=False)
        if score not in ("loss", "grad_norm"):
            raise ValueError(f"score must be 'loss' or 'grad_norm', got {score!r}")
        if invalid not in ("raise", "skip"):
            raise ValueError(f"invalid must be 'raise' or 'skip', got {invalid!r}")
        self.score_field, self.invalid = score, invalid
        self.guard = VarianceGuard() if guard else None
        self._tree = SumTree(initial, seed=self.seed)
        self._stamp = np.full(self.num_examples, -1, np.int64)  # step of each score, -1: none
        self._uniform_stream = Reshuffled(self.seed, self.num_examples)
        self._num_scored = 0
        self._stamp_sum = 0  # sum of _stamp over scored examples, for the mean staleness

    def _initial_scores(self, initial_score: Any) -> np.ndarray:
        if np.ndim(initial_score) == 0:
            self.initial_score = non_negative(initial_score, "initial_score")
            if self.initial_score > MAX_SCORE:
                raise ValueError(f"initial_score must be <= {MAX_SCORE:g}, got "
                                 f"{self.initial_score}")
            return np.full(self.num_examples, self.initial_score)
        scores = self.scores_of(initial_score, self.num_examples, name="initial_score")
        # The configuration records a checksum: a state from other prior scores is refused.
        self.initial_score = f"array crc32={zlib.crc32(scores.tobytes()):08x}"
        return scores

    def _config(self) -> dict:
        return {**super()._config(), "initial_score": self.initial_score,
                "smoothing": self.smoothing, "floor": self.floor, "power": self.power,
                "score": self.score_field, "invalid": self.invalid,
                "guard": self.guard is not None, "steps_per_epoch": self._epoch_steps}

    # ------------------------------------------------------------------ drawing
    def _configured_share(self) -> float:
        """The uniform share the floor and smoothing give."""
        total, smooth_mass = self._tree.total, self.num_examples * self.smoothing
        if total + smooth_mass == 0:
            return 1.0
        return self.floor + (1.0 - self.floor) * smooth_mass / (total + smooth_mass)

    def uniform_share(self) -> float:
        """u, the probability that a draw is uniform rather than from the scores: the floor
        and smoothing's, raised by the variance guard where it backs off."""
        share = self._configured_share()
        return share if self.guard is None else max(share, self.guard.mix)

    def probabilities(self, index: Any) -> np.ndarray:
        """p_i (float64) of the current distribution for the given indices."""
        u, index = self.uniform_share(), as_indices(index, "index").astype(np.int64)
        if len(index) and (index.min() < 0 or index.max() >= self.num_examples):
            raise IndexError(f"index holds values outside [0, {self.num_examples})")
        if u >= 1.0:
            return np.full(len(index), 1.0 / self.num_examples)
        return (1.0 - u) * self._tree.probabilities(index).numpy() + u / self.num_examples

    def _draw(self, step: int) -> Draw:
        b, u = self.batch_size, self.uniform_share()
        rng = step_generator(self.seed, step, STREAM_DRAW)
        uniform = rng.random(b) < u
        index = np.empty(b, np.int64)
        # Slot j of step s is position s b + j of the reshuffled stream: uniform draws go
        # through the data set without replacement, each still uniform on its own.
        positions = step * b + np.flatnonzero(uniform)
        index[uniform] = self._uniform_stream.at(positions, rng)
        from_tree = int(b - uniform.sum())
        if from_tree:
            index[~uniform] = self._tree.sample(from_tree).numpy()
        weight = 1.0 / (self.num_examples * self.probabilities(index))
        return Draw(index, weight.astype(np.float32), step)

    # ------------------------------------------------------------------ feedback
    def _observe(self, index: np.ndarray, scores: Any, step: int,
                 weight: np.ndarray | None) -> None:
        if scores is None:
            raise ValueError(f"{type(self).__name__}.update() needs the batch's scores")
        values = self._checked_scores(scores, len(index))
        if self.guard is not None and weight is not None and len(index):
            # Before the new scores are written: the candidates are mixtures of the score
            # distribution these examples were drawn under (up to later updates).
            by_score = self._tree.probabilities(index).numpy() if self._tree.total > 0 \
                else np.full(len(index), 1.0 / self.num_examples)
            candidates = self.guard.candidate_weights(by_score, 1.0 / self.num_examples,
                                                      floor=self._configured_share())
            skip = self.invalid == "skip"
            norms = self.norms_of(scores, len(index), allow_invalid=skip,
                                  values=None if skip else values)
            valid = np.isfinite(norms) & (norms >= 0)  # invalid="skip": the rest are left out
            self.guard.observe_batch(weight[valid], norms[valid], candidates[:, valid])
        keep = np.isfinite(values)
        index, values = index[keep], values[keep]
        # Duplicates: the last write wins, as in SumTree.update; unique over the reversed
        # batch finds each index's last occurrence.
        unique, last = np.unique(index[::-1], return_index=True)
        values = values[::-1][last]
        if self.power != 1.0:
            values = values ** self.power
        self._tree.update(unique, values)
        old = self._stamp[unique]
        fresh = old < 0
        self._num_scored += int(fresh.sum())
        self._stamp_sum += int(step * len(unique) - old[~fresh].sum())
        self._stamp[unique] = step

    def _checked_scores(self, scores: Any, size: int) -> np.ndarray:
        """float64 scores; with invalid="skip", rejected entries come back as NaN."""
        if self.invalid == "raise":
            return self.scores_of(scores, size)
        values = self.scores_of(scores, size, allow_invalid=True)
        return np.where(np.isfinite(values) & (values >= 0) & (values <= MAX_SCORE), values,
                        np.nan)

    def _stats(self) -> dict[str, float]:
        scored = self._num_scored
        staleness = self.step - 1 - self._stamp_sum / scored if scored else math.nan
        return {"scored": scored / self.num_examples, "staleness": staleness,
                "uniform_share": self.uniform_share(),
                **(self.guard.stats() if self.guard is not None else {})}

    # ------------------------------------------------------------------ state
    def _method_state(self) -> dict[str, Any]:
        state = {"tree": self._tree.state_dict(), "stamp": self._stamp.copy()}
        if self.guard is not None:
            state["guard"] = self.guard.state()
        return state

    def _method_schema(self) -> dict[str, Field]:
        schema = {"tree": Nested(),
                  "stamp": Array("int", (self.num_examples,), low=-1, high=MAX_STEP)}
        if self.guard is not None:
            schema["guard"] = Nested()
        return schema

    def _load_method_state(self, fields: dict[str, Any]) -> None:
        stamp = fields["stamp"]
        tree = SumTree.zeros(self.num_examples, seed=0)  # the seed comes from the state
        try:
            tree.load_state_dict(fields["tree"])  # validates the tree's own state
        except (TypeError, OverflowError, IndexError) as err:
            raise ValueError(f"corrupted ImportanceSampler state: tree: {err}") from None
        weights = tree.weights().numpy()
        if weights.max(initial=0.0) > MAX_SCORE:
            raise ValueError(f"corrupted ImportanceSampler state: scores above {MAX_SCORE:g}")
        guard = None
        if self.guard is not None:
            guard = VarianceGuard.from_state(fields["guard"])
        scored = stamp >= 0
        self._tree, self._stamp = tree, stamp
        if guard is not None:
            self.guard = guard
        self._num_scored, self._stamp_sum = int(scored.sum()), int(stamp[scored].sum())
