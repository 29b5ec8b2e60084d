"""A small study run serially (in this process) and on a local Ray cluster of 2 workers, side by side.

The study is the offline default's shape (the default model, the none / single / average / fusion
configurations, UD-POS and Tatoeba) with small budgets. Agreement first: the two stores must hold
the same cells with the same per-example statistics, scores and checkpoint hashes
(:func:`adaptertx.results.computed`). Then wall time of each path, the ratio, Ray's start-up, and
the scheduling overhead per node: the round trip of a node sent to an idle worker (the study's own
finished cells sent again, each returning its kept record), less the time its work took there.

    python benchmarks/bench_study.py [--tiny] [--workers 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _harness import machine_info

from adaptertx.executors import LocalExecutor, RayExecutor
from adaptertx.experiment import load_study, run_study
from adaptertx.io import atomic_write_text, cache_dir
from adaptertx.results import computed, read_store
from adaptertx.study_graph import build_graph

STUDY = """
[study]
name = "bench-study"
model = "me5-small"
quant = "int8"
seeds = {seeds}

[intermediate]
epochs = 1
batch_size = 8
lr = 1e-3
max_length = 48
max_examples = {inter}

[[configs]]
name = "none"
method = "none"

[[configs]]
name = "siqa"
method = "single"
tasks = ["siqa"]

[[configs]]
name = "average"
method = "average"
tasks = ["siqa", "mrpc"]

[[configs]]
name = "fusion"
method = "fusion"
tasks = ["siqa", "mrpc"]

[targets]
tasks = ["udpos", "tatoeba"]
epochs = 1
batch_size = 8
lr = 1e-2
max_length = 48
max_examples = {target}
max_eval_examples = {evals}

[targets.languages]
udpos = ["de", "eu"]
tatoeba = ["de", "eu", "sw"]
"""


def run_once(study, out: Path, executor) -> dict:
    start = time.perf_counter()
    result = run_study(study, out, progress=False, echo=lambda *_: None, executor=executor)
    wall = time.perf_counter() - start
    if result.failed:
        raise SystemExit(f"cells failed: {result.failed}")
    return {"wall_s": wall, "cells": len(result.ran)}


def overhead(study, out: Path, executor, workers: int, rounds: int) -> list[float]:
    """Seconds each node costs beyond its own work: the study's finished cells sent again one at a
    time (each returns its kept record at once, through the whole real path: the node and the
    study pickled to a worker, its log, the record back), after one warm-up node per worker."""
    header, _ = read_store(out)
    nodes = [n for n in build_graph(study, study.cells()) if n.kind == "cell"]
    args = [(study, str(out.resolve()), n, {}, header["study_hash"]) for n in nodes]

    def round_trip(batch):
        sent = {executor.submit(n, a, False): time.perf_counter() for n, a in batch}
        costs = []
        while sent:
            done = executor.wait_any(list(sent))
            if done is not None:
                handle, (kind, answer) = done
                assert kind == "done" and answer["ok"], answer
                costs.append(time.perf_counter() - sent.pop(handle) - answer["seconds"])
        return costs

    try:
        round_trip(list(zip(nodes, args, strict=True))[:workers])
        return [c for i in range(rounds) for c in round_trip([(nodes[i % len(nodes)], args[i % len(nodes)])])]
    finally:
        executor.close()


def main() -> int:
    p = argparse.ArgumentParser(description="benchmark study: serial vs a local Ray cluster")
    p.add_argument("--tiny", action="store_true", help="one seed, a few examples (about a minute; for CI)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, help="result file (default: <cache>/benchmarks/study.json)")
    args = p.parse_args()
    sizes = dict(seeds="[0]", inter=16, target=16, evals=8) if args.tiny else \
        dict(seeds="[0, 1]", inter=200, target=200, evals=100)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "study.toml").write_text(STUDY.format(**sizes))
        study = load_study(tmp / "study.toml")
        serial = run_once(study, tmp / "serial", LocalExecutor())
        start = time.perf_counter()
        ray = RayExecutor(workers=args.workers)
        startup = time.perf_counter() - start
        spread = run_once(study, tmp / "ray", ray)
        rounds = 10 if args.tiny else 40
        serial["overheads"] = overhead(study, tmp / "serial", LocalExecutor(), 1, rounds)
        spread["overheads"] = overhead(study, tmp / "ray", RayExecutor(workers=args.workers), args.workers, rounds)
        a = {c["cell"]: computed(c) for c in read_store(tmp / "serial")[1]}
        b = {c["cell"]: computed(c) for c in read_store(tmp / "ray")[1]}
    same = a == b
    agreement = f"ok: {len(a)} cells, equal records" if same else \
        f"FAIL: {sum(a.get(k) != b.get(k) for k in a | b)} of {len(a | b)} cells differ"
    rows = [{"path": "serial (in-process)", "wall_s": serial["wall_s"], "overheads": serial["overheads"]},
            {"path": f"Ray, {args.workers} local workers", "wall_s": spread["wall_s"], "overheads": spread["overheads"],
             "startup_s": startup}]
    print(f"machine: {machine_info()['cpu']} · {serial['cells']} cells")
    print("path                  | wall     | vs serial | overhead per node (median, mean; nodes)")
    for r in rows:
        o = r["overheads"]
        r["overhead_ms_median"] = statistics.median(o) * 1e3 if o else None
        r["overhead_ms_mean"] = statistics.mean(o) * 1e3 if o else None
        over = f"{r['overhead_ms_median']:.0f} ms, {r['overhead_ms_mean']:.0f} ms; {len(o)}" if o else "-"
        print(f"{r['path']:<21} | {r['wall_s']:6.1f} s | {serial['wall_s'] / r['wall_s']:8.2f}x | {over}")
    print(f"Ray start-up (not in its wall time): {startup:.1f} s")
    print(f"agreement: {agreement}")
    out = args.json or cache_dir() / "benchmarks" / "study.json"
    payload = {"benchmark": "study", "tiny": bool(args.tiny), "machine": machine_info(), "agreement": agreement,
               "rows": [{k: v for k, v in r.items() if k != "overheads"} for r in rows]}
    atomic_write_text(out, json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
