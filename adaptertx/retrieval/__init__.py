"""Sentence retrieval: encode sentences with a chosen hidden layer and score Tatoeba.

:func:`encode` is the plain Hugging Face pipeline (length-sorted batches, masked mean pool of
one layer, L2 normalised) — the reference the packed fast encoder is held to.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from adaptertx.errors import AdaptertxError


def encode(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, sentences: list[str], *,
           layer: int | None = None, batch_size: int = 64, prefix: str = "", max_length: int = 512,
           dtype: torch.dtype = torch.float32, progress: bool = False) -> torch.Tensor:
    """Mean-pooled, L2-normalised sentence embeddings of one hidden layer.

    Args:
        sentences: n sentences; the output rows follow this order.
        layer: hidden-state index to pool (0 = embeddings, ``num_hidden_layers`` = last,
            the default). Layers above it are not computed.
        batch_size: sentences per forward; batches are formed after sorting by length.
        prefix: text prepended to each sentence (``"passage: "`` for e5 models).
        max_length: longer inputs are truncated to this many tokens.
        dtype: ``torch.float32``, or ``torch.bfloat16`` to run under autocast.

    Returns:
        embeddings: (n, hidden) float32, unit norm per row (special tokens included in the
        mean, padding excluded, as XTREME does).
    """
    n_layers = model.config.num_hidden_layers
    layer = n_layers if layer is None else layer
    if not 0 <= layer <= n_layers:
        raise AdaptertxError(f"layer {layer} is outside the model: it has hidden states 0..{n_layers}")
    if not sentences:
        return torch.empty(0, model.config.hidden_size)
    texts = [prefix + s for s in sentences]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=True, truncation=True,
                                             max_length=max_length)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    out = torch.empty(len(texts), model.config.hidden_size)
    encoder_layers = model.encoder.layer
    saved = list(encoder_layers)
    try:
        # Stop at the pooled layer: drop the layers above it for the duration of the call.
        model.encoder.layer = torch.nn.ModuleList(saved[:layer])
        batches = range(0, len(order), batch_size)
        for start in tqdm(batches, desc="encode", unit="batch", disable=not progress, leave=False):
            idx = order[start:start + batch_size]
            batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                              max_length=max_length, return_tensors="pt").to(model.device)
            with torch.inference_mode(), torch.autocast(model.device.type, dtype=torch.bfloat16,
                                                        enabled=dtype == torch.bfloat16):
                hidden = model(**batch, output_hidden_states=True).hidden_states[layer]
            mask = batch["attention_mask"].unsqueeze(-1).to(torch.float32)
            pooled = (hidden.float() * mask).sum(1) / mask.sum(1)
            out[idx] = torch.nn.functional.normalize(pooled, dim=-1).cpu()
    finally:
        model.encoder.layer = encoder_layers
    return out


@dataclass(frozen=True)
class TatoebaScore:
    """Retrieval accuracy (percent) for one language pair, both directions."""

    lang: str
    pairs: int
    x_to_en: float
    en_to_x: float
    low_resource: bool


def retrieval_accuracy(queries: torch.Tensor, candidates: torch.Tensor) -> float:
    """Percent of rows i whose nearest candidate by cosine is row i.

    Args:
        queries: (n, dim) unit-norm embeddings.
        candidates: (n, dim) unit-norm embeddings, row i the translation of query i.
    """
    if queries.shape != candidates.shape:
        raise AdaptertxError(f"retrieval needs aligned pairs: got {queries.shape[0]} queries and "
                             f"{candidates.shape[0]} candidates")
    if queries.shape[0] == 0:
        raise AdaptertxError("retrieval needs at least one pair")
    nearest = (queries @ candidates.T).argmax(dim=1)
    return 100.0 * (nearest == torch.arange(len(queries))).float().mean().item()


def evaluate_tatoeba(model_name: str, langs: list[str] | None = None, *, layer: int | None = None,
                     max_pairs: int | None = None, prefix: str | None = None, batch_size: int = 64,
                     dtype: torch.dtype = torch.float32, progress: bool = True) -> list[TatoebaScore]:
    """Tatoeba retrieval accuracy of a model on bundled languages, x→en and en→x.

    Args:
        model_name: a model name, folder or Hub id (see :func:`adaptertx.models.load_model`).
        langs: language codes (default: every bundled Tatoeba language).
        layer: hidden layer to pool (default: the model's XTREME retrieval layer, else the last).
        max_pairs: use only the first ``max_pairs`` pairs of each language (file order).
        prefix: text prepended to every sentence (default: the model's, e.g. e5's "passage: ").
    """
    from adaptertx import data
    from adaptertx.languages import is_low_resource
    from adaptertx.models import load_model, spec_for
    from adaptertx.tasks import get_task

    task = get_task("tatoeba")
    bundled = data.available("tatoeba")["tatoeba"]
    codes = sorted(bundled) if not langs else [task.check_language(code) for code in langs]
    missing = [c for c in codes if c not in bundled]
    if missing:
        raise AdaptertxError(f"no bundled Tatoeba data for {', '.join(missing)}")
    if max_pairs is not None and max_pairs < 1:
        raise AdaptertxError(f"max_pairs must be at least 1, got {max_pairs}")
    model, tokenizer = load_model(model_name)
    spec = spec_for(model)
    if layer is None:
        layer = spec.retrieval_layer if spec else model.config.num_hidden_layers
    if prefix is None:
        prefix = spec.prefix if spec else ""
    scores = []
    for code in tqdm(codes, desc="tatoeba", unit="lang", disable=not progress):
        rows = data.load("tatoeba", code, "test")[:max_pairs]
        kw = dict(layer=layer, batch_size=batch_size, prefix=prefix, dtype=dtype)
        src = encode(model, tokenizer, [r["source"] for r in rows], **kw)
        tgt = encode(model, tokenizer, [r["target"] for r in rows], **kw)
        scores.append(TatoebaScore(code, len(rows), retrieval_accuracy(src, tgt),
                                   retrieval_accuracy(tgt, src), is_low_resource(code)))
    return scores
