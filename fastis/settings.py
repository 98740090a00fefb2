"""Process-wide settings of the C++ core: its thread count and its cache of freed memory.
Each checks its argument (a named TypeError / ValueError / OverflowError) before changing
anything."""

from __future__ import annotations

import os
from typing import Any

from fastis import _C
from fastis.validation import as_count

__all__ = ["MAX_THREADS", "cached_bytes", "empty_cache", "get_num_threads",
           "set_cache_limit", "set_num_threads"]

# More threads than CPUs only add switching; far more (a typo such as 100_000) would spawn
# threads until the system limit and make fork() fail for every process on the machine.
_CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
MAX_THREADS = min(1024, 4 * (_CPUS or 1))


def get_num_threads() -> int:
    """The threads large calls use (the caller and get_num_threads() - 1 pool workers)."""
    return _C.get_num_threads()


def set_num_threads(threads: int) -> None:
    """Sets the threads large calls use: an integer in [1, MAX_THREADS] (4 x the CPUs this
    process may run on, at most 1024). Results never depend on it.

    Examples:
        >>> import fastis
        >>> before = fastis.get_num_threads()
        >>> fastis.set_num_threads(1); fastis.get_num_threads()
        1
        >>> fastis.set_num_threads(before)
    """
    threads = as_count(threads, "threads")
    if threads < 1:
        raise ValueError("the number of threads must be at least 1, got 0")
    if threads > MAX_THREADS:
        raise ValueError(f"threads must be at most {MAX_THREADS} (4 x the {_CPUS} CPUs this "
                         f"process may run on), got {threads}")
    _C.set_num_threads(threads)


def empty_cache() -> int:
    """Unmaps the memory kept from freed structures for reuse; returns the bytes released."""
    return _C.empty_cache()


def cached_bytes() -> int:
    """Bytes kept from freed structures for reuse by the next build of the same size."""
    return _C.cached_bytes()


def set_cache_limit(nbytes: Any) -> int:
    """Sets the most bytes kept from freed structures (0 turns the cache off); returns the
    previous limit. An integer in [0, 2**63)."""
    nbytes = as_count(nbytes, "the cache limit (nbytes)")
    if nbytes >= 2**63:
        raise OverflowError(f"the cache limit (nbytes) must be below 2**63, got {nbytes}")
    return _C.set_cache_limit(nbytes)
