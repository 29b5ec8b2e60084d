"""Adapter training step: ours (int8 base) vs the ``adapters`` library's own Trainer path and other storage modes.

For each model shape (an XLM-R-base-shaped encoder with the real 250k vocabulary, randomly
initialised, and the default me5-small) it builds the same adapter + classification head
with :func:`adaptertx.modeling.build_adapter_model` in every storage mode (fp32, bf16,
bitsandbytes int8, ours int8), and the peer a user would pick: the ``adapters`` library's own
path (``benchmarks/_library_train.py``: ``AutoAdapterModel`` on a bf16 base and on a
bitsandbytes 8-bit base, ``train_adapter``, ``AdapterTrainer`` with ``bf16=True``), same
adapter config, same seed, same batch. It checks agreement first (logits of each mode against
fp32 on one batch), then times full training steps (forward, backward, AdamW step) side by
side, alternating modes step by step so a noisy, shared machine slows all alike, and reports
tokens of real text (the batch's non-padding tokens) per second. Memory is the bytes the
base's weights occupy (parameters and buffers), and the linear layers' share of it.

    python benchmarks/bench_train.py            # full size: batch 16 x 128 tokens
    python benchmarks/bench_train.py --tiny     # seconds; CI runs this
    python benchmarks/bench_train.py --device cuda   # every mode on the GPU (make gpu-check runs it)

Prints ``case | baseline | ours | ratio | agreement`` rows, writes a JSON with the machine,
versions and git SHA, and exits 1 when a mode's logits stray from fp32's.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package first
import _library_train  # noqa: E402
from _harness import gemm_peak as harness_gemm_peak  # noqa: E402

from adaptertx.io import atomic_write_text, cache_dir  # noqa: E402
from adaptertx.modeling import adapter_config, build_adapter_model  # noqa: E402
from adaptertx.models import load_tokenizer, resolve  # noqa: E402
from adaptertx.quantize import linear_weight_bytes  # noqa: E402
from adaptertx.settings import ADAPTER, ADAPTER_SEED  # noqa: E402
from adaptertx.tasks import get_task  # noqa: E402

MODES = ("none", "bf16", "bnb-int8", "int8")
AGREEMENT_TOLERANCE = 0.05  # max |logit difference| to fp32 a storage mode may show
LABEL = {"none": "fp32", "bf16": "bf16", "bnb-int8": "bnb int8", "int8": "ours int8",
         **{m: m for m in _library_train.LIB_MODES}}


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


def measure(model_name: str, label: str, batch: dict, steps: int, device: str = "cpu") -> list[dict]:
    task = get_task("mrpc")
    dev = torch.device(device)
    built = {m: build_adapter_model(model_name, task, quant=m, device=device) for m in MODES}
    optim = {m: torch.optim.AdamW([p for p in b.model.parameters() if p.requires_grad], lr=1e-4)
             for m, b in built.items()}
    lib = {m: _library_train.Runner(_library_train.build(model_name, m, adapter_config(ADAPTER), len(task.labels),
                                                         ADAPTER_SEED, device), batch, lr=1e-4, device=device)
           for m in _library_train.LIB_MODES}
    eval_batch = {k: v for k, v in batch.items() if k != "labels"}
    on_dev = {k: v.to(dev) for k, v in batch.items()}
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def logits(mode):
        if mode in lib:
            return lib[mode].logits(eval_batch)
        b = built[mode]
        b.model.eval()
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=b.autocast):
            out = b.model(**{k: v.to(dev) for k, v in eval_batch.items()}).logits.float().cpu()
        b.model.train()
        return out

    modes = (*MODES, *lib)
    ref = logits("none")
    agreement = {m: (logits(m) - ref).abs().max().item() for m in modes}

    def step(mode):
        if mode in lib:
            return lib[mode].run(1)[0]
        b = built[mode]
        sync()
        start = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=b.autocast):
            loss = b.model(**on_dev).loss
        loss.backward()
        optim[mode].step()
        optim[mode].zero_grad(set_to_none=True)
        sync()
        return time.perf_counter() - start

    times = {m: [] for m in modes}
    for m in modes:  # warm-up
        step(m)
    for _ in range(steps):
        for m in modes:
            times[m].append(step(m))
    real_tokens = int(batch["attention_mask"].sum())
    rows = []
    for m in modes:
        model = built[m].model if m in built else lib[m].model
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters()) + sum(
            b.numel() for n, b in model.named_buffers() if n.endswith(("qweight", "SCB", "CB")))
        rows.append({"model": label, "mode": LABEL[m], "step_s_min": min(times[m]),
                     "step_s_median": statistics.median(times[m]), "step_s_all": times[m],
                     "real_tokens_per_s": real_tokens / min(times[m]), "base_bytes": base_bytes(model),
                     "linear_bytes": linear_weight_bytes(model.base_model), "trainable": trainable,
                     "trainable_share": trainable / total, "max_abs_logit_diff_vs_fp32": agreement[m]})
    return rows


def gemm_peak(dtype: torch.dtype, tiny: bool, device: str = "cpu") -> float:
    shape = (256,) * 3 if tiny else (8192,) * 3 if device.startswith("cuda") else (2048,) * 3
    return harness_gemm_peak(dtype, [shape], 0.05 if tiny else 0.5, device=device)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="small shapes, a few steps (seconds)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per mode")
    parser.add_argument("--models", default=None, help="comma-separated subset: xlmr-base-shape, me5-small")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", default=None, help="result file (default: <cache>/benchmarks/bench_train.json)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]: where every mode trains")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    steps = args.steps or (2 if args.tiny else 5)
    batch_size, length = (4, 32) if args.tiny else (16, 128)
    tokenizer = load_tokenizer(resolve("me5-small"))
    batch = make_batch(tokenizer, batch_size, length)
    results = []
    wanted = args.models.split(",") if args.models else ["xlmr-base-shape", "me5-small"]
    if "xlmr-base-shape" in wanted or args.tiny:
        with tempfile.TemporaryDirectory() as tmp:
            folder = xlmr_base_folder(args.tiny, Path(tmp))
            results += measure(folder, "XLM-R-base shape" + (" (tiny)" if args.tiny else ""), batch, steps,
                               args.device)
    if not args.tiny and "me5-small" in wanted:
        results += measure("me5-small", "me5-small", batch, steps, args.device)

    table = []
    for label in dict.fromkeys(r["model"] for r in results):
        by = {r["mode"]: r for r in results if r["model"] == label}
        ours = by["ours int8"]
        for base in (*_library_train.LIB_MODES, "bf16", "bnb int8", "fp32"):
            b = by[base]
            what = base.replace("lib ", "adapters AdapterTrainer, ") if base.startswith("lib") else base
            table.append((f"{label}: step, {what} vs ours int8", f"{b['step_s_min'] * 1e3:.0f} ms",
                          f"{ours['step_s_min'] * 1e3:.0f} ms", f"{b['step_s_min'] / ours['step_s_min']:.2f}x",
                          f"{b['real_tokens_per_s']:.0f} vs {ours['real_tokens_per_s']:.0f} real tok/s; logits "
                          f"max|d| vs fp32: {b['max_abs_logit_diff_vs_fp32']:.1e} vs "
                          f"{ours['max_abs_logit_diff_vs_fp32']:.1e}"))
        fp32 = by["fp32"]
        table.append((f"{label}: linear weight bytes, fp32 vs ours int8", f"{fp32['linear_bytes'] / 2**20:.1f} MiB",
                      f"{ours['linear_bytes'] / 2**20:.1f} MiB", f"{ours['linear_bytes'] / fp32['linear_bytes']:.2f}x",
                      f"bnb int8 {by['bnb int8']['base_bytes'] / 2**20:.0f} MiB base"))
        table.append((f"{label}: base bytes, fp32 vs ours int8", f"{fp32['base_bytes'] / 2**20:.1f} MiB",
                      f"{ours['base_bytes'] / 2**20:.1f} MiB", f"{ours['base_bytes'] / fp32['base_bytes']:.2f}x",
                      f"trainable {ours['trainable']:,} params = {100 * ours['trainable_share']:.2f}% of the model"))
    where = (torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda")
             else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"device: {where}, shared with other work (steps alternate between modes, so ratios hold; absolute "
          f"times move with the load)")
    print(f"measured matmul peaks: bf16 {gemm_peak(torch.bfloat16, args.tiny, args.device) / 1e9:.0f} GFLOP/s, "
          f"fp32 {gemm_peak(torch.float32, args.tiny, args.device) / 1e9:.0f} GFLOP/s")
    real = int(batch["attention_mask"].sum())
    print(f"adapter training step, batch {batch_size} x {length} tokens of MRPC ({real} real, the rest padding), "
          f"{ADAPTER} adapter + classification head; fastest of {steps} steps; ratio = baseline time / ours "
          f"(speed-up) or ours / baseline bytes")
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
