"""fastis: fast importance sampling for PyTorch training."""

from fastis import data, distributed, ops, samplers
from fastis.settings import (
    cached_bytes,
    empty_cache,
    get_num_threads,
    set_cache_limit,
    set_num_threads,
)
from fastis.structures import AliasTable, SumTree

__all__ = [
    "AliasTable",
    "SumTree",
    "cached_bytes",
    "data",
    "distributed",
    "empty_cache",
    "get_num_threads",
    "ops",
    "samplers",
    "set_cache_limit",
    "set_num_threads",
]
__version__ = "0.1.0"
