"""fastis: fast importance sampling for PyTorch training."""

from fastis import data, distributed, ops, samplers
from fastis._C import get_num_threads, set_num_threads
from fastis.structures import AliasTable, SumTree

__all__ = [
    "AliasTable",
    "SumTree",
    "data",
    "distributed",
    "get_num_threads",
    "ops",
    "samplers",
    "set_num_threads",
]
__version__ = "0.1.0"
