"""Kill a real ``adaptertx`` process with SIGKILL at a chosen moment of its work.

:func:`run_killed` starts the command in a child process (forked from a server that has already
imported adaptertx, so a child starts in about a second), makes it stop at the ``n``-th time it
reaches one of the :data:`POINTS` and kills it there by its pid with ``kill -9``: no ``finally``,
no ``atexit``, no flush runs, as when a machine loses power or the OOM killer strikes.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import signal
import time
from pathlib import Path

#: Where a command can be stopped: (module, function, what it is).
POINTS = {
    "step": ("adaptertx.training.loop", "_optimiser_step", "before an optimiser step"),
    "checkpoint": ("adaptertx.training.loop", "atomic_write_bytes", "half way through writing the resume checkpoint"),
    "final": ("adaptertx.io", "_share", "while a finished folder (adapter/, heads/) is being written"),
    "finished": ("adaptertx.rundir", "write_run", "just before run.json records the run finished"),
}
_PRELOAD = ["torch", "transformers", "adapters", "adaptertx.cli", "adaptertx.training", "adaptertx.experiment",
            "adaptertx.evaluation", "adaptertx.merging"]
_context = None


def _ctx():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(_PRELOAD)
    return _context


def _stop_here(marker: str) -> None:
    Path(marker).write_text(str(os.getpid()))
    time.sleep(600)  # the parent kills this process now


def _install(point: str, n: int, marker: str) -> None:
    module_name, name, _ = POINTS[point]
    module = importlib.import_module(module_name)
    real = getattr(module, name)
    calls = [0]

    def wrapper(*args, **kwargs):
        if point == "checkpoint" and Path(args[0]).name != "last.safetensors":
            return real(*args, **kwargs)
        if point == "finished" and args[2] != "finished":
            return real(*args, **kwargs)
        calls[0] += 1
        if calls[0] == n:
            if point == "checkpoint":  # the temporary file holds half the bytes when the process dies
                path, data = Path(args[0]), args[1]
                (path.parent / f".{path.name}.killed.tmp").write_bytes(data[: len(data) // 2])
            _stop_here(marker)
        return real(*args, **kwargs)

    setattr(module, name, wrapper)


def _child(argv: list[str], point: str, n: int, marker: str, cwd: str) -> None:
    os.chdir(cwd)
    _install(point, n, marker)
    from adaptertx.cli import main

    main(argv, prog_name="adaptertx")


def run_killed(argv: list[str], point: str, n: int = 1, *, cwd: str | os.PathLike = ".", timeout: float = 240) -> None:
    """Run ``adaptertx ARGV`` in a new process and ``kill -9`` it the ``n``-th time it reaches
    ``point``; an AssertionError when it finishes or fails before getting there."""
    marker = Path(cwd) / f".killed-{point}-{n}-{time.monotonic_ns()}"
    proc = _ctx().Process(target=_child, args=([str(a) for a in argv], point, n, str(marker), str(cwd)))
    proc.start()
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if not proc.is_alive():
            raise AssertionError(f"adaptertx {' '.join(argv)} ended (exit {proc.exitcode}) before reaching "
                                 f"{point} #{n}")
        if time.monotonic() > deadline:
            os.kill(proc.pid, signal.SIGKILL)
            raise AssertionError(f"adaptertx {' '.join(argv)} did not reach {point} #{n} in {timeout:.0f}s")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)
    marker.unlink()
    assert proc.exitcode == -signal.SIGKILL, proc.exitcode
