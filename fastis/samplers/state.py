"""The state_dict envelope of samplers and loss predictors, and the schema every
`load_state_dict` checks a state against before it changes anything.

A state is a header (format, version, kind, configuration) plus fields. Each class declares
its fields once, as a dict of field name -> `Field` (type, shape, range); `read_fields`
checks a state's fields against that declaration and returns them parsed, or raises a
ValueError naming the first bad field. States hold Python values and CPU tensors only
(`portable`), so `torch.load(..., weights_only=True)`, torch's default since 2.6 and
Lightning's, reads them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

# Steps and counters: far below 2**63, so that step arithmetic never overflows int64.
MAX_STEP = 2**62


class StateError(ValueError):
    """A state_dict that does not match what this object can restore."""


def state_header(fmt: str, version: int, kind: str, config: dict[str, Any]) -> dict[str, Any]:
    return {"format": fmt, "version": version, "kind": kind, "config": config}


def check_state_header(state: Any, *, fmt: str, version: int, kind: str,
                       config: dict[str, Any], what: str) -> None:
    """Raises ValueError naming the problem unless `state` is a dict with this format,
    version, kind and exactly this configuration (NaN equals NaN)."""
    if not isinstance(state, Mapping) or not _same(state.get("format"), fmt):
        raise StateError(f"not a fastis {what} state_dict")
    if not _same(state.get("version"), version):
        raise StateError(f"{what} state version {state.get('version')!r} is not supported "
                         f"(this fastis reads version {version})")
    if not _same(state.get("kind"), kind):
        raise StateError(f"this state_dict belongs to a {state.get('kind')}, not a {kind}")
    theirs = state.get("config")
    if not isinstance(theirs, Mapping):
        raise StateError(f"corrupted {what} state_dict: no config")
    differing = sorted(k for k in set(config) | set(theirs)
                       if not _same(config.get(k), theirs.get(k)))
    if differing:
        detail = ", ".join(f"{k}: {theirs.get(k)!r} != {config.get(k)!r}" for k in differing)
        raise StateError(f"the state_dict comes from another configuration ({detail})")


def _same(a: Any, b: Any) -> bool:
    """Equal configuration values: plain Python values of the same kind (NaN equals NaN;
    True is not 1; an array or tensor never equals a plain value)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if type(a) is not type(b) and (isinstance(a, bool) or isinstance(b, bool)):
        return False  # True == 1 in Python; not in a configuration
    if isinstance(a, (np.ndarray, torch.Tensor)) or isinstance(b, (np.ndarray, torch.Tensor)):
        return False
    try:
        return bool(a == b)
    except (TypeError, ValueError, RuntimeError):  # values that do not compare
        return False


def portable(value: Any) -> Any:
    """`value` with every numpy array made a CPU tensor (a copy) and every numpy scalar a
    Python one, through dicts, lists and tuples: what torch.load(weights_only=True) reads."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {key: portable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(portable(item) for item in value)
    return value


# ---------------------------------------------------------------------- fields
class Field:
    """One declared field: `parse(value, name)` returns it checked and converted, or raises
    StateError."""

    def parse(self, value: Any, name: str) -> Any:
        raise NotImplementedError


def _scalar(value: Any) -> Any:
    """A 0-d tensor or array as its Python value; anything else unchanged."""
    if isinstance(value, (torch.Tensor, np.ndarray)) and value.ndim == 0:
        return value.item()
    return value.item() if isinstance(value, np.generic) else value


@dataclass(frozen=True)
class Int(Field):
    """An integer in [low, high] (bools and floats refused)."""

    low: int = -MAX_STEP
    high: int = MAX_STEP

    def parse(self, value: Any, name: str) -> int:
        value = _scalar(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise StateError(f"{name} must be an integer, got {type(value).__name__}")
        if not self.low <= value <= self.high:
            raise StateError(f"{name} = {value} is outside [{self.low}, {self.high}]")
        return value


@dataclass(frozen=True)
class Float(Field):
    """A real number in [low, high]; NaN only when `nan` (it then means "none yet")."""

    low: float = -math.inf
    high: float = math.inf
    nan: bool = False

    def parse(self, value: Any, name: str) -> float:
        value = _scalar(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise StateError(f"{name} must be a real number, got {type(value).__name__}")
        value = float(value)
        if math.isnan(value):
            if not self.nan:
                raise StateError(f"{name} is NaN")
            return value
        if not (self.low <= value <= self.high) or math.isinf(value):
            raise StateError(f"{name} = {value} is outside [{self.low}, {self.high}] or "
                             "infinite")
        return value


_KINDS = {"int": ("iu", np.int64), "float": ("fiu", np.float64), "bool": ("b", np.bool_),
          "uint8": ("u", np.uint8), "float32": ("fiu", np.float32)}


@dataclass(frozen=True)
class Array(Field):
    """A numpy array or CPU tensor of `kind` ("int", "float", "float32", "bool", "uint8")
    and `shape` (None for a free dimension), values in [low, high], NaN only when `nan`.
    Parsed into a fresh numpy array of the kind's dtype."""

    kind: str
    shape: tuple[int | None, ...]
    low: float = -math.inf
    high: float = math.inf
    nan: bool = False

    def parse(self, value: Any, name: str) -> np.ndarray:
        if isinstance(value, torch.Tensor):
            if value.device.type != "cpu" or value.is_complex():
                raise StateError(f"{name} must be a real CPU tensor")
            value = value.detach().numpy()
        if not isinstance(value, np.ndarray):
            raise StateError(f"{name} must be an array or tensor, got {type(value).__name__}")
        kinds, dtype = _KINDS[self.kind]
        if value.dtype.kind not in kinds:
            raise StateError(f"{name} must hold {self.kind} values, got {value.dtype}")
        if len(value.shape) != len(self.shape) or any(
                want is not None and got != want for got, want in zip(value.shape, self.shape)):
            shape = [("any" if d is None else d) for d in self.shape]
            raise StateError(f"{name} has shape {list(value.shape)}, expected {shape}")
        if value.dtype.kind in "iu" and value.size and self.kind in ("int", "uint8"):
            low, high = int(value.min()), int(value.max())
            if low < self.low or high > self.high:
                raise StateError(f"{name} holds values outside [{self.low}, {self.high}]")
        out = value.astype(dtype, copy=True)
        if out.dtype.kind == "f":
            nan = np.isnan(out)
            if nan.any() and not self.nan:
                raise StateError(f"{name} holds NaN")
            values = out[~nan]
            if values.size and (np.isinf(values).any() or values.min() < self.low
                                or values.max() > self.high):
                raise StateError(f"{name} holds values outside [{self.low}, {self.high}] or "
                                 "infinite")
        return out


@dataclass(frozen=True)
class Records(Field):
    """A list (or tuple) of records, each a sequence of values of `fields`, in order."""

    fields: tuple[Field, ...]
    max_length: int = 1 << 20

    def parse(self, value: Any, name: str) -> list[tuple[Any, ...]]:
        if not isinstance(value, (list, tuple)) or len(value) > self.max_length:
            raise StateError(f"{name} must be a list of at most {self.max_length} records")
        out = []
        for i, record in enumerate(value):
            if not isinstance(record, (list, tuple)) or len(record) != len(self.fields):
                raise StateError(f"{name}[{i}] must hold {len(self.fields)} values")
            out.append(tuple(f.parse(v, f"{name}[{i}][{j}]")
                             for j, (f, v) in enumerate(zip(self.fields, record))))
        return out


class CheckedElsewhere(Field):
    """A field passed on as it is, checked by other code (the header, by
    check_state_header; a method's own part, by its own schema)."""

    def parse(self, value: Any, name: str) -> Any:
        return value


HEADER: dict[str, Field] = {key: CheckedElsewhere()
                            for key in ("format", "version", "kind", "config")}


@dataclass(frozen=True)
class Nested(Field):
    """A dict, passed on as it is: its owner (a loss predictor) checks it itself."""

    def parse(self, value: Any, name: str) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise StateError(f"{name} must be a dict, got {type(value).__name__}")
        return dict(value)


def read_fields(state: Any, schema: Mapping[str, Field], what: str) -> dict[str, Any]:
    """Every field of `schema` read from the dict `state`, checked and parsed; StateError
    (a ValueError) names the first missing, unexpected or bad field.

    Examples:
        >>> import numpy as np
        >>> from fastis.samplers.state import Array, Int, read_fields
        >>> schema = {"step": Int(0, 100), "losses": Array("float", (2,), low=0)}
        >>> read_fields({"step": 3, "losses": np.array([0.5, 1.0])}, schema, "demo")["step"]
        3
        >>> read_fields({"step": -1, "losses": np.zeros(2)}, schema, "demo")
        Traceback (most recent call last):
        ...
        fastis.samplers.state.StateError: corrupted demo state: step = -1 is outside [0, 100]
    """
    if not isinstance(state, Mapping):
        raise StateError(f"corrupted {what} state: expected a dict, got {type(state).__name__}")
    missing = [key for key in schema if key not in state]
    unexpected = sorted(str(key) for key in state if key not in schema)
    if missing or unexpected:
        raise StateError(f"corrupted {what} state: missing {missing}, unexpected {unexpected}")
    try:
        return {key: field.parse(state[key], key) for key, field in schema.items()}
    except StateError as err:
        raise StateError(f"corrupted {what} state: {err}") from None
