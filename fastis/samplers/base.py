"""The protocol every fastis sampler follows, and the bookkeeping they share.

A sampler is a DataLoader `batch_sampler`. Each step it yields a `fastis.data.Draw`; the
training loop reports back with `update(batch, scores)`. Three things make that exact:

- Every random choice of step s comes from a counter-based generator keyed by
  (seed, s, purpose) (`fastis.samplers.draws`), so the stream does not depend on how the
  calls interleave.
- DataLoader draws batches ahead of the loop (num_workers * prefetch_factor of them). The
  sampler keeps the drawn batches the loop has not reported back yet ("in flight");
  `state_dict()` stores them, and after `load_state_dict()` the next iterator yields them
  again before drawing anything new. A resumed run therefore sees the same batches, and
  the draws after them see the same updates, as the run that was interrupted (given the
  same loader prefetch depth).
- `update(batch, ...)` acknowledges the batch: state saved after it resumes after it.
"""

from __future__ import annotations

import abc
import collections
import math
import threading
import warnings
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import torch

from fastis.data import Draw, Indexed, collate
from fastis.samplers.state import (
    HEADER,
    MAX_STEP,
    Array,
    Field,
    Int,
    Nested,
    Records,
    StateError,
    check_state_header,
    portable,
    read_fields,
    state_header,
)
from fastis.validation import as_count, as_indices, as_seed, positive_count

_STATE_FORMAT = "fastis.sampler"
_STATE_VERSION = 1
# Drawn batches never reported back beyond this many are taken as consumed: a loop that
# never calls update() must not grow the in-flight record forever.
MAX_IN_FLIGHT = 1024
# Far more unreported batches than any DataLoader prefetches: update() is not being called.
_FORGOTTEN_UPDATES = 256
# The largest score accepted: every sum, square and weight derived from scores of up to
# 1e30 stays finite in float64 (and their squares summed over 2^64 examples too).
MAX_SCORE = 1e30


def epoch_steps(num_examples: int, batch_size: int, steps_per_epoch: Any) -> int:
    """`steps_per_epoch` checked (>= 1), or by default ceil(num_examples / batch_size)."""
    if steps_per_epoch is None:
        return -(-num_examples // batch_size)
    return positive_count(steps_per_epoch, "steps_per_epoch")


class BatchSampler(abc.ABC):
    """The protocol of every fastis sampler (a DataLoader `batch_sampler`), and its shared
    bookkeeping: the stream of steps, in-flight batches, exact resume, input checks.

    Public calls (all thread-safe: a loader thread may draw while the loop updates):
        `len(sampler)` steps per epoch; `epoch`, `step`; `set_epoch(e)`; iteration (one
        `Draw` per step); `update(batch, scores)`; `stats()`; `state_dict()` /
        `load_state_dict()`; `loader(dataset, **kwargs)`; `scores_pools` and `is_pool(batch)`
        (pool methods, `fastis.samplers.PoolSampler`, add `select()`); `batch_of(batch)` and
        `drawn(step)` (the index and step of a batch, the draw of a step: what wrappers such
        as `fastis.distributed.Sharded` build on); `scores_of(scores, size)`.

    Hooks a method implements (each called with the sampler's lock held):
        `_draw(step) -> Draw`      abstract: the batch of step `step`, from its generator
                                   (`fastis.samplers.draws.step_generator`).
        `_observe(index, scores, step, weight)`  learn from the scores of the trained
                                   examples, drawn with loss weights `weight` (None for
                                   scores given through observe()); default: nothing.
        `_trained_index(index, step)`    the examples of a step that were trained on
                                   (default: the batch; pools: the picks).
        `_config() -> dict`        the configuration a state must match (extend super's).
        `_method_schema() -> dict[str, Field]`   the method's state fields, declared once
                                   (`fastis.samplers.state`).
        `_method_state() -> dict`  the method's state, matching its schema.
        `_load_method_state(fields)`   installs parsed, checked fields (check consistency
                                   first, raise before changing anything).
        `_stats() -> dict`         the method's own figures for `stats()`.
    Set `self._epoch_steps` in `__init__` when an epoch is not ceil(N / b) steps; a method
    whose epochs differ in length overrides `_epoch_start(epoch)` (the first step of an
    epoch) and `_epoch_of(step)`.

    Args:
        num_examples: N >= 1.
        batch_size: b >= 1.
        seed: the stream's seed in [0, 2^64); None draws one from torch's global generator.
        steps_per_epoch: len(); default ceil(N / b).

    Examples:
        >>> import numpy as np
        >>> from fastis.data import Draw
        >>> from fastis.samplers import BatchSampler
        >>> from fastis.samplers.draws import STREAM_DRAW, step_generator
        >>> class EveryOther(BatchSampler):   # a toy method: even examples only
        ...     def _draw(self, step):
        ...         rng = step_generator(self.seed, step, STREAM_DRAW)
        ...         index = 2 * rng.integers(0, self.num_examples // 2, self.batch_size)
        ...         return Draw(index, np.ones(self.batch_size, np.float32), step)
        >>> sampler = EveryOther(10, 4, seed=0)
        >>> len(sampler), all(i % 2 == 0 for d in sampler for i in d.index.tolist())
        (3, True)
    """

    # What update() takes from a fastis.ops.Scores result: "loss" or "grad_norm".
    score_field: ClassVar[str] = "loss"
    # Whether some steps are pools that select() resamples (PoolSampler).
    scores_pools: ClassVar[bool] = False

    def __init__(self, num_examples: int, batch_size: int, *, seed: int | None,
                 steps_per_epoch: int | None = None) -> None:
        self.num_examples = positive_count(num_examples, "num_examples")
        self.batch_size = positive_count(batch_size, "batch_size")
        self.seed = as_seed(seed)
        self._epoch_steps = epoch_steps(self.num_examples, self.batch_size, steps_per_epoch)
        self._next_step = 0  # the next step to draw
        self._acked = -1  # the last step reported back through update()
        self._in_flight: collections.deque[Draw] = collections.deque(maxlen=MAX_IN_FLIGHT)
        self._replay: collections.deque[Draw] = collections.deque()
        self._seen = np.zeros(self.num_examples, dtype=np.bool_)
        self._num_seen = 0
        self._last_weights = np.ones(0, dtype=np.float32)
        self._warned_no_updates = False
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
        """Steps of the current epoch (known when it starts; for most methods fixed at
        construction: learning-rate schedules rely on it)."""
        with self._lock:
            epoch = self.epoch
            return self._epoch_start(epoch + 1) - self._epoch_start(epoch)

    def epoch_start(self, epoch: int) -> int:
        """The first step of `epoch`."""
        with self._lock:
            return self._epoch_start(epoch)

    def _epoch_start(self, epoch: int) -> int:
        """The first step of `epoch` (a hook: methods with epochs of varying length)."""
        return epoch * self._epoch_steps

    def _epoch_of(self, step: int) -> int:
        """The epoch that step `step` belongs to."""
        return step // self._epoch_steps

    @property
    def epoch(self) -> int:
        """The epoch of the next batch the loop will consume (the one to resume in)."""
        with self._lock:
            return self._epoch_of(self._acked + 1)

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
        if epoch * self.num_examples > MAX_STEP:
            raise OverflowError(f"epoch {epoch} is beyond the last step a sampler can draw")
        with self._lock:
            if epoch == self.epoch:
                return
            self._next_step = self._epoch_start(epoch)
            self._acked = self._next_step - 1
            self._in_flight.clear()
            self._replay.clear()

    def __iter__(self) -> Iterator[Draw]:
        """Yields the rest of the current epoch (a whole epoch when at its start); after
        `load_state_dict()` it first yields the batches that were in flight."""
        with self._lock:
            first = self._replay[0].step if self._replay else self._next_step
            end = self._epoch_start(self._epoch_of(first) + 1)
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
        draw = self._draw(self._next_step)
        self._in_flight.append(draw)
        self._mark_seen(draw.index)
        self._last_weights = draw.weight
        self._next_step += 1
        self._warn_if_never_updated()
        return draw

    def _mark_seen(self, index: np.ndarray) -> None:
        new = ~self._seen[index]
        if not new.any():  # the common case once every example was drawn
            return
        fresh = np.unique(index[new])
        self._seen[fresh] = True
        self._num_seen += len(fresh)

    def _warn_if_never_updated(self) -> None:
        if not self._warned_no_updates and len(self._in_flight) > _FORGOTTEN_UPDATES:
            self._warned_no_updates = True
            warnings.warn(
                f"{type(self).__name__} has drawn {len(self._in_flight)} batches that were "
                f"never reported back: call sampler.update(batch, scores) after each "
                f"training step (or use the Lightning callback / the transformers Trainer). "
                f"Without it the sampler learns nothing and state_dict() resumes at step "
                f"{self.step}.", RuntimeWarning, stacklevel=4)

    @abc.abstractmethod
    def _draw(self, step: int) -> Draw:
        """The batch of step `step`: a Draw owning its arrays (int64 index [b'], float32
        weight [b'])."""

    def loader(self, dataset: Any, *, collate_fn: Any = None,
               **kwargs: Any) -> torch.utils.data.DataLoader:
        """A DataLoader over `dataset` with this sampler as its batch_sampler: each batch is
        a `fastis.data.Batch` carrying the draw's indices, weights and step.

        Args:
            dataset: a map-style dataset (wrapped in `fastis.data.Indexed`).
            collate_fn: makes a batch's data from its examples (default: DataLoader's);
                the bookkeeping is added by `fastis.data.collate`.
            **kwargs: DataLoader arguments (num_workers, pin_memory, ...); batch_size,
                shuffle, sampler and drop_last belong to the sampler.

        Examples:
            >>> import torch, fastis
            >>> ds = torch.utils.data.TensorDataset(torch.arange(10.0))
            >>> sampler = fastis.samplers.Uniform(len(ds), 4, seed=0)
            >>> [len(batch.index) for batch in sampler.loader(ds)]
            [4, 4, 2]
        """
        owned = {"batch_size", "shuffle", "sampler", "batch_sampler", "drop_last"} & set(kwargs)
        if owned:
            raise ValueError(f"{sorted(owned)} belong to the fastis sampler: set them on it, "
                             "not on the loader")
        # A custom collate_fn wants examples: only the default collation fetches whole
        # batches (Indexed(batches=True)).
        return torch.utils.data.DataLoader(Indexed(dataset, batches=collate_fn is None),
                                           batch_sampler=self, collate_fn=collate(collate_fn),
                                           **kwargs)

    # ------------------------------------------------------------------ feedback
    def update(self, batch: Any, scores: Any = None) -> None:
        """Reports a trained batch back: acknowledges its step and, for methods that learn
        from scores, records them.

        `batch` is what the loader yielded (a collated `fastis.data.Batch`) or the `Draw`
        itself; it must be a batch this sampler drew and that was not reported yet.
        `scores` (for methods that use them): a float tensor/array [b] aligned with the
        examples trained on, or a `fastis.ops.Scores` result (this method's `score_field`
        is taken from it). Bad input raises and changes nothing.
        """
        with self._lock:
            index, step = self.batch_of(batch)
            draw = self.drawn(step)
            self._check_drawn(index, draw)
            self._observe(self._trained_index(index, step), scores, step,
                          self._trained_weight(index, draw))
            self._acknowledge(step)

    def _check_drawn(self, index: np.ndarray, draw: Draw) -> None:
        # The same examples, in any order (scores are aligned with `index`).
        if not (np.array_equal(index, draw.index)
                or np.array_equal(np.sort(index), np.sort(draw.index))):
            raise ValueError(f"batch.index is not the batch this sampler drew at step "
                             f"{draw.step}: report each batch as the loader yielded it")

    def observe(self, index: Any, scores: Any) -> None:
        """Records fresh scores of examples outside a training step, for methods that learn
        from scores: e.g. a no-grad re-scoring of examples whose scores are stale, or scores
        from an earlier run. Acknowledges no step; the scores count as of the last trained
        step.

        Args:
            index: int [m], examples of this data set (duplicates: the last one counts).
            scores: as in update(), aligned with `index`.

        Examples:
            >>> import fastis
            >>> sampler = fastis.samplers.ImportanceSampler(4, 2, guard=False, seed=0)
            >>> sampler.observe([0, 3], [5.0, 0.0])
            >>> [round(float(p), 3) for p in sampler.probabilities([0, 1, 2, 3])]
            [0.714, 0.143, 0.143, 0.0]
        """
        if type(self)._observe is BatchSampler._observe:
            raise TypeError(f"{type(self).__name__} learns nothing from scores")
        with self._lock:
            index = as_indices(index, "index").astype(np.int64, copy=False)
            if len(index) and (index.min() < 0 or index.max() >= self.num_examples):
                raise IndexError(f"index holds values outside [0, {self.num_examples})")
            self._observe(index, scores, max(self._acked, 0), None)

    def _trained_index(self, index: np.ndarray, step: int) -> np.ndarray:
        """The examples of step `step` that were trained on (default: the whole batch)."""
        return index

    def _trained_weight(self, index: np.ndarray, draw: Draw) -> np.ndarray:
        """float64 loss weights of the trained examples, aligned with `index` (the draw's
        weights, put in the batch's order when the loop reordered it)."""
        if np.array_equal(index, draw.index):
            return draw.weight.astype(np.float64)
        weight = np.empty(len(index))
        weight[np.argsort(index, kind="stable")] = draw.weight[
            np.argsort(draw.index, kind="stable")]
        return weight

    def _observe(self, index: np.ndarray, scores: Any, step: int,  # noqa: B027
                 weight: np.ndarray | None) -> None:
        """Default: nothing to learn (an optional hook)."""

    def drawn(self, step: int) -> Draw:
        """The draw of step `step`, drawn and not yet reported back (ValueError otherwise)."""
        with self._lock:
            for draw in self._in_flight:
                if draw.step == step:
                    return draw
        raise ValueError(f"step {step} is not in flight: it was reported back already, "
                         f"dropped by set_epoch() or load_state_dict(), or never drawn")

    def batch_of(self, batch: Any) -> tuple[np.ndarray, int]:
        """(index int64 [b], step) of a loader batch (`fastis.data.Batch`) or a `Draw`,
        checked to be indices of this data set and a step this sampler has drawn."""
        if isinstance(batch, Draw):
            index, step = batch.index, batch.step
        else:
            try:
                index, step = batch.index, batch.step
            except AttributeError:
                raise TypeError(
                    "update() needs the batch the loader yielded (a fastis.data.Batch, from a "
                    "dataset wrapped in fastis.data.Indexed, or sampler.loader(dataset)) or "
                    f"the sampler's Draw, got {type(batch).__name__}") from None
        index = as_indices(index, "batch.index")
        step = _single_step(step)
        if len(index) and (index.min() < 0 or index.max() >= self.num_examples):
            raise IndexError(
                f"batch.index holds values outside [0, {self.num_examples}): this batch was "
                "not drawn by this sampler")
        if not 0 <= step < self._next_step:
            raise ValueError(
                f"batch.step = {step} was not drawn by this sampler (it has drawn steps "
                f"0..{self._next_step - 1})")
        return index.astype(np.int64, copy=False), step

    def is_pool(self, batch: Any) -> bool:
        """Whether `batch` is a pool that `select()` resamples (never, for this class)."""
        self.batch_of(batch)
        return False

    def _acknowledge(self, step: int) -> None:
        self._acked = max(self._acked, step)
        while self._in_flight and self._in_flight[0].step <= self._acked:
            self._in_flight.popleft()

    def scores_of(self, scores: Any, size: int, *, name: str = "scores",
                  allow_invalid: bool = False) -> np.ndarray:
        """float64 [size] of `scores` (a real tensor, array or sequence of numbers, or a
        fastis.ops.Scores), checked finite and in [0, MAX_SCORE] unless `allow_invalid`.
        Complex, boolean, string and meta inputs, and tensors that require grad, are
        refused with a TypeError / ValueError."""
        if hasattr(scores, self.score_field) and not isinstance(scores, (torch.Tensor,
                                                                         np.ndarray)):
            scores = getattr(scores, self.score_field)
        values = _real_array(scores, name)
        if values.ndim != 1 or len(values) != size:
            raise ValueError(f"{name} must have shape [{size}] (one per example), got "
                             f"{list(values.shape)}")
        if allow_invalid:
            return values
        # min and max are NaN where any value is, and out of range where one is infinite: two
        # reductions find every bad value; the message is worked out only then.
        if len(values) and not (values.min() >= 0 and values.max() <= MAX_SCORE):
            bad = ~np.isfinite(values)
            if bad.any():
                raise ValueError(f"{name} holds {int(bad.sum())} NaN or infinite values")
            raise ValueError(f"{name} must be >= 0 and at most {MAX_SCORE:g}, got values in "
                             f"[{values.min():g}, {values.max():g}]")
        return values

    def norms_of(self, scores: Any, size: int, *, allow_invalid: bool = False,
                 values: np.ndarray | None = None) -> np.ndarray:
        """float64 [size]: the trained examples' gradient norms (or their bound), for the
        variance guard: the grad_norm field of a fastis.ops.Scores, else the scores
        themselves (a loss stands in for its gradient's norm): `values`, when the caller
        has them from scores_of() already."""
        if hasattr(scores, "grad_norm") and not isinstance(scores, (torch.Tensor, np.ndarray)):
            return self.scores_of(scores.grad_norm, size, name="grad_norm",
                                  allow_invalid=allow_invalid)
        if values is not None:
            return values
        return self.scores_of(scores, size, allow_invalid=allow_invalid)

    # ------------------------------------------------------------------ reporting
    def stats(self) -> dict[str, float]:
        """Cheap figures to log every step: `ess` (Kish's effective sample size of the last
        batch's weights, as a fraction of the batch: for pool methods the trained picks'),
        `max_weight`, `min_weight`, `seen` (fraction of the data set drawn at least once),
        plus the method's own (tau, mean staleness, ...)."""
        with self._lock:
            w = self._last_weights.astype(np.float64)
            ess = float(w.sum() ** 2 / (len(w) * (w * w).sum())) if len(w) and w.any() \
                else math.nan
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

    def _method_schema(self) -> dict[str, Field]:
        return {}

    def _method_state(self) -> dict[str, Any]:
        return {}

    def _load_method_state(self, fields: dict[str, Any]) -> None:  # noqa: B027
        """Installs the method's parsed fields (check consistency first); an optional
        hook, for methods with a state."""

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

    def _state_schema(self) -> dict[str, Field]:
        n = self.num_examples
        return {
            **HEADER,
            "next_step": Int(0, MAX_STEP),
            "acked": Int(-1, MAX_STEP),
            "in_flight": Records((Array("int", (None,), low=0, high=n - 1),
                                  Array("float32", (None,), low=0), Int(0, MAX_STEP)),
                                 max_length=MAX_IN_FLIGHT),
            "seen": Array("uint8", (-(-n // 8),)),
            "last_weights": Array("float32", (None,), low=0),
            "method": Nested(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a `state_dict()`; the next iterator yields the batches that were in flight,
        then continues. Raises ValueError (and changes nothing) for a state of another
        method, configuration or format, or a corrupted one."""
        with self._lock:
            check_state_header(state, fmt=_STATE_FORMAT, version=_STATE_VERSION,
                               kind=type(self).__name__, config=self._config(), what="sampler")
            fields = read_fields(state, self._state_schema(), "sampler")
            next_step, acked = fields["next_step"], fields["acked"]
            in_flight = [Draw(i, w, s) for i, w, s in fields["in_flight"]]
            steps = [d.step for d in in_flight]
            if acked >= next_step or any(
                    len(d.index) != len(d.weight) or not acked < d.step < next_step
                    for d in in_flight) or steps != sorted(set(steps)):
                raise StateError("corrupted sampler state: inconsistent steps, or an in-flight "
                                 "batch whose indices and weights differ in length")
            seen = np.unpackbits(fields["seen"], count=self.num_examples).astype(np.bool_)
            method = read_fields(state["method"], self._method_schema(),
                                 type(self).__name__)
            self._load_method_state(method)
            self._next_step, self._acked = next_step, acked
            self._in_flight.clear()
            self._replay = collections.deque(in_flight)
            self._seen, self._num_seen = seen, int(seen.sum())
            self._last_weights = fields["last_weights"]


def _real_array(scores: Any, name: str) -> np.ndarray:
    """float64 numpy values of real-number scores (a copy); TypeError for anything else."""
    if isinstance(scores, torch.Tensor):
        if scores.device.type == "meta":
            raise ValueError(f"{name} is a meta tensor (it holds no values)")
        if scores.requires_grad:
            raise ValueError(f"{name} requires grad: pass the per-example scores detached "
                             f"({name}.detach(), or the Scores of fastis.ops), not the "
                             "training loss")
        if scores.is_complex() or scores.dtype == torch.bool:
            raise TypeError(f"{name} must be real numbers, got {scores.dtype}")
        return scores.detach().to("cpu", torch.float64).numpy()
    if isinstance(scores, (str, bytes)) or scores is None:
        raise TypeError(f"{name} must be an array of numbers, got {type(scores).__name__}")
    values = np.asarray(scores)
    if values.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be real numbers, got {values.dtype} values")
    return values.astype(np.float64)


def _single_step(step: Any) -> int:
    if isinstance(step, torch.Tensor):
        step = step.detach().cpu().numpy()
    values = np.asarray(step).reshape(-1)
    if values.dtype.kind not in "iu":
        raise TypeError(f"batch.step must be an integer, got {values.dtype}")
    if values.size == 0 or (values.size > 1 and not (values == values[0]).all()):
        raise ValueError("batch.step must hold one step number (a batch mixes several draws)")
    return int(values[0])
