"""Sentence-retrieval encoding throughput on real Tatoeba sentences: ours vs two HF pipelines.

Pipelines, all on the same sentences, model and pooled layer, each returning unit-norm
mean-pooled embeddings in input order (tokenisation included):

(a) ``xtreme``: XTREME's reference (``third_party/evaluate_retrieval.py``): HF fp32, batches of
    100 in file order padded to the batch's longest sentence, the whole model run with all
    hidden states returned, one layer pooled.
(b) ``hf-tuned``: a well-tuned plain HF pipeline: length-sorted batches of 128, bf16 weights,
    SDPA attention, layers above the pooled one removed.
(c) ``ours``: :class:`adaptertx.retrieval.SentenceEncoder` (packed, bf16 by default; fp32 and
    int8 rows too).

Agreement is checked first (minimum per-sentence cosine with the fp32 reference), then the
pipelines are timed round-robin, the fastest round of each kept. The FLOP bound is the
sentences/s a machine running every matmul at the measured bf16 GEMM peak would reach
(linear layers plus attention, up to the pooled layer, for these exact token counts).

Models: the default model (me5-small, real weights) and an XLM-R-base-shaped random model with
the real 250k XLM-R vocabulary. ``--tiny``: two tiny random models, 40 sentences (seconds).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import machine_info  # noqa: E402

from adaptertx import data  # noqa: E402
from adaptertx.io import atomic_write_text, cache_dir  # noqa: E402
from adaptertx.retrieval import SentenceEncoder  # noqa: E402

LANGS = ("de", "fr", "es", "ru", "zh", "ar", "sw", "kab", "hi", "tr")


def tatoeba_sentences(n: int) -> list[str]:
    """n real Tatoeba sentences: the non-English side of several languages, in file order."""
    per = -(-n // len(LANGS))
    out = []
    for code in LANGS:
        out += [r["source"] for r in data.load("tatoeba", code, "test")[:per]]
    return out[:n]


def xtreme_reference(model, tokenizer, sentences, layer, prefix):
    """XTREME: fp32, file order, batches of 100 padded to the batch max, full depth, all hidden states."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(sentences), 100):
            batch = tokenizer([prefix + s for s in sentences[i : i + 100]], padding=True, truncation=True,
                              max_length=512, return_tensors="pt")
            hs = model(**batch, output_hidden_states=True).hidden_states[layer]
            m = batch["attention_mask"].unsqueeze(-1).float()
            out.append(F.normalize((hs.float() * m).sum(1) / m.sum(1), dim=1))
    return torch.cat(out)


def hf_tuned(model_bf16, tokenizer, sentences, layer, prefix, batch_size=128):
    """Plain HF done well: sorted by length, bf16 weights, SDPA, stop at the pooled layer."""
    texts = [prefix + s for s in sentences]
    lengths = [len(t) for t in tokenizer(texts, truncation=True, max_length=512)["input_ids"]]
    order = sorted(range(len(texts)), key=lengths.__getitem__)
    out = torch.empty(len(texts), model_bf16.config.hidden_size)
    with torch.inference_mode():
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            batch = tokenizer([texts[j] for j in idx], padding=True, truncation=True, max_length=512,
                              return_tensors="pt")
            hs = model_bf16(**batch).last_hidden_state
            m = batch["attention_mask"].unsqueeze(-1).float()
            out[idx] = F.normalize((hs.float() * m).sum(1) / m.sum(1), dim=1)
    return out


def truncated_copy(model, layer, dtype):
    m = copy.deepcopy(model).to(dtype)
    m.encoder.layer = torch.nn.ModuleList(list(m.encoder.layer)[:layer])
    m.config.num_hidden_layers = layer
    m.config._attn_implementation = "sdpa"
    return m.eval()


def bf16_peak(tiny: bool, dims: list[tuple[int, int, int]]) -> float:
    """Best measured bf16 GEMM rate (FLOP/s) over a square and the model's own shapes."""
    best = 0.0
    shapes = [(256, 256, 256)] if tiny else [(2048, 2048, 2048), *dims]
    for m, k, n in shapes:
        a = torch.randn(m, k).to(torch.bfloat16)
        b = torch.randn(k, n).to(torch.bfloat16)
        for _ in range(2):
            a @ b
        reps, t0 = 0, time.perf_counter()
        while reps < 3 or time.perf_counter() - t0 < (0.05 if tiny else 1.0):
            a @ b
            reps += 1
        best = max(best, 2 * m * k * n * reps / (time.perf_counter() - t0))
    return best


def encode_flops(cfg, token_counts: list[int], layer: int) -> float:
    dim, ffn = cfg.hidden_size, cfg.intermediate_size
    per_token = 2 * (4 * dim * dim + 2 * dim * ffn)
    attention = sum(4 * n * n * dim for n in token_counts)
    return layer * (per_token * sum(token_counts) + attention)


def make_models(tiny: bool):
    from transformers import BertConfig, BertModel

    from adaptertx.models import load_model, tiny_xlmr

    if tiny:
        xlmr, tok = tiny_xlmr(num_layers=2, hidden=64, heads=4, intermediate=128)
        torch.manual_seed(0)
        bert = BertModel(BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                                    intermediate_size=128), add_pooling_layer=False).eval()
        return [("tiny-bert", bert, tok, 3, ""), ("tiny-xlmr", xlmr, tok, 2, "")]
    me5, tok = load_model("me5-small")
    xlmr, _ = tiny_xlmr(num_layers=12, hidden=768, heads=12, intermediate=3072)
    return [("me5-small", me5, tok, 12, "passage: "), ("xlmr-base-shape", xlmr, tok, 7, "")]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny models, 40 sentences (seconds; for CI)")
    p.add_argument("--json", type=Path, default=None,
                   help="result file (default: <cache>/benchmarks/bench_encode.json)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--sentences", type=int, default=None, help="sentences per model (default 1000; tiny 40)")
    p.add_argument("--rounds", type=int, default=None, help="timing rounds (default 3; tiny 1)")
    args = p.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    n = args.sentences or (40 if args.tiny else 1000)
    rounds = args.rounds or (1 if args.tiny else 3)
    sentences = tatoeba_sentences(n)
    rows, failed = [], False
    for name, model, tok, layer, prefix in make_models(args.tiny):
        tuned = truncated_copy(model, layer, torch.bfloat16)
        enc = {dt: SentenceEncoder(model, tok, layer=layer, prefix=prefix, dtype=torch.bfloat16 if dt != "fp32"
                                   else torch.float32, int8=dt == "int8") for dt in ("bf16", "fp32", "int8")}
        pipes = {
            "xtreme": partial(xtreme_reference, model, tok, sentences, layer, prefix),
            "hf-tuned": partial(hf_tuned, tuned, tok, sentences, layer, prefix),
            "ours bf16": partial(enc["bf16"], sentences),
            "ours fp32": partial(enc["fp32"], sentences),
            "ours int8": partial(enc["int8"], sentences),
        }
        outs = {k: f() for k, f in pipes.items()}  # also the warm-up
        ref = outs["xtreme"]
        cos = {k: (o * ref).sum(1) for k, o in outs.items()}
        best = {k: float("inf") for k in pipes}
        for _ in range(rounds):
            for k, f in pipes.items():
                t0 = time.perf_counter()
                f()
                best[k] = min(best[k], time.perf_counter() - t0)
        ids, _ = enc["bf16"].tokenize(sentences)
        flops = encode_flops(model.config, [len(s) for s in ids], layer)
        peak = bf16_peak(args.tiny, [(8192, model.config.hidden_size, model.config.intermediate_size)])
        bound = len(sentences) / (flops / peak)
        rate = {k: len(sentences) / t for k, t in best.items()}
        for base in ("xtreme", "hf-tuned"):
            for ours, need in (("ours bf16", 0.99), ("ours int8", 0.99), ("ours fp32", 0.9999)):
                if base == "hf-tuned" and ours == "ours fp32":
                    continue
                ok = cos[ours].min().item() >= need and cos["hf-tuned"].min().item() >= 0.99
                failed |= not ok
                rows.append({"case": f"{name} L{layer}: {ours} vs {base}", "baseline_sent_s": rate[base],
                             "ours_sent_s": rate[ours], "ratio": rate[ours] / rate[base],
                             "agreement": f"{'ok' if ok else 'FAIL'} min cos {cos[ours].min().item():.5f} "
                                          f"(need {need})"})
        rows.append({"case": f"{name} L{layer}: ours bf16 vs bf16 FLOP bound", "baseline_sent_s": bound,
                     "ours_sent_s": rate["ours bf16"], "ratio": rate["ours bf16"] / bound,
                     "agreement": f"peak {peak / 1e9:.0f} GFLOP/s, {flops / len(sentences) / 1e9:.3f} GFLOP/sent"})
    width = max(len(r["case"]) for r in rows)
    print(f"{len(sentences)} Tatoeba sentences, {torch.get_num_threads()} threads; speeds in sentences/s")
    print(f"{'case':<{width}} | baseline | ours     | ratio  | agreement")
    for r in rows:
        print(f"{r['case']:<{width}} | {r['baseline_sent_s']:8.1f} | {r['ours_sent_s']:8.1f} | {r['ratio']:5.2f}x | "
              f"{r['agreement']}")
    out = args.json or cache_dir() / "benchmarks" / "bench_encode.json"
    atomic_write_text(out, json.dumps({"benchmark": "bench_encode", "tiny": args.tiny, "sentences": len(sentences),
                                       "machine": machine_info(), "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
