"""Running estimates the samplers keep: exponential moving averages that start from their
first observation (no bias toward an arbitrary initial value)."""

from __future__ import annotations

from typing import overload

import numpy as np


@overload
def ema(average: float, value: float, momentum: float) -> float: ...
@overload
def ema(average: np.ndarray, value: np.ndarray, momentum: float) -> np.ndarray: ...


def ema(average, value, momentum):
    """momentum * average + (1 - momentum) * value, or `value` where `average` is NaN (no
    observation yet). Floats or float64 arrays, elementwise.

    Examples:
        >>> import math
        >>> from fastis.samplers.estimates import ema
        >>> ema(math.nan, 2.0, 0.9), ema(2.0, 4.0, 0.5)
        (2.0, 3.0)
    """
    if isinstance(average, np.ndarray):
        return np.where(np.isnan(average), value, momentum * average + (1 - momentum) * value)
    return value if average != average else momentum * average + (1 - momentum) * value
