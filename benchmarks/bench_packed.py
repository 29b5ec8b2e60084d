"""Packed encoder forward vs the Hugging Face padded forward, for retrieval encoding.

Both sides encode the same sentences up to one layer and mean-pool + normalise each
sentence; the baseline pads each batch to its longest sentence and asks HF for all hidden
states, ours packs ~4096 tokens per forward. Two baselines: length-sorted batches of 64
(the best plain-HF setting) and XTREME's retrieval protocol (batches of 100 in file order;
ours packs the same file order, unsorted). Model: a randomly initialised BertModel in multilingual-e5-small's shape
(12 layers, hidden 384, 12 heads, FFN 1536); Tatoeba-like lengths (4..22 tokens).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Case, main  # noqa: E402

from adaptertx.retrieval.packed import PackedEncoder, pack  # noqa: E402


def _hf_encode(model, sentences, layer, batch_size=64):
    out = []
    with torch.inference_mode():
        for i in range(0, len(sentences), batch_size):
            batch = sentences[i : i + batch_size]
            longest = max(map(len, batch))
            ids = torch.zeros(len(batch), longest, dtype=torch.long)
            mask = torch.zeros(len(batch), longest, dtype=torch.long)
            for j, s in enumerate(batch):
                ids[j, : len(s)] = torch.tensor(s)
                mask[j, : len(s)] = 1
            hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[layer]
            m = mask.unsqueeze(-1).to(hs.dtype)
            out.append(F.normalize(((hs * m).sum(1) / m.sum(1)).float(), dim=1))
    return torch.cat(out)


def _packed_encode(encoder, sentences, layer, tokens_per_batch=4096):
    out, start = [], 0
    while start < len(sentences):
        end, total = start, 0
        while end < len(sentences) and (end == start or total + len(sentences[end]) <= tokens_per_batch):
            total += len(sentences[end])
            end += 1
        ids, cu = pack(sentences[start:end])
        out.append(encoder.encode(ids, cu, layer))
        start = end
    return torch.cat(out)


def make_cases(tiny: bool) -> list[Case]:
    if tiny:
        cfg = BertConfig(vocab_size=500, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128)
        n, layer = 40, 2
    else:
        cfg = BertConfig(vocab_size=5000, hidden_size=384, num_hidden_layers=12, num_attention_heads=12,
                         intermediate_size=1536)
        n, layer = 512, 12
    torch.manual_seed(0)
    model = BertModel(cfg, add_pooling_layer=False).eval()
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(4, 23, (n,), generator=g).tolist()
    in_file_order = [torch.randint(5, cfg.vocab_size, (k,), generator=g).tolist() for k in lengths]
    by_length = sorted(in_file_order, key=len)
    cases = []
    for dtype, min_cos in ((torch.float32, 0.9999), (torch.bfloat16, 0.99)):
        m = copy.deepcopy(model).to(dtype)
        encoder = PackedEncoder(m)

        def agree(base, ours, min_cos=min_cos):
            cos = (base.float() * ours.float()).sum(1).min().item()
            return cos >= min_cos, f"min cos {cos:.5f}"

        tag = f"{n} sents layer {layer} h{cfg.hidden_size} {str(dtype).replace('torch.', '')}"
        cases.append(Case(f"vs HF sorted, batch 64: {tag}", lambda m=m: _hf_encode(m, by_length, layer),
                          lambda e=encoder: _packed_encode(e, by_length, layer), agree))
        cases.append(Case(f"vs HF file order, batch 100: {tag}",
                          lambda m=m: _hf_encode(m, in_file_order, layer, batch_size=100),
                          lambda e=encoder: _packed_encode(e, in_file_order, layer), agree))
    return cases


if __name__ == "__main__":
    raise SystemExit(main("bench_packed", make_cases))
