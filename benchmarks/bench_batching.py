"""Training batches: length-grouped (adaptertx's plan) vs drawn at random, in tokens of real text per second.

A random batch is padded to its longest row, so at ``max_length`` 256 on tasks whose rows vary
in length much of every batch is padding; :class:`adaptertx.training.loop.SingleTaskPlan`
groups rows of similar length (:func:`adaptertx.training.sampling.length_grouped`). Same model
(the default me5-small on our int8 base, a ``seq_bn`` adapter and head), same real English
training rows (bundled ANLI, MRPC and CosmosQA), same number of rows per step; the two plans
are timed step by step, alternating, over the first batches of one epoch of each. Agreement:
both epochs hold every training row exactly once (so an epoch does the same work), and the
first grouped batch gives the same loss on its own as padded to ``max_length`` (padding changes
nothing but cost).

    python benchmarks/bench_batching.py           # batch 16, max_length 256, 6 steps per plan
    python benchmarks/bench_batching.py --tiny    # seconds; CI runs this

Prints ``case | baseline | ours | ratio | agreement`` rows (baseline: random batches; ours:
length-grouped), each with the padding share of both plans over the whole epoch; writes a JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package first

from adaptertx import data  # noqa: E402
from adaptertx.io import atomic_write_text, cache_dir  # noqa: E402
from adaptertx.modeling import build_adapter_model  # noqa: E402
from adaptertx.tasks import get_task  # noqa: E402
from adaptertx.training.data import encode  # noqa: E402
from adaptertx.training.loop import SingleTaskPlan  # noqa: E402
from adaptertx.training.sampling import length_grouped  # noqa: E402

TASKS = ("anli", "mrpc", "cosmosqa")


def padding_share(feats, batches) -> float:
    real = sum(int(feats.lengths[b].sum()) for b in batches)
    slots = sum(int(feats.lengths[b].max()) * len(b) for b in batches)
    return 1 - real / slots


def step_time(built, optimizer, batch) -> float:
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=built.autocast):
        loss = built.model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def loss_of(built, batch) -> float:
    built.model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=built.autocast):
        out = float(built.model(**batch).loss)
    built.model.train()
    return out


def measure(task_name: str, model: str, batch_size: int, max_length: int, steps: int, rows: int) -> dict:
    task = get_task(task_name)
    built = build_adapter_model(model, task, quant="int8", device="cpu")
    optimizer = torch.optim.AdamW([p for p in built.model.parameters() if p.requires_grad], lr=1e-5)
    feats = encode(task, data.load(task_name, "en", "train")[:rows], built.tokenizer, max_length, "train")
    order = torch.randperm(len(feats), generator=torch.Generator().manual_seed(0))
    random_batches = length_grouped(order, None, batch_size, 0)
    grouped = [b for _, _, b in SingleTaskPlan(task, feats, batch_size, 0).epoch(0, 0, 1)]
    same_rows = sorted(torch.cat(random_batches).tolist()) == sorted(torch.cat(grouped).tolist()) == list(
        range(len(feats)))
    first = feats.batch(grouped[0])
    full = {k: v for k, v in feats.batch(grouped[0]).items()}
    full = {k: (torch.nn.functional.pad(v, (0, feats.seq_len - v.shape[-1]), value=0 if k != "input_ids"
                                        else built.tokenizer.pad_token_id) if v.dim() >= 2 else v)
            for k, v in full.items()}
    d_loss = abs(loss_of(built, first) - loss_of(built, full))
    # Full batches only, the same rows per step: the epochs' first full batches of each plan.
    plans = {"random": [b for b in random_batches if len(b) == batch_size][:steps],
             "grouped": [b for b in grouped if len(b) == batch_size][:steps]}
    step_time(built, optimizer, feats.batch(plans["random"][0]))  # warm-up
    times = {k: [] for k in plans}
    real = {k: 0 for k in plans}
    for i in range(steps):
        for k, batches in plans.items():
            batch = feats.batch(batches[i])
            real[k] += int(batch["attention_mask"].sum())
            times[k].append(step_time(built, optimizer, batch))
    rate = {k: real[k] / sum(times[k]) for k in plans}
    share = {"random": padding_share(feats, random_batches), "grouped": padding_share(feats, grouped)}
    good = same_rows and d_loss <= 2e-2
    return {"case": f"{task_name} L{max_length} b{batch_size}: length-grouped vs random batches",
            "baseline": rate["random"], "ours": rate["grouped"], "ratio": rate["grouped"] / rate["random"],
            "padding_random": share["random"], "padding_grouped": share["grouped"],
            "agreement": f"{'ok' if good else 'FAIL'}: every row once in both epochs: {same_rows}; first batch "
                         f"loss cut vs padded to {max_length}: |d| {d_loss:.1e}; padding over the epoch "
                         f"{share['random']:.0%} -> {share['grouped']:.0%}"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="a tiny model and few rows (seconds; for CI)")
    p.add_argument("--json", type=Path, default=None, help="result file (default: <cache>/benchmarks/...)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per plan (default 6; tiny 2)")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args()
    steps = args.steps or (2 if args.tiny else 6)
    if args.tiny:
        from adaptertx.models import tiny_xlmr

        model_dir = cache_dir() / "benchmarks" / "tiny-xlmr-batching"
        if not (model_dir / "config.json").exists():
            m, tok = tiny_xlmr(num_layers=2, hidden=32, heads=2, intermediate=64)
            m.save_pretrained(model_dir)
            tok.save_pretrained(model_dir)
        model, rows, tasks = str(model_dir), 200, TASKS[:2]
    else:
        model, rows, tasks = "me5-small", 2000, TASKS
    print(f"training tokens of real text per second, {steps} steps per plan, alternating; model {model}, "
          f"int8 base, batch {args.batch_size}, max_length {args.max_length}", flush=True)
    results = [measure(t, model, args.batch_size, args.max_length, steps, rows) for t in tasks]
    width = max(len(r["case"]) for r in results)
    print(f"| {'case':<{width}} | baseline tok/s | ours tok/s | ratio | agreement |")
    print(f"|{'-' * (width + 2)}|---|---|---|---|")
    for r in results:
        print(f"| {r['case']:<{width}} | {r['baseline']:.0f} | {r['ours']:.0f} | {r['ratio']:.2f}x | "
              f"{r['agreement']} |")
    out = args.json or cache_dir() / "benchmarks" / "bench_batching.json"
    atomic_write_text(out, json.dumps({"benchmark": "bench_batching", "tiny": args.tiny, "steps": steps,
                                       "rows": results}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if all(r["agreement"].startswith("ok") for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
