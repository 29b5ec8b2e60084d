"""Sentence-retrieval encoding throughput on real Tatoeba sentences: ours vs HF and vs CPU peers.

Pipelines, all on the same sentences, the same model weights and the same pooled layer, each
returning unit-norm mean-pooled embeddings in input order (tokenisation included):

(a) ``hf fp32``: the Hugging Face model in fp32, length-sorted batches of 128 padded to the
    batch's longest sentence, SDPA attention, layers above the pooled one removed, masked mean
    pool: the fp32 reference every path is compared with (cosines and Tatoeba accuracy).
(b) ``hf-tuned``: the same with bf16 weights.
(c) peers (``benchmarks/_peers.py``; ``pip install 'adaptertx[bench]'``): ONNX Runtime fp32 and
    int8 (transformer-optimised graph, dynamic quantisation), OpenVINO bf16 and int8 (NNCF), each
    exported from the loaded model and fed length-sorted padded batches.
(d) ``ours``: :class:`adaptertx.retrieval.SentenceEncoder` (packed, padding-free; bf16, int8
    and fp32).
(e) with ``--xtreme``: XTREME's reference (``third_party/evaluate_retrieval.py``): HF fp32, batches
    of 100 in file order, the whole model run with all hidden states returned (timed once).

Agreement comes first: the minimum and mean per-sentence cosine with the fp32 reference and,
for the real model, Tatoeba accuracy (en→x and x→en) of every path on a few languages against
the fp32 pipeline's. Then the pipelines are timed round-robin (the machine is shared: every
path sees the same disturbance), the fastest round of each kept, medians in the JSON. The
FLOP bound is the sentences/s a machine running every matmul at the measured bf16 GEMM peak
(re-measured every round, the best kept) would reach (linear layers plus attention, up to the
pooled layer, for these token counts). "Fastest peer" is the fastest peer whose Tatoeba
accuracy is within 0.2 points of fp32 both ways (on the random-weight model: any peer).

Models: the default model (me5-small, real weights, last layer, e5's "query: " prefix) and an
XLM-R-base-shaped random model with the real 250k XLM-R vocabulary (layer 7; no accuracy: its
weights are random). ``--tiny``: two tiny random models, 40 sentences (seconds).

``--device cuda`` runs the GPU protocol instead (:func:`gpu_protocol`): random-weight models of
the me5-small shape (all 12 layers) and the XLM-R-large shape (pooled at layer 13), the real
XLM-R vocabulary, real Tatoeba sentences; (a) XTREME's pipeline (fp32, file order, padded,
all hidden states), (b) the tuned HF pipeline (bf16, SDPA, length-sorted padded batches),
(c) our encoder with every kernel on its reference (``ADAPTERTX_KERNELS=cuda=ref``) and ours
with the CUDA kernels; per-sentence cosine against HF fp32 first, then speed and the share of
the bf16 FLOP bound at the GPU's measured matmul peak. ``--protocol gpu --device cpu`` runs the
same table on the CPU (how the tests keep it from rotting).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package first
import _peers  # noqa: E402
from _harness import gemm_peak as harness_gemm_peak  # noqa: E402
from _harness import machine_info  # noqa: E402

from adaptertx import data  # noqa: E402
from adaptertx.io import atomic_write_text, cache_dir  # noqa: E402
from adaptertx.retrieval import SentenceEncoder  # noqa: E402
from adaptertx.retrieval.encoder import retrieval_accuracy  # noqa: E402

LANGS = ("de", "fr", "es", "ru", "zh", "ar", "sw", "kab", "hi", "tr")
ACC_LANGS = ("de", "ar", "kab")  # accuracy: a high-, a mid- and a low-resource language
CAL_LANGS = ("it", "pt", "nl", "pl")  # OpenVINO int8 calibration: sentences no other step uses
ACC_TOLERANCE = 0.2  # points of Tatoeba accuracy a fast path may lose against fp32


def tatoeba_sentences(n: int, langs=LANGS) -> list[str]:
    """n real Tatoeba sentences: the non-English side of several languages, in file order."""
    per = -(-n // len(langs))
    out = []
    for code in langs:
        out += [r["source"] for r in data.load("tatoeba", code, "test")[:per]]
    return out[:n]


def xtreme_reference(model, tokenizer, sentences, layer, prefix):
    """XTREME: fp32, file order, batches of 100 padded to the batch max, full depth, all hidden states."""
    out = []
    device = model.device
    with torch.inference_mode():
        for i in range(0, len(sentences), 100):
            batch = tokenizer([prefix + s for s in sentences[i : i + 100]], padding=True, truncation=True,
                              max_length=512, return_tensors="pt").to(device)
            hs = model(**batch, output_hidden_states=True).hidden_states[layer]
            m = batch["attention_mask"].unsqueeze(-1).float()
            out.append(F.normalize((hs.float() * m).sum(1) / m.sum(1), dim=1).cpu())
    return torch.cat(out)


def hf_tuned(model_trunc, tokenizer, sentences, layer, prefix, batch_size=128):
    """Plain HF done well: sorted by length, SDPA, stop at the pooled layer (bf16 or fp32 weights)."""
    texts = [prefix + s for s in sentences]
    lengths = [len(t) for t in tokenizer(texts, truncation=True, max_length=512)["input_ids"]]
    order = sorted(range(len(texts)), key=lengths.__getitem__)
    out = torch.empty(len(texts), model_trunc.config.hidden_size)
    device = model_trunc.device
    with torch.inference_mode():
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            batch = tokenizer([texts[j] for j in idx], padding=True, truncation=True, max_length=512,
                              return_tensors="pt").to(device)
            hs = model_trunc(**batch).last_hidden_state
            m = batch["attention_mask"].unsqueeze(-1).float()
            out[idx] = F.normalize((hs.float() * m).sum(1) / m.sum(1), dim=1).cpu()
    return out


def truncated_copy(model, layer, dtype):
    m = copy.deepcopy(model).to(dtype)
    m.encoder.layer = torch.nn.ModuleList(list(m.encoder.layer)[:layer])
    m.config.num_hidden_layers = layer
    m.config._attn_implementation = "sdpa"
    return m.eval()


def gemm_peak(tiny: bool, dims: list[tuple[int, int, int]], dtype: torch.dtype) -> float:
    """Best measured GEMM rate (FLOP/s) in ``dtype`` over a square and the model's own shapes."""
    shapes = [(256, 256, 256)] if tiny else [(2048, 2048, 2048), *dims]
    return harness_gemm_peak(dtype, shapes, 0.05 if tiny else 1.0, warmup=2)


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
        return [("tiny-bert", bert, tok, 3, "", True), ("tiny-xlmr", xlmr, tok, 2, "", False)]
    me5, tok = load_model("me5-small")
    xlmr, _ = tiny_xlmr(num_layers=12, hidden=768, heads=12, intermediate=3072)
    return [("me5-small", me5, tok, 12, "query: ", True), ("xlmr-base-shape", xlmr, tok, 7, "", False)]


def tatoeba_accuracy(encode, langs, pairs: int) -> dict[str, tuple[float, float]]:
    """{lang: (en→x %, x→en %)} of one encoding path on the first ``pairs`` pairs of each language."""
    out = {}
    for code in langs:
        rows = data.load("tatoeba", code, "test")[:pairs]
        src = encode([r["source"] for r in rows])
        eng = encode([r["target"] for r in rows])
        out[code] = (retrieval_accuracy(eng, src), retrieval_accuracy(src, eng))
    return out


def build_peers(model, tok, layer, prefix, threads, workdir: Path, batch_size: int, tiny: bool):
    """The peer pipelines (name -> callable) and a note on how they were built."""
    calib_sents = tatoeba_sentences(16 if tiny else 256, CAL_LANGS)
    calib = [(i, m) for _, i, m in _peers.Padded(tok, prefix, None, 32).batches(calib_sents)]
    t0 = time.perf_counter()
    runs = _peers.onnx_runtime(model, tok, layer, workdir, threads)
    t_ort = time.perf_counter() - t0
    ov_runs, precision = _peers.openvino(model, tok, layer, threads, calib)
    t_ov = time.perf_counter() - t0 - t_ort
    runs.update(ov_runs)
    note = (f"peers: batches of {batch_size} sorted by length; ONNX export+optimise+quantise {t_ort:.0f} s, "
            f"OpenVINO convert+NNCF ({len(calib_sents)} calibration sentences) {t_ov:.0f} s; "
            f"OpenVINO 'bf16' ran at precision {precision}")
    return {k: _peers.Padded(tok, prefix, f, batch_size) for k, f in runs.items()}, note


GPU_MODELS = {  # name -> (layers, hidden, heads, intermediate, pooled layer)
    "me5-small-shape": (12, 384, 12, 1536, 12),
    "xlmr-large-shape": (24, 1024, 16, 4096, 13),
}
GPU_TARGETS = {"hf-tuned": 3.0, "xtreme": 30.0}  # ours must be at least this many times faster
GPU_BOUND_TARGET = 0.5
GPU_MIN_COS = 0.999


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


class _KernelsOff:
    """Our encoder with every kernel on its pure-torch reference for the device (``ADAPTERTX_KERNELS``)."""

    def __init__(self, encoder, kind: str) -> None:
        self.encoder, self.kind = encoder, kind

    def __call__(self, sentences):
        import os

        old = os.environ.get("ADAPTERTX_KERNELS")
        os.environ["ADAPTERTX_KERNELS"] = f"{self.kind}=ref"
        try:
            return self.encoder(sentences)
        finally:
            if old is None:
                os.environ.pop("ADAPTERTX_KERNELS")
            else:
                os.environ["ADAPTERTX_KERNELS"] = old


def gpu_pipelines(model, tok, layer, device, batch):
    """The GPU protocol's paths (name -> callable on a sentence list); ``hf fp32`` is the reference."""
    full32 = copy.deepcopy(model).to(device=device, dtype=torch.float32).eval()
    trunc = {dt: truncated_copy(model, layer, dt).to(device) for dt in (torch.float32, torch.bfloat16)}
    on_device = copy.deepcopy(model).to(device).eval()
    ours = SentenceEncoder(on_device, tok, layer=layer, dtype=torch.bfloat16)
    return {
        "hf fp32": partial(hf_tuned, trunc[torch.float32], tok, layer=layer, prefix="", batch_size=batch),
        "xtreme": partial(xtreme_reference, full32, tok, layer=layer, prefix=""),
        "hf-tuned": partial(hf_tuned, trunc[torch.bfloat16], tok, layer=layer, prefix="", batch_size=batch),
        "ours ref kernels": _KernelsOff(ours, device.type),
        "ours bf16": ours,
        "ours int8": SentenceEncoder(on_device, tok, layer=layer, dtype=torch.bfloat16, int8=True),
    }


def gpu_model_rows(name, shape, tok, sentences, device, rounds, peak, batch):
    """Agreement, then interleaved timing rounds (XTREME's pipeline once: it is the slow one)."""
    from transformers import XLMRobertaConfig, XLMRobertaModel

    layers, hidden, heads, inter, layer = shape
    torch.manual_seed(0)
    model = XLMRobertaModel(XLMRobertaConfig(
        vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=inter, max_position_embeddings=514, pad_token_id=tok.pad_token_id, type_vocab_size=1),
        add_pooling_layer=False).eval()
    pipes = gpu_pipelines(model, tok, layer, device, batch)
    outs = {k: f(sentences) for k, f in pipes.items()}  # also the warm-up
    ref = outs["hf fp32"]
    cos = {k: (o.float() * ref).sum(1) for k, o in outs.items()}
    times = {k: [] for k in pipes}
    times["xtreme"].append(_timed(partial(pipes["xtreme"], sentences), device))
    for _ in range(rounds):
        for k, f in pipes.items():
            if k != "xtreme":
                times[k].append(_timed(partial(f, sentences), device))
    rate = {k: len(sentences) / min(t) for k, t in times.items()}
    ids, _ = pipes["ours bf16"].tokenize(sentences)
    bound = len(sentences) / (encode_flops(model.config, [len(s) for s in ids], layer) / peak)
    paths = [{"model": name, "layer": layer, "path": k, "sent_s": rate[k], "min_cos": cos[k].min().item(),
              "mean_cos": cos[k].mean().item()} for k in pipes]
    rows = []
    for k in ("ours bf16", "ours int8"):
        good = cos[k].min().item() >= GPU_MIN_COS
        for base in ("xtreme", "hf-tuned", "ours ref kernels"):
            target = GPU_TARGETS.get(base)
            verdict = "met" if target is not None and rate[k] / rate[base] >= target else "NOT met"
            met = "" if target is None else f"; target >= {target:g}x: {verdict}"
            rows.append({"case": f"{name} L{layer}: {k} vs {base}", "baseline_sent_s": rate[base],
                         "ours_sent_s": rate[k], "ratio": rate[k] / rate[base],
                         "agreement": f"{'ok' if good else 'FAIL'} min cos {cos[k].min().item():.5f} "
                                      f"(need {GPU_MIN_COS}){met}"})
        rows.append({"case": f"{name} L{layer}: {k} vs bf16 FLOP bound", "baseline_sent_s": bound,
                     "ours_sent_s": rate[k], "ratio": rate[k] / bound,
                     "agreement": f"peak {peak / 1e12:.1f} TFLOP/s measured; target >= {GPU_BOUND_TARGET:.0%}: "
                                  f"{'met' if rate[k] / bound >= GPU_BOUND_TARGET else 'NOT met'}"})
    failed = any(cos[k].min().item() < GPU_MIN_COS for k in ("ours bf16", "ours int8", "ours ref kernels"))
    return paths, rows, failed


def gpu_protocol(args) -> int:
    """The ``--device cuda`` table (see the module docstring); also runs on the CPU with ``--protocol gpu``."""
    from adaptertx.environment import describe
    from adaptertx.models import DEFAULT_MODEL, load_tokenizer, resolve

    device = torch.device(args.device)
    tok = load_tokenizer(args.tokenizer or resolve(DEFAULT_MODEL))
    n = args.sentences or (40 if args.tiny else 8000)
    rounds = args.rounds or (1 if args.tiny else 3)
    sentences = tatoeba_sentences(n)
    shapes = {"tiny-shape": (2, 64, 4, 128, 2)} if args.tiny else GPU_MODELS
    dims = [(256, 256, 256)] if args.tiny else [(8192, 8192, 8192), (16384, 1024, 4096)]
    peak = harness_gemm_peak(torch.bfloat16, dims, 0.05 if args.tiny else 1.0, warmup=2, device=device)
    fp32_peak = harness_gemm_peak(torch.float32, dims[:1], 0.05 if args.tiny else 0.5, warmup=1, device=device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else machine_info()["cpu"]
    print(f"device: {gpu}; measured matmul peaks: bf16 {peak / 1e12:.1f} TFLOP/s, fp32 {fp32_peak / 1e12:.1f} "
          f"TFLOP/s\n{len(sentences)} real Tatoeba sentences ({', '.join(LANGS)}), random-weight models with the "
          f"real XLM-R vocabulary; {rounds} interleaved rounds (XTREME's pipeline timed once); sentences/s",
          flush=True)
    paths, rows, failed = [], [], False
    for name, shape in shapes.items():
        if args.models and name not in args.models.split(","):
            continue
        batch = 512 if device.type == "cuda" else 64
        p, r, f = gpu_model_rows(name, shape, tok, sentences, device, rounds, peak, batch)
        paths += p
        rows += r
        failed |= f
    print_tables(paths, rows, [f"kernels on {device.type}: " + "; ".join(
        f"{op} {line}" for op, line in describe()[f"kernels on {device.type}"].items())])
    out = args.json or cache_dir() / "benchmarks" / f"bench_encode_{device.type}.json"
    atomic_write_text(out, json.dumps({"benchmark": "bench_encode", "protocol": "gpu", "device": gpu,
                                       "tiny": args.tiny, "sentences": len(sentences), "rounds": rounds,
                                       "bf16_peak_flops": peak, "fp32_peak_flops": fp32_peak, "paths": paths,
                                       "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return 1 if failed else 0


def print_tables(paths_out, rows, notes) -> None:
    """The per-path table, then the comparison rows, then notes (Markdown)."""
    print()
    print("| path | sent/s | min cos | mean cos | Tatoeba en→x % | x→en % | Δ en→x | Δ x→en |")
    print("|---|---|---|---|---|---|---|---|")
    for e in paths_out:
        def f(key, fmt, e=e):
            return format(e[key], fmt) if key in e else "-"
        print(f"| {e['model']} L{e['layer']} {e['path']} | {f('sent_s', '.1f')} | {f('min_cos', '.5f')} | "
              f"{f('mean_cos', '.5f')} | {f('acc_en_x', '.2f')} | {f('acc_x_en', '.2f')} | {f('d_en_x', '+.2f')} | "
              f"{f('d_x_en', '+.2f')} |")
    print()
    width = max(len(r["case"]) for r in rows)
    print(f"| {'case':<{width}} | baseline | ours     | ratio  | agreement |")
    print(f"|{'-' * (width + 2)}|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']:<{width}} | {r['baseline_sent_s']:8.1f} | {r['ours_sent_s']:8.1f} | {r['ratio']:5.2f}x | "
              f"{r['agreement']} |")
    for note in notes:
        print(note)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny models, 40 sentences (seconds; for CI)")
    p.add_argument("--json", type=Path, default=None,
                   help="result file (default: <cache>/benchmarks/bench_encode.json)")
    p.add_argument("--threads", type=int, default=None, help="torch (and peer) intra-op threads (default: torch's)")
    p.add_argument("--sentences", type=int, default=None, help="timed sentences per model (default 500; tiny 40)")
    p.add_argument("--rounds", type=int, default=None, help="timing rounds (default 3; tiny 1)")
    p.add_argument("--acc-pairs", type=int, default=None,
                   help=f"Tatoeba pairs per language ({', '.join(ACC_LANGS)}) for accuracy (default 300; tiny 20)")
    p.add_argument("--peer-batch", type=int, default=64, help="sentences per padded peer batch")
    p.add_argument("--no-peers", action="store_true", help="leave out ONNX Runtime and OpenVINO")
    p.add_argument("--models", default=None, help="comma-separated subset: me5-small, xlmr-base-shape (default both)")
    p.add_argument("--xtreme", action="store_true",
                   help="also time XTREME's reference pipeline (fp32, file order, full depth; slow)")
    p.add_argument("--device", default="cpu", help="cpu (the CPU protocol with peers) or cuda[:N] (the GPU protocol)")
    p.add_argument("--protocol", choices=("cpu", "gpu"), default=None,
                   help="which table (default: gpu on a CUDA device, else cpu)")
    p.add_argument("--tokenizer", default=None, help="GPU protocol: tokenizer folder (default: the default model's)")
    args = p.parse_args()
    if (args.protocol or ("gpu" if args.device.startswith("cuda") else "cpu")) == "gpu":
        return gpu_protocol(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    n = args.sentences or (40 if args.tiny else 500)
    rounds = args.rounds or (1 if args.tiny else 3)
    acc_pairs = args.acc_pairs or (20 if args.tiny else 300)
    absent = _peers.missing()
    peers_on = not args.no_peers and not absent
    skip_note = None
    if args.no_peers:
        skip_note = "peer columns skipped: --no-peers"
    elif absent:
        skip_note = f"peer columns skipped: {', '.join(absent)} not installed ({_peers.INSTALL_HINT})"
    sentences = tatoeba_sentences(n)
    peak_dims = [(8192, 768, 3072)] if not args.tiny else []
    bf16_peak = gemm_peak(args.tiny, peak_dims, torch.bfloat16)
    fp32_peak = gemm_peak(args.tiny, peak_dims, torch.float32)
    header = [f"machine: {machine_info()['cpu']}, {threads} threads, shared with other work (ratios and agreement "
              f"hold; absolute speeds move with the load)",
              f"measured matmul peaks: bf16 {bf16_peak / 1e9:.0f} GFLOP/s, fp32 {fp32_peak / 1e9:.0f} GFLOP/s "
              f"(best of 2048^3 and the models' FFN shape)",
              f"{len(sentences)} Tatoeba sentences ({', '.join(LANGS)}) timed, {rounds} interleaved rounds; "
              f"speeds in sentences/s"]
    if skip_note:
        header.append(skip_note)
    print("\n".join(header), flush=True)
    rows, paths_out, notes, failed = [], [], [], False
    for name, model, tok, layer, prefix, with_acc in make_models(args.tiny):
        if args.models and name not in args.models.split(","):
            continue
        enc = {dt: SentenceEncoder(model, tok, layer=layer, prefix=prefix, dtype=torch.bfloat16 if dt != "fp32"
                                   else torch.float32, int8=dt == "int8") for dt in ("bf16", "fp32", "int8")}
        hf32 = truncated_copy(model, layer, torch.float32)
        pipes = {"hf fp32": partial(hf_tuned, hf32, tok, sentences=None, layer=layer, prefix=prefix),
                 "hf-tuned": partial(hf_tuned, truncated_copy(model, layer, torch.bfloat16), tok,
                                     sentences=None, layer=layer, prefix=prefix)}
        with tempfile.TemporaryDirectory() as tmp:
            if peers_on:
                peers, note = build_peers(model, tok, layer, prefix, threads, Path(tmp), args.peer_batch, args.tiny)
                notes.append(f"{name}: {note}")
                pipes.update(peers)
            pipes.update({f"ours {dt}": enc[dt] for dt in ("bf16", "int8", "fp32")})
            call = {k: (partial(f.func, *f.args, sentences, **{kk: v for kk, v in f.keywords.items()
                                                               if kk != "sentences"})
                        if isinstance(f, partial) else partial(f, sentences)) for k, f in pipes.items()}
            if args.xtreme:
                t0 = time.perf_counter()
                xtreme_out = xtreme_reference(model, tok, sentences, layer, prefix)
                t_xtreme = time.perf_counter() - t0
            outs = {k: f() for k, f in call.items()}  # also the warm-up
            ref = outs["hf fp32"]
            cos = {k: (o * ref).sum(1) for k, o in outs.items()}
            if args.xtreme:
                cos["xtreme"] = (xtreme_out * ref).sum(1)
            acc = {}
            if with_acc:
                hf_ref = partial(hf_tuned, hf32, tok, layer=layer, prefix=prefix)
                acc["hf fp32"] = tatoeba_accuracy(hf_ref, ACC_LANGS, acc_pairs)
                for k, f in pipes.items():
                    if k in ("hf-tuned", "hf fp32"):
                        continue
                    fn = (partial(f.func, *f.args, **{kk: v for kk, v in f.keywords.items() if kk != "sentences"})
                          if isinstance(f, partial) else f)
                    acc[k] = tatoeba_accuracy(fn, ACC_LANGS, acc_pairs)
            times = {k: [] for k in call}
            peak = bf16_peak
            for _ in range(rounds):
                # the peak again each round, beside the pipelines: the bound uses the best the
                # machine showed while they ran
                peak = max(peak, gemm_peak(args.tiny, peak_dims, torch.bfloat16))
                for k, f in call.items():
                    t0 = time.perf_counter()
                    f()
                    times[k].append(time.perf_counter() - t0)
        rate = {k: len(sentences) / min(t) for k, t in times.items()}
        rate_median = {k: len(sentences) / statistics.median(t) for k, t in times.items()}
        if args.xtreme:
            rate["xtreme"] = rate_median["xtreme"] = len(sentences) / t_xtreme

        def mean_acc(k, acc=acc):
            a = acc[k].values()
            return (statistics.fmean(x for x, _ in a), statistics.fmean(y for _, y in a))

        ok_acc = {}
        for k in [*(["xtreme"] if args.xtreme else []), *call]:
            entry = {"model": name, "layer": layer, "path": k, "sent_s": rate[k], "sent_s_median": rate_median[k],
                     "min_cos": cos[k].min().item(), "mean_cos": cos[k].mean().item()}
            if k in acc and k != "hf fp32":
                ex, xe = mean_acc(k)
                r_ex, r_xe = mean_acc("hf fp32")
                entry.update(acc_en_x=ex, acc_x_en=xe, d_en_x=ex - r_ex, d_x_en=xe - r_xe,
                             acc_per_lang={c: list(v) for c, v in acc[k].items()})
                ok_acc[k] = abs(ex - r_ex) <= ACC_TOLERANCE + 1e-9 and abs(xe - r_xe) <= ACC_TOLERANCE + 1e-9
            elif k == "hf fp32" and with_acc:
                ex, xe = mean_acc("hf fp32")
                entry.update(acc_en_x=ex, acc_x_en=xe, acc_per_lang={c: list(v) for c, v in acc[k].items()})
            paths_out.append(entry)
        # Agreement gate: our paths and the tuned HF path must match the fp32 reference.
        base0 = "xtreme" if args.xtreme else "hf fp32"
        for k, need in (("ours bf16", 0.99), ("ours int8", 0.99), ("ours fp32", 0.9999), ("hf-tuned", 0.99)):
            good = cos[k].min().item() >= need
            failed |= not good
            rows.append({"case": f"{name} L{layer}: {k} vs {base0}", "baseline_sent_s": rate[base0],
                         "ours_sent_s": rate[k], "ratio": rate[k] / rate[base0],
                         "agreement": f"{'ok' if good else 'FAIL'} min cos {cos[k].min().item():.5f} (need {need})"})
        peer_names = [k for k in call if not k.startswith(("ours", "hf"))]
        eligible = [k for k in peer_names if ok_acc.get(k, True)]
        for ours in ("ours bf16", "ours int8"):
            for base in (["hf-tuned"] + ([max(eligible, key=rate.__getitem__)] if eligible else [])):
                what = "fastest peer " + base if base != "hf-tuned" else base
                acc_txt = ""
                if ours in ok_acc:
                    e = next(x for x in paths_out if x["model"] == name and x["path"] == ours)
                    acc_txt = f"; Tatoeba Δ vs fp32 en→x {e['d_en_x']:+.2f}, x→en {e['d_x_en']:+.2f}"
                rows.append({"case": f"{name} L{layer}: {ours} vs {what}", "baseline_sent_s": rate[base],
                             "ours_sent_s": rate[ours], "ratio": rate[ours] / rate[base],
                             "agreement": f"min cos {cos[ours].min().item():.5f} vs {cos[base].min().item():.5f}"
                                          f"{acc_txt}"})
        excluded = [k for k in peer_names if not ok_acc.get(k, True)]
        if excluded:
            notes.append(f"{name}: outside {ACC_TOLERANCE} points of fp32 accuracy, so not counted as the fastest "
                         f"peer: {', '.join(excluded)}")
        ids, _ = enc["bf16"].tokenize(sentences)
        flops = encode_flops(model.config, [len(s) for s in ids], layer)
        bound = len(sentences) / (flops / peak)
        rows.append({"case": f"{name} L{layer}: ours bf16 vs bf16 FLOP bound", "baseline_sent_s": bound,
                     "ours_sent_s": rate["ours bf16"], "ratio": rate["ours bf16"] / bound,
                     "agreement": f"peak {peak / 1e9:.0f} GFLOP/s (best over the rounds), "
                                  f"{flops / len(sentences) / 1e9:.3f} GFLOP/sent"})
    acc_note = ([f"Tatoeba accuracy: mean over {', '.join(ACC_LANGS)}, first {acc_pairs} pairs each, Δ against the "
                 f"fp32 HF pipeline (sorted batches, SDPA, stopped at the pooled layer), the reference of the cosines "
                 f"too"] if any("acc_en_x" in e for e in paths_out) else [])
    print_tables(paths_out, rows, acc_note + notes)
    out = args.json or cache_dir() / "benchmarks" / "bench_encode.json"
    atomic_write_text(out, json.dumps({"benchmark": "bench_encode", "tiny": args.tiny, "sentences": len(sentences),
                                       "rounds": rounds, "bf16_peak_flops": bf16_peak, "fp32_peak_flops": fp32_peak,
                                       "peers": _peers.versions() if peers_on else skip_note,
                                       "machine": machine_info(), "paths": paths_out, "rows": rows,
                                       "notes": notes}, indent=2) + "\n")
    print(f"wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
