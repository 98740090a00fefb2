"""Per-example loss predictors for the approximate variant of KF17 (docs/methods.md).

Katharopoulos & Fleuret's biased loss sampling scores a pool of examples by their loss; the
approximate variant replaces the forward pass of the big model with a small model that
*predicts* each example's loss from what was observed when it was last trained on, so
scoring a pool of 2048 costs a few milliseconds. Both predictors here follow one protocol
(`LossPredictor`):

- `predict(index)`: the predicted loss of each listed example, float64, clipped to
  [1e-6, 1e30] (the lower bound as the official code does) so that it can be used as a
  sampling score directly.
- `observe(index, losses)`: the training loop reports the losses it just computed; the
  predictor learns from them (one online step) and records them.
- `state_dict()` / `load_state_dict()`: an exact round trip, checked before anything is
  changed.

Examples carry a label (class or group id) that the predictors condition on. Any integer ids
are accepted; they are mapped to 0..K-1 in sorted order (`classes[k]` is the id of code k).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from fastis.samplers.base import MAX_SCORE
from fastis.samplers.state import (
    HEADER,
    Array,
    Field,
    Nested,
    StateError,
    check_state_header,
    read_fields,
    state_header,
)
from fastis.validation import as_count, as_indices, as_seed, positive_count, real_number

__all__ = ["LSTMLossPredictor", "LossPredictor", "PerClassGaussian"]

_STATE_FORMAT = "fastis.loss_predictor"
_STATE_VERSION = 1
# Lower bound of every prediction (the official code's np.maximum(scores, 1e-6)): a score of
# 0 would make an example undrawable, and its importance weight infinite.
MIN_PREDICTION = 1e-6
# Upper bound of every prediction: the largest score a sampler accepts.
MAX_PREDICTION = MAX_SCORE
# Value of history slot 0 before anything was observed (official code: `init = 1.0`).
_HISTORY_INIT = 1.0


class LossPredictor:
    """Base of the loss predictors: label handling and the state_dict envelope.

    Subclasses implement `predict`, `observe`, `_config`, `_schema` (their state's fields,
    declared once), `_state` and `_load_state`.

    Args:
        num_examples: N, the data set size (>= 1).
        labels: int tensor/array/sequence [N], the class or group id of each example.
            Arbitrary integer ids (negative, sparse) are mapped to codes 0..K-1 in sorted
            order. Floats and booleans are refused (TypeError), as are a wrong length or
            shape (ValueError).

    Attributes:
        num_examples: N.
        labels: [N], the code 0..K-1 of each example's label, in the narrowest signed
            integer dtype that holds K - 1 (int8 for up to 128 classes: a pool's random
            gather then reads 1 byte per example, mostly from cache).
        classes: int64 [K], the original id of each code.
        num_classes: K.

    Examples:
        >>> import numpy as np
        >>> from fastis.samplers import LossPredictor
        >>> class LastLoss(LossPredictor):   # predicts each class's last observed loss
        ...     def __init__(self, n, labels):
        ...         super().__init__(n, labels)
        ...         self.last = np.ones(self.num_classes)
        ...     def predict(self, index):
        ...         return np.maximum(self.last[self.labels[index]], 1e-6)
        ...     def observe(self, index, losses):
        ...         self.last[self.labels[index]] = losses
        >>> p = LastLoss(4, [7, 7, 9, 9])
        >>> p.observe(np.array([2]), np.array([3.0]))
        >>> p.predict(np.arange(4)).tolist()
        [1.0, 1.0, 3.0, 3.0]
    """

    def __init__(self, num_examples: int, labels: Any) -> None:
        self.num_examples = as_count(num_examples, "num_examples")
        if self.num_examples == 0:
            raise ValueError("num_examples must be >= 1, got 0")
        if isinstance(labels, torch.Tensor):
            labels = labels.detach().cpu()  # read once at construction: any device will do
        raw = as_indices(labels, "labels")
        if len(raw) != self.num_examples:
            raise ValueError(f"labels must hold one id per example ({self.num_examples}), "
                             f"got {len(raw)}")
        classes, codes = np.unique(raw, return_inverse=True)
        self.classes = classes.astype(np.int64)
        self.labels = np.ascontiguousarray(codes.reshape(-1),
                                           dtype=np.min_scalar_type(-len(classes)))
        self.num_classes = len(classes)

    # ------------------------------------------------------------------ protocol
    def predict(self, index: np.ndarray) -> np.ndarray:
        """Predicted loss of examples `index` (int64 [m]): float64 [m], each >= 1e-6."""
        raise NotImplementedError

    def observe(self, index: np.ndarray, losses: np.ndarray) -> None:
        """Learns from the losses (float64 [b], finite, >= 0) just observed for examples
        `index` (int64 [b]; validated by the caller, duplicates allowed)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ state
    def _config(self) -> dict[str, Any]:
        return {"num_examples": self.num_examples, "num_classes": self.num_classes}

    def _schema(self) -> dict[str, Field]:
        raise NotImplementedError

    def _state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _load_state(self, fields: dict[str, Any]) -> None:
        """Installs parsed fields (check their consistency first: raise before changing
        anything)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """A snapshot of everything `predict` and `observe` depend on (configuration, the
        labels, the method's state), independent of later calls. Python scalars, lists,
        dicts and CPU tensors only, so `torch.load(..., weights_only=True)` reads it."""
        return {
            **state_header(_STATE_FORMAT, _STATE_VERSION, type(self).__name__, self._config()),
            "labels": torch.from_numpy(self.labels.astype(np.int64)),
            "state": self._state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a `state_dict()`. Raises ValueError, changing nothing, for a state of
        another predictor, configuration, labelling or format, or with wrong shapes."""
        check_state_header(state, fmt=_STATE_FORMAT, version=_STATE_VERSION,
                           kind=type(self).__name__, config=self._config(),
                           what="loss-predictor")
        fields = read_fields(state, {**HEADER, "state": Nested(),
                                     "labels": Array("int", (self.num_examples,))},
                             "loss-predictor")
        if not np.array_equal(fields["labels"], self.labels):
            raise StateError("the state_dict was made for another labelling of the examples")
        self._load_state(read_fields(fields["state"], self._schema(), type(self).__name__))


# ---------------------------------------------------------------------- per-class Gaussian
class PerClassGaussian(LossPredictor):
    """Per-class exponential moving averages of the loss and its square; the score of an
    example is mu_c + sigma_c of its class c (official `PerClassGaussian`, alpha = 0.9).

    As in the official code the averages move once per observed loss, in the order the
    losses are listed (`momentum` 0.9 remembers about the last 10 losses of a class), and a
    duplicated index counts each time it is listed. Unlike it, the averages start from "no
    observation" and are bias-corrected (divided by 1 - momentum^n after n losses), instead
    of starting from mu = log K, E[l^2] = 1 (the cross-entropy of a uniform guess): they are
    the exponentially weighted mean and variance of the observed losses only, whatever the
    loss. A class never observed is scored like an average observed class (the mean of the
    observed classes' scores), so it is neither favoured nor starved; before any observation
    every example scores 1.0 (uniform sampling).

    Args:
        num_examples, labels: see `LossPredictor`.
        momentum: the EMA's decay per observed loss, in [0, 1) (default 0.9).

    Examples:
        >>> import numpy as np
        >>> from fastis.samplers import PerClassGaussian
        >>> p = PerClassGaussian(4, [0, 0, 1, 1])
        >>> p.observe(np.array([0, 1, 2]), np.array([1.0, 3.0, 5.0]))
        >>> p.predict(np.array([0, 2])).round(3).tolist()   # mu + sigma of each class
        [3.051, 5.0]
    """

    def __init__(self, num_examples: int, labels: Any, *, momentum: float = 0.9) -> None:
        super().__init__(num_examples, labels)
        momentum = real_number(momentum, "momentum")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        k = self.num_classes
        # Raw EMAs of l and l^2, and their total weight 1 - momentum^n (0: never observed).
        self._m1 = np.zeros(k, np.float64)
        self._m2 = np.zeros(k, np.float64)
        self._weight = np.zeros(k, np.float64)
        self._scores: np.ndarray | None = None  # class_scores(), until the next change

    @property
    def observed(self) -> np.ndarray:
        """bool [K]: whether each class has received a loss."""
        return self._weight > 0

    def _moments(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std), float64 [K] each, NaN for classes never observed."""
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(self.observed, self._m1 / self._weight, np.nan)
            var = np.where(self.observed, self._m2 / self._weight, np.nan) - mean * mean
        # E[l^2] - E[l]^2 can round below 0 when the losses barely vary.
        return mean, np.sqrt(np.where(np.isnan(var), np.nan, np.maximum(var, 0.0)))

    @property
    def mean(self) -> np.ndarray:
        """float64 [K]: the EMA mean loss of each class (NaN for a class never observed)."""
        return self._moments()[0]

    @property
    def std(self) -> np.ndarray:
        """float64 [K]: the EMA standard deviation of each class's loss (NaN if never
        observed)."""
        return self._moments()[1]

    def class_scores(self) -> np.ndarray:
        """float64 [K]: the score mu_c + sigma_c of each class (>= 1e-6), with the stand-in
        for classes never observed (see the class docstring)."""
        seen = self.observed
        if not seen.any():
            return np.ones(self.num_classes, np.float64)
        mean, std = self._moments()
        scores = mean + std
        scores[~seen] = scores[seen].mean()
        return np.clip(scores, MIN_PREDICTION, MAX_PREDICTION)

    def predict(self, index: np.ndarray) -> np.ndarray:
        """float64 [m]: the score of each example's class."""
        if self._scores is None:
            self._scores = self.class_scores()
        return self._scores[self.labels[index]]

    def observe(self, index: np.ndarray, losses: np.ndarray) -> None:
        """Moves the class averages once per listed loss, in order (vectorised: the j-th of
        a class's n losses in this call enters with weight (1 - momentum) momentum^(n-1-j),
        exactly as n sequential EMA updates would)."""
        codes = self.labels[index]
        losses = np.asarray(losses, np.float64)
        if len(codes) == 0:
            return
        k, alpha = self.num_classes, self.momentum
        order = np.argsort(codes, kind="stable")  # groups by class, keeps the listed order
        sorted_codes, sorted_losses = codes[order], losses[order]
        count = np.bincount(codes, minlength=k)
        start = np.cumsum(count) - count
        later = count[sorted_codes] - 1 - (np.arange(len(codes)) - start[sorted_codes])
        w = (1.0 - alpha) * np.power(alpha, later)
        decay = np.power(alpha, count)
        self._m1 = decay * self._m1 + np.bincount(sorted_codes, w * sorted_losses, minlength=k)
        self._m2 = decay * self._m2 + np.bincount(
            sorted_codes, w * sorted_losses * sorted_losses, minlength=k)
        self._weight = decay * self._weight + (1.0 - decay)
        self._scores = None

    def _config(self) -> dict[str, Any]:
        return {**super()._config(), "momentum": self.momentum}

    def _state(self) -> dict[str, Any]:
        return {"m1": torch.from_numpy(self._m1.copy()),
                "m2": torch.from_numpy(self._m2.copy()),
                "weight": torch.from_numpy(self._weight.copy())}

    def _schema(self) -> dict[str, Field]:
        k = (self.num_classes,)
        # The EMAs of losses in [0, MAX_SCORE] (and their squares); their total weight is
        # 1 - momentum^n, in [0, 1).
        return {"m1": Array("float", k, low=0, high=1e30), "m2": Array("float", k, low=0,
                                                                     high=1e60),
                "weight": Array("float", k, low=0, high=1.0)}

    def _load_state(self, fields: dict[str, Any]) -> None:
        self._m1, self._m2, self._weight = fields["m1"], fields["m2"], fields["weight"]
        self._scores = None


# ---------------------------------------------------------------------- LSTM
class _LSTMNet(nn.Module):
    """2 stacked LSTMs over the loss history, concatenated with a class embedding, then a
    linear layer to one output (official `LSTMSampler` model)."""

    def __init__(self, num_classes: int, hidden: int, embedding: int,
                 device: str | torch.device | None = None) -> None:
        super().__init__()
        self.lstm = nn.LSTM(1, hidden, num_layers=2, batch_first=True, device=device)
        self.embed = nn.Embedding(num_classes, embedding, device=device)
        self.head = nn.Linear(hidden + embedding, 1, device=device)

    def reset_parameters(self, generator: torch.Generator) -> None:
        """torch's default initialisation of each layer, drawn from `generator`."""
        with torch.no_grad():
            bound = 1.0 / math.sqrt(self.lstm.hidden_size)
            for p in self.lstm.parameters():
                p.uniform_(-bound, bound, generator=generator)
            self.embed.weight.normal_(0.0, 1.0, generator=generator)
            bound = 1.0 / math.sqrt(self.head.in_features)
            self.head.weight.uniform_(-bound, bound, generator=generator)
            self.head.bias.uniform_(-bound, bound, generator=generator)

    def forward(self, history: torch.Tensor, length: torch.Tensor,
                label: torch.Tensor) -> torch.Tensor:
        """history float32 [b, T] (row i valid in its first length[i] entries), length
        int64 [b] in 1..T, label int64 [b] -> float32 [b]."""
        out, _ = self.lstm(history.unsqueeze(-1))  # [b, T, hidden]
        # The LSTM is causal: its output at step length-1 depends on the valid entries only,
        # so reading it there is exactly masking the padding that follows (Keras Masking in
        # the official code), without packing or a per-step loop.
        last = out[torch.arange(len(length)), length - 1]
        return self.head(torch.cat([last, self.embed(label)], dim=1)).squeeze(1)


class LSTMLossPredictor(LossPredictor):
    """Predicts an example's next loss from its last `history` observed losses and its class
    (official `LSTMSampler`), learning online from every `observe()`.

    History (float32 [N, H], `history`, with `counts` int64 [N] valid slots): slot 0 starts
    at 1.0 and the rest at 0 (padding, ignored by the model), so an example never observed
    is predicted from the sequence (1.0). Observed losses fill the slots left to right
    after it; once all H are used, the window rolls left (dropping the oldest) and the new
    loss goes in the last slot. Validity is tracked by the counts, not by the value, so an
    observed loss of exactly 0 is an input like any other (the official code masked it as
    padding).

    `observe(index, losses)` is one Adam step on the MSE between the model's prediction from
    the examples' histories *before* this observation and `losses` (all b rows, duplicates
    included); then each distinct example's history receives its loss (for an index listed
    twice, the last one listed).

    With `log_space`, the model reads log(max(l, 1e-6)) of the history, regresses
    log(max(l, 1e-6)) of the targets and predicts exp of its output (the official `log`
    option, which also masked the log of the initial 1.0 away; here it stays an input).

    Args:
        num_examples, labels: see `LossPredictor`.
        history: H, the number of past losses kept per example (default 10).
        hidden: width of both LSTM layers (default 32).
        embedding: width of the class embedding (default 32).
        lr: Adam's learning rate (default 1e-3, Keras' default in the official code).
        log_space: regress the log of the loss.
        seed: seeds the local torch.Generator that initialises the model (the global
            generator is not touched; None draws the seed from it).

    Examples:
        >>> import numpy as np
        >>> from fastis.samplers import LSTMLossPredictor
        >>> p = LSTMLossPredictor(100, np.arange(100) % 5, seed=0)
        >>> p.observe(np.arange(8), np.linspace(0.5, 2.0, 8))   # one Adam step
        >>> p.predict(np.arange(3)).shape, p.counts[:2].tolist()   # two slots now used
        ((3,), [2, 2])
    """

    def __init__(self, num_examples: int, labels: Any, *, history: int = 10, hidden: int = 32,
                 embedding: int = 32, lr: float = 1e-3, log_space: bool = False,
                 seed: int | None = 0) -> None:
        super().__init__(num_examples, labels)
        self.history_size = positive_count(history, "history")
        self.hidden = positive_count(hidden, "hidden")
        self.embedding = positive_count(embedding, "embedding")
        self.lr = real_number(lr, "lr")
        if not (math.isfinite(self.lr) and self.lr >= 0):
            raise ValueError(f"lr must be a finite number >= 0, got {lr}")
        self.log_space = bool(log_space)
        self.seed = as_seed(seed)

        self._history = np.zeros((self.num_examples, self.history_size), np.float32)
        self._history[:, 0] = _HISTORY_INIT
        self._counts = np.ones(self.num_examples, np.int64)
        self._labels_t = torch.from_numpy(self.labels)

        # Built on the meta device so that construction draws nothing from torch's global
        # generator; every parameter is then drawn from the local one.
        generator = torch.Generator().manual_seed(self.seed)
        self._net = _LSTMNet(self.num_classes, self.hidden, self.embedding, device="meta")
        self._net = self._net.to_empty(device="cpu")
        self._net.reset_parameters(generator)
        # foreach: one multi-tensor update for the 11 small parameters instead of 11 loops.
        self._optimizer = torch.optim.Adam(self._net.parameters(), lr=self.lr, foreach=True)

    # ------------------------------------------------------------------ views
    @property
    def history(self) -> np.ndarray:
        """float32 [N, H] (read-only view): each example's window of observed losses, oldest
        first; the first `counts[i]` slots of row i are valid, the rest are 0 (padding)."""
        view = self._history.view()
        view.flags.writeable = False
        return view

    @property
    def counts(self) -> np.ndarray:
        """int64 [N] (read-only view): valid slots of each history row, in 1..H."""
        view = self._counts.view()
        view.flags.writeable = False
        return view

    # ------------------------------------------------------------------ protocol
    def _inputs(self, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        counts = self._counts[index]
        # Slots past the longest valid prefix are padding in every row: not worth running.
        history = torch.from_numpy(self._history[index, :int(counts.max())])
        if self.log_space:
            history = history.clamp_min(MIN_PREDICTION).log()
        index_t = torch.from_numpy(np.asarray(index, np.int64))
        return history, torch.from_numpy(counts), self._labels_t[index_t].long()

    def predict(self, index: np.ndarray) -> np.ndarray:
        """float64 [m]: the model's prediction from each example's current history."""
        if len(index) == 0:
            return np.empty(0, np.float64)
        with torch.no_grad():
            out = self._net(*self._inputs(index)).double()
            if self.log_space:
                out = out.exp()
        return np.clip(out.numpy(), MIN_PREDICTION, MAX_PREDICTION)

    def observe(self, index: np.ndarray, losses: np.ndarray) -> None:
        """One Adam step on these examples, then their histories receive the losses."""
        index = np.asarray(index, np.int64)
        losses = np.asarray(losses, np.float64)
        if len(index) == 0:
            return
        target = torch.from_numpy(losses).float()
        if self.log_space:
            target = target.clamp_min(MIN_PREDICTION).log()
        prediction = self._net(*self._inputs(index))
        loss = nn.functional.mse_loss(prediction, target)
        self._optimizer.zero_grad(set_to_none=True)
        # Losses near float32's limit (their squares overflow in the MSE) would turn every
        # parameter NaN in one step: such a step is skipped, the histories still record them.
        if torch.isfinite(loss):
            loss.backward()
            if all(torch.isfinite(p.grad).all() for p in self._net.parameters()):
                self._optimizer.step()
        self._append(index, losses)

    def _append(self, index: np.ndarray, losses: np.ndarray) -> None:
        # Last write wins: keep the last occurrence of each index (first in reversed order).
        _, first_reversed = np.unique(index[::-1], return_index=True)
        keep = len(index) - 1 - first_reversed
        rows, values = index[keep], losses[keep].astype(np.float32)
        counts = self._counts[rows]
        full = counts == self.history_size
        full_rows = rows[full]
        self._history[full_rows, :-1] = self._history[full_rows, 1:]  # roll left
        self._history[rows, np.where(full, self.history_size - 1, counts)] = values
        self._counts[rows] = np.minimum(counts + 1, self.history_size)

    # ------------------------------------------------------------------ state
    def _config(self) -> dict[str, Any]:
        return {**super()._config(), "history": self.history_size, "hidden": self.hidden,
                "embedding": self.embedding, "lr": self.lr, "log_space": self.log_space,
                "seed": self.seed}

    def _state(self) -> dict[str, Any]:
        return {
            "history": torch.from_numpy(self._history.copy()),
            "counts": torch.from_numpy(self._counts.copy()),
            "model": {k: v.detach().clone() for k, v in self._net.state_dict().items()},
            "optimizer": copy.deepcopy(self._optimizer.state_dict()),
        }

    def _schema(self) -> dict[str, Field]:
        n, h = self.num_examples, self.history_size
        return {"history": Array("float32", (n, h), low=0, high=1e30),
                "counts": Array("int", (n,), low=1, high=h),
                "model": Nested(), "optimizer": Nested()}

    def _load_state(self, fields: dict[str, Any]) -> None:
        model, optimizer = fields["model"], fields["optimizer"]
        mine = self._net.state_dict()
        if set(model) != set(mine):
            raise StateError("corrupted LSTMLossPredictor state_dict: model parameters differ")
        for name, value in model.items():
            if not isinstance(value, torch.Tensor) or value.shape != mine[name].shape \
                    or not value.is_floating_point():
                raise StateError(f"LSTMLossPredictor state_dict: model.{name} must be a float "
                                 f"tensor of shape {list(mine[name].shape)}, got "
                                 f"{_shape_of(value)}")
            if not torch.isfinite(value).all():
                raise StateError(f"LSTMLossPredictor state_dict: model.{name} holds NaN or "
                                 "infinite values")
        moments = _adam_state(optimizer, [p.shape for p in self._net.parameters()])

        # Everything checked: install (copies: Adam updates its tensors in place).
        self._net.load_state_dict({name: value.detach().clone() for name, value in
                                   model.items()})
        self._optimizer.load_state_dict({"state": moments,
                                         "param_groups": self._optimizer.state_dict()[
                                             "param_groups"]})
        self._history, self._counts = fields["history"], fields["counts"]


# ---------------------------------------------------------------------- helpers
def _shape_of(value: Any) -> Any:
    return list(value.shape) if hasattr(value, "shape") else type(value).__name__


def _adam_state(state: Any, shapes: list[torch.Size]) -> dict[int, dict[str, torch.Tensor]]:
    """The per-parameter Adam state (step, exp_avg, exp_avg_sq) of an optimizer state_dict
    for parameters of `shapes`, checked and copied; StateError otherwise. Its param_groups
    (the hyperparameters) are not taken: they follow from the configuration."""
    bad = "corrupted LSTMLossPredictor state_dict: optimizer "
    if not isinstance(state, dict) or not isinstance(state.get("param_groups"), list):
        raise StateError(bad + "state is not an optimizer state_dict")
    groups = state["param_groups"]
    if len(groups) != 1 or not isinstance(groups[0], dict) \
            or list(groups[0].get("params", ())) != list(range(len(shapes))):
        raise StateError(bad + "param_groups do not match the model")
    per_param = state.get("state")
    if not isinstance(per_param, dict) or not set(per_param) <= set(range(len(shapes))):
        raise StateError(bad + "state does not match the model")
    out = {}
    for i, entry in per_param.items():
        if not isinstance(entry, dict) or set(entry) != {"step", "exp_avg", "exp_avg_sq"}:
            raise StateError(bad + f"state[{i}] must hold step, exp_avg and exp_avg_sq")
        step = entry["step"]
        step = step.item() if isinstance(step, torch.Tensor) and step.numel() == 1 else step
        if isinstance(step, bool) or not isinstance(step, (int, float)) \
                or not (math.isfinite(step) and step >= 0):
            raise StateError(bad + f"state[{i}]['step'] must be a number >= 0")
        moments = {}
        for key in ("exp_avg", "exp_avg_sq"):
            value = entry[key]
            if not isinstance(value, torch.Tensor) or value.shape != shapes[i] \
                    or not value.is_floating_point() or not torch.isfinite(value).all() \
                    or (key == "exp_avg_sq" and (value < 0).any()):
                raise StateError(bad + f"state[{i}][{key!r}] must be finite float values of "
                                 f"shape {list(shapes[i])} (and >= 0 for exp_avg_sq)")
            moments[key] = value.detach().to(torch.float32).clone()
        out[i] = {"step": torch.tensor(float(step)), **moments}
    return out
