"""The header every sampler and loss-predictor state_dict carries (format, version, kind,
configuration), its check on load, and the conversion that lets `torch.load(...,
weights_only=True)` (torch's default since 2.6, and Lightning's) read a state."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


def state_header(fmt: str, version: int, kind: str, config: dict[str, Any]) -> dict[str, Any]:
    return {"format": fmt, "version": version, "kind": kind, "config": config}


def check_state_header(state: Any, *, fmt: str, version: int, kind: str,
                       config: dict[str, Any], what: str) -> None:
    """Raises ValueError naming the problem unless `state` is a dict with this format,
    version, kind and exactly this configuration (NaN equals NaN)."""
    if not isinstance(state, dict) or state.get("format") != fmt:
        raise ValueError(f"not a fastis {what} state_dict")
    if state.get("version") != version:
        raise ValueError(f"{what} state version {state.get('version')} is not supported "
                         f"(this fastis reads version {version})")
    if state.get("kind") != kind:
        raise ValueError(f"this state_dict belongs to a {state.get('kind')}, not a {kind}")
    theirs = state.get("config")
    if not isinstance(theirs, dict):
        raise ValueError(f"corrupted {what} state_dict: no config")
    differing = sorted(k for k in set(config) | set(theirs)
                       if not _same(config.get(k), theirs.get(k)))
    if differing:
        detail = ", ".join(f"{k}: {theirs.get(k)!r} != {config.get(k)!r}" for k in differing)
        raise ValueError(f"the state_dict comes from another configuration ({detail})")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


def portable(value: Any) -> Any:
    """`value` with every numpy array made a CPU tensor (a copy) and every numpy scalar a
    Python one, through dicts, lists and tuples: what torch.load(weights_only=True) reads.
    Loaders read the tensors back with np.asarray (np.array on a tensor warns under numpy 2)."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {key: portable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(portable(item) for item in value)
    return value

