"""Checking user input, with errors that name the problem: the arrays the C++ core reads
(numpy arrays, torch CPU tensors or Python sequences turned into 1-D contiguous numpy
arrays) and the scalar settings of every class (counts, seeds, non-negative numbers,
probabilities).

Contiguous float32/float64 weights and int32/int64 indices pass through without a copy;
anything else is converted once.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any

import numpy as np
import torch

_WEIGHT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_INDEX_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        if x.device.type != "cpu":
            raise ValueError(
                f"{name} is on {x.device}; fastis structures live in CPU memory, pass {name}.cpu()"
            )
        x = x.detach()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.double()
        if x.is_complex():
            raise TypeError(f"{name} must be real numbers, got {x.dtype}")
        return x.resolve_conj().resolve_neg().numpy()
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, (str, bytes)) or not hasattr(x, "__len__"):
        raise TypeError(f"{name} must be a 1-D array, tensor or sequence, got {type(x).__name__}")
    try:
        arr = np.asarray(x)
    except (ValueError, TypeError) as err:
        raise TypeError(f"{name} could not be read as a numeric array: {err}") from None
    return arr


def _require_1d(arr: np.ndarray, name: str) -> None:
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(arr.shape)}")


def as_weights(x: Any, name: str = "weights") -> np.ndarray:
    """A 1-D contiguous float32/float64 array of `x` (no copy when it already is one)."""
    arr = _to_numpy(x, name)
    _require_1d(arr, name)
    kind = arr.dtype.kind
    if kind == "b":
        raise TypeError(f"{name} must be numbers, got booleans")
    if kind not in "fiu":
        raise TypeError(f"{name} must be real numbers, got dtype {arr.dtype}")
    if arr.dtype not in _WEIGHT_DTYPES:
        arr = arr.astype(np.float64)
    return np.ascontiguousarray(arr)


def as_indices(x: Any, name: str = "indices") -> np.ndarray:
    """A 1-D contiguous int32/int64 array of `x` (no copy when it already is one)."""
    arr = _to_numpy(x, name)
    if arr.size == 0 and isinstance(x, (list, tuple)):
        arr = arr.astype(np.int64)  # numpy reads an empty sequence as float64
    _require_1d(arr, name)
    kind = arr.dtype.kind
    if kind not in "iu":
        raise TypeError(f"{name} must be integers, got dtype {arr.dtype}")
    if arr.dtype not in _INDEX_DTYPES:
        if kind == "u" and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
            raise IndexError(f"{name} holds values beyond the int64 range")
        arr = arr.astype(np.int64)
    return np.ascontiguousarray(arr)


def as_count(k: Any, name: str = "k") -> int:
    """A non-negative Python int from an integer-like `k` (bools and floats are refused)."""
    if type(k) is int and k >= 0:  # the common case, checked first: sample() is per step
        return k
    if isinstance(k, (bool, float, np.floating)):
        raise TypeError(f"{name} must be an integer, got {type(k).__name__}")
    if isinstance(k, torch.Tensor) and (k.is_floating_point() or k.dtype == torch.bool):
        raise TypeError(f"{name} must be an integer, got a {k.dtype} tensor")
    if isinstance(k, (torch.Tensor, np.ndarray)) and k.ndim != 0:
        raise TypeError(f"{name} must be a single integer, got an array of shape "
                        f"{tuple(k.shape)}")
    try:
        value = operator.index(k)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(k).__name__}") from None
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def as_seed(seed: Any) -> int:
    """A seed in [0, 2^64); None draws one from torch's global generator, so that
    torch.manual_seed() makes a run reproducible."""
    if seed is None:
        return int(torch.randint(0, 2**62, (1,)).item())
    value = as_count(seed, "seed")
    if value >= 2**64:
        raise ValueError(f"seed must be below 2**64, got {value}")
    return value


def positive_count(value: Any, name: str) -> int:
    """An integer >= 1 (bools and floats refused)."""
    value = as_count(value, name)
    if value == 0:
        raise ValueError(f"{name} must be >= 1, got 0")
    return value


def real_number(value: Any, name: str) -> float:
    """A Python float from a real number (bools, strings, complex numbers refused)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex():
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


def non_negative(value: Any, name: str) -> float:
    """A finite float >= 0."""
    value = real_number(value, name)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be finite and >= 0, got {value}")
    return value


def probability(value: Any, name: str, *, allow_zero: bool = True,
                allow_one: bool = True) -> float:
    """A float in [0, 1], with either end excluded on request."""
    value = real_number(value, name)
    low_ok = value > 0 or (allow_zero and value == 0)
    high_ok = value < 1 or (allow_one and value == 1)
    if not (low_ok and high_ok):
        low, high = ("[0" if allow_zero else "(0"), ("1]" if allow_one else "1)")
        raise ValueError(f"{name} must be in {low}, {high}, got {value}")
    return value
