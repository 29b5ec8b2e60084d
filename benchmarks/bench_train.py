"""Adapter training step on a frozen base stored four ways: fp32, bf16, bitsandbytes int8, ours.

For each model shape (an XLM-R-base-shaped encoder with the real 250k vocabulary, randomly
initialised, and the default me5-small) it builds the same adapter + classification head
with :func:`adaptertx.modeling.build_adapter_model` in every storage mode, checks agreement
first (logits of each mode against fp32 on one batch), then times full training steps
(forward, backward, AdamW step) side by side, alternating modes step by step so a noisy
machine slows all alike. Memory is the bytes the base's weights occupy (parameters and
buffers), and the linear layers' share of it.

    python benchmarks/bench_train.py            # full size: batch 16 x 128 tokens
    python benchmarks/bench_train.py --tiny     # seconds; CI runs this

Prints ``case | baseline | ours | ratio | agreement`` rows, writes a JSON with the machine,
versions and git SHA, and exits 1 when a mode's logits stray from fp32's.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from tabulate import tabulate

from adaptertx.io import atomic_write_text, cache_dir
from adaptertx.modeling import build_adapter_model
from adaptertx.models import load_tokenizer, resolve
from adaptertx.quantize import linear_weight_bytes
from adaptertx.tasks import get_task

MODES = ("none", "bf16", "bnb-int8", "int8")
AGREEMENT_TOLERANCE = 0.05  # max |logit difference| to fp32 a storage mode may show
LABEL = {"none": "fp32", "bf16": "bf16", "bnb-int8": "bnb int8", "int8": "ours int8"}


def xlmr_base_folder(tiny: bool, root: Path) -> str:
    """Save a randomly initialised XLM-R-base-shaped encoder (real vocabulary) to ``root``."""
    from transformers import XLMRobertaConfig, XLMRobertaModel

    tokenizer = load_tokenizer(resolve("me5-small"))
    size = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256) if tiny else \
        dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    config = XLMRobertaConfig(vocab_size=len(tokenizer), max_position_embeddings=514, type_vocab_size=1,
                              pad_token_id=1, bos_token_id=0, eos_token_id=2, **size)
    torch.manual_seed(0)
    XLMRobertaModel(config).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return str(root)


def base_bytes(model) -> int:
    base = model.base_model
    return sum(t.numel() * t.element_size() for t in list(base.parameters()) + list(base.buffers()))


def make_batch(tokenizer, batch: int, length: int) -> dict[str, torch.Tensor]:
    from adaptertx import data

    rows = data.load("mrpc", "en", "train")[: batch]
    enc = tokenizer([r["text_a"] for r in rows], [r["text_b"] for r in rows], padding="max_length",
                    truncation=True, max_length=length, return_tensors="pt")
    enc["labels"] = torch.tensor([int(r["label"]) for r in rows])
    return dict(enc)


def measure(model_name: str, label: str, batch: dict, steps: int) -> list[dict]:
    task = get_task("mrpc")
    built = {m: build_adapter_model(model_name, task, quant=m) for m in MODES}
    optim = {m: torch.optim.AdamW([p for p in b.model.parameters() if p.requires_grad], lr=1e-4)
             for m, b in built.items()}
    eval_batch = {k: v for k, v in batch.items() if k != "labels"}

    def logits(mode):
        b = built[mode]
        b.model.eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=b.autocast):
            out = b.model(**eval_batch).logits.float()
        b.model.train()
        return out

    ref = logits("none")
    agreement = {m: (logits(m) - ref).abs().max().item() for m in MODES}

    def step(mode):
        b = built[mode]
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=b.autocast):
            loss = b.model(**batch).loss
        loss.backward()
        optim[mode].step()
        optim[mode].zero_grad(set_to_none=True)
        return time.perf_counter() - start

    times = {m: [] for m in MODES}
    for m in MODES:  # warm-up
        step(m)
    for _ in range(steps):
        for m in MODES:
            times[m].append(step(m))
    rows = []
    for m in MODES:
        model = built[m].model
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters()) + sum(
            b.numel() for n, b in model.named_buffers() if n.endswith(("qweight", "SCB", "CB")))
        rows.append({"model": label, "mode": LABEL[m], "step_s_min": min(times[m]),
                     "step_s_median": statistics.median(times[m]), "base_bytes": base_bytes(model),
                     "linear_bytes": linear_weight_bytes(model.base_model), "trainable": trainable,
                     "trainable_share": trainable / total, "max_abs_logit_diff_vs_fp32": agreement[m]})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="small shapes, a few steps (seconds)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per mode")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", default=None, help="result file (default: <cache>/benchmarks/bench_train.json)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    steps = args.steps or (2 if args.tiny else 5)
    batch_size, length = (4, 32) if args.tiny else (16, 128)
    tokenizer = load_tokenizer(resolve("me5-small"))
    batch = make_batch(tokenizer, batch_size, length)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = xlmr_base_folder(args.tiny, Path(tmp))
        results += measure(folder, "XLM-R-base shape" + (" (tiny)" if args.tiny else ""), batch, steps)
    if not args.tiny:
        results += measure("me5-small", "me5-small", batch, steps)

    table = []
    for label in dict.fromkeys(r["model"] for r in results):
        by = {r["mode"]: r for r in results if r["model"] == label}
        ours = by["ours int8"]
        for base in ("bf16", "bnb int8", "fp32"):
            b = by[base]
            table.append((f"{label}: step time, {base} vs ours int8", f"{b['step_s_min'] * 1e3:.0f} ms",
                          f"{ours['step_s_min'] * 1e3:.0f} ms", f"{b['step_s_min'] / ours['step_s_min']:.2f}x",
                          f"logits max|d| vs fp32: {base} {b['max_abs_logit_diff_vs_fp32']:.1e}, ours "
                          f"{ours['max_abs_logit_diff_vs_fp32']:.1e}"))
        fp32 = by["fp32"]
        table.append((f"{label}: linear weight bytes, fp32 vs ours int8", f"{fp32['linear_bytes'] / 2**20:.1f} MiB",
                      f"{ours['linear_bytes'] / 2**20:.1f} MiB", f"{ours['linear_bytes'] / fp32['linear_bytes']:.2f}x",
                      f"bnb int8 {by['bnb int8']['base_bytes'] / 2**20:.0f} MiB base"))
        table.append((f"{label}: base bytes, fp32 vs ours int8", f"{fp32['base_bytes'] / 2**20:.1f} MiB",
                      f"{ours['base_bytes'] / 2**20:.1f} MiB", f"{ours['base_bytes'] / fp32['base_bytes']:.2f}x",
                      f"trainable {ours['trainable']:,} params = {100 * ours['trainable_share']:.2f}% of the model"))
    print(f"adapter training step, batch {batch_size} x {length} tokens, seq_bn adapter + classification head; "
          f"ratio = baseline time / ours (speed-up) or ours / baseline bytes")
    print(tabulate(table, headers=["case", "baseline", "ours", "ratio", "agreement"]))
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        sha = "unknown"
    info = {"machine": platform.platform(), "processor": platform.processor(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "git_sha": sha, "tiny": args.tiny, "steps": steps,
            "batch": [batch_size, length], "results": results}
    out = Path(args.json) if args.json else cache_dir() / "benchmarks" / "bench_train.json"
    atomic_write_text(out, json.dumps(info, indent=2) + "\n")
    print(f"wrote {out}")
    # Agreement gate: every storage mode's logits within bf16-level distance of fp32's.
    bad = [r for r in results if r["max_abs_logit_diff_vs_fp32"] > AGREEMENT_TOLERANCE]
    for r in bad:
        print(f"FAIL {r['model']} {r['mode']}: logits differ from fp32 by {r['max_abs_logit_diff_vs_fp32']:.3f}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
