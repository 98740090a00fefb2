"""The input checks every scoring op shares: types, shapes, dtypes, devices, and the values
of targets and rows. They run before any work, and each error names the problem."""

from __future__ import annotations

import operator
from typing import Any

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Targets and ignore_index live in int64.
_INT64 = (-(2**63), 2**63 - 1)


def tensor(x: object, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.device.type == "meta":
        raise ValueError(f"{name} is a meta tensor (it holds no values to score)")
    return x


def float_tensor(x: object, name: str, ndim: int) -> torch.Tensor:
    x = tensor(x, name)
    if x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {x.dtype}")
    return x


def index_tensor(x: object, name: str) -> torch.Tensor:
    x = tensor(x, name)
    if x.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(x.shape)}")
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {x.dtype}")
    return x


def same_device(tensors: dict[str, torch.Tensor | None]) -> None:
    present = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(present.values())) > 1:
        listed = ", ".join(f"{name} on {device}" for name, device in present.items())
        raise ValueError(f"all inputs must be on one device, got {listed}")


def ignore_index_value(value: Any) -> int:
    """ignore_index as a Python int in the int64 range (bools and floats refused: a float
    would compare differently on each backend)."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"ignore_index must be an integer, got {type(value).__name__}")
    value = operator.index(value)
    if not _INT64[0] <= value <= _INT64[1]:
        raise OverflowError(f"ignore_index = {value} is outside the int64 range")
    return value


def checked_rows(rows: Any, num_rows: int, validate: bool) -> torch.Tensor | None:
    """rows as int64 [M]; with validate, each in [0, num_rows) (IndexError names the first
    bad one; reading the values is a device sync on CUDA)."""
    if rows is None:
        return None
    rows = index_tensor(rows, "rows").long()
    if validate:
        bad = (rows < 0) | (rows >= num_rows)
        if bool(bad.any()):
            first = int(bad.nonzero()[0, 0])
            raise IndexError(f"rows[{first}] = {int(rows[first])} is outside [0, {num_rows})")
    return rows


def checked_target(target: Any, expected: int, num_classes: int, ignore_index: int,
                   what: str, validate: bool) -> torch.Tensor:
    """target as int64 [expected]; with validate, each in [0, num_classes) or ignore_index."""
    target = index_tensor(target, "target")
    if target.shape[0] != expected:
        raise ValueError(f"target has {target.shape[0]} entries but {what} has {expected}")
    target = target.long()
    if validate:
        bad = ((target < 0) | (target >= num_classes)) & (target != ignore_index)
        if bool(bad.any()):
            first = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"target[{first}] = {int(target[first])} is outside [0, {num_classes}) and is "
                f"not ignore_index ({ignore_index})")
    return target


def logits_call(logits: Any, target: Any, rows: Any, ignore_index: Any, *,
                check_values: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int]:
    """The checked (logits [N, C], target int64, rows int64 or None, ignore_index) of a call
    scoring logits; target and row values are checked when `check_values`."""
    logits = float_tensor(logits, "logits", 2)
    target = tensor(target, "target")
    if rows is not None:
        rows = tensor(rows, "rows")
    same_device({"logits": logits, "target": target, "rows": rows})
    ignore_index = ignore_index_value(ignore_index)
    num_rows, num_classes = logits.shape
    if num_classes < 1:
        raise ValueError("logits must have at least one class (C >= 1)")
    rows = checked_rows(rows, num_rows, check_values)
    expected, what = (num_rows, "logits") if rows is None else (rows.shape[0], "rows")
    target = checked_target(target, expected, num_classes, ignore_index, what, check_values)
    return logits, target, rows, ignore_index


def linear_call(hidden: Any, weight: Any, target: Any, bias: Any, rows: Any,
                ignore_index: Any, *, check_values: bool
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None,
                           torch.Tensor | None, int]:
    """The checked (hidden [N, D], weight [C, D], target, bias [C] or None, rows,
    ignore_index) of a call scoring a linear layer."""
    hidden = float_tensor(hidden, "hidden", 2)
    weight = float_tensor(weight, "weight", 2)
    target = tensor(target, "target")
    if bias is not None:
        bias = float_tensor(bias, "bias", 1)
    if rows is not None:
        rows = tensor(rows, "rows")
    same_device({"hidden": hidden, "weight": weight, "target": target, "bias": bias,
                 "rows": rows})
    ignore_index = ignore_index_value(ignore_index)
    num_rows, features = hidden.shape
    num_classes = weight.shape[0]
    if weight.shape[1] != features:
        raise ValueError(f"weight must be [C, {features}] to match hidden [N, {features}], "
                         f"got {tuple(weight.shape)}")
    if num_classes < 1:
        raise ValueError("weight must have at least one class (C >= 1)")
    if bias is not None and bias.shape[0] != num_classes:
        raise ValueError(f"bias has {bias.shape[0]} entries but weight has {num_classes} rows")
    rows = checked_rows(rows, num_rows, check_values)
    expected, what = (num_rows, "hidden") if rows is None else (rows.shape[0], "rows")
    target = checked_target(target, expected, num_classes, ignore_index, what, check_values)
    return hidden, weight, target, bias, rows, ignore_index
