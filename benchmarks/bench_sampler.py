#!/usr/bin/env python
"""Weighted sampling with replacement: fastis side by side with the baselines of SAMPLER.md.

One run measures, for each method and each n (lognormal(0, 1) float64 weights, fixed seed):

- build ms       building the structure from the full weight vector, repeatedly (fastis
                 recycles the freed structures' memory: these are rebuilds); for fastis
                 also "fresh": each build into fresh memory (fastis.empty_cache() first);
- draw 1M        drawing 1,000,000 indices in one call (ms and M draws/s);
- draw 1024 us   one call drawing 1,024 indices from Python (median over many calls);
- step ms        update 65,536 random weights, then draw 1,024 (methods without an update
                 API rebuild / re-normalise, as in SAMPLER.md section 2);
- B/ex           bytes the structure holds per example (fastis: nbytes / n; the weight copy a
                 rebuild-based method keeps in order to rebuild is not counted for anyone);
- IS             mean over the 1M draws of W / (n * w_i); 1 for exact sampling.

Every number is the median of R timed repeats after one untimed warm-up call. R adapts to a
per-metric time budget; a method is skipped at a size where one call would take more than
--max-call-s seconds (measured by the warm-up, or extrapolated from the previous size).

    python benchmarks/bench_sampler.py --quick          # n = 1e5, 1e6; < 1 minute
    python benchmarks/bench_sampler.py                  # n = 1e5 .. 1e8; ~15 minutes on 2 cores
    python benchmarks/bench_sampler.py --sizes 1e7 --only-baselines --no-save
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Optional, Union

import benchlib
import numpy as np
import torch

DRAW_BIG = 1_000_000
DRAW_SMALL = 1_024
STEP_UPDATES = 65_536
WEIGHT_SEED = 12_345
STEP_SEED = 777
DEFAULT_SIZES = "1e5,1e6,1e7,1e8"
QUICK_SIZES = "1e5,1e6"
REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT_DIR = REPO / "benchmarks" / "results"

# A metric is a number, or a string saying why there is none ("refused (2^24 cap)", ...).
Value = Union[float, str]
METRICS = ("build_ms", "build_fresh_ms", "draw1m_ms", "draw1024_us", "step_ms")

warnings.filterwarnings("ignore", message=r".*round-off error.*")  # UNU.RAN DAU on skewed weights


# --------------------------------------------------------------------------------------------
# Timing: the one helper every measurement goes through.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """How long to spend on one (method, n, metric)."""

    seconds: float  # wall-clock budget for the timed repeats
    min_repeats: int
    max_repeats: int
    max_call_s: float  # skip when one call takes (or is predicted to take) longer


@dataclass
class Timing:
    seconds: float  # median of the timed repeats
    repeats: int
    last_output: Any = None


class Skipped(Exception):
    """One call would take longer than the budget allows."""


def measure(
    fn: Callable[[Any], Any],
    budget: Budget,
    prepare: Callable[[], Any] = lambda: None,
    max_repeats: int | None = None,
) -> Timing:
    """Median wall time of fn(prepare()) over adaptive repeats after one warm-up call.

    prepare() runs outside the timed region (fresh inputs per repeat); the garbage collector
    is paused while fn runs. Raises Skipped when the warm-up call exceeds budget.max_call_s.
    """

    def once() -> tuple[float, Any]:
        arg = prepare()
        gc.disable()
        try:
            t0 = time.perf_counter()
            out = fn(arg)
            elapsed = time.perf_counter() - t0
        finally:
            gc.enable()
        return elapsed, out

    gc.collect()
    warm, out = once()
    if warm > budget.max_call_s:
        raise Skipped(f"skipped (one call {warm:.1f} s > {budget.max_call_s:g} s)")
    cap = max_repeats or budget.max_repeats
    floor = budget.min_repeats if warm < 1.0 else 1
    repeats = max(floor, min(cap, int(budget.seconds / max(warm, 1e-9))))
    times = []
    for _ in range(repeats):
        elapsed, out = once()
        times.append(elapsed)
    return Timing(statistics.median(times), repeats, out)


# --------------------------------------------------------------------------------------------
# Methods: a small table of adapters, one per baseline / fastis structure.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    key: str  # row label
    dtype: str
    build: Callable[[np.ndarray], Any]  # private float64 copy of the weights -> state
    draw: Callable[[Any, int], Any]  # state, k -> indices (numpy, torch or list)
    step: Callable[[Any, np.ndarray, np.ndarray], Any]  # state, idx, new w -> 1,024 indices
    held_bytes: Callable[[Any], float]  # state -> bytes the structure holds
    updatable: bool
    threads: int | None = None  # fastis.set_num_threads(threads) before measuring
    max_n: int | None = None  # documented category cap; checked with one tiny draw above it
    note: str = ""
    # Called before each build of the "fresh memory" timing (fastis.empty_cache); None for
    # methods that do not recycle memory, whose every build is into fresh memory.
    forget_memory: Callable[[], Any] | None = None


@dataclass
class Rebuilt:
    """State of a method with no update API: its own weight copy plus the derived structure."""

    w: np.ndarray
    obj: Any


def _multinomial() -> Method:
    def step(w: torch.Tensor, idx: np.ndarray, new: np.ndarray) -> torch.Tensor:
        w[torch.from_numpy(idx)] = torch.from_numpy(new)
        return torch.multinomial(w, DRAW_SMALL, replacement=True)

    return Method(
        "torch.multinomial",
        "f64",
        build=torch.from_numpy,  # no structure: every call re-scans the n weights
        draw=lambda w, k: torch.multinomial(w, k, replacement=True),
        step=step,
        held_bytes=lambda w: w.nbytes,
        updatable=False,
        max_n=2**24,
        note="O(n) per call",
    )


def _weighted_random_sampler() -> Method:
    from torch.utils.data import WeightedRandomSampler

    def draw(s: WeightedRandomSampler, k: int) -> list[int]:
        s.num_samples = k
        return list(s)

    def step(s: WeightedRandomSampler, idx: np.ndarray, new: np.ndarray) -> list[int]:
        s.weights[torch.from_numpy(idx)] = torch.from_numpy(new)
        return draw(s, DRAW_SMALL)

    return Method(
        "WeightedRandomSampler",
        "f64",
        build=lambda w: WeightedRandomSampler(torch.from_numpy(w), DRAW_SMALL, replacement=True),
        draw=draw,
        step=step,
        held_bytes=lambda s: s.weights.nbytes,
        updatable=False,
        max_n=2**24,
        note="list(iter()); O(n) per call",
    )


def _numpy_choice() -> Method:
    rng = np.random.default_rng(1)

    def build(w: np.ndarray) -> Rebuilt:
        return Rebuilt(w, w / w.sum())

    def step(st: Rebuilt, idx: np.ndarray, new: np.ndarray) -> np.ndarray:
        st.w[idx] = new
        st.obj = st.w / st.w.sum()
        return rng.choice(len(st.w), DRAW_SMALL, p=st.obj)

    return Method(
        "numpy Generator.choice(p)",
        "f64",
        build=build,
        draw=lambda st, k: rng.choice(len(st.w), k, p=st.obj),
        step=step,
        held_bytes=lambda st: st.obj.nbytes,
        updatable=False,
        note="O(n) per call",
    )


def _scipy_alias() -> Method:
    from scipy.stats.sampling import DiscreteAliasUrn

    rng = np.random.default_rng(2)

    def build(w: np.ndarray) -> Rebuilt:
        return Rebuilt(w, DiscreteAliasUrn(w, random_state=rng))

    def step(st: Rebuilt, idx: np.ndarray, new: np.ndarray) -> np.ndarray:
        st.w[idx] = new
        st.obj = DiscreteAliasUrn(st.w, random_state=rng)
        return st.obj.rvs(DRAW_SMALL)

    return Method(
        "scipy DiscreteAliasUrn",
        "f64",
        build=build,
        draw=lambda st, k: st.obj.rvs(k),
        step=step,
        # UNU.RAN keeps a float64 copy of pv plus an {int32 alias, float64 prob} urn of size n.
        held_bytes=lambda st: 20.0 * len(st.w),
        updatable=False,
        note="int32 out; B/ex estimated",
    )


def _torchrl_tree(cls: type, np_dtype: type, label: str) -> Method:
    rng = np.random.default_rng(3)
    itemsize = np.dtype(np_dtype).itemsize

    def build(w: np.ndarray) -> Any:
        tree = cls.__new__(cls)  # the pickle path reaches the O(n) SegmentTree::LoadValues
        tree.__setstate__((w.astype(np_dtype, copy=False),))
        return tree

    def draw(tree: Any, k: int) -> np.ndarray:
        total = np_dtype(tree.query(0, tree.size))
        return tree.scan_lower_bound(rng.random(k, dtype=np_dtype) * total)

    def step(tree: Any, idx: np.ndarray, new: np.ndarray) -> np.ndarray:
        tree.update(idx, new.astype(np_dtype, copy=False))
        return draw(tree, DRAW_SMALL)

    return Method(
        f"TorchRL SumSegmentTree{label}",
        label.lower().replace("fp", "f"),
        build=build,
        draw=draw,
        step=step,
        held_bytes=lambda tree: 2.0 * tree.capacity * itemsize,
        updatable=True,
        note="raw tree; scan_lower_bound(u * total)",
    )


def _fastis_sum_tree(fastis: ModuleType, threads: int) -> Method:
    def step(tree: Any, idx: np.ndarray, new: np.ndarray) -> torch.Tensor:
        tree.update(idx, new)
        return tree.sample(DRAW_SMALL)

    return Method(
        f"fastis.SumTree ({threads} thr)",
        "f64",
        build=lambda w: fastis.SumTree(w, seed=0),
        draw=lambda tree, k: tree.sample(k),
        step=step,
        held_bytes=lambda tree: float(tree.nbytes),
        updatable=True,
        threads=threads,
        forget_memory=fastis.empty_cache,
    )


def _fastis_alias(fastis: ModuleType, threads: int) -> Method:
    def step(st: Rebuilt, idx: np.ndarray, new: np.ndarray) -> torch.Tensor:
        st.w[idx] = new
        st.obj = fastis.AliasTable(st.w, seed=0)
        return st.obj.sample(DRAW_SMALL)

    return Method(
        f"fastis.AliasTable ({threads} thr)",
        "f64",
        build=lambda w: Rebuilt(w, fastis.AliasTable(w, seed=0)),
        draw=lambda st, k: st.obj.sample(k),
        step=step,
        held_bytes=lambda st: float(st.obj.nbytes),
        updatable=False,
        threads=threads,
        note="step = rebuild",
        forget_memory=fastis.empty_cache,
    )


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:160]


def load_fastis() -> tuple[ModuleType | None, str]:
    """The installed fastis, else the one in this checkout (imported lazily: it may not build)."""
    try:
        import fastis
    except ImportError:
        sys.path.append(str(REPO))
    try:
        import fastis

        fastis.SumTree, fastis.AliasTable, fastis.set_num_threads  # noqa: B018
    except Exception as exc:  # the package is being written; report, don't crash
        return None, first_line(exc)
    return fastis, ""


def load_torchrl() -> tuple[tuple[type, type] | None, str]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torchrl._torchrl import SumSegmentTreeFp32, SumSegmentTreeFp64
    except Exception as exc:
        return None, first_line(exc)
    return (SumSegmentTreeFp64, SumSegmentTreeFp32), ""


@dataclass
class Unavailable:
    key: str
    reason: str


def make_methods(
    with_fastis: bool, with_baselines: bool, threads: list[int]
) -> list[Method | Unavailable]:
    methods: list[Method | Unavailable] = []
    if with_fastis:
        fastis, err = load_fastis()
        for make, name in ((_fastis_alias, "AliasTable"), (_fastis_sum_tree, "SumTree")):
            for t in threads:
                methods.append(
                    make(fastis, t) if fastis else Unavailable(f"fastis.{name} ({t} thr)", err)
                )
    if with_baselines:
        methods += [_multinomial(), _weighted_random_sampler(), _numpy_choice(), _scipy_alias()]
        trees, err = load_torchrl()
        if trees:
            methods += [
                _torchrl_tree(trees[0], np.float64, "Fp64"),
                _torchrl_tree(trees[1], np.float32, "Fp32"),
            ]
        else:
            methods += [Unavailable(f"TorchRL SumSegmentTree{d}", err) for d in ("Fp64", "Fp32")]
    return methods


# --------------------------------------------------------------------------------------------
# Running one (method, n).
# --------------------------------------------------------------------------------------------


@dataclass
class Row:
    method: str
    n: int
    dtype: str = ""
    threads: int | None = None
    metrics: dict[str, Value] = field(default_factory=dict)
    repeats: dict[str, int] = field(default_factory=dict)
    bytes_per_ex: Value = "n/a"
    is_mean: Value = "n/a"
    note: str = ""

    def number(self, metric: str) -> float | None:
        value = self.metrics.get(metric)
        return value if isinstance(value, float) else None


def as_index_array(out: Any) -> np.ndarray:
    if isinstance(out, torch.Tensor):
        return out.numpy()
    return np.asarray(out)


def is_check(row: Row, idx: np.ndarray, w: np.ndarray, total: float) -> float:
    """Mean of W / (n w_i) over the draws; out-of-range indices are counted and clipped."""
    bad = int(np.count_nonzero((idx < 0) | (idx >= len(w))))
    if bad:
        row.note += f"; {bad} draws out of range"
        idx = np.clip(idx, 0, len(w) - 1)
    return float(np.mean(total / (len(w) * w[idx])))


def is_tolerance(w: np.ndarray, k: int = DRAW_BIG) -> float:
    """2 sigma of the IS mean: Var[W / (n w_i)] = (W / n^2) * sum(1 / w) - 1."""
    n = len(w)
    second_moment = float(w.sum()) / n * float(np.mean(1.0 / w))
    return 2.0 * math.sqrt(max(second_moment - 1.0, 0.0) / k)


class Runner:
    def __init__(self, budgets: dict[str, Budget], draw_small_calls: int) -> None:
        self.budgets = budgets
        self.draw_small_calls = draw_small_calls
        self.last: dict[tuple[str, str], tuple[int, float]] = {}  # (method, metric) -> (n, s)

    def predicted_skip(self, key: str, metric: str, n: int) -> str | None:
        """Skip without running when linear extrapolation from a smaller n is too slow."""
        prev = self.last.get((key, metric))
        limit = self.budgets[metric].max_call_s
        if prev is None or prev[0] >= n:
            return None
        predicted = prev[1] * n / prev[0]
        return f"skipped (~{predicted:.0f} s/call predicted)" if predicted > limit else None

    def timed(
        self, row: Row, method: Method, metric: str, fn: Callable[[Any], Any], **kwargs: Any
    ) -> Any:
        """Run measure() for one metric; store the median or the reason there is none."""
        skip = self.predicted_skip(method.key, metric, row.n)
        if skip:
            row.metrics[metric] = skip
            return None
        try:
            timing = measure(fn, self.budgets[metric], **kwargs)
        except Skipped as exc:
            row.metrics[metric] = str(exc)
            self.last[(method.key, metric)] = (row.n, math.inf)
            return None
        except Exception as exc:
            row.metrics[metric] = refusal(exc)
            return None
        scale = 1e6 if metric.endswith("_us") else 1e3
        row.metrics[metric] = timing.seconds * scale
        row.repeats[metric] = timing.repeats
        self.last[(method.key, metric)] = (row.n, timing.seconds)
        return timing.last_output

    def run(self, method: Method, w: np.ndarray, total: float, fastis: Any) -> Row:
        row = Row(method.key, len(w), method.dtype, method.threads, note=method.note)
        if method.threads is not None:
            fastis.set_num_threads(method.threads)
        if method.forget_memory is not None:
            forget = method.forget_memory

            def fresh_copy() -> np.ndarray:
                forget()
                return w.copy()

            self.timed(row, method, "build_fresh_ms", method.build, prepare=fresh_copy)
            gc.collect()
        state = self.timed(row, method, "build_ms", method.build, prepare=w.copy)
        if state is None:
            fill_missing(row, "not built")
            return row
        row.bytes_per_ex = method.held_bytes(state) / len(w)
        if method.max_n is not None and len(w) > method.max_n and refused(row, method, state):
            return row
        drawn = self.timed(row, method, "draw1m_ms", lambda _: method.draw(state, DRAW_BIG))
        if drawn is not None:
            row.is_mean = is_check(row, as_index_array(drawn), w, total)
        del drawn
        self.timed(
            row,
            method,
            "draw1024_us",
            lambda _: method.draw(state, DRAW_SMALL),
            max_repeats=self.draw_small_calls,
        )
        steps = step_inputs(len(w))
        self.timed(row, method, "step_ms", lambda a: method.step(state, *a), prepare=steps)
        return row


def refused(row: Row, method: Method, state: Any) -> bool:
    """Above a documented cap, confirm the refusal with one tiny draw instead of timing it."""
    try:
        method.draw(state, 1)
    except Exception as exc:
        fill_missing(row, refusal(exc))
        row.bytes_per_ex = row.is_mean = "n/a"
        return True
    return False


def refusal(exc: Exception) -> str:
    if "2^24" in str(exc):
        return "refused (2^24 cap)"
    return f"error: {first_line(exc)}"


def fill_missing(row: Row, reason: str) -> None:
    for metric in METRICS:
        row.metrics.setdefault(metric, reason)
    if isinstance(row.metrics.get("build_ms"), str):
        row.bytes_per_ex = row.is_mean = "n/a"


def step_inputs(n: int) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    """Fresh (indices, weights) per call, the same sequence for every method."""
    rng = np.random.default_rng(STEP_SEED)

    def make() -> tuple[np.ndarray, np.ndarray]:
        idx = rng.integers(0, n, STEP_UPDATES, dtype=np.int64)
        return idx, rng.lognormal(0.0, 1.0, STEP_UPDATES)

    return make


def run_size(
    n: int, methods: list[Method | Unavailable], runner: Runner, fastis: Any
) -> tuple[list[Row], float]:
    """All methods at one n; also returns the IS check's 2-sigma tolerance for these weights."""
    w = np.random.default_rng(WEIGHT_SEED).lognormal(0.0, 1.0, n)
    total = float(w.sum())
    rows = []
    for method in methods:
        t0 = time.perf_counter()
        if isinstance(method, Unavailable):
            row = Row(method.key, n, note=f"did not import: {method.reason}")
            fill_missing(row, "not importable")
        else:
            row = runner.run(method, w, total, fastis)
            gc.collect()  # free this method's structure before the next one is built
        rows.append(row)
        log(f"  n={fmt_n(n)} {method.key:<34} {time.perf_counter() - t0:6.1f} s")
    return rows, is_tolerance(w)


# --------------------------------------------------------------------------------------------
# Reporting.
# --------------------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fmt_n(n: int) -> str:
    exp = math.log10(n)
    return f"1e{int(exp)}" if exp.is_integer() else f"{n:,}"


def fmt(x: float, digits: int = 3) -> str:
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(x))))
    return f"{x:,.{decimals}f}"


def cell(value: Value | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    return fmt(value) + unit if isinstance(value, float) else value


def build_cell(row: Row, method: Method | Unavailable | None) -> str:
    """Build time, and for methods that recycle memory, the build into fresh memory."""
    built = cell(row.metrics.get("build_ms"))
    if not isinstance(method, Method) or method.forget_memory is None:
        return built
    return f"{built} (fresh {cell(row.metrics.get('build_fresh_ms'))})"


def draw_cell(row: Row) -> str:
    ms = row.metrics.get("draw1m_ms")
    return f"{fmt(ms)} ({fmt(1e3 / ms)})" if isinstance(ms, float) else cell(ms)


def is_cell(row: Row, tol: float) -> str:
    """IS mean and its deviation in standard errors (tol is 2 sigma); BIASED beyond 4 sigma."""
    if not isinstance(row.is_mean, float):
        return row.is_mean
    z = (row.is_mean - 1.0) / (tol / 2.0)
    return f"{row.is_mean:.4f} ({z:+.1f}s){' BIASED' if abs(z) > 4.0 else ''}"


TABLE_HEADERS = [
    "method",
    "dtype",
    "build ms",
    "draw 1M ms (M/s)",
    "draw 1024 us",
    "step ms",
    "updates?",
    "B/ex",
    "IS",
    "notes",
]


def table_rows(rows: list[Row], methods: dict[str, Method | Unavailable], tol: float) -> list:
    out = []
    for row in rows:
        method = methods.get(row.method)
        updatable = "yes" if isinstance(method, Method) and method.updatable else "rebuild"
        out.append(
            [
                row.method,
                row.dtype or "-",
                build_cell(row, method),
                draw_cell(row),
                cell(row.metrics.get("draw1024_us")),
                cell(row.metrics.get("step_ms")),
                updatable if isinstance(method, Method) else "-",
                cell(row.bytes_per_ex),
                is_cell(row, tol),
                row.note,
            ]
        )
    return out


class Results:
    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows

    def get(self, n: int, prefix: str, metric: str) -> float | None:
        for row in self.rows:
            if row.n == n and row.method.startswith(prefix):
                return row.number(metric)
        return None

    def rate(self, n: int, prefix: str) -> float | None:
        ms = self.get(n, prefix, "draw1m_ms")
        return 1e3 / ms if ms else None

    def best(self, n: int, prefixes: tuple[str, ...], metric: str, lower: bool) -> float | None:
        pick = min if lower else max
        if metric == "rate":
            values = [self.rate(n, p) for p in prefixes]
        else:
            values = [self.get(n, p, metric) for p in prefixes]
        found = [v for v in values if v is not None]
        return pick(found) if found else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


ALIAS1, ALIAS2 = "fastis.AliasTable (1", "fastis.AliasTable (2"
TREE1, TREE2 = "fastis.SumTree (1", "fastis.SumTree (2"
SCIPY = "scipy DiscreteAliasUrn"
TRL64, TRL32 = "TorchRL SumSegmentTreeFp64", "TorchRL SumSegmentTreeFp32"
TRL_ANY = (TRL64, TRL32)
TREE_ANY, ALIAS_ANY = (TREE1, TREE2), (ALIAS1, ALIAS2)

Metric = Callable[["Results", int], Optional[float]]


def rate_ratio(fast: str, slow: str) -> Metric:
    """How many times higher fast's draw rate is than slow's."""
    return lambda r, n: ratio(r.rate(n, fast), r.rate(n, slow))


def time_ratio(metric: str, slow: str, fast: str) -> Metric:
    """How many times less time fast takes than slow for metric."""
    return lambda r, n: ratio(r.get(n, slow, metric), r.get(n, fast, metric))


def best_of(prefixes: tuple[str, ...], metric: str) -> Metric:
    """Best value among several rows (highest rate, lowest time)."""
    return lambda r, n: r.best(n, prefixes, metric, lower=metric != "rate")


def ratio_of(a: Metric, b: Metric) -> Metric:
    return lambda r, n: ratio(a(r, n), b(r, n))


RATIOS: list[tuple[str, Metric]] = [
    ("AliasTable 1 thr / scipy alias, draw rate", rate_ratio(ALIAS1, SCIPY)),
    ("AliasTable 2 thr / scipy alias, draw rate", rate_ratio(ALIAS2, SCIPY)),
    ("SumTree 1 thr / TorchRL Fp64, draw rate", rate_ratio(TREE1, TRL64)),
    ("SumTree 1 thr / TorchRL Fp32, draw rate", rate_ratio(TREE1, TRL32)),
    ("SumTree 2 thr / TorchRL Fp64, draw rate", rate_ratio(TREE2, TRL64)),
    ("TorchRL Fp64 / SumTree 1 thr, step time", time_ratio("step_ms", TRL64, TREE1)),
    ("TorchRL Fp32 / SumTree 1 thr, step time", time_ratio("step_ms", TRL32, TREE1)),
    ("TorchRL Fp64 / SumTree 2 thr, step time", time_ratio("step_ms", TRL64, TREE2)),
    ("scipy alias / AliasTable 1 thr, build time", time_ratio("build_ms", SCIPY, ALIAS1)),
    ("scipy alias / AliasTable 2 thr, build time", time_ratio("build_ms", SCIPY, ALIAS2)),
    ("TorchRL Fp64 / SumTree 1 thr, build time", time_ratio("build_ms", TRL64, TREE1)),
    ("TorchRL Fp32 / SumTree 1 thr, build time", time_ratio("build_ms", TRL32, TREE1)),
    ("TorchRL Fp64 / SumTree 2 thr, build time", time_ratio("build_ms", TRL64, TREE2)),
]


@dataclass(frozen=True)
class Target:
    label: str
    n: int
    value: Metric
    at_least: bool  # True: passes when value >= bound; False: when value <= bound
    bound: float
    unit: str


E6, E7 = 10**6, 10**7
TARGETS = [
    Target("AliasTable draw rate, 2 thr", E7, best_of((ALIAS2,), "rate"), True, 100, " M/s"),
    Target(
        "AliasTable 2 thr / scipy alias, draw rate", E7, rate_ratio(ALIAS2, SCIPY), True, 5, "x"
    ),
    Target("AliasTable draw rate, 1 thr", E7, best_of((ALIAS1,), "rate"), True, 60, " M/s"),
    Target("SumTree draw rate, 1 thr", E7, best_of((TREE1,), "rate"), True, 20, " M/s"),
    Target(
        "SumTree 1 thr / best TorchRL tree, draw rate",
        E7,
        ratio_of(best_of((TREE1,), "rate"), best_of(TRL_ANY, "rate")),
        True,
        5,
        "x",
    ),
    Target("SumTree step (best of 1/2 thr)", E7, best_of(TREE_ANY, "step_ms"), False, 1.5, " ms"),
    Target(
        "best TorchRL step / SumTree step (best thr)",
        E7,
        ratio_of(best_of(TRL_ANY, "step_ms"), best_of(TREE_ANY, "step_ms")),
        True,
        4,
        "x",
    ),
    Target(
        "AliasTable build (best of 1/2 thr)", E7, best_of(ALIAS_ANY, "build_ms"), False, 40, " ms"
    ),
    Target(
        "AliasTable build, fresh memory (best thr)",
        E7,
        best_of(ALIAS_ANY, "build_fresh_ms"),
        False,
        40,
        " ms",
    ),
    Target("SumTree build (best of 1/2 thr)", E7, best_of(TREE_ANY, "build_ms"), False, 20, " ms"),
    Target(
        "SumTree build, fresh memory (best thr)",
        E7,
        best_of(TREE_ANY, "build_fresh_ms"),
        False,
        20,
        " ms",
    ),
    Target(
        "AliasTable draw 1024 (best thr)", E6, best_of(ALIAS_ANY, "draw1024_us"), False, 15, " us"
    ),
    Target("SumTree draw 1024 (best thr)", E6, best_of(TREE_ANY, "draw1024_us"), False, 15, " us"),
]


def ratio_table(results: Results, sizes: list[int]) -> tuple[list[str], list[list[str]]]:
    headers = ["ratio (x = times better)"] + [f"n = {fmt_n(n)}" for n in sizes]
    rows = [[label] + [cell(fn(results, n), "x") for n in sizes] for label, fn in RATIOS]
    return headers, rows


def target_table(results: Results, sizes: list[int]) -> tuple[list[str], list[list[str]], list]:
    rows, records = [], []
    for t in TARGETS:
        value = t.value(results, t.n) if t.n in sizes else None
        passed = None if value is None else (value >= t.bound if t.at_least else value <= t.bound)
        if t.n not in sizes:
            verdict = f"n/a (n = {fmt_n(t.n)} not run)"
        else:
            verdict = "n/a (missing)" if passed is None else ("PASS" if passed else "MISS")
        goal = f"{'>=' if t.at_least else '<='} {fmt(float(t.bound))}{t.unit}"
        rows.append([t.label, f"n = {fmt_n(t.n)}", goal, cell(value, t.unit), verdict])
        records.append({"target": t.label, "n": t.n, "goal": goal, "value": value, "pass": passed})
    return ["target", "at", "goal", "measured", "verdict"], rows, records


# --------------------------------------------------------------------------------------------
# Environment header and output files.
# --------------------------------------------------------------------------------------------


def environment(argv: list[str], fastis: Any, fastis_err: str, trl_err: str) -> dict[str, str]:
    import scipy

    env = benchlib.environment(argv)
    return {
        **{k: v for k, v in env.items() if k not in ("git", "load average at start", "CPU busy")},
        "scipy": scipy.__version__,
        "torchrl": _torchrl_version(trl_err),
        "fastis": _fastis_version(fastis, fastis_err),
        **{k: env[k] for k in ("git", "load average at start", "CPU busy")},
    }


def _fastis_version(fastis: ModuleType | None, err: str) -> str:
    if fastis is None:
        return f"n/a ({err})"
    where = Path(fastis.__file__).resolve().parent
    return f"{getattr(fastis, '__version__', '?')} from {where}"


def _torchrl_version(err: str) -> str:
    try:
        from importlib.metadata import version

        ver = version("torchrl")
    except Exception:
        return "not installed"
    return f"{ver} (C++ ext. did not import: {err})" if err else f"{ver} (C++ ext. imports)"


def report(
    env: dict[str, str], rows: list[Row], sizes: list[int], methods: list, tols: dict[int, float]
) -> tuple[str, str, list]:
    """Text for the console and Markdown for the file, built from the same cells."""
    by_key = {m.key: m for m in methods}
    results = Results(rows)
    text, md = [], ["# fastis sampler benchmark", ""]
    md += [f"- **{k}**: `{v}`" if k == "command" else f"- **{k}**: {v}" for k, v in env.items()]
    for n in sizes:
        cells = table_rows([r for r in rows if r.n == n], by_key, tols[n])
        title = f"n = {fmt_n(n)}  (IS: 1 +- {tols[n]:.4f} at 2 sigma; s = sigma)"
        text += ["", title, benchlib.render_text(TABLE_HEADERS, cells)]
        md += ["", f"## {title}", "", benchlib.render_md(TABLE_HEADERS, cells)]
    headers, cells = ratio_table(results, sizes)
    text += ["", "Ratios", benchlib.render_text(headers, cells)]
    md += ["", "## Ratios", "", benchlib.render_md(headers, cells)]
    headers, cells, records = target_table(results, sizes)
    text += ["", "Targets", benchlib.render_text(headers, cells)]
    md += ["", "## Targets", "", benchlib.render_md(headers, cells), "", NOTES]
    return "\n".join(text), "\n".join(md) + "\n", records


NOTES = """Notes: median of R timed repeats after one warm-up call (R in the JSON file).
build ms: repeated builds from the same weights; fastis reuses the memory of the structures it
freed (fastis.empty_cache), so its builds are rebuilds, and "fresh" times builds into fresh
memory (cache emptied before each); the baselines allocate fresh memory at every build.
draw 1M M/s = 1e6 / time. step = update 65,536 random weights (fresh indices and lognormal weights
per repeat, generated outside the timed region, same sequence for every method) + draw 1,024;
"rebuild" methods rebuild or re-normalise. B/ex: bytes of the sampling structure per example
(the weight copy a rebuild method keeps is not counted; scipy's is estimated as 8 B pv copy +
12 B urn). TorchRL trees are built through __setstate__ (O(n) LoadValues) and sample with
scan_lower_bound(u * total). torch.multinomial / WeightedRandomSampler refuse n > 2^24."""


def output_paths(out: str | None, quick: bool) -> tuple[Path, Path]:
    return benchlib.output_paths(out, "bench_sampler-quick" if quick else "bench_sampler")


# --------------------------------------------------------------------------------------------
# Main.
# --------------------------------------------------------------------------------------------


def budgets(quick: bool, max_call_s: float) -> dict[str, Budget]:
    if quick:
        return {m: Budget(0.25, 3, 10, max_call_s) for m in METRICS} | {
            "draw1024_us": Budget(0.25, 5, 100, max_call_s)
        }
    return {
        "build_ms": Budget(2.0, 3, 9, max_call_s),
        "build_fresh_ms": Budget(2.0, 3, 9, max_call_s),
        "draw1m_ms": Budget(2.0, 3, 7, max_call_s),
        "draw1024_us": Budget(1.0, 5, 200, max_call_s),
        "step_ms": Budget(2.0, 3, 25, max_call_s),
    }


def parse_sizes(text: str) -> list[int]:
    return [int(float(s)) for s in text.split(",") if s.strip()]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--sizes", help=f"comma-separated n (default {DEFAULT_SIZES}; quick {QUICK_SIZES})"
    )
    p.add_argument("--quick", action="store_true", help="n = 1e5, 1e6 and few repeats (< 60 s)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--only-baselines", action="store_true", help="skip fastis")
    group.add_argument("--only-fastis", action="store_true", help="skip the baselines")
    p.add_argument("--threads", default="1,2", help="fastis thread counts, one row each")
    p.add_argument(
        "--methods",
        help="comma-separated substrings; run only the methods whose name contains one "
        "(case-insensitive), e.g. 'alias,torchrl'",
    )
    p.add_argument(
        "--max-call-s",
        type=float,
        default=5.0,
        help="skip a method at a size where one call takes longer (default 5)",
    )
    p.add_argument(
        "--draw-small-calls",
        type=int,
        default=None,
        help="max calls timed for draw 1024 (default 200; quick 100)",
    )
    p.add_argument(
        "--out",
        help=f"Markdown file or directory (default {DEFAULT_OUT_DIR}/); "
        "a .json file is written next to it",
    )
    p.add_argument("--no-save", action="store_true", help="print only, write no files")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    sizes = parse_sizes(args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES))
    threads = [int(t) for t in args.threads.split(",")]
    methods = make_methods(not args.only_baselines, not args.only_fastis, threads)
    if args.methods:
        wanted = [m.strip().lower() for m in args.methods.split(",") if m.strip()]
        methods = [m for m in methods if any(w in m.key.lower() for w in wanted)]
    fastis, fastis_err = load_fastis() if not args.only_baselines else (None, "not requested")
    _, trl_err = load_torchrl()
    if fastis_err and not args.only_baselines:
        log(f"fastis is not importable: {fastis_err}")
    if trl_err:
        log(f"torchrl._torchrl did not import: {trl_err}")
    budget = budgets(args.quick, args.max_call_s)
    runner = Runner(budget, args.draw_small_calls or budget["draw1024_us"].max_repeats)
    env = environment(["benchmarks/bench_sampler.py", *argv], fastis, fastis_err, trl_err)
    gc.collect()
    gc.freeze()  # module objects to the permanent generation: collections stay cheap

    rows, tols, t_start = [], {}, time.perf_counter()
    for n in sizes:
        size_rows, tols[n] = run_size(n, methods, runner, fastis)
        rows += size_rows
    env["wall time"] = f"{time.perf_counter() - t_start:.0f} s"
    env["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    if fastis is not None:
        fastis.set_num_threads(max(threads))

    text, md, targets = report(env, rows, sizes, methods, tols)
    print("\n".join(f"{k}: {v}" for k, v in env.items()))
    print(text)
    if not args.no_save:
        md_path, json_path = output_paths(args.out, args.quick)
        md_path.parent.mkdir(parents=True, exist_ok=True)
        md_path.write_text(md)
        payload = {
            "env": env,
            "rows": [asdict(r) for r in rows],
            "targets": targets,
            "is_tolerance": {str(n): t for n, t in tols.items()},
        }
        json_path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
        print(f"\nwrote {md_path} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
