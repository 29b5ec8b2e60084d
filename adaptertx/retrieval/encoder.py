"""Sentence encoding for retrieval: one hidden layer's mean-pooled, L2-normalised states.

:func:`encode` runs the packed fast encoder (:mod:`adaptertx.retrieval.packed`: length-sorted,
padding-free batches, stopping at the pooled layer) by default, or with ``backend="hf"`` the
plain Hugging Face pipeline (length-sorted padded batches, masked mean pool of one layer),
the reference the packed encoder is held to. Both L2-normalise the mean of one layer's
hidden states, special tokens included (XTREME's retrieval protocol).

Tatoeba, BUCC, LAReQA and Mewsli-X are scored in :mod:`adaptertx.evaluation.retrieval_targets`;
:func:`adaptertx.retrieval.mine.mine` is the blocked ratio-margin miner.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from adaptertx.environment import default_dtype, resolve_device
from adaptertx.errors import AdaptertxError
from adaptertx.retrieval.mine import knn

log = logging.getLogger("adaptertx.retrieval")

BACKENDS = ("packed", "hf")
# On CPU a packed batch's activations should stay in cache: on 500 Tatoeba sentences, bf16,
# 2 threads, 2048 tokens encoded 1335 sentences/s with me5-small (8192: 1155) and 746 with an
# XLM-R-base-shaped model at layer 7 (8192: 692); a GPU wants large batches.
_CPU_TOKENS, _GPU_TOKENS = 2048, 16384
# With int8 weights, packed batches run through the encoder together, layer by layer, up to this
# many tokens, so each layer is dequantised once per round rather than once per batch (the
# activations of the round are alive at once: 64k tokens x 768 dims in bf16 is 96 MiB). Dense
# weights need no dequantisation and keep one batch at a time, whose activations stay in cache.
ROUND_TOKENS = 65536


def tokens_per_batch_for(device: torch.device | str) -> int:
    """The default tokens per packed forward on ``device``: 2048 on CPU, 16384 on a GPU."""
    return _CPU_TOKENS if torch.device(device).type == "cpu" else _GPU_TOKENS


def _check_layer(model: PreTrainedModel, layer: int | None) -> int:
    n_layers = model.config.num_hidden_layers
    layer = n_layers if layer is None else layer
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= n_layers:
        raise AdaptertxError(f"layer {layer} is outside the model: it has hidden states 0..{n_layers}")
    return layer


def _position_limit(model: PreTrainedModel) -> int:
    """Longest input (tokens) the model's position embeddings allow."""
    cfg = model.config
    offset = cfg.pad_token_id + 1 if cfg.model_type in ("xlm-roberta", "roberta") else 0
    return cfg.max_position_embeddings - offset


class SentenceEncoder:
    """Encodes lists of sentences into unit-norm embeddings of one layer, in input order.

    Args:
        model, tokenizer: a loaded encoder (optionally an ``adapters`` model with one active
            bottleneck adapter) and its tokenizer.
        layer: hidden-state index to pool (0 = embeddings; default: the last layer).
        prefix: text prepended to every sentence (e5 models: see :func:`retrieval_prefixes`).
        max_length: longer inputs are truncated to this many tokens (capped at the model's
            position limit); :attr:`truncated` counts them.
        dtype: compute dtype, ``torch.float32`` or ``torch.bfloat16`` (default:
            :func:`default_dtype`).
        int8: keep the linear weights as int8 rows + scales (packed backend; the HF backend
            quantises the model in place with :func:`adaptertx.quantize.quantize_linears`).
        backend: ``"packed"`` (the fast encoder) or ``"hf"`` (the reference pipeline).
        batch_size: sentences per padded batch (``hf`` backend).
        tokens_per_batch: tokens per packed forward (``packed`` backend; 1 encodes each
            sentence on its own; default: :func:`tokens_per_batch_for` the model's device).
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, layer: int | None = None,
                 prefix: str = "", max_length: int = 512, dtype: torch.dtype | None = None, int8: bool = False,
                 backend: str = "packed", batch_size: int = 64,
                 tokens_per_batch: int | None = None) -> None:
        if tokens_per_batch is None:
            tokens_per_batch = tokens_per_batch_for(model.device)
        if backend not in BACKENDS:
            raise AdaptertxError(f"unknown encoder backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if batch_size < 1 or tokens_per_batch < 1 or max_length < 2:
            raise AdaptertxError("batch_size and tokens_per_batch must be at least 1, max_length at least 2")
        self.model, self.tokenizer = model, tokenizer
        self.layer = _check_layer(model, layer)
        self.prefix, self.backend = prefix, backend
        self.max_length = min(max_length, _position_limit(model))
        self.dtype = default_dtype(model.device) if dtype is None else dtype
        if self.dtype not in (torch.float32, torch.bfloat16):
            raise AdaptertxError(f"encoding runs in float32 or bfloat16, got {self.dtype}")
        self.int8 = int8
        self.batch_size, self.tokens_per_batch = batch_size, tokens_per_batch
        self.dim = model.config.hidden_size
        self.truncated = 0
        self._packed = None
        self.round_tokens = tokens_per_batch
        if backend == "packed":
            from adaptertx.retrieval.packed import PackedEncoder

            self._packed = PackedEncoder(model, dtype=self.dtype, int8=int8 or None)
            self.round_tokens = max(ROUND_TOKENS, tokens_per_batch) if self._packed.int8 else tokens_per_batch
        elif int8:
            from adaptertx.quantize import Int8Linear, quantize_linears

            if not any(isinstance(m, Int8Linear) for m in model.modules()):
                quantize_linears(getattr(model, "base_model", model), compute_dtype=torch.bfloat16
                                 if self.dtype == torch.bfloat16 else torch.float32)

    def tokenize(self, sentences: list[str]) -> tuple[list[list[int]], int]:
        """Token ids of ``prefix + sentence`` with special tokens, truncated; and how many were cut."""
        if not sentences:
            return [], 0
        texts = [self.prefix + s for s in sentences]
        ids = self.tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        cut = 0
        for i, seq in enumerate(ids):
            if len(seq) > self.max_length:
                # As the tokenizer's own truncation: drop content tokens, keep the closing special token.
                ids[i] = seq[: self.max_length - 1] + seq[-1:]
                cut += 1
        return ids, cut

    def __call__(self, sentences: list[str], progress: bool = False) -> torch.Tensor:
        """embeddings: (len(sentences), hidden) float32, unit-norm rows in input order."""
        if isinstance(sentences, str):
            raise AdaptertxError("encode takes a list of sentences, got a single string")
        out = torch.empty(len(sentences), self.dim)
        if not sentences:
            return out
        ids, cut = self.tokenize(list(sentences))
        if cut:
            self.truncated += cut
            log.warning("%d of %d sentences were longer than %d tokens and were truncated",
                        cut, len(sentences), self.max_length)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        if self.backend == "packed":
            self._encode_packed(ids, order, out, progress)
        else:
            self._encode_hf(ids, order, out, progress)
        return out

    def _encode_packed(self, ids, order, out, progress) -> None:
        from adaptertx.retrieval.packed import pack

        batches, start = [], 0
        while start < len(order):
            end, total = start, 0
            while end < len(order) and (end == start or total + len(ids[order[end]]) <= self.tokens_per_batch):
                total += len(ids[order[end]])
                end += 1
            batches.append(order[start:end])
            start = end
        # Consecutive batches go through the encoder together, layer by layer, up to
        # round_tokens tokens: an int8 layer is then dequantised once per round, not per batch.
        sizes = [sum(len(ids[i]) for i in idx) for idx in batches]
        rounds, start = [], 0
        while start < len(batches):
            end, total = start, 0
            while end < len(batches) and (end == start or total + sizes[end] <= self.round_tokens):
                total += sizes[end]
                end += 1
            rounds.append(batches[start:end])
            start = end
        with tqdm(total=len(batches), desc="encode", unit="batch", disable=not progress, leave=False) as bar:
            for group in rounds:
                # Packed on the CPU: the encoder checks them there and moves them to its device.
                packed = [pack([ids[i] for i in idx]) for idx in group]
                embs = self._packed.encode_many(packed, self.layer)
                for idx, emb in zip(group, embs, strict=True):
                    out[torch.tensor(idx)] = emb.float().cpu()
                bar.update(len(group))

    def _encode_hf(self, ids, order, out, progress) -> None:
        model, layer = self.model, self.layer
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        base = getattr(model, "base_model", model)
        saved = base.encoder.layer
        try:
            # Stop at the pooled layer: drop the layers above it for the duration of the call.
            base.encoder.layer = torch.nn.ModuleList(list(saved)[:layer])
            batches = range(0, len(order), self.batch_size)
            for start in tqdm(batches, desc="encode", unit="batch", disable=not progress, leave=False):
                idx = order[start:start + self.batch_size]
                longest = max(len(ids[i]) for i in idx)
                input_ids = torch.full((len(idx), longest), pad, dtype=torch.long)
                mask = torch.zeros(len(idx), longest, dtype=torch.long)
                for row, i in enumerate(idx):
                    input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
                    mask[row, : len(ids[i])] = 1
                with torch.inference_mode(), torch.autocast(model.device.type, dtype=torch.bfloat16,
                                                            enabled=self.dtype == torch.bfloat16):
                    hidden = base(input_ids=input_ids.to(model.device), attention_mask=mask.to(model.device),
                                  output_hidden_states=True).hidden_states[layer]
                m = mask.unsqueeze(-1).to(torch.float32).to(model.device)
                pooled = (hidden.float() * m).sum(1) / m.sum(1)
                out[torch.tensor(idx)] = torch.nn.functional.normalize(pooled, dim=-1).cpu()
        finally:
            base.encoder.layer = saved


def encode(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, sentences: list[str], *,
           layer: int | None = None, batch_size: int = 64, prefix: str = "", max_length: int = 512,
           dtype: torch.dtype = torch.float32, progress: bool = False, backend: str = "packed",
           int8: bool = False, tokens_per_batch: int | None = None) -> torch.Tensor:
    """Mean-pooled, L2-normalised sentence embeddings of one hidden layer.

    Args:
        sentences: n sentences; the output rows follow this order.
        layer: hidden-state index to pool (0 = embeddings, ``num_hidden_layers`` = last,
            the default). Layers above it are not computed.
        batch_size: sentences per padded forward (``backend="hf"``).
        prefix: text prepended to each sentence (e5 models: see :func:`retrieval_prefixes`).
        max_length: longer inputs are truncated to this many tokens (a warning gives the count).
        dtype: ``torch.float32``, or ``torch.bfloat16`` (bf16 weights in the packed encoder,
            autocast in the HF pipeline).
        backend: ``"packed"`` (fast, default) or ``"hf"`` (the reference pipeline).
        int8: int8 weight storage (see :class:`SentenceEncoder`).
        tokens_per_batch: tokens per packed forward (``backend="packed"``).

    Returns:
        embeddings: (n, hidden) float32, unit norm per row (special tokens included in the
        mean, padding excluded, as XTREME does).
    """
    return SentenceEncoder(model, tokenizer, layer=layer, prefix=prefix, max_length=max_length, dtype=dtype,
                           int8=int8, backend=backend, batch_size=batch_size,
                           tokens_per_batch=tokens_per_batch)(sentences, progress=progress)


def retrieval_accuracy(queries: torch.Tensor, candidates: torch.Tensor, *, block: int = 4096) -> float:
    """Percent of rows i whose nearest candidate by cosine is row i (see :func:`retrieval_hits`)."""
    return 100.0 * retrieval_hits(queries, candidates, block=block).float().mean().item()


def retrieval_hits(queries: torch.Tensor, candidates: torch.Tensor, *, block: int = 4096) -> torch.Tensor:
    """(n,) bool: whether row i's nearest candidate by cosine is row i.

    Args:
        queries: (n, dim) unit-norm embeddings.
        candidates: (n, dim) unit-norm embeddings, row i the translation of query i.
        block: queries per similarity tile (memory is block × n floats).
    """
    if queries.shape != candidates.shape:
        raise AdaptertxError(f"retrieval needs aligned pairs: got {queries.shape[0]} queries and "
                             f"{candidates.shape[0]} candidates")
    if queries.shape[0] == 0:
        raise AdaptertxError("retrieval needs at least one pair")
    _, nearest = knn(queries, candidates, 1, block=block)
    return nearest[:, 0].cpu() == torch.arange(len(queries))


def load_encoder(model_name: str, adapter: str | os.PathLike | None = None, *,
                 device: str | torch.device | None = "auto",
                 ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str | None]:
    """Load a model (and optionally an AdapterHub adapter or AdapterFusion setup, activated) for
    encoding.

    Args:
        model_name: a model name, folder or Hub id (see :func:`adaptertx.models.load_model`).
        adapter: a folder written by ``adapters``' ``save_adapter`` (e.g. the ``adapter/``
            folder of an ``adaptertx train`` run or a weight-space merge), one written by
            ``save_adapter_setup`` for a Fusion (``adapter/`` of ``adaptertx merge --method
            fusion``: its task adapters and the Fusion, heads ignored), or a run or merged
            folder holding either as ``adapter/``; loaded with ``use_safetensors=True``.
        device: where the model (and its adapters) is put: ``auto``, ``cpu``, ``cuda``, ``cuda:N``
            (:func:`adaptertx.environment.resolve_device`).

    Returns:
        (model, tokenizer, the active adapter's or Fusion's name, or None).
    """
    from adaptertx.models import load_model

    device = resolve_device(device)
    model, tokenizer = load_model(model_name)
    if adapter is None:
        return model.to(device), tokenizer, None
    path = Path(adapter).expanduser()
    if not any((path / f).is_file() for f in ("adapter_config.json", "adapter_setup.json")) and (
            (path / "adapter").is_dir()):
        path = path / "adapter"
    import adapters

    adapters.init(model)
    try:
        if (path / "adapter_setup.json").is_file():
            name = _load_fusion_setup(model, path)
        elif (path / "adapter_config.json").is_file():
            name = model.load_adapter(str(path), use_safetensors=True)
            model.set_active_adapters(name)
        else:
            raise AdaptertxError(f"{path} is not an adapter folder (no adapter_config.json) nor a Fusion setup (no "
                                 f"adapter_setup.json); pass the adapter/ folder of an `adaptertx train` run or "
                                 f"`adaptertx merge` folder")
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise AdaptertxError(f"could not load the adapter in {path}: {str(e).splitlines()[0]}") from None
    model.eval()
    return model.to(device), tokenizer, name


def _load_fusion_setup(model, path: Path) -> str:
    """The task adapters and the Fusion of a ``save_adapter_setup`` folder, the Fusion active
    (a head in the setup is not loaded: encoding needs none)."""
    import logging

    from adapters.composition import Fuse

    quiet = logging.getLogger("adapters.model_mixin")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "head setup not supported by the current model": expected here
    try:
        setup, _ = model.load_adapter_setup(str(path), use_safetensors=True)
    finally:
        quiet.setLevel(level)
    if not isinstance(setup, Fuse) or not all(isinstance(c, str) for c in setup.children):
        raise AdaptertxError(f"{path} holds the adapter setup {setup}; encoding takes one adapter or one Fuse of "
                             f"adapters (the adapter/ folder of `adaptertx merge --method fusion`)")
    model.set_active_adapters(setup)
    return setup.name


#: Retrieval task kinds as the e5 authors tell them apart (intfloat/multilingual-e5-small's model
#: card, "Do I need to add the prefix?"; Wang et al., 2024): ``"symmetric"``, both sides the same
#: kind of text (bitext mining: Tatoeba, BUCC), every sentence takes ``"query: "``;
#: ``"asymmetric"``, a query against passages (LAReQA, Mewsli-X): ``"query: "`` and ``"passage: "``.
TASK_KINDS = ("symmetric", "asymmetric")


def retrieval_prefixes(model, kind: str) -> tuple[str, str]:
    """``(query prefix, candidate prefix)`` of ``model`` for a task of ``kind`` (:data:`TASK_KINDS`),
    from its :class:`adaptertx.models.ModelSpec` (e5: see :data:`TASK_KINDS`; other models none)."""
    from adaptertx.models import spec_for

    if kind not in TASK_KINDS:
        raise AdaptertxError(f"unknown retrieval task kind {kind!r}; kinds: {', '.join(TASK_KINDS)}")
    spec = spec_for(model)
    query = spec.query_prefix if spec else ""
    if kind == "symmetric":
        return query, query
    return query, (spec.passage_prefix if spec else "")


def resolve_layer_prefix(model, layer: int | None, prefix: str | None,
                         kind: str = "symmetric") -> tuple[int, str]:
    """The layer to pool (given, else the model's XTREME retrieval layer, else the last) and the
    prefix of a symmetric task's sentences (given, else :func:`retrieval_prefixes`)."""
    from adaptertx.models import spec_for

    spec = spec_for(model)
    if layer is None:
        layer = spec.retrieval_layer if spec else model.config.num_hidden_layers
    if prefix is None:
        prefix = retrieval_prefixes(model, kind)[0]
    return layer, prefix
