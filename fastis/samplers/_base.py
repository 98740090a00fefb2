"""The protocol every fastis sampler follows, and the bookkeeping they share.

A sampler is a DataLoader `batch_sampler`. Each step it yields a `fastis.data.Draw`; the
training loop reports back with `update(batch, scores)`. Three things make that exact:

- Every random choice of step s comes from a counter-based generator keyed by
  (seed, s, purpose), so the stream does not depend on how the calls interleave.
- DataLoader draws batches ahead of the loop (num_workers * prefetch_factor of them). The
  sampler keeps the drawn batches the loop has not reported back yet ("in flight");
  `state_dict()` stores them, and after `load_state_dict()` the next iterator yields them
  again before drawing anything new. A resumed run therefore sees the same batches, and
  the draws after them see the same updates, as the run that was interrupted (given the
  same loader prefetch depth).
- `update(batch, ...)` acknowledges the batch: state saved after it resumes after it.
"""

from __future__ import annotations

import collections
import math
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import torch

from fastis._convert import as_count, as_indices, as_seed
from fastis.data import Draw
from fastis.samplers._state import check_state_header, portable, state_header

_STATE_FORMAT = "fastis.sampler"
_STATE_VERSION = 1
# Drawn batches never reported back beyond this many are taken as consumed: a loop that
# never calls update() must not grow the in-flight record forever.
_MAX_IN_FLIGHT = 1024

# Purposes of the per-step generators (the third word of the Philox counter).
STREAM_DRAW = 0
STREAM_SELECT = 1
STREAM_EPOCH = 2


def step_generator(seed: int, step: int, purpose: int) -> np.random.Generator:
    """numpy's Philox4x64 keyed by `seed`, at counter (step, purpose): the randomness of one
    step, identical on every platform, process and rank."""
    return np.random.Generator(np.random.Philox(key=seed, counter=[0, step, purpose, 0]))


def positive_int(value: Any, name: str) -> int:
    value = as_count(value, name)
    if value == 0:
        raise ValueError(f"{name} must be >= 1, got 0")
    return value


def probability(value: Any, name: str, *, allow_zero: bool = True, allow_one: bool = True) -> float:
    value = float(value)
    low_ok = value > 0 or (allow_zero and value == 0)
    high_ok = value < 1 or (allow_one and value == 1)
    if not (low_ok and high_ok):
        low, high = ("[0" if allow_zero else "(0"), ("1]" if allow_one else "1)")
        raise ValueError(f"{name} must be in {low}, {high}, got {value}")
    return value


class BatchSampler:
    """Base of all fastis samplers; see the module docstring for the protocol.

    Subclasses set `self._epoch_steps` and implement `_draw(step)`; those that learn from
    scores implement `_observe(index, scores, step)`. Their configuration (`_config()`) and
    state (`_method_state()` / `_load_method_state()`) go into `state_dict()`.
    """

    # What update() takes from a fastis.ops.Scores result: "loss" or "grad_norm".
    score_field: ClassVar[str] = "loss"

    def __init__(self, num_examples: int, batch_size: int, *, seed: int | None) -> None:
        self.num_examples = positive_int(num_examples, "num_examples")
        self.batch_size = positive_int(batch_size, "batch_size")
        self.seed = as_seed(seed)
        self._epoch_steps = 1
        self._next_step = 0  # the next step to draw
        self._acked = -1  # the last step reported back through update()
        self._in_flight: collections.deque[Draw] = collections.deque(maxlen=_MAX_IN_FLIGHT)
        self._replay: collections.deque[Draw] = collections.deque()
        self._seen = np.zeros(self.num_examples, dtype=np.bool_)
        self._num_seen = 0
        self._last_weights = np.ones(0, dtype=np.float32)
        # One call at a time: a loader thread may draw while the training loop updates.
        self._lock = threading.RLock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]  # locks do not pickle; a copy gets its own
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ the stream
    def __len__(self) -> int:
        """Steps per epoch, fixed at construction (learning-rate schedules rely on it)."""
        return self._epoch_steps

    @property
    def epoch(self) -> int:
        """The epoch of the next batch the loop will consume (the one to resume in)."""
        return (self._acked + 1) // self._epoch_steps

    @property
    def step(self) -> int:
        """The step number of the next batch the loop will consume."""
        return self._acked + 1

    def set_epoch(self, epoch: int) -> None:
        """Positions the stream at the start of `epoch` (drops batches drawn ahead). When
        the stream is in `epoch` already, nothing changes: a loop that calls set_epoch(e)
        at the start of every epoch (as Lightning and transformers do) continues a run
        resumed in the middle of epoch e instead of restarting it."""
        epoch = as_count(epoch, "epoch")
        with self._lock:
            if epoch == self.epoch:
                return
            self._next_step = epoch * self._epoch_steps
            self._acked = self._next_step - 1
            self._in_flight.clear()
            self._replay.clear()

    def __iter__(self) -> Iterator[Draw]:
        """Yields the rest of the current epoch (a whole epoch when at its start); after
        `load_state_dict()` it first yields the batches that were in flight."""
        with self._lock:
            first = self._replay[0].step if self._replay else self._next_step
        end = (first // self._epoch_steps + 1) * self._epoch_steps
        while True:
            with self._lock:
                draw = self._next_draw(end)
            if draw is None:
                return
            yield draw

    def _next_draw(self, end: int) -> Draw | None:
        """The next batch: a replayed one, else a new draw before step `end`, else None."""
        if self._replay:
            draw = self._replay.popleft()
            self._in_flight.append(draw)
            return draw
        if self._next_step >= end:
            return None
        draw = self._draw_and_record(self._next_step)
        self._next_step += 1
        return draw

    def _draw_and_record(self, step: int) -> Draw:
        draw = self._draw(step)
        self._in_flight.append(draw)
        self._mark_seen(draw.index)
        self._last_weights = draw.weight
        return draw

    def _mark_seen(self, index: np.ndarray) -> None:
        fresh = np.unique(index[~self._seen[index]])
        self._seen[fresh] = True
        self._num_seen += len(fresh)

    def _draw(self, step: int) -> Draw:
        raise NotImplementedError

    # ------------------------------------------------------------------ feedback
    def update(self, batch: Any, scores: Any = None) -> None:
        """Reports a trained batch back: acknowledges its step and, for methods that learn
        from scores, records them.

        `batch` is what the loader yielded (a collated `fastis.data.Batch`) or the `Draw`
        itself. `scores` (for methods that use them): a float tensor/array [b] aligned with
        the examples trained on, or a `fastis.ops.Scores` result (this method's
        `score_field` is taken from it). Bad input raises and changes nothing.
        """
        with self._lock:
            index, step = self._batch_of(batch)
            self._observe(self._trained_index(index, step), scores, step)
            self._acknowledge(step)

    def _trained_index(self, index: np.ndarray, step: int) -> np.ndarray:
        """The examples of step `step` that were trained on (default: the whole batch)."""
        return index

    def _observe(self, index: np.ndarray, scores: Any, step: int) -> None:
        """Default: nothing to learn."""

    def _batch_of(self, batch: Any) -> tuple[np.ndarray, int]:
        if isinstance(batch, Draw):
            index, step = batch.index, batch.step
        else:
            try:
                index, step = batch.index, batch.step
            except AttributeError:
                raise TypeError(
                    "update() needs the batch the loader yielded (a fastis.data.Batch, from a "
                    "dataset wrapped in fastis.data.Indexed) or the sampler's Draw, got "
                    f"{type(batch).__name__}"
                ) from None
            index = as_indices(index, "batch.index")
            step = _single_step(step)
        if len(index) and (index.min() < 0 or index.max() >= self.num_examples):
            raise IndexError(
                f"batch.index holds values outside [0, {self.num_examples}): this batch was "
                "not drawn by this sampler"
            )
        if not 0 <= step < self._next_step:
            raise ValueError(
                f"batch.step = {step} was not drawn by this sampler (it has drawn steps "
                f"0..{self._next_step - 1})"
            )
        return index, step

    def _acknowledge(self, step: int) -> None:
        self._acked = max(self._acked, step)
        while self._in_flight and self._in_flight[0].step <= self._acked:
            self._in_flight.popleft()

    def scores_of(self, scores: Any, size: int, *, name: str = "scores",
                  allow_invalid: bool = False) -> np.ndarray:
        """float64 [size] of `scores` (tensor, array, sequence or a fastis.ops.Scores),
        checked finite and >= 0 unless `allow_invalid`."""
        if hasattr(scores, self.score_field) and not isinstance(scores, (torch.Tensor, np.ndarray)):
            scores = getattr(scores, self.score_field)
        if isinstance(scores, torch.Tensor):
            scores = scores.detach().to("cpu", torch.float64).numpy()
        values = np.asarray(scores, dtype=np.float64)
        if values.ndim != 1 or len(values) != size:
            raise ValueError(f"{name} must have shape [{size}] (one per example), got "
                             f"{list(values.shape)}")
        if allow_invalid:
            return values
        bad = ~np.isfinite(values)
        if bad.any():
            raise ValueError(f"{name} holds {int(bad.sum())} NaN or infinite values")
        if (values < 0).any():
            raise ValueError(f"{name} must be >= 0, got {values.min()}")
        return values

    # ------------------------------------------------------------------ reporting
    def stats(self) -> dict[str, float]:
        """Cheap figures to log every step: `ess` (Kish's effective sample size of the last
        drawn batch's weights, as a fraction of the batch), `max_weight`, `min_weight`,
        `seen` (fraction of the data set drawn at least once), plus the method's own (tau,
        mean staleness, ...)."""
        with self._lock:
            return self._stats_locked()

    def _stats_locked(self) -> dict[str, float]:
        w = self._last_weights.astype(np.float64)
        ess = float(w.sum() ** 2 / (len(w) * (w * w).sum())) if len(w) else math.nan
        return {
            "step": float(self.step),
            "ess": ess,
            "max_weight": float(w.max()) if len(w) else math.nan,
            "min_weight": float(w.min()) if len(w) else math.nan,
            "seen": self._num_seen / self.num_examples,
            **self._stats(),
        }

    def _stats(self) -> dict[str, float]:
        return {}

    # ------------------------------------------------------------------ state
    def _config(self) -> dict[str, Any]:
        return {"num_examples": self.num_examples, "batch_size": self.batch_size,
                "seed": self.seed}

    def _method_state(self) -> dict[str, Any]:
        return {}

    def _load_method_state(self, state: dict[str, Any]) -> None:
        """Checks `state` entirely, then installs it (raise before changing anything)."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the stream exactly after the last batch passed to
        `update()`: configuration, position, the batches drawn ahead, the method's state.
        Python values and CPU tensors only: torch.load(weights_only=True) reads it."""
        with self._lock:
            return portable({
                **state_header(_STATE_FORMAT, _STATE_VERSION, type(self).__name__,
                               self._config()),
                "next_step": self._next_step,
                "acked": self._acked,
                "in_flight": [d.__getstate__() for d in self._in_flight if d.step > self._acked],
                "seen": np.packbits(self._seen),
                "last_weights": self._last_weights.copy(),
                "method": self._method_state(),
            })

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a `state_dict()`; the next iterator yields the batches that were in flight,
        then continues. Raises ValueError (and changes nothing) for a state of another
        method, configuration or format."""
        with self._lock:
            self._load_state_dict(state)

    def _load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_header(state, fmt=_STATE_FORMAT, version=_STATE_VERSION,
                           kind=type(self).__name__, config=self._config(), what="sampler")
        try:
            next_step, acked = int(state["next_step"]), int(state["acked"])
            in_flight = [Draw(np.asarray(i, np.int64), np.asarray(w, np.float32), int(s))
                         for i, w, s in state["in_flight"]]
            seen = np.unpackbits(np.asarray(state["seen"], np.uint8),
                                 count=self.num_examples).astype(np.bool_)
            last_weights = np.asarray(state["last_weights"], np.float32)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"corrupted sampler state_dict: {err}") from None
        if not -1 <= acked < max(next_step, 0) + 1 or any(
            not acked < d.step < next_step or len(d) == 0 or d.index.min() < 0
            or d.index.max() >= self.num_examples for d in in_flight
        ):
            raise ValueError("corrupted sampler state_dict: inconsistent steps or indices")
        self._load_method_state(state["method"])
        self._next_step, self._acked = next_step, acked
        self._in_flight.clear()
        self._replay = collections.deque(in_flight)
        self._seen, self._num_seen = seen, int(seen.sum())
        self._last_weights = last_weights


def _single_step(step: Any) -> int:
    if isinstance(step, torch.Tensor):
        step = step.detach().cpu().numpy()
    values = np.asarray(step).reshape(-1)
    if values.dtype.kind not in "iu":
        raise TypeError(f"batch.step must be an integer, got {values.dtype}")
    if values.size == 0 or (values.size > 1 and not (values == values[0]).all()):
        raise ValueError("batch.step must hold one step number (a batch mixes several draws)")
    return int(values[0])
