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

Ours, on by default (docs/methods.md): the variance guard (fastis.samplers.guard) mixes the
resampling with uniform over the pool as far as the fresh scores say loss-proportional
sampling lowers the estimator's second moment; and, for the exact variant, a switch in the
manner of KF18's: a step scores a pool only while that reduction pays for the pool's forward
(the guard's gain bound 2 - rho above tau_th = (P + 3b) / (3b) by its cost margin), and
otherwise trains on b uniform examples, whose scores keep the estimate current (unless no
estimate could pass: P >= 2b, the default, where they are only checked). `switch=False` and
`guard=False` give the paper's method.
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
from fastis.samplers.guard import VarianceGuard
from fastis.samplers.pool import PoolSampler, PoolScores
from fastis.samplers.state import MAX_STEP, Array, Field, Float, Int, Nested, Records
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
        guard: the variance guard (module docstring).
        switch: the exact variant scores a pool only while it pays (module docstring).
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
                 forward_batch_size: int = 128, guard: bool = True, switch: bool = True,
                 steps_per_epoch: int | None = None, seed: int | None = None) -> None:
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
        self.guard = VarianceGuard() if guard else None
        self.switch = bool(switch) and self.guard is not None and predictor is None
        # The exact variant with its switch where no gain can pay for a pool's forward (P >=
        # 2b: tau_th * 1.2 >= 2): known now, and for the sampler's life.
        self._every_step_uniform = self.switch and not self.guard.can_ever_pay_for(
            self.threshold())
        self._mean_score = math.nan  # EMA of the mean pool score (adaptive smoothing)
        # Predictor steps in flight: (step, the picks' probability under the predicted
        # scores alone, the mix with uniform they were drawn with), for the guard.
        self._drawn_from: dict[int, tuple[np.ndarray, float]] = {}

    def _config(self) -> dict:
        return {**super()._config(), "k": self.k, "smoothing": self.smoothing,
                "adaptive_smoothing": self.adaptive_smoothing,
                "predictor": self.predictor_name, "guard": self.guard is not None,
                "switch": self.switch, "steps_per_epoch": self._epoch_steps}

    # ------------------------------------------------------------------ drawing
    @property
    def importance_on(self) -> bool:
        """Whether the next drawn step scores a pool (always, without the switch)."""
        if not self.switch:
            return True
        return self.guard.pays_for(self.threshold())

    def _draw(self, step: int) -> Draw:
        if self.predictor is None:
            if not self._every_step_uniform and self.importance_on:
                return self._draw_pool(step, step_generator(self.seed, step, STREAM_DRAW))
            return self._uniform_draw(step)
        rng = step_generator(self.seed, step, STREAM_DRAW)
        pool = rng.integers(0, self.num_examples, self.pool_size, dtype=np.int64)
        scores = self._sampling_scores(self._predicted(pool))
        p = normalised(scores)
        mix = self.guard.mix if self.guard is not None else 0.0
        g = (1.0 - mix) * p + mix / len(p)
        rows = resample(g, self.batch_size, rng)
        if self.guard is not None:
            self._drawn_from[step] = (p[rows], mix)
        return Draw(pool[rows], self._biased(1.0 / (len(g) * g[rows]),
                                             scores[rows]).astype(np.float32), step)

    def _sampling_scores(self, scores: np.ndarray, advance: bool = True) -> np.ndarray:
        """Smoothed scores; with adaptive smoothing this also advances the mean's EMA
        (unless `advance` is False)."""
        if not self.adaptive_smoothing:
            return scores + self.smoothing
        if advance:
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

    def _choose(self, pool: PoolScores, index: np.ndarray, step: int
                ) -> tuple[np.ndarray, np.ndarray]:
        sampling = self._sampling_scores(pool.values)
        rows, unbiased = self._resample(sampling, step)
        return rows, self._biased(unbiased, sampling[rows])

    def _biased(self, unbiased: np.ndarray, chosen: np.ndarray) -> np.ndarray:
        """t w^k from the unbiased weights w and the chosen rows' sampling scores: t rescales
        to the unbiased estimator's loss scale (with all-zero scores the weights are 1)."""
        biased = unbiased ** self.k
        denominator = float(biased @ chosen)
        scale = float(unbiased @ chosen) / denominator if denominator > 0 else 1.0
        return scale * biased

    def _pool_scored(self, pool: PoolScores, forward_seconds: float | None) -> None:
        if self.guard is not None:
            self.guard.observe_pool(self._sampling_scores(pool.values, advance=False),
                                    pool.norms)

    # ------------------------------------------------------------------ feedback
    def _observe(self, index: np.ndarray, scores: Any, step: int,
                 weight: np.ndarray | None) -> None:
        if self.predictor is None:
            # The exact variant keeps no history; scores, when given, are still checked,
            # and a uniform step's feed the guard (the batch scored as if it were a pool).
            if scores is not None:
                values = self.scores_of(scores, len(index))
                # (Uniform steps exist only with the switch; where no estimate could pass
                # its cost test, they teach nothing.)
                if (self.guard is not None and step not in self._pool_steps
                        and not self._every_step_uniform):
                    self.guard.observe_pool(self._sampling_scores(values, advance=False),
                                            self.norms_of(scores, len(index), values=values))
            return
        if scores is None:
            raise ValueError("BiasedLoss.update() needs the trained examples' losses to "
                             "train its loss predictor")
        values = self.scores_of(scores, len(index))
        drawn = self._drawn_from.pop(step, None)
        if drawn is not None and weight is not None:
            by_score, mix = drawn
            current = 1.0 / ((1.0 - mix) * self.pool_size * by_score + mix)  # 1 / (P g)
            self.guard.observe_batch(current, self.norms_of(scores, len(index), values=values),
                                     self.guard.candidate_weights(by_score, 1.0 / self.pool_size))
        self.predictor.observe(index, values)

    def _acknowledge(self, step: int) -> None:
        super()._acknowledge(step)
        self._drawn_from = {s: d for s, d in self._drawn_from.items() if s > self._acked}

    def _stats(self) -> dict[str, float]:
        return {"mean_score": self._mean_score, "importance_on": float(self.importance_on),
                **(self.guard.stats() if self.guard is not None else {})}

    # ------------------------------------------------------------------ state
    def _method_state(self) -> dict[str, Any]:
        state = {**super()._method_state(), "mean_score": self._mean_score}
        if self.predictor is not None:
            state["predictor"] = self.predictor.state_dict()
            state["drawn_from"] = [(s, p.copy(), m) for s, (p, m) in
                                   sorted(self._drawn_from.items()) if s > self._acked]
        return state

    def _method_schema(self) -> dict[str, Field]:
        schema = {**super()._method_schema(), "mean_score": Float(0.0, nan=True)}
        if self.predictor is not None:
            schema["predictor"] = Nested()
            schema["drawn_from"] = Records((Int(0, MAX_STEP), Array("float", (None,), 0, 1),
                                            Float(0.0, 1.0)))
        return schema

    def _load_method_state(self, fields: dict[str, Any]) -> None:
        guard = self._parsed_guard(fields)
        if self.predictor is not None:
            # The predictor checks its state entirely before changing anything.
            self.predictor.load_state_dict(fields["predictor"])
        self._install_pool_state(fields, guard)
        self._mean_score = fields["mean_score"]
        self._drawn_from = {s: (p, m) for s, p, m in fields.get("drawn_from", [])}
