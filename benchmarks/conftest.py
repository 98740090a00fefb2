"""The micro-benchmarks' harness on top of pytest-benchmark.

Each benchmark calls the `bench` fixture with a group (one question, e.g. "draw 1M, n=1e7")
and a method name; `baseline=True` marks the libraries fastis is compared with. At the end
of the session every benchmark module gets one table per group (median, interquartile
range, rounds, and each method's ratio to the fastest baseline of the same group, all from
this run), its TARGETS (a module-level list of harness.Target) evaluated, printed and
written to benchmarks/results/<module>.md with the run's command, date, machine and commit.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness


@dataclass
class Measured:
    module: Any
    group: str
    method: str
    baseline: bool
    median: float  # seconds per call
    iqr: float
    rounds: int


_MEASURED: list[Measured] = []


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--sizes", default="1e6,1e7",
                     help="data set sizes of bench_structures (comma-separated, e.g. 1e5,1e8)")
    parser.addoption("--compile", action="store_true",
                     help="bench_ops: also time torch.compile of the eager baseline (slow)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A benchmark taking `n` runs at each of the --sizes."""
    if "n" in metafunc.fixturenames:
        sizes = [int(float(s)) for s in metafunc.config.getoption("--sizes").split(",")]
        metafunc.parametrize("n", sizes, ids=[harness.size_label(n) for n in sizes])


@pytest.fixture
def bench(benchmark: Any, request: pytest.FixtureRequest) -> Callable[..., Any]:
    """bench(fn, group=, method=, baseline=False, setup=None, rounds=None) times fn (with
    fresh arguments from setup() per round when given) and records the result."""

    def run(fn: Callable[..., Any], *, group: str, method: str, baseline: bool = False,
            setup: Callable[[], tuple] | None = None, rounds: int | None = None) -> Any:
        benchmark.group = group
        benchmark.extra_info.update(method=method, baseline=baseline)
        if setup is not None or rounds is not None:
            wrapped = None if setup is None else (lambda: (setup(), {}))
            out = benchmark.pedantic(fn, setup=wrapped, rounds=rounds or 5, warmup_rounds=1)
        else:
            out = benchmark(fn)
        if benchmark.stats is not None:  # None when benchmarks are disabled
            stats = benchmark.stats.stats
            _MEASURED.append(Measured(request.module, group, method, baseline, stats.median,
                                      stats.iqr, stats.rounds))
        return out

    return run


def _group_tables(measured: list[Measured]) -> list[str]:
    groups: dict[str, list[Measured]] = defaultdict(list)
    for m in measured:
        groups[m.group].append(m)
    sections = []
    for group, rows in groups.items():
        baselines = [r.median for r in rows if r.baseline]
        best = min(baselines) if baselines else None
        cells = [[("" if r.baseline else "**") + r.method + ("" if r.baseline else "**"),
                  _time(r.median), _time(r.iqr), str(r.rounds),
                  "baseline" if r.baseline else (f"{best / r.median:.2f}x" if best else "-")]
                 for r in sorted(rows, key=lambda r: r.median)]
        headers = ["method", "median", "IQR", "rounds",
                   "x vs fastest baseline (its time / this time)"]
        sections.append(f"### {group}\n\n" + harness.table(headers, cells))
    return sections


def _time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{harness.fmt(seconds / scale)} {unit}"
    return f"{harness.fmt(seconds / 1e-9)} ns"


def results_by_group(measured: list[Measured]) -> dict[str, dict[str, float]]:
    """{group: {method: median seconds}}: what a module's Target values read."""
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for m in measured:
        out[m.group][m.method] = m.median
    return out


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if not _MEASURED:
        return
    env = harness.environment(["pytest", *config.invocation_params.args])
    by_module: dict[Any, list[Measured]] = defaultdict(list)
    for m in _MEASURED:
        by_module[m.module].append(m)
    for module, measured in by_module.items():
        name = Path(module.__file__).stem
        sections = [getattr(module, "__doc__", "").strip().split("\n\n")[0]]
        sections += _group_tables(measured)
        targets = getattr(module, "TARGETS", [])
        if targets:
            sections.append("## Targets\n\n" + harness.target_table(
                targets, results_by_group(measured)))
        path = harness.write_result(
            name, f"{name} (pytest-benchmark)", env, sections,
            record={"measured": [{k: v for k, v in vars(m).items() if k != "module"}
                                 for m in measured]})
        terminalreporter.write_sep("=", f"{name}: ratios against the baselines of this run")
        terminalreporter.write_line("\n\n".join(sections[1:]))
        terminalreporter.write_line(f"wrote {path}")
