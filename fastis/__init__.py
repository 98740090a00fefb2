"""fastis: fast importance sampling for PyTorch training."""

from fastis import ops
from fastis._C import get_num_threads, set_num_threads
from fastis.structures import AliasTable, SumTree

__all__ = ["AliasTable", "SumTree", "get_num_threads", "ops", "set_num_threads"]
__version__ = "0.1.0"
