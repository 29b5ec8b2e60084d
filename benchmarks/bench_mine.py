"""BUCC-style k-nearest-neighbour search: ours (blocked) vs plain torch, faiss-cpu and usearch.

Every side finds the k=4 most similar target rows of every source row by inner product of
unit-norm float32 embeddings (what ratio-margin mining needs, in each direction), exactly:

- ``ours``: :func:`adaptertx.retrieval.mine.knn`, (block, block) similarity tiles folded into a
  running top-k by the native ``topk_merge`` kernel; memory beyond inputs and results: one tile
  (plus bf16 copies of the inputs and the candidates). By default (``--method auto`` on a CPU
  with bf16) the tiles are bf16 and give 32 candidates per row, rescored in fp32 and certified
  by the bf16 error bound (uncertified rows are searched again in fp32), so the result is the
  fp32 one.
- ``torch``: the plain way, ``(q_chunk @ tgt.T).topk(k)`` over chunks of 4096 source rows (the full
  n x m matrix would not fit: 50k x 50k float32 is 10 GB). Left out above 50k rows.
- ``faiss``: ``faiss.IndexFlatIP`` (as XTREME's ``knnCPU``), when faiss-cpu is installed.
- ``usearch``: ``usearch.index.search(..., exact=True)``, its brute-force search, when installed.

Results are compared first: similarities to 1e-4, and indices equal except at ties, where a
differing index counts as agreeing only if both sides' neighbours score the same query within
1e-6 when recomputed in float64. Then the sides are timed round-robin (the machine is shared),
the fastest call of each kept; the peak resident memory added during a call is sampled from
/proc. Embeddings: synthetic (half the targets are noisy copies of sources, the rest random),
and with ``--real`` the bundled BUCC zh-en sentences encoded by the default model.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import threading
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package first
from _harness import gemm_peak, machine_info  # noqa: E402

from adaptertx.io import atomic_write_text, cache_dir  # noqa: E402
from adaptertx.retrieval.mine import knn  # noqa: E402

K = 4


def synthetic(n: int, m: int, dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    src = F.normalize(torch.randn(n, dim, generator=g), dim=1)
    tgt = F.normalize(torch.randn(m, dim, generator=g), dim=1)
    half = min(n, m) // 2
    near = src[torch.randperm(n, generator=g)[:half]]  # drawn before the noise (the order fixes the seeded data)
    tgt[:half] = F.normalize(near + 0.3 * torch.randn(half, dim, generator=g) / dim**0.5, dim=1)
    return src, tgt


def real_bucc():
    from adaptertx import data
    from adaptertx.models import load_model
    from adaptertx.retrieval import encode

    bucc = data.load_bucc("zh")
    model, tok = load_model("me5-small")
    kw = dict(layer=12, prefix="query: ", dtype=torch.bfloat16)  # e5's prefix for bitext mining (README: protocol)
    return encode(model, tok, list(bucc.source.values()), **kw), encode(model, tok, list(bucc.target.values()), **kw)


def torch_plain(src, tgt, k, chunk=4096):
    sims, idx = [], []
    for i in range(0, len(src), chunk):
        s, j = (src[i : i + chunk] @ tgt.T).topk(k, dim=1)
        sims.append(s)
        idx.append(j)
    return torch.cat(sims), torch.cat(idx)


def faiss_search(src, tgt, k, threads):
    import faiss

    faiss.omp_set_num_threads(threads)
    index = faiss.IndexFlatIP(tgt.shape[1])
    index.add(tgt.numpy())
    s, i = index.search(src.numpy(), k)
    return torch.from_numpy(s), torch.from_numpy(i).long()


def usearch_exact(src, tgt, k, threads):
    from usearch.index import MetricKind, search

    found = search(tgt.numpy(), src.numpy(), k, MetricKind.IP, exact=True, threads=threads)
    # usearch reports inner-product distances as 1 - <x, y>
    return torch.from_numpy(1.0 - found.distances.astype("float32")), torch.from_numpy(found.keys.astype("int64"))


# usearch's exact search fills an n x m distance matrix (measured here: 6.4 GB peak for 20k x 20k).
USEARCH_BYTES_PER_PAIR = 16


def _available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _sample_rss(top: list[int], stop: threading.Event) -> None:
    """Keep the largest resident size seen in ``top[0]`` until ``stop`` is set."""
    while not stop.is_set():
        top[0] = max(top[0], _rss())
        time.sleep(0.002)


def measure(fn):
    """Seconds, peak added resident memory (bytes) and result of one call."""
    base, top, stop = _rss(), [0], threading.Event()
    th = threading.Thread(target=_sample_rss, args=(top, stop), daemon=True)
    th.start()
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    stop.set()
    th.join()
    return seconds, max(top[0], _rss()) - base, out


def agree(src, tgt, ref, out):
    """Similarities within 1e-4; a differing index only at a tie (both score the query the
    same within 1e-6 in float64)."""
    (rs, ri), (os_, oi) = ref, out
    dsim = (rs - os_).abs().max().item()
    rows, ranks = (ri != oi).nonzero(as_tuple=True)
    ties = 0
    if rows.numel():
        q = src[rows].double()
        a = (q * tgt[ri[rows, ranks]].double()).sum(1)
        b = (q * tgt[oi[rows, ranks]].double()).sum(1)
        ties = int(((a - b).abs() <= 1e-6).sum())
    bad = rows.numel() - ties
    ok = dsim <= 1e-4 and bad == 0
    return ok, f"max|dsim| {dsim:.1e}, idx differ {rows.numel()} (ties {ties}, wrong {bad})"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="2000 x 3000 rows (seconds; for CI)")
    p.add_argument("--json", type=Path, default=None, help="result file (default: <cache>/benchmarks/bench_mine.json)")
    p.add_argument("--threads", type=int, default=None, help="threads of every side (default: torch's)")
    p.add_argument("--sizes", default="10000,50000",
                   help="comma-separated source = target rows (synthetic); add 200000 for the large case "
                        "(several minutes on 2 shared cores); usearch runs only where its n x m matrix fits")
    p.add_argument("--dim", type=int, default=384, help="embedding dim (synthetic; 384 = the default model)")
    p.add_argument("--block", type=int, default=4096, help="our tile size")
    p.add_argument("--method", default="auto", choices=["auto", "fp32", "bf16"],
                   help="our search: auto (bf16 candidates + exact fp32 rescoring where the CPU has bf16), fp32, bf16")
    p.add_argument("--reps", type=int, default=None,
                   help="timed calls per side, interleaved (default 2 up to 10k rows, "
                        "else 1; tiny 1)")
    p.add_argument("--real", action="store_true", help="also the bundled BUCC zh-en sentences, encoded by me5-small")
    args = p.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    have = {name: importlib.util.find_spec(mod) is not None for name, mod in (("faiss", "faiss"),
                                                                             ("usearch", "usearch"))}
    if args.tiny:
        sets = [(f"synthetic 2000x3000 d{args.dim}", synthetic(2000, 3000, args.dim))]
    else:
        sets = [(f"synthetic {n}x{n} d{args.dim}", synthetic(n, n, args.dim))
                for n in (int(x) for x in args.sizes.split(","))]
    if args.real and not args.tiny:
        src, tgt = real_bucc()
        sets.append((f"BUCC zh-en {len(src)}x{len(tgt)} me5", (src, tgt)))
    print(f"machine: {machine_info()['cpu']}, {threads} threads, shared with other work (ratios hold; absolute "
          f"times move with the load)")
    print(f"measured matmul peaks: bf16 {gemm_peak(torch.bfloat16) / 1e9:.0f} GFLOP/s, "
          f"fp32 {gemm_peak(torch.float32) / 1e9:.0f} GFLOP/s (2048^3)", flush=True)
    rows, notes, failed = [], [], False
    for name, (src, tgt) in sets:
        large = len(src) > 50000
        reps = args.reps or (1 if args.tiny or len(src) > 10000 else 2)
        sides = {"ours": partial(knn, src, tgt, K, block=args.block, method=args.method)}
        if not large:
            sides["torch matmul+topk"] = partial(torch_plain, src, tgt, K)
        if have["faiss"]:
            sides["faiss IndexFlatIP"] = partial(faiss_search, src, tgt, K, threads)
        usearch_bytes = USEARCH_BYTES_PER_PAIR * len(src) * len(tgt)
        if have["usearch"] and usearch_bytes <= 0.5 * _available():
            sides["usearch exact"] = partial(usearch_exact, src, tgt, K, threads)
        elif have["usearch"]:
            notes.append(f"{name}: usearch exact left out: its brute-force search holds about "
                         f"{USEARCH_BYTES_PER_PAIR} bytes per (query, row) pair, {usearch_bytes / 2**30:.0f} GiB here, "
                         f"and {_available() / 2**30:.0f} GiB are available")
        for f in sides.values():  # warm-up on a corner: builds, thread pools, first-touch
            f.func(src[:256], tgt[:256], *f.args[2:], **f.keywords)
        times = {k: [] for k in sides}
        peaks = {k: 0 for k in sides}
        outs = {}
        for rep in range(reps):
            for k, f in sides.items():
                t, mem, out = measure(f)
                if rep == 0:
                    outs[k] = out  # the first call's result is the one checked
                times[k].append(t)
                peaks[k] = max(peaks[k], mem)
        checks = {k: agree(src, tgt, outs[k], outs["ours"]) for k in sides if k != "ours"}
        del outs
        t_ours = min(times["ours"])
        for base_name, (ok, detail) in checks.items():
            failed |= not ok
            t_base = min(times[base_name])
            rows.append({"case": f"{name}: ours {args.method} block {args.block} vs {base_name}",
                         "baseline_s": t_base, "ours_s": t_ours, "ratio": t_base / t_ours,
                         "baseline_median_s": statistics.median(times[base_name]),
                         "ours_median_s": statistics.median(times["ours"]), "reps": reps,
                         "baseline_peak_mb": peaks[base_name] / 2**20, "ours_peak_mb": peaks["ours"] / 2**20,
                         "agreement": f"{'ok' if ok else 'FAIL'} {detail}"})
    width = max(len(r["case"]) for r in rows)
    print(f"k={K}; times in seconds (fastest of the interleaved calls), ratio = baseline / ours; "
          f"peak = resident memory added during the call")
    print(f"| {'case':<{width}} | baseline s | ours s | ratio | peak MB base/ours | agreement |")
    print(f"|{'-' * (width + 2)}|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']:<{width}} | {r['baseline_s']:8.3f} | {r['ours_s']:7.3f} | {r['ratio']:5.2f}x | "
              f"{r['baseline_peak_mb']:6.0f}/{r['ours_peak_mb']:<6.0f} | {r['agreement']} |")
    for note in notes:
        print(note)
    for name, present in have.items():
        if not present:
            print(f"{name} column skipped: {name} is not installed (pip install 'adaptertx[bench]')")
    b = args.block
    print(f"our memory bound: one {b}x{b} bf16 tile = {b * b * 2 / 2**20:.0f} MB, bf16 copies of both inputs, "
          f"32 candidates per row (12 bytes each) and the fp32 rescoring of 1024 rows at a time")
    out = args.json or cache_dir() / "benchmarks" / "bench_mine.json"
    atomic_write_text(out, json.dumps({"benchmark": "bench_mine", "tiny": args.tiny, "k": K, "peers": have,
                                       "machine": machine_info(), "rows": rows, "notes": notes}, indent=2) + "\n")
    print(f"wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
