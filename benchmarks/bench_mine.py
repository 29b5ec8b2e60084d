"""BUCC-style k-nearest-neighbour search: ours (blocked) vs plain torch vs faiss-cpu IndexFlatIP.

Every side finds the k=4 most similar target rows of every source row by inner product of
unit-norm float32 embeddings (what ratio-margin mining needs, in each direction):

- ``ours``: :func:`adaptertx.retrieval.mine.knn`, (block, block) similarity tiles with a running
  top-k; memory beyond inputs and results: one tile. By default (``--method auto`` on a CPU with
  bf16) the tiles are bf16 and give 32 candidates per row, rescored in fp32 and certified by the
  bf16 error bound (uncertified rows are searched again in fp32), so the result is the fp32 one.
- ``torch``: the plain way, ``(q_chunk @ tgt.T).topk(k)`` over chunks of 4096 source rows (the full
  n × m matrix would not fit: 50k × 50k float32 is 10 GB).
- ``faiss``: ``faiss.IndexFlatIP`` (as XTREME's ``knnCPU``), when faiss-cpu is installed.

Results are compared first (similarities to 1e-4, indices equal except exact ties), then each
side is timed; the peak resident memory added during a call is sampled from /proc.
Embeddings: synthetic (half the targets are noisy copies of sources, the rest random), and
with ``--real`` the bundled BUCC zh-en sentences encoded by the default model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import machine_info  # noqa: E402

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
    kw = dict(layer=12, prefix="passage: ", dtype=torch.bfloat16)
    return encode(model, tok, list(bucc.source.values()), **kw), encode(model, tok, list(bucc.target.values()), **kw)


def torch_plain(src, tgt, k, chunk=4096):
    sims, idx = [], []
    for i in range(0, len(src), chunk):
        s, j = (src[i : i + chunk] @ tgt.T).topk(k, dim=1)
        sims.append(s)
        idx.append(j)
    return torch.cat(sims), torch.cat(idx)


def faiss_search(src, tgt, k):
    import faiss

    index = faiss.IndexFlatIP(tgt.shape[1])
    index.add(tgt.numpy())
    s, i = index.search(src.numpy(), k)
    return torch.from_numpy(s), torch.from_numpy(i).long()


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _sample_rss(top: list[int], stop: threading.Event) -> None:
    """Keep the largest resident size seen in ``top[0]`` until ``stop`` is set."""
    while not stop.is_set():
        top[0] = max(top[0], _rss())
        time.sleep(0.002)


def measure(fn, reps):
    """Fastest time and peak added resident memory (bytes) over ``reps`` calls."""
    best, peak = float("inf"), 0
    for _ in range(reps):
        base, top, stop = _rss(), [0], threading.Event()
        th = threading.Thread(target=_sample_rss, args=(top, stop), daemon=True)
        th.start()
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        stop.set()
        th.join()
        peak = max(peak, max(top[0], _rss()) - base)
    return best, peak


def agree(ref, out):
    (rs, ri), (os_, oi) = ref, out
    dsim = (rs - os_).abs().max().item()
    same = (ri == oi) | ((rs - os_).abs() < 1e-6)  # a differing index must be an exact tie
    frac = same.float().mean().item()
    return dsim <= 1e-4 and frac >= 0.999, f"max|dsim| {dsim:.1e}, idx agree {100 * frac:.2f}%"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="2000 x 3000 rows (seconds; for CI)")
    p.add_argument("--json", type=Path, default=None, help="result file (default: <cache>/benchmarks/bench_mine.json)")
    p.add_argument("--threads", type=int, default=None, help="torch and faiss threads (default: torch's)")
    p.add_argument("--size", type=int, default=50000, help="source and target rows (synthetic)")
    p.add_argument("--dim", type=int, default=384, help="embedding dim (synthetic; 384 = the default model)")
    p.add_argument("--block", type=int, default=4096, help="our tile size")
    p.add_argument("--method", default="auto", choices=["auto", "fp32", "bf16"],
                   help="our search: auto (bf16 candidates + exact fp32 rescoring where the CPU has bf16), fp32, bf16")
    p.add_argument("--reps", type=int, default=None, help="timed calls per side (default 2; tiny 1)")
    p.add_argument("--real", action="store_true", help="also the bundled BUCC zh-en sentences, encoded by me5-small")
    args = p.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        import faiss

        faiss.omp_set_num_threads(torch.get_num_threads())
        have_faiss = True
    except ImportError:
        have_faiss = False
    n = 2000 if args.tiny else args.size
    sets = [(f"synthetic {n}x{int(n * 1.5) if args.tiny else n} d{args.dim}",
             synthetic(n, int(n * 1.5) if args.tiny else n, args.dim))]
    if args.real and not args.tiny:
        src, tgt = real_bucc()
        sets.append((f"BUCC zh-en {len(src)}x{len(tgt)} me5", (src, tgt)))
    reps = args.reps or (1 if args.tiny else 2)
    rows, failed = [], False
    for name, (src, tgt) in sets:
        ours_fn = partial(knn, src, tgt, K, block=args.block, method=args.method)
        sides = {"torch matmul+topk": partial(torch_plain, src, tgt, K)}
        if have_faiss:
            sides["faiss IndexFlatIP"] = partial(faiss_search, src, tgt, K)
        ours_out = ours_fn()
        t_ours, mem_ours = measure(ours_fn, reps)
        for base_name, fn in sides.items():
            ok, detail = agree(fn(), ours_out)
            failed |= not ok
            t_base, mem_base = measure(fn, reps)
            rows.append({"case": f"{name}: ours {args.method} block {args.block} vs {base_name}",
                         "baseline_s": t_base, "ours_s": t_ours, "ratio": t_base / t_ours,
                         "baseline_peak_mb": mem_base / 2**20, "ours_peak_mb": mem_ours / 2**20,
                         "agreement": f"{'ok' if ok else 'FAIL'} {detail}"})
    width = max(len(r["case"]) for r in rows)
    print(f"k={K}, {torch.get_num_threads()} threads; times in seconds, ratio = baseline / ours; "
          f"peak = resident memory added during the call")
    print(f"{'case':<{width}} | baseline | ours    | ratio | peak MB base/ours | agreement")
    for r in rows:
        print(f"{r['case']:<{width}} | {r['baseline_s']:8.3f} | {r['ours_s']:7.3f} | {r['ratio']:4.2f}x | "
              f"{r['baseline_peak_mb']:8.0f}/{r['ours_peak_mb']:<8.0f} | {r['agreement']}")
    if not have_faiss:
        print("faiss column skipped: faiss-cpu is not installed (pip install faiss-cpu to measure it)")
    print(f"our tile: {args.block}x{args.block} float32 = {args.block * args.block * 4 / 2**20:.0f} MB")
    out = args.json or cache_dir() / "benchmarks" / "bench_mine.json"
    atomic_write_text(out, json.dumps({"benchmark": "bench_mine", "tiny": args.tiny, "k": K, "faiss": have_faiss,
                                       "machine": machine_info(), "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
