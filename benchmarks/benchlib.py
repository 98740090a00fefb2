"""What the benchmark scripts share: the run's environment record, a CPU-idleness check,
and plain-text / Markdown tables."""

from __future__ import annotations

import datetime as dt
import os
import platform
import shlex
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "benchmarks" / "results"


def shell(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def cpu_busy(interval: float = 0.5) -> str:
    """Share of the CPUs busy (any process) over a short interval: timings need an idle box."""

    def ticks() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    try:
        total0, idle0 = ticks()
        time.sleep(interval)
        total1, idle1 = ticks()
    except (OSError, ValueError, IndexError):
        return "unknown"
    busy = 1.0 - (idle1 - idle0) / max(total1 - total0, 1)
    return f"{100 * busy:.0f}% over {interval:g} s before the run"


def environment(argv: list[str]) -> dict[str, str]:
    """Command, date, machine, versions and git state of this run (scripts add their own)."""
    model = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in shell(["lscpu"]).splitlines()
            if ln.startswith("Model name")
        ),
        platform.processor() or "unknown",
    )
    mem_kib = next(
        (
            int(ln.split()[1])
            for ln in Path("/proc/meminfo").read_text().splitlines()
            if ln.startswith("MemTotal")
        ),
        0,
    )
    head = shell(["git", "rev-parse", "--short", "HEAD"]).strip() or "no commit"
    dirty = "dirty" if shell(["git", "status", "--porcelain"]).strip() else "clean"
    machine = f"{model}, {cpu_count()} cores, {mem_kib / 2**20:.1f} GiB RAM"
    if torch.cuda.is_available():
        machine += f"; GPU: {torch.cuda.get_device_name()}"
    return {
        "command": "python " + " ".join(shlex.quote(a) for a in argv),
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine,
        "python": platform.python_version(),
        "torch": f"{torch.__version__} ({torch.get_num_threads()} intra-op threads)",
        "numpy": np.__version__,
        "git": f"{head} ({dirty})",
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "CPU busy": cpu_busy(),
    }


def render_text(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(str(c).ljust(wd) for c, wd in zip(r, widths)).rstrip() for r in rows]
    head = "  ".join(h.ljust(wd) for h, wd in zip(headers, widths)).rstrip()
    return "\n".join([head, "-" * len(head), *lines])


def render_md(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def output_paths(out: str | None, stem: str) -> tuple[Path, Path]:
    """(Markdown, JSON) result paths: `out` (a file or a folder), else results/<stem>-<time>."""
    name = f"{stem}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.md"
    path = Path(out) if out else RESULTS_DIR / name
    if path.is_dir() or (out and out.endswith("/")):
        path = path / name
    return path, path.with_suffix(".json")
