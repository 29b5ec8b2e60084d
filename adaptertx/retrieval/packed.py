"""A compact packed forward of a BERT-family encoder for sentence-retrieval encoding.

The tokens of a batch are packed without padding into one (tokens, dim) tensor; all the
linear layers, LayerNorms and the GELU run on that tensor (through the fused ops in
:mod:`adaptertx.kernels`), and only attention sees each sequence on its own: sequences of
equal length are attended together with
:func:`torch.nn.functional.scaled_dot_product_attention` as one (count, heads, length,
head_dim) batch, with no padding and no mask. Sorting sentences by length before packing
makes those groups plain slices of the packed tensor (otherwise they are gathered). The
forward stops at the requested layer, and :meth:`PackedEncoder.encode` mean-pools and
L2-normalises each sentence (special tokens included, as XTREME's retrieval protocol does).

Reads the weights of a loaded Hugging Face ``BertModel`` or ``XLMRobertaModel`` (or a model
whose ``base_model`` is one) with absolute position embeddings; adapters are not applied.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from transformers.activations import ACT2FN

from adaptertx.errors import AdaptertxError
from adaptertx.kernels import add_layernorm, bias_gelu, segment_mean_pool_normalize


def pack(sequences: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack token-id lists into ``input_ids: (tokens,)`` int64 and ``cu_seqlens: (n + 1,)`` int64."""
    lengths = [len(s) for s in sequences]
    if any(n == 0 for n in lengths):
        raise AdaptertxError("pack: every sequence needs at least one token")
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    if lengths:
        cu[1:] = torch.tensor(lengths, dtype=torch.int64).cumsum(0)
    ids = torch.tensor([t for s in sequences for t in s], dtype=torch.int64)
    return ids, cu


class PackedEncoder:
    """Packed inference forward of a BERT/XLM-R encoder, up to a chosen layer.

    model: a loaded ``BertModel``/``XLMRobertaModel`` (its weights are read, not copied, in
    float32; a bfloat16 ``dtype`` keeps bfloat16 copies). ``dtype``: compute dtype, float32 or
    bfloat16 (default: the model's).
    """

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype | None = None) -> None:
        base = model if hasattr(model, "embeddings") and hasattr(model, "encoder") else getattr(model, "base_model", None)
        if base is None or not hasattr(base, "embeddings") or not hasattr(base, "encoder"):
            raise AdaptertxError(f"PackedEncoder needs a BertModel-like encoder, got {type(model).__name__}")
        cfg = base.config
        if getattr(cfg, "position_embedding_type", "absolute") != "absolute":
            raise AdaptertxError(f"PackedEncoder supports absolute positions only, got {cfg.position_embedding_type!r}")
        if getattr(cfg, "is_decoder", False):
            raise AdaptertxError("PackedEncoder supports encoders only (config.is_decoder is set)")
        self.dtype = dtype or next(base.parameters()).dtype
        if self.dtype not in (torch.float32, torch.bfloat16):
            raise AdaptertxError(f"PackedEncoder computes in float32 or bfloat16, got {self.dtype}")
        self.num_layers = cfg.num_hidden_layers
        self.heads = cfg.num_attention_heads
        self.eps = cfg.layer_norm_eps
        self.act = cfg.hidden_act
        emb = base.embeddings
        # XLM-R numbers positions from padding_idx + 1; BERT from 0.
        self.position_offset = emb.padding_idx + 1 if type(emb).__name__.startswith(("XLMRoberta", "Roberta")) else 0
        w = self._w
        self.word = w(emb.word_embeddings.weight)
        self.pos = w(emb.position_embeddings.weight)
        self.type0 = w(emb.token_type_embeddings.weight[0]) if hasattr(emb, "token_type_embeddings") else None
        self.emb_ln = (w(emb.LayerNorm.weight), w(emb.LayerNorm.bias))
        self.layers = []
        for layer in base.encoder.layer:
            att = layer.attention
            qkv_w = torch.cat([att.self.query.weight, att.self.key.weight, att.self.value.weight])
            qkv_b = torch.cat([att.self.query.bias, att.self.key.bias, att.self.value.bias])
            self.layers.append({
                "qkv": (w(qkv_w), w(qkv_b)),
                "attn_out": (w(att.output.dense.weight), w(att.output.dense.bias)),
                "ln1": (w(att.output.LayerNorm.weight), w(att.output.LayerNorm.bias)),
                "inter": (w(layer.intermediate.dense.weight), w(layer.intermediate.dense.bias)),
                "out": (w(layer.output.dense.weight), w(layer.output.dense.bias)),
                "ln2": (w(layer.output.LayerNorm.weight), w(layer.output.LayerNorm.bias)),
            })

    def _w(self, t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(self.dtype)

    @staticmethod
    def _length_groups(cu: torch.Tensor, lengths: torch.Tensor) -> list[tuple[int, int, int, torch.Tensor | None]]:
        """Sequences grouped by length: (length, count, first token, token index or None).

        A run of consecutive equal-length sequences (what a length-sorted batch is made of)
        is a plain slice of the packed tensor (index None); other groups carry the index of
        their tokens.
        """
        groups = []
        lens = lengths.tolist()
        starts = cu[:-1].tolist()
        i = 0
        runs: dict[int, list[tuple[int, int]]] = {}
        while i < len(lens):
            j = i
            while j + 1 < len(lens) and lens[j + 1] == lens[i]:
                j += 1
            runs.setdefault(lens[i], []).append((starts[i], j - i + 1))
            i = j + 1
        for length, parts in runs.items():
            if len(parts) == 1:
                first, count = parts[0]
                groups.append((length, count, first, None))
            else:
                index = torch.cat([torch.arange(f, f + c * length) for f, c in parts])
                groups.append((length, sum(c for _, c in parts), 0, index))
        return groups

    def _attention(self, qkv: torch.Tensor, groups) -> torch.Tensor:
        """Self-attention of each sequence on its own: qkv (tokens, 3 dim) -> (tokens, dim).

        Sequences of one length are attended together as a (count, heads, length, head_dim)
        batch, so no padding and no mask are needed.
        """
        tokens, three_dim = qkv.shape
        dim = three_dim // 3
        hd = dim // self.heads
        ctx = qkv.new_empty(tokens, dim)
        for length, count, first, index in groups:
            part = qkv[first : first + count * length] if index is None else qkv.index_select(0, index)
            q, k, v = part.view(count, length, 3, self.heads, hd).permute(2, 0, 3, 1, 4)
            out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(count * length, dim)
            if index is None:
                ctx[first : first + count * length] = out
            else:
                ctx.index_copy_(0, index, out)
        return ctx

    @torch.inference_mode()
    def hidden_states(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor, layer: int) -> torch.Tensor:
        """Hidden states after ``layer`` layers (0 = embeddings), as HF's ``hidden_states[layer]``.

        input_ids: (tokens,) packed token ids; cu_seqlens: (n + 1,) offsets. Returns
        (tokens, dim) in the compute dtype.
        """
        if not 0 <= layer <= self.num_layers:
            raise AdaptertxError(f"layer must be in 0..{self.num_layers}, got {layer}")
        if input_ids.dim() != 1 or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
            raise AdaptertxError("input_ids must be (tokens,) and cu_seqlens (n + 1,)")
        cu = cu_seqlens.to(torch.int64).cpu()
        if int(cu[0]) != 0 or int(cu[-1]) != input_ids.numel() or bool((cu[1:] <= cu[:-1]).any()):
            raise AdaptertxError("cu_seqlens must rise strictly from 0 to the number of tokens")
        lengths = cu[1:] - cu[:-1]
        tokens = input_ids.numel()
        if tokens == 0:
            return torch.zeros(0, self.word.shape[1], dtype=self.dtype)
        seq = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
        positions = torch.arange(tokens) - cu[:-1][seq] + self.position_offset
        if int(positions.max()) >= self.pos.shape[0]:
            raise AdaptertxError(f"a sequence is longer than the model's {self.pos.shape[0]} positions")
        x = self.word.index_select(0, input_ids)
        extra = self.pos.index_select(0, positions)
        if self.type0 is not None:
            extra = extra + self.type0
        x = add_layernorm(x, extra, *self.emb_ln, self.eps)
        groups = self._length_groups(cu, lengths)
        for p in self.layers[:layer]:
            qkv = F.linear(x, *p["qkv"])
            ctx = self._attention(qkv, groups)
            x = add_layernorm(F.linear(ctx, *p["attn_out"]), x, *p["ln1"], self.eps)
            w_i, b_i = p["inter"]
            if self.act == "gelu":
                inter = bias_gelu(torch.mm(x, w_i.t()), b_i)
            else:
                inter = ACT2FN[self.act](F.linear(x, w_i, b_i))
            x = add_layernorm(F.linear(inter, *p["out"]), x, *p["ln2"], self.eps)
        return x

    def encode(
        self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor, layer: int, out_dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """L2-normalised mean of each sequence's hidden states at ``layer``: (n, dim) in ``out_dtype``."""
        hidden = self.hidden_states(input_ids, cu_seqlens, layer)
        return segment_mean_pool_normalize(hidden, cu_seqlens.to(torch.int64).cpu(), out_dtype=out_dtype)
