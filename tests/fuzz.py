"""Hypothesis strategies for the fuzz tests: adversarial arrays (every dtype, extreme
magnitudes, odd strides, every container), adversarial scalars, and corruptions of a
state_dict. The named errors a bad input may raise are NAMED."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# What bad input may raise; anything else (or a crash) is a defect.
NAMED = (ValueError, TypeError, IndexError, OverflowError)

# CI budget: deterministic examples (no database), no deadline (the Triton interpreter and
# first calls are slow).
FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=120,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

EXTREME_FLOATS = [0.0, -0.0, 5e-324, 1e-300, 1e-30, 1.0, 1e30, 1e31, 3.4e38, 1e300, 1.8e308,
                  math.inf, -math.inf, math.nan, -1.0, -1e-300, -1e308]
EXTREME_INTS = [0, 1, -1, 2**31, 2**32 - 1, 2**62, 2**63 - 1, -(2**63), 10**12, -10**12]
DTYPES = ["float16", "float32", "float64", "int8", "int32", "int64", "uint8", "uint64",
          "bool", "complex64"]


@st.composite
def numbers(draw: Any, *, extreme: bool = True) -> float:
    if extreme and draw(st.booleans()):
        return draw(st.sampled_from(EXTREME_FLOATS))
    return draw(st.floats(allow_nan=True, allow_infinity=True, width=64))


@st.composite
def arrays(draw: Any, size: int | None = None, *, ints: bool = False) -> Any:
    """A 1-D input in any dtype and container: numpy (maybe strided or reversed), a torch
    tensor, a list; values extreme or plain; the size given (or any small one)."""
    n = draw(st.integers(0, 9)) if size is None else size
    dtype = draw(st.sampled_from(["int64", "int32", "uint64"] if ints and draw(st.booleans())
                                 else DTYPES))
    if dtype.startswith(("int", "uint")):
        raw = [draw(st.sampled_from(EXTREME_INTS) if draw(st.booleans())
                    else st.integers(-5, 20)) for _ in range(n)]
        info = np.iinfo(dtype)
        values = np.array([min(max(v, info.min), info.max) for v in raw], dtype=dtype)
    elif dtype == "bool":
        values = np.array([draw(st.booleans()) for _ in range(n)], dtype=bool)
    else:
        with np.errstate(over="ignore"):
            values = np.array([draw(numbers()) for _ in range(n)], dtype=dtype)
    container = draw(st.sampled_from(["numpy", "strided", "reversed", "tensor", "list"]))
    if container == "strided":
        wide = np.zeros(2 * n, dtype=values.dtype)
        wide[::2] = values
        return wide[::2]
    if container == "reversed":
        return values[::-1]  # a negative stride
    if container == "tensor" and dtype not in ("uint64",):
        return torch.from_numpy(values.copy())
    if container == "list":
        return values.tolist()
    return values


@st.composite
def junk(draw: Any) -> Any:
    """A value of any kind, to put where a state field was."""
    kind = draw(st.sampled_from(["int", "float", "str", "none", "list", "array", "tensor",
                                 "dict", "bool"]))
    if kind == "int":
        return draw(st.sampled_from(EXTREME_INTS))
    if kind == "float":
        return draw(numbers())
    if kind == "str":
        return "3"
    if kind == "none":
        return None
    if kind == "bool":
        return True
    if kind == "list":
        return [draw(st.integers(-3, 3)) for _ in range(draw(st.integers(0, 3)))]
    if kind == "dict":
        return {"a": 1}
    values = draw(arrays())
    values = values.numpy() if isinstance(values, torch.Tensor) else np.array(values)
    if kind == "tensor":  # complex stays complex (a dtype to refuse), the rest float64
        return torch.from_numpy(values if np.iscomplexobj(values) else values.astype(np.float64))
    return values


def leaves(state: Any, path: tuple = ()) -> list[tuple]:
    """Paths to every leaf of a nested dict / list state."""
    if isinstance(state, dict):
        return [p for key, value in state.items() for p in leaves(value, (*path, key))]
    if isinstance(state, (list, tuple)) and state and not isinstance(state[0], (int, float)):
        return [p for i, value in enumerate(state) for p in leaves(value, (*path, i))]
    return [path]


def _editable(state: Any) -> Any:
    """A deep copy with tuples made lists (a state reads either), so any leaf can be set."""
    if isinstance(state, dict):
        return {key: _editable(value) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return [_editable(value) for value in state]
    return state.clone() if isinstance(state, torch.Tensor) else state


@st.composite
def corrupted(draw: Any, state: dict) -> dict:
    """`state` with one leaf replaced by junk, shrunk, or deleted."""
    state = _editable(state)
    path = draw(st.sampled_from(leaves(state)))
    parent = state
    for key in path[:-1]:
        parent = parent[key]
    action = draw(st.sampled_from(["junk", "delete", "shrink", "scale"]))
    value = parent[path[-1]]
    if action == "delete" and isinstance(parent, dict):
        del parent[path[-1]]
    elif action == "shrink" and hasattr(value, "__len__") and getattr(value, "ndim", 1) \
            and len(value):
        parent[path[-1]] = value[:-1]
    elif action == "scale" and isinstance(value, (torch.Tensor, float, int)) \
            and not isinstance(value, bool):
        factor = draw(st.sampled_from([-1, 2**40, math.nan, math.inf, 0.5]))
        try:
            parent[path[-1]] = value * factor
        except (RuntimeError, OverflowError):
            parent[path[-1]] = draw(junk())
    else:
        parent[path[-1]] = draw(junk())
    return state
