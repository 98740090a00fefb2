"""Weighted sampling with replacement: fastis.AliasTable and fastis.SumTree (1 and 2
threads) against scipy's alias urn, torch.multinomial, WeightedRandomSampler, numpy's
choice and TorchRL's sum trees (when they import), at n = 1e6 and 1e7 lognormal weights.

    pytest benchmarks/bench_structures.py --benchmark-only              # ~4 minutes
    pytest benchmarks/bench_structures.py --benchmark-only --sizes 1e5,1e8

Groups: build (from the weight vector; fastis recycles freed structures' memory, so its
builds are rebuilds, and "fresh memory" empties that cache first, as a first build is),
draw 1M (one call), draw 1024 (one call, the per-step draw), step (update 65,536 random
weights, then draw 1,024: the training-loop pattern; alias tables and libraries without an
update rebuild).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from baselines import STEP_DRAWS, Structure, all_structures
from harness import Target, size_label

import fastis

STEP_UPDATES = 65_536


def _fastis(kind: str, threads: int) -> Structure:
    cls = fastis.AliasTable if kind == "alias" else fastis.SumTree
    label = f"fastis.{cls.__name__}, {threads} thread{'s' if threads > 1 else ''}"

    def step(state: list, idx: np.ndarray, new: np.ndarray):
        if kind == "tree":
            state[0].update(idx, new)
        else:  # weights fixed between builds: the step is a rebuild
            state[1][idx] = new
            state[0] = fastis.AliasTable(state[1], seed=0)
        return state[0].sample(STEP_DRAWS)

    def build(w: np.ndarray) -> list:
        fastis.set_num_threads(threads)
        return [cls(w, seed=0), w]

    return Structure(label, build, lambda state, k: state[0].sample(k), step)


FASTIS = [_fastis(kind, t) for kind in ("alias", "tree") for t in (1, 2)]
METHODS = {s.name: s for s in [*FASTIS, *all_structures()]}


@functools.cache
def weights(n: int) -> np.ndarray:
    return np.random.default_rng(12_345).lognormal(0.0, 1.0, n)


@functools.cache
def built(name: str, n: int):
    return METHODS[name].build(weights(n).copy())


def _skip_refused(name: str, n: int) -> None:
    limit = METHODS[name].max_n
    if limit is not None and n > limit:
        pytest.skip(f"{name} refuses n > {limit}")


def _threads(name: str) -> None:
    fastis.set_num_threads(2 if name.endswith("2 threads") else 1)


@pytest.fixture(autouse=True)
def _restore_threads():
    before = fastis.get_num_threads()
    yield
    fastis.set_num_threads(before)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("fresh", [False, True], ids=["rebuild", "fresh-memory"])
def bench_build(bench, n, name, fresh):
    baseline = not name.startswith("fastis")
    if not METHODS[name].builds:
        pytest.skip(f"{name} builds no structure: every draw scans the weights")
    if fresh and baseline:
        pytest.skip("the baselines allocate fresh memory at every build")
    _skip_refused(name, n)

    def copy():
        if fresh:
            fastis.empty_cache()
        return (weights(n).copy(),)

    bench(METHODS[name].build, group=f"build, n={size_label(n)}",
          method=name + (", fresh memory" if fresh else ""), baseline=baseline, setup=copy,
          rounds=5)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("k", [1_000_000, STEP_DRAWS], ids=["1M", "1024"])
def bench_draw(bench, n, name, k):
    _skip_refused(name, n)
    state, method = built(name, n), METHODS[name]
    _threads(name)
    bench(lambda: method.draw(state, k), group=f"draw {'1M' if k > STEP_DRAWS else k}, "
          f"n={size_label(n)}", method=name, baseline=not name.startswith("fastis"))


@pytest.mark.parametrize("name", METHODS)
def bench_step(bench, n, name):
    _skip_refused(name, n)
    state, method = built(name, n), METHODS[name]
    _threads(name)
    rng = np.random.default_rng(777)

    def fresh_inputs():
        return (rng.integers(0, n, STEP_UPDATES, dtype=np.int64),
                rng.lognormal(0.0, 1.0, STEP_UPDATES))

    bench(lambda idx, new: method.step(state, idx, new), group=f"step, n={size_label(n)}",
          method=name, baseline=not name.startswith("fastis"), setup=fresh_inputs, rounds=15)


def _rate(group: str, method: str):
    """M draws/s of a 1M-draw group."""
    return lambda r: 1.0 / r[group][method]


def _best(group: str, prefix: str, results) -> float:
    """The fastest median of the group's methods named `prefix`... (fresh builds apart)."""
    return min(v for k, v in results[group].items() if k.startswith(prefix) and "fresh" not in k)


ALIAS1, ALIAS2 = "fastis.AliasTable, 1 thread", "fastis.AliasTable, 2 threads"
TREE1 = "fastis.SumTree, 1 thread"
TARGETS = [
    Target("AliasTable draw rate, 2 threads, n=1e7", _rate("draw 1M, n=1e7", ALIAS2), 100,
           " M/s", True),
    Target("AliasTable draw rate, 1 thread, n=1e7", _rate("draw 1M, n=1e7", ALIAS1), 60,
           " M/s", True),
    Target("AliasTable 2 threads / scipy alias, draw rate, n=1e7",
           lambda r: r["draw 1M, n=1e7"]["scipy DiscreteAliasUrn"] / r["draw 1M, n=1e7"][ALIAS2],
           5, "x", True),
    Target("SumTree draw rate, 1 thread, n=1e7", _rate("draw 1M, n=1e7", TREE1), 20, " M/s",
           True),
    Target("SumTree 1 thread / best TorchRL tree, draw rate, n=1e7",
           lambda r: _best("draw 1M, n=1e7", "TorchRL", r) / r["draw 1M, n=1e7"][TREE1], 5, "x",
           True),
    Target("SumTree step (best of 1 / 2 threads), n=1e7",
           lambda r: 1e3 * _best("step, n=1e7", "fastis.SumTree", r), 1.5, " ms", False),
    Target("best TorchRL step / SumTree step, n=1e7",
           lambda r: _best("step, n=1e7", "TorchRL", r) / _best("step, n=1e7", "fastis.SumTree", r),
           4, "x", True),
    Target("AliasTable build (best threads), n=1e7",
           lambda r: 1e3 * _best("build, n=1e7", "fastis.AliasTable", r), 40, " ms", False),
    Target("AliasTable build into fresh memory (best threads), n=1e7",
           lambda r: 1e3 * min(v for k, v in r["build, n=1e7"].items()
                               if k.startswith("fastis.AliasTable") and "fresh" in k),
           40, " ms", False),
    Target("SumTree build (best threads), n=1e7",
           lambda r: 1e3 * _best("build, n=1e7", "fastis.SumTree", r), 20, " ms", False),
    Target("one call drawing 1,024 at n=1e6 (SumTree, best threads)",
           lambda r: 1e6 * _best("draw 1024, n=1e6", "fastis.SumTree", r), 15, " us", False),
    Target("one call drawing 1,024 at n=1e6 (AliasTable, best threads)",
           lambda r: 1e6 * _best("draw 1024, n=1e6", "fastis.AliasTable", r), 15, " us", False),
]
