"""AliasTable build time against a baseline revision of fastis, interleaved in one run.

Build timings on this VM drift by tens of percent within minutes: a build into fresh memory
writes 160 MB of new pages, and how fast the kernel (and the host behind it) hands those out
varies. A figure from another run therefore says little about a change. This script builds
the baseline revision's extension in a temporary folder and alternates fresh processes of
the baseline and of this checkout, so both see the same machine state. Each process builds
the table `--repeats` times from fresh copies of the same lognormal weights and reports the
median. The script prints the median over the rounds of each, and their ratio.

Builds after the first reuse the memory of the table freed before them where the revision
recycles memory (fastis.empty_cache exists); --fresh-memory empties that cache before every
build, so that both revisions build into fresh memory.

    python benchmarks/bench_alias_build.py                      # baseline HEAD~1, n = 1e7
    python benchmarks/bench_alias_build.py --baseline e975f5e --rounds 7 --fresh-memory
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import harness
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def child(fastis_root: str, n: int, threads: int, repeats: int, fresh_memory: bool) -> None:
    """Run in a fresh process: time `repeats` builds with the fastis found at fastis_root."""
    sys.path.insert(0, fastis_root)
    import fastis

    if not fastis.__file__.startswith(fastis_root):
        raise SystemExit(f"imported {fastis.__file__}, not the fastis in {fastis_root}")
    fastis.set_num_threads(threads)
    weights = np.random.default_rng(0).lognormal(0.0, 2.0, n)
    seconds = []
    for _ in range(repeats):
        fresh = weights.copy()  # as a caller's new weight vector would be
        if fresh_memory and hasattr(fastis, "empty_cache"):
            fastis.empty_cache()
        start = time.perf_counter()
        table = fastis.AliasTable(fresh, seed=0)
        seconds.append(time.perf_counter() - start)
        del table
    print(json.dumps({"median_ms": 1e3 * statistics.median(seconds)}))


def build_baseline(revision: str, folder: Path) -> Path:
    """Export `revision` into folder and build its extension in place; returns its root."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", revision],
        check=True,
        capture_output=True,
    ).stdout
    archive_path = folder / "baseline.tar"
    archive_path.write_bytes(archive)
    root = folder / "baseline"
    with tarfile.open(archive_path) as tar:
        tar.extractall(root, filter="data")
    subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
        cwd=root,
        check=True,
        capture_output=True,
    )
    return root


def run_child(root: Path, args: argparse.Namespace) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(root), "--n", str(args.n),
         "--threads", str(args.threads), "--repeats", str(args.repeats)]
        + (["--fresh-memory"] if args.fresh_memory else []),
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])["median_ms"]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="HEAD~1", help="git revision to compare against")
    parser.add_argument("--n", type=lambda s: int(float(s)), default=10**7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="processes of each, alternated")
    parser.add_argument("--repeats", type=int, default=11, help="builds per process")
    parser.add_argument("--fresh-memory", action="store_true",
                        help="empty fastis' memory cache before every build")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv[1:])
    if args.child:
        child(args.child, args.n, args.threads, args.repeats, args.fresh_memory)
        return
    env = harness.environment(argv)
    baseline_commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", args.baseline],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        baseline_root = build_baseline(args.baseline, Path(tmp))
        times: dict[str, list[float]] = {"baseline": [], "this checkout": []}
        for _ in range(args.rounds):
            times["baseline"].append(run_child(baseline_root, args))
            times["this checkout"].append(run_child(REPO, args))
    medians = {name: statistics.median(v) for name, v in times.items()}
    ratio = medians["baseline"] / medians["this checkout"]
    headers = ["build", "median ms", "per-process medians (ms)"]
    rows = [
        [f"baseline {baseline_commit}", f"{medians['baseline']:.1f}",
         " ".join(f"{t:.1f}" for t in times["baseline"])],
        [f"this checkout {env['commit']}", f"{medians['this checkout']:.1f}",
         " ".join(f"{t:.1f}" for t in times["this checkout"])],
    ]
    title = (f"AliasTable build, n = {args.n:.0e}, {args.threads} threads, lognormal(0, 2) "
             f"weights; {args.rounds} alternated processes of each, {args.repeats} builds each"
             + ("; fresh memory for every build" if args.fresh_memory else ""))
    sections = [title, harness.table(headers, rows),
                f"baseline / this checkout: **{ratio:.2f}x**"]
    print("\n\n".join(sections))
    name = "bench_alias_build" + ("-fresh-memory" if args.fresh_memory else "")
    path = harness.write_result(name, "AliasTable build against a baseline revision", env,
                                sections, record={"baseline": baseline_commit,
                                                  "times_ms": times, "ratio": ratio})
    print(f"wrote {path}")

if __name__ == "__main__":
    main(sys.argv)
