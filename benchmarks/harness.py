"""What every benchmark shares: the run's record (command, date, machine, commit), tables,
ratios against the baselines measured in the same run, targets, and the results file.

Each benchmark writes `benchmarks/results/<name>.md` (and `.json`): the latest result of
each benchmark lives there, git keeps the history. The pytest-benchmark micro-benchmarks
(`pytest benchmarks/ --benchmark-only`) go through `benchmarks/conftest.py`, which uses the
same functions; the question scripts (`python benchmarks/<script>.py`) call them directly.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "benchmarks" / "results"


def _shell(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def environment(argv: Sequence[str] | None = None) -> dict[str, str]:
    """Command, date, machine, versions and git state of this run."""
    argv = sys.argv if argv is None else argv
    model = next((line.split(":", 1)[1].strip() for line in _shell(["lscpu"]).splitlines()
                  if line.startswith("Model name")), platform.processor() or "unknown")
    mem_kib = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text()
                    .splitlines() if line.startswith("MemTotal")), 0)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    machine = f"{model}, {cores} cores, {mem_kib / 2**20:.1f} GiB RAM"
    if torch.cuda.is_available():
        machine += f"; GPU: {torch.cuda.get_device_name()}"
    head = _shell(["git", "rev-parse", "--short", "HEAD"]).strip() or "no commit"
    dirty = "dirty" if _shell(["git", "status", "--porcelain", "--untracked-files=no"]).strip() \
        else "clean"
    command = " ".join(shlex.quote(a) for a in argv)
    if argv and argv[0].endswith(".py"):
        command = "python " + command
    return {
        "command": command,
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine,
        "python": platform.python_version(),
        "torch": f"{torch.__version__} ({torch.get_num_threads()} intra-op threads)",
        "numpy": np.__version__,
        "commit": f"{head} ({dirty} tree)",
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def fmt(x: float | None, digits: int = 3) -> str:
    """x with `digits` significant digits (thousands separated); "n/a" for None/NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(x))))
    return f"{x:,.{decimals}f}"


def size_label(n: int) -> str:
    """1e7 for 10_000_000, else the number."""
    text = str(n)
    return f"1e{len(text) - 1}" if text.strip("0") == "1" else text


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in r) + " |" for r in rows]
    return "\n".join(lines)


@dataclass(frozen=True)
class Target:
    """A goal on one measured figure: `value(results)` (None when not measured) compared
    with `bound` (at_least: >=, else <=)."""

    label: str
    value: Callable[[Any], float | None]
    bound: float
    unit: str
    at_least: bool

    def row(self, results: Any) -> list[str]:
        try:
            value = self.value(results)
        except (KeyError, ValueError, ZeroDivisionError, TypeError):  # not measured
            value = None
        goal = f"{'>=' if self.at_least else '<='} {fmt(self.bound)}{self.unit}"
        if value is None:
            return [self.label, goal, "n/a", "not measured"]
        passed = value >= self.bound if self.at_least else value <= self.bound
        return [self.label, goal, fmt(value) + self.unit, "PASS" if passed else "MISS"]


def target_table(targets: Sequence[Target], results: Any) -> str:
    return table(["target", "goal", "measured", "verdict"], [t.row(results) for t in targets])


def write_result(name: str, title: str, env: dict[str, str], sections: Sequence[str],
                 record: Any = None, out: str | Path | None = None) -> Path:
    """Writes results/<name>.md (the run's record, then the sections) and, with `record`,
    results/<name>.json; returns the Markdown path."""
    folder = Path(out) if out else RESULTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", ""]
    lines += [f"- **{k}**: `{v}`" if k == "command" else f"- **{k}**: {v}" for k, v in env.items()]
    path = folder / f"{name}.md"
    path.write_text("\n".join([*lines, "", *"\n\n".join(sections).split("\n")]).rstrip() + "\n")
    if record is not None:
        (folder / f"{name}.json").write_text(json.dumps({"env": env, **record}, indent=1,
                                                        default=str) + "\n")
    return path
