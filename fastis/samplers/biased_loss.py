"""Katharopoulos & Fleuret 2017, "Biased Importance Sampling for Deep Neural Network
Training" (docs/methods.md).

Score: the loss. Each step scores a uniform pool of P examples, draws b of them with
replacement in proportion to the (smoothed) scores, and weights them

    w_i = 1 / (P g_i)  (unbiased),   w^_i = t * w_i^k,   t = sum_b w s / sum_b w^k s,

t keeping the weighted loss on the unbiased estimator's scale. k = 1 is unbiased; k = 0
trains on loss-proportional samples without reweighting; in between, SGD follows the
gradient of sum_i L_i^(2-k) / (2 - k), a soft maximum of the losses (our derivation).
Default k = 0.5, the paper's recommendation.

Two ways to score the pool:
  - exact (predictor=None): the model's forward on the pool, through `select()`, P = 256;
  - approximate (predictor="lstm" / "gaussian" / an object): a small model predicts each
    example's loss from its loss history and class, so the pool (P = 2048) is scored at draw
    time without the big model, and batches arrive already weighted.
Smoothing: `smoothing` = c is added to every score, or c * m, m an EMA (0.9)
of the mean pool score, with `adaptive_smoothing=True`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fastis.data import Draw
from fastis.samplers import loss_predictors
from fastis.samplers.base import MAX_SCORE
from fastis.samplers.draws import STREAM_DRAW, normalised, resample, step_generator
from fastis.samplers.estimates import ema
from fastis.samplers.pool import PoolSampler
from fastis.samplers.state import Field, Float, Nested
from fastis.validation import non_negative, real_number

_PREDICTORS = {"lstm": loss_predictors.LSTMLossPredictor,
               "gaussian": loss_predictors.PerClassGaussian}


class BiasedLoss(PoolSampler):
    """KF17 loss-proportional sampling with biased weights; see the module docstring.

    Args:
        num_examples: N.
        batch_size: b.
        k: the weight exponent, <= 1 (default 0.5).
        pool_size: P, an absolute count (default 256 exact, 2048 with a predictor).
        smoothing: c >= 0; adaptive_smoothing: add c times the EMA of the mean pool score.
        predictor: None (exact), "lstm", "gaussian", or an object with predict(index) ->
            float64 scores, observe(index, losses), state_dict(), load_state_dict().
        labels: int [N] class (or group) of each example; needed by the named predictors.
        forward_batch_size: rows per call of a scoring callable in select() (default 128).
        steps_per_epoch: len(); default ceil(N / b).
        seed: the stream's seed (also seeds the LSTM predictor's initialisation).

    Examples:
        >>> import torch, fastis
        >>> labels = torch.arange(1000) % 10
        >>> sampler = fastis.samplers.BiasedLoss(1000, 32, predictor="gaussian",
        ...                                      labels=labels, seed=0)
        >>> draw = next(iter(sampler))         # already resampled from a pool of 2048
        >>> sampler.update(draw, torch.rand(32))   # the losses train the predictor
        >>> len(draw), sampler.scores_pools
        (32, True)
    """

    score_field = "loss"

    def __init__(self, num_examples: int, batch_size: int, *, k: float = 0.5,
                 pool_size: int | None = None, smoothing: float = 0.0,
                 adaptive_smoothing: bool = False, predictor: Any = None, labels: Any = None,
                 forward_batch_size: int = 128, steps_per_epoch: int | None = None,
                 seed: int | None = None) -> None:
        default_pool = 256 if predictor is None else 2048
        super().__init__(num_examples, batch_size,
                         pool_size=pool_size if pool_size is not None else default_pool,
                         forward_batch_size=forward_batch_size, seed=seed,
                         steps_per_epoch=steps_per_epoch)
        self.k = real_number(k, "k")
        if not (math.isfinite(self.k) and self.k <= 1):
            raise ValueError(f"k must be finite and <= 1, got {k}")
        self.smoothing = non_negative(smoothing, "smoothing")
        self.adaptive_smoothing = bool(adaptive_smoothing)
        self.predictor_name = predictor if isinstance(predictor, str) or predictor is None \
            else type(predictor).__name__
        if isinstance(predictor, str):
            if predictor not in _PREDICTORS:
                raise ValueError(f"predictor must be one of {sorted(_PREDICTORS)}, None or "
                                 f"an object, got {predictor!r}")
            if labels is None:
                raise ValueError(f"the {predictor!r} predictor needs labels (class of each "
                                 "example)")
            extra = {"seed": self.seed % 2**63} if predictor == "lstm" else {}
            predictor = _PREDICTORS[predictor](self.num_examples, labels, **extra)
        self.predictor = predictor
        self._mean_score = math.nan  # EMA of the mean pool score (adaptive smoothing)

    def _config(self) -> dict:
        return {**super()._config(), "k": self.k, "smoothing": self.smoothing,
                "adaptive_smoothing": self.adaptive_smoothing,
                "predictor": self.predictor_name, "steps_per_epoch": self._epoch_steps}

    # ------------------------------------------------------------------ drawing
    def _draw(self, step: int) -> Draw:
        rng = step_generator(self.seed, step, STREAM_DRAW)
        if self.predictor is None:
            return self._draw_pool(step, rng)
        pool = rng.integers(0, self.num_examples, self.pool_size, dtype=np.int64)
        scores = self._sampling_scores(self._predicted(pool))
        rows = resample(scores, self.batch_size, rng)
        return Draw(pool[rows], self._pool_weights(scores, rows).astype(np.float32), step)

    def _sampling_scores(self, scores: np.ndarray) -> np.ndarray:
        """Smoothed scores; with adaptive smoothing this also advances the mean's EMA."""
        if not self.adaptive_smoothing:
            return scores + self.smoothing
        self._mean_score = ema(self._mean_score, float(scores.mean()), 0.9)
        return scores + self.smoothing * self._mean_score

    def _predicted(self, pool: np.ndarray) -> np.ndarray:
        """The predictor's scores of a pool, checked: a predictor that fails (NaN, inf or
        out-of-range predictions) raises instead of silently drawing uniformly."""
        predicted = np.asarray(self.predictor.predict(pool), np.float64)
        if predicted.shape != pool.shape or not np.isfinite(predicted).all() or (
                len(predicted) and (predicted.min() < 0 or predicted.max() > MAX_SCORE)):
            raise ValueError(f"the loss predictor ({self.predictor_name}) returned invalid "
                             f"scores (shape {list(predicted.shape)}, expected "
                             f"[{len(pool)}], finite, in [0, {MAX_SCORE:g}])")
        return predicted

    def _pool_weights(self, scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
        unbiased = 1.0 / (len(scores) * normalised(scores)[rows])
        biased = unbiased ** self.k
        chosen = scores[rows]
        # t rescales to the unbiased estimator's loss scale; with all-zero scores the
        # weights are 1 already.
        denominator = float(biased @ chosen)
        scale = float(unbiased @ chosen) / denominator if denominator > 0 else 1.0
        return scale * biased

    # ------------------------------------------------------------------ feedback
    def _observe(self, index: np.ndarray, scores: Any, step: int,
                 weight: np.ndarray | None) -> None:
        if self.predictor is None:
            # The exact variant keeps no history; scores, when given, are still checked.
            if scores is not None:
                self.scores_of(scores, len(index))
            return
        if scores is None:
            raise ValueError("BiasedLoss.update() needs the trained examples' losses to "
                             "train its loss predictor")
        self.predictor.observe(index, self.scores_of(scores, len(index)))

    def _stats(self) -> dict[str, float]:
        return {"mean_score": self._mean_score}

    # ------------------------------------------------------------------ state
    def _method_state(self) -> dict[str, Any]:
        state = {**super()._method_state(), "mean_score": self._mean_score}
        if self.predictor is not None:
            state["predictor"] = self.predictor.state_dict()
        return state

    def _method_schema(self) -> dict[str, Field]:
        schema = {**super()._method_schema(), "mean_score": Float(0.0, nan=True)}
        if self.predictor is not None:
            schema["predictor"] = Nested()
        return schema

    def _load_method_state(self, fields: dict[str, Any]) -> None:
        if self.predictor is not None:
            # The predictor checks its state entirely before changing anything.
            self.predictor.load_state_dict(fields["predictor"])
        super()._load_method_state(fields)
        self._mean_score = fields["mean_score"]
