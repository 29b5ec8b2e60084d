"""Shared benchmark harness: agreement first, then side-by-side timing, one table, one JSON.

Each ``bench_<op>.py`` builds a list of :class:`Case` and calls :func:`main`. Timing
alternates baseline and ours repetition by repetition, so a noisy, shared machine slows both
sides alike; the table shows the fastest repetition of each side (the least disturbed one),
the JSON has the medians too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from adaptertx.io import atomic_write_text, cache_dir
from adaptertx.kernels import backend_status


@dataclass(frozen=True)
class Case:
    """One benchmark row.

    name: the row label; baseline, ours: zero-argument callables returning a tensor;
    agree: given (baseline_out, ours_out), returns (ok, short description).
    """

    name: str
    baseline: Callable[[], torch.Tensor]
    ours: Callable[[], torch.Tensor]
    agree: Callable[[torch.Tensor, torch.Tensor], tuple[bool, str]]


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item() if a.numel() else 0.0


def rule_agreement(ref32: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], tuple[bool, str]]:
    """The kernel tests' rule: fp32 within 1e-5 of the fp32 reference; lower precision at
    most twice the error of the same-dtype torch computation (the baseline) against it."""

    def agree(base: torch.Tensor, ours: torch.Tensor) -> tuple[bool, str]:
        err_o = max_err(ours, ref32)
        if ours.dtype == torch.float32:
            return err_o <= 1e-5 * (1 + ref32.abs().max().item()), f"max|d|={err_o:.1e}"
        err_b = max_err(base, ref32)
        return err_o <= 2 * err_b + 1e-6, f"err {err_o:.1e} vs torch {err_b:.1e}"

    return agree


def _time(fn: Callable[[], torch.Tensor]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_pair(case: Case, min_seconds: float, max_reps: int) -> dict[str, float]:
    """Fastest and median seconds of baseline and ours, interleaved."""
    for _ in range(2):
        case.baseline()
        case.ours()
    once = max(_time(case.baseline) + _time(case.ours), 1e-6)
    reps = int(min(max_reps, max(3, min_seconds / once)))
    base, ours = [], []
    for _ in range(reps):
        base.append(_time(case.baseline))
        ours.append(_time(case.ours))
    return {"baseline_min": min(base), "ours_min": min(ours),
            "baseline_median": statistics.median(base), "ours_median": statistics.median(ours), "reps": reps}


def gemm_peak(dtype: torch.dtype, shapes=((2048, 2048, 2048),), seconds: float = 0.5, warmup: int = 1,
              device: str | torch.device = "cpu") -> float:
    """The machine's measured GEMM rate (FLOP/s) in ``dtype`` on ``device``: the fastest single
    product of each ``(m, k, n)`` shape (the least disturbed, on a shared machine), timed for
    ``seconds`` and at least three times after ``warmup`` products; the best over the shapes.
    On CUDA each product is timed between synchronisations."""
    best = 0.0
    device = torch.device(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for m, k, n in shapes:
        a = torch.randn(m, k, device=device).to(dtype)
        b = torch.randn(k, n, device=device).to(dtype)
        for _ in range(warmup):
            a @ b
        sync()
        fastest, reps, t_end = float("inf"), 0, time.perf_counter() + seconds
        while reps < 3 or time.perf_counter() < t_end:
            t0 = time.perf_counter()
            a @ b
            sync()
            fastest = min(fastest, time.perf_counter() - t0)
            reps += 1
        best = max(best, 2 * m * k * n / fastest)
    return best


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True,
                                    text=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        sha, dirty = "unknown", False
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "git_sha": sha,
        "git_dirty": dirty,
        "kernel_backends": backend_status(build=False),
    }


def parse_args(name: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=f"benchmark {name}: ours vs the pure-torch baseline")
    p.add_argument("--tiny", action="store_true", help="tiny shapes, a few repetitions (seconds; for CI)")
    p.add_argument("--json", type=Path, default=None, help=f"result file (default: <cache>/benchmarks/{name}.json)")
    p.add_argument("--min-seconds", type=float, default=None, help="timing budget per side per case")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = p.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    return args


def run(name: str, cases: list[Case], args: argparse.Namespace) -> list[dict]:
    """Check agreement of every case, time them, print the table, write the JSON; returns rows."""
    min_seconds = args.min_seconds if args.min_seconds is not None else (0.02 if args.tiny else 0.5)
    max_reps = 5 if args.tiny else 200
    rows = []
    for case in cases:
        ok, detail = case.agree(case.baseline(), case.ours())
        if not ok:
            rows.append({"case": case.name, "baseline_ms": None, "ours_ms": None, "ratio": None,
                         "agreement": f"FAIL {detail}"})
            continue
        t = time_pair(case, min_seconds, max_reps)
        rows.append({"case": case.name, "baseline_ms": t["baseline_min"] * 1e3, "ours_ms": t["ours_min"] * 1e3,
                     "ratio": t["baseline_min"] / t["ours_min"],
                     "baseline_median_ms": t["baseline_median"] * 1e3, "ours_median_ms": t["ours_median"] * 1e3,
                     "median_ratio": t["baseline_median"] / t["ours_median"], "reps": t["reps"],
                     "agreement": f"ok {detail}"})
    width = max(len("case"), *(len(r["case"]) for r in rows))
    print(f"{'case':<{width}} | baseline | ours     | ratio | agreement")
    for r in rows:
        if r["ratio"] is None:
            print(f"{r['case']:<{width}} |        - |        - |     - | {r['agreement']}")
        else:
            print(f"{r['case']:<{width}} | {r['baseline_ms']:6.2f}ms | {r['ours_ms']:6.2f}ms | "
                  f"{r['ratio']:4.2f}x | {r['agreement']}")
    out = args.json or cache_dir() / "benchmarks" / f"{name}.json"
    payload = {"benchmark": name, "tiny": bool(args.tiny), "machine": machine_info(), "rows": rows}
    atomic_write_text(out, json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")
    return rows


def main(name: str, make_cases: Callable[[bool], list[Case]]) -> int:
    """Entry point of a ``bench_<op>.py``: exit status 1 when a case disagrees."""
    args = parse_args(name)
    rows = run(name, make_cases(args.tiny), args)
    return 1 if any(r["ratio"] is None for r in rows) else 0
