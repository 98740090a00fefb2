"""Starting the processes of a multi-process test: forked children, and the ranks of
torch.distributed on gloo."""

from __future__ import annotations

import multiprocessing
import socket
from collections.abc import Callable
from typing import Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for MASTER_PORT)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_ranks(target: Callable[..., None], world: int, *args: Any,
              timeout: float = 180.0) -> None:
    """Runs target(rank, world, *args) in `world` processes and checks each exits with 0.

    Not fork: a child forked after this process ran torch's OpenMP pool hangs. The fork
    server imports torch and the target's module once, before any torch op, and forks the
    ranks from there (much faster than spawning each)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "torch.distributed", "fastis", target.__module__])
    procs = [context.Process(target=target, args=(rank, world, *args)) for rank in range(world)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(timeout)
            assert p.exitcode == 0, f"a rank exited with {p.exitcode}"
    finally:
        for p in procs:
            p.kill()


def _report(target: Callable[..., Any], args: tuple, queue: Any) -> None:
    queue.put(target(*args))


def result_of_forked_child(target: Callable[..., Any], *args: Any, timeout: float = 60.0) -> Any:
    """target(*args) run in a child forked from this process (as DataLoader workers are),
    after checking that the child exited with 0."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_report, args=(target, args, queue))
    child.start()
    result = queue.get(timeout=timeout)
    child.join(timeout=timeout)
    assert child.exitcode == 0, f"the child exited with {child.exitcode}"
    return result


def run_python(code: str, timeout: float = 120.0) -> str:
    """Runs `code` in a fresh Python process and returns its stdout, after checking that it
    exited with 0: a test of input that once crashed the process (a segfault, an abort) runs
    there, so that a regression fails the test instead of killing the test run."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, (f"the child exited with {done.returncode}\n"
                                  f"{done.stdout}\n{done.stderr}")
    return done.stdout
