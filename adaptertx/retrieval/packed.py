"""A compact packed forward of a BERT-family encoder for sentence-retrieval encoding.

The tokens of a batch are packed without padding into one (tokens, dim) tensor; all the
linear layers, LayerNorms and the GELU run on that tensor (through the fused ops in
:mod:`adaptertx.kernels`), and only attention sees each sequence on its own
(:func:`adaptertx.kernels.varlen_attention`, which reads q, k and v in place from the fused
QKV projection, with no padding and no mask). The forward stops at the requested layer, and
:meth:`PackedEncoder.encode` mean-pools and L2-normalises each sentence (special tokens
included, as XTREME's retrieval protocol does).

Reads the weights of a loaded Hugging Face ``BertModel`` or ``XLMRobertaModel`` (or a model
whose ``base_model`` is one) with absolute position embeddings. Linear weights are taken in
the compute dtype, or kept as int8 rows + scales (``int8=True``, or a model already holding
:class:`adaptertx.quantize.Int8Linear` layers) and dequantised just in time for each matmul.
An active ``adapters`` bottleneck adapter in the sequential ``seq_bn`` (Pfeiffer) placement
is applied after each layer's FFN with :func:`adaptertx.kernels.bottleneck_adapter` (an
averaged or otherwise merged adapter is one such adapter); an active AdapterFusion of such
adapters (``Fuse(a, b, ...)``) with :func:`adaptertx.kernels.adapter_fusion` (all the
layer's adapters in one GEMM, the fusion attention folded in) at the fusion's current softmax
temperature; other setups (parallel, stacks, LoRA, ...) are refused with a clear error.

Devices: the encoder's weights live on one device (``device=``, default the model's), and so
does every tensor of the forward. A batch comes from :func:`pack` on the CPU: its offsets are
checked there, its longest sequence counted there, and its ids, positions and offsets reach the
device in one copy (from pinned memory, without waiting, on a GPU); from then on nothing is read
back to the host until the caller takes the embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers.activations import ACT2FN

from adaptertx.environment import resolve_device
from adaptertx.errors import AdaptertxError
from adaptertx.fused_fusion import layer_weights
from adaptertx.kernels import (
    add_layernorm,
    bias_gelu,
    bottleneck_adapter,
    segment_mean_pool_normalize,
    varlen_attention,
)
from adaptertx.kernels.adapter_fusion import adapter_fusion, pack_fusion
from adaptertx.quantize import Int8Linear, dequantize_rows, quantize_rows

# The adapters-library bottleneck settings the packed forward implements (``seq_bn``).
_SEQ_BN = {"mh_adapter": False, "output_adapter": True, "original_ln_before": True, "original_ln_after": True,
           "ln_before": False, "ln_after": False, "use_gating": False, "residual_before_ln": True,
           "is_parallel": False, "phm_layer": False, "inv_adapter": None, "cross_adapter": False}


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


def _onednn_linear_available() -> bool:
    mkldnn = getattr(torch.ops, "mkldnn", None)
    return (torch.backends.mkldnn.is_available() and hasattr(mkldnn, "_linear_pointwise")
            and hasattr(mkldnn, "_reorder_linear_weight"))


_ONEDNN = _onednn_linear_available()


class _Linear:
    """A frozen linear layer: dense weight in the compute dtype, or int8 rows + fp32 scales.

    On CPU with oneDNN the dense weight is reordered once into oneDNN's blocked layout
    (``torch.ops.mkldnn._reorder_linear_weight``, what torch.compile's CPU freezing does), so
    each matmul skips the per-call weight reorder that ``F.linear`` pays, and the FFN's bias +
    GELU run as a oneDNN post-op on the accumulator (cheaper here than a separate pass,
    even the fused :func:`~adaptertx.kernels.bias_gelu`, which serves the other paths); int8
    storage is dequantised and reordered per call. x: (tokens, in) -> (tokens, out). Every tensor
    is kept on ``device`` (default: where it is given).
    """

    def __init__(self, weight: torch.Tensor | None, bias: torch.Tensor | None, dtype: torch.dtype,
                 qweight: torch.Tensor | None = None, scale: torch.Tensor | None = None,
                 device: torch.device | None = None) -> None:
        self.dtype = dtype
        self.dense = None if weight is None else weight.detach().to(device=device, dtype=dtype).contiguous()
        self.qweight = None if qweight is None else qweight.to(device)
        self.scale = None if scale is None else scale.to(device)
        self.bias = None if bias is None else bias.detach().to(device=device, dtype=dtype)
        self.onednn = _ONEDNN and (self.dense if self.dense is not None else self.qweight).device.type == "cpu"
        if self.onednn and self.dense is not None:
            self.dense = torch.ops.mkldnn._reorder_linear_weight(self.dense, None)

    def weight(self) -> torch.Tensor:
        """The weight one matmul uses: the stored dense one, or the int8 rows dequantised (and, with
        oneDNN, reordered) now. A caller running several batches through this layer takes it once."""
        if self.dense is not None:
            return self.dense
        w = dequantize_rows(self.qweight, self.scale, self.dtype)
        return torch.ops.mkldnn._reorder_linear_weight(w, None) if self.onednn else w

    def __call__(self, x: torch.Tensor, gelu: bool = False, weight: torch.Tensor | None = None) -> torch.Tensor:
        """``x @ W.T + b``, or with ``gelu`` the exact (erf) ``gelu(x @ W.T + b)``; ``weight``: the
        result of :meth:`weight` when the caller already took it."""
        w = self.weight() if weight is None else weight
        if self.onednn:
            # oneDNN applies bias and erf-GELU to the fp32 accumulator before rounding (a post-op).
            return torch.ops.mkldnn._linear_pointwise(x, w, self.bias, "gelu" if gelu else "none", [],
                                                      "none" if gelu else "")
        if gelu:
            return bias_gelu(F.linear(x, w), self.bias) if self.bias is not None else F.gelu(F.linear(x, w))
        return F.linear(x, w, self.bias)


def _read_linears(modules: Sequence[torch.nn.Module], dtype: torch.dtype, int8: bool,
                  device: torch.device | None = None) -> _Linear:
    """One :class:`_Linear` on ``device`` from one or more linear layers stacked along the output dim."""
    biases = [m.bias for m in modules]
    bias = None if any(b is None for b in biases) else torch.cat([b.detach().float() for b in biases])
    if all(isinstance(m, Int8Linear) for m in modules):
        q = torch.cat([m.qweight for m in modules])
        sc = torch.cat([m.scale for m in modules])
        if int8:
            return _Linear(None, bias, dtype, q, sc, device=device)
        return _Linear(dequantize_rows(q, sc, torch.float32), bias, dtype, device=device)
    if any(isinstance(m, Int8Linear) for m in modules) or not all(isinstance(m, torch.nn.Linear) for m in modules):
        raise AdaptertxError(f"PackedEncoder cannot read linear layers of types {[type(m).__name__ for m in modules]}")
    weight = torch.cat([m.weight.detach().float() for m in modules])
    if int8:
        q, sc = quantize_rows(weight)
        return _Linear(None, bias, dtype, q, sc, device=device)
    return _Linear(weight, bias, dtype, device=device)


def _active_adapter(base: torch.nn.Module, adapter: str | None):
    """The one bottleneck adapter (its name) or ``Fuse`` to apply: ``adapter`` if named, else
    the model's active setup."""
    config = getattr(base, "adapters_config", None)
    if config is None:
        if adapter is not None:
            raise AdaptertxError(f"adapter {adapter!r} requested but the model has no adapters (call adapters.init)")
        return None
    if adapter is not None:
        if adapter not in config.adapters:
            raise AdaptertxError(f"the model has no adapter {adapter!r}; it has {', '.join(config.adapters) or 'none'}")
        return adapter
    setup = config.active_setup
    if setup is None:
        return None
    from adapters.composition import AdapterCompositionBlock, Fuse, Stack

    if isinstance(setup, str):
        return setup
    if isinstance(setup, Stack) and len(setup.children) == 1 and isinstance(setup.children[0], (str, Fuse)):
        setup = setup.children[0]
        if isinstance(setup, str):
            return setup
    if isinstance(setup, Fuse) and all(isinstance(c, str) for c in setup.children):
        return setup
    kind = type(setup).__name__ if isinstance(setup, AdapterCompositionBlock) else repr(setup)
    raise AdaptertxError(f"PackedEncoder applies one bottleneck adapter or one Fuse of them; the active setup is a "
                         f"{kind} ({setup}); stacked, parallel and nested setups are not supported")


def _seq_bn_config(base: torch.nn.Module, name: str):
    """The config of adapter ``name``, refused unless it is a bottleneck adapter in the ``seq_bn``
    placement the packed forward implements."""
    from adapters import AdapterConfig

    cfg = base.adapters_config.get(name)
    if cfg is not None and not isinstance(cfg, AdapterConfig):
        cfg = AdapterConfig.load(cfg)
    if cfg is None or getattr(cfg, "architecture", None) is not None or not hasattr(cfg, "output_adapter"):
        raise AdaptertxError(f"adapter {name!r} is not a bottleneck adapter; PackedEncoder supports seq_bn only")
    wrong = {k: getattr(cfg, k, None) for k, v in _SEQ_BN.items() if getattr(cfg, k, None) != v}
    if wrong:
        raise AdaptertxError(f"adapter {name!r} is not in the seq_bn placement PackedEncoder implements "
                             f"(differs in {', '.join(f'{k}={v!r}' for k, v in wrong.items())})")
    return cfg


def _adapter_weights(base: torch.nn.Module, name: str, dtype: torch.dtype,
                     device: torch.device | None = None) -> tuple[list, str]:
    """Per-layer (down_w, down_b, up_w, up_b, scaling) on ``device``, or None, and the activation name."""
    cfg = _seq_bn_config(base, name)
    per_layer = []
    for layer in base.encoder.layer:
        bank = getattr(layer.output, "adapters", None)
        if bank is None or name not in bank:
            per_layer.append(None)
            continue
        a = bank[name]
        down, up = a.adapter_down[0], a.adapter_up
        if not isinstance(down, torch.nn.Linear) or not isinstance(up, torch.nn.Linear):
            raise AdaptertxError(f"adapter {name!r}: unexpected bottleneck layers "
                                 f"{type(down).__name__}/{type(up).__name__}")
        scaling = a.scaling
        scaling = float(scaling.detach().reshape(-1)[0]) if isinstance(scaling, torch.Tensor) else float(scaling)
        to = lambda t: None if t is None else t.detach().to(device=device, dtype=dtype)  # noqa: E731
        per_layer.append((to(down.weight), to(down.bias), to(up.weight), to(up.bias), scaling))
    if all(p is None for p in per_layer):
        raise AdaptertxError(f"adapter {name!r} has no bottleneck weights in any layer of the model")
    return per_layer, str(cfg.non_linearity).lower()


def _fusion_weights(base: torch.nn.Module, fuse, dtype: torch.dtype,
                    device: torch.device | None = None) -> tuple[list, list]:
    """Per layer: the packed Fusion (:func:`adaptertx.kernels.adapter_fusion.pack_fusion`) of
    ``fuse`` in its FFN adapter layer on ``device``, or None, and (softmax temperature, query before LN)."""
    for name in fuse.children:
        _seq_bn_config(base, name)
    packed, settings = [], []
    for layer in base.encoder.layer:
        bank = layer.output
        if fuse.name not in getattr(bank, "adapter_fusion_layer", {}):
            packed.append(None)
            settings.append(None)
            continue
        packed.append(pack_fusion(layer_weights(bank, fuse)).to(dtype=dtype, device=device))
        fusion = bank.adapter_fusion_layer[fuse.name]
        settings.append((float(fusion.T), bool(fusion.config["query_before_ln"])))
    if all(p is None for p in packed):
        raise AdaptertxError(f"the model has no AdapterFusion {fuse.name!r} in any layer")
    return packed, settings


class PackedEncoder:
    """Packed inference forward of a BERT/XLM-R encoder, up to a chosen layer.

    model: a loaded ``BertModel``/``XLMRobertaModel``, or an ``adapters`` model built on one
    (its weights are read, not copied, in float32; another ``dtype`` keeps copies).
    dtype: compute dtype, float32 or bfloat16 (default: the model's).
    int8: keep the linear weights as int8 rows + fp32 scales (a quarter of the fp32 bytes)
        and dequantise them just in time for each matmul. Default: int8 exactly when the model
        holds :class:`~adaptertx.quantize.Int8Linear` layers (``int8=False`` then dequantises
        them once).
    adapter: the bottleneck adapter to apply (default: the model's active adapter or Fusion,
        if any; ``""`` applies none).
    device: where the encoder keeps its weights and computes (default: the model's; the
        weights are copied there, the model stays where it is).
    """

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype | None = None, int8: bool | None = None,
                 adapter: str | None = None, device: torch.device | str | None = None) -> None:
        base = (model if hasattr(model, "embeddings") and hasattr(model, "encoder")
                else getattr(model, "base_model", None))
        if base is None or not hasattr(base, "embeddings") or not hasattr(base, "encoder"):
            raise AdaptertxError(f"PackedEncoder needs a BertModel-like encoder, got {type(model).__name__}")
        cfg = base.config
        if getattr(cfg, "position_embedding_type", "absolute") != "absolute":
            raise AdaptertxError(f"PackedEncoder supports absolute positions only, got {cfg.position_embedding_type!r}")
        if getattr(cfg, "is_decoder", False):
            raise AdaptertxError("PackedEncoder supports encoders only (config.is_decoder is set)")
        self.dtype = dtype or next(p for p in base.parameters() if p.is_floating_point()).dtype
        if self.dtype not in (torch.float32, torch.bfloat16):
            raise AdaptertxError(f"PackedEncoder computes in float32 or bfloat16, got {self.dtype}")
        self.num_layers = cfg.num_hidden_layers
        self.heads = cfg.num_attention_heads
        self.eps = cfg.layer_norm_eps
        self.act = cfg.hidden_act
        emb = base.embeddings
        self.device = emb.word_embeddings.weight.device if device is None else resolve_device(device)
        # XLM-R numbers positions from padding_idx + 1; BERT from 0.
        self.position_offset = emb.padding_idx + 1 if type(emb).__name__.startswith(("XLMRoberta", "Roberta")) else 0
        w = self._w
        self.word = w(emb.word_embeddings.weight)
        self.pos = w(emb.position_embeddings.weight)
        self.type0 = w(emb.token_type_embeddings.weight[0]) if hasattr(emb, "token_type_embeddings") else None
        self.emb_ln = (w(emb.LayerNorm.weight), w(emb.LayerNorm.bias))
        has_int8 = any(isinstance(m, Int8Linear) for m in base.encoder.modules())
        self.int8 = has_int8 if int8 is None else bool(int8)
        self.adapter = _active_adapter(base, adapter or None) if adapter != "" else None
        adapters, self.adapter_act = ([None] * self.num_layers, "relu")
        fusions, settings = [None] * self.num_layers, [None] * self.num_layers
        if isinstance(self.adapter, str):
            adapters, self.adapter_act = _adapter_weights(base, self.adapter, self.dtype, self.device)
        elif self.adapter is not None:
            fusions, settings = _fusion_weights(base, self.adapter, self.dtype, self.device)
        self.layers = []
        for layer, ad, fu, st in zip(base.encoder.layer, adapters, fusions, settings, strict=True):
            att = layer.attention
            lin = lambda *ms: _read_linears(ms, self.dtype, self.int8, self.device)  # noqa: E731
            self.layers.append({
                "qkv": lin(att.self.query, att.self.key, att.self.value),
                "attn_out": lin(att.output.dense),
                "ln1": (w(att.output.LayerNorm.weight), w(att.output.LayerNorm.bias)),
                "inter": lin(layer.intermediate.dense),
                "out": lin(layer.output.dense),
                "ln2": (w(layer.output.LayerNorm.weight), w(layer.output.LayerNorm.bias)),
                "adapter": ad,
                "fusion": fu,
                "fusion_settings": st,
            })

    def _w(self, t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(device=self.device, dtype=self.dtype)

    @torch.inference_mode()
    def hidden_states(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor, layer: int) -> torch.Tensor:
        """Hidden states after ``layer`` layers (0 = embeddings), as HF's ``hidden_states[layer]``.

        input_ids: (tokens,) packed token ids; cu_seqlens: (n + 1,) offsets (as :func:`pack`
        gives them, on the CPU; tensors on the encoder's device work too, read back once to be
        checked). Returns (tokens, dim) in the compute dtype, on the encoder's device.
        """
        return self.hidden_states_many([(input_ids, cu_seqlens)], layer)[0]

    @torch.inference_mode()
    def hidden_states_many(self, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                           layer: int) -> list[torch.Tensor]:
        """:meth:`hidden_states` of several packed batches, layer by layer: every batch passes
        layer i before any passes layer i + 1, so an int8 layer is dequantised once for all of
        them (and a layer's weights stay in cache across the batches). Each batch is computed
        exactly as on its own. batches: ``(input_ids, cu_seqlens)`` pairs; returns one
        (tokens, dim) tensor per batch, in order."""
        return [x for x, _ in self._forward(batches, layer)]

    def _forward(self, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                 layer: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(hidden states, offsets as int32 on the device) of each batch after ``layer`` layers."""
        if not 0 <= layer <= self.num_layers:
            raise AdaptertxError(f"layer must be in 0..{self.num_layers}, got {layer}")
        embedded = [self._embed(input_ids, cu_seqlens) for input_ids, cu_seqlens in batches]
        xs = [x for x, _, _ in embedded]
        live = [i for i, x in enumerate(xs) if x.shape[0]]
        for p in self.layers[:layer]:
            if not live:
                break
            w = {name: p[name].weight() for name in ("qkv", "attn_out", "inter", "out")}
            for i in live:
                xs[i] = self._layer(p, w, xs[i], embedded[i][1], embedded[i][2])
        return [(x, cu) for x, (_, cu, _) in zip(xs, embedded, strict=True)]

    def _embed(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Checked embeddings (tokens, dim) of one packed batch, its offsets as int32 on the
        device, and its longest sequence (a host int). The offsets are checked and the positions
        made on the host; ids, positions and offsets then go to the device in one copy."""
        if input_ids.dim() != 1 or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
            raise AdaptertxError("input_ids must be (tokens,) and cu_seqlens (n + 1,)")
        cu = cu_seqlens.to(device="cpu", dtype=torch.int64)
        tokens = input_ids.numel()
        if int(cu[0]) != 0 or int(cu[-1]) != tokens or bool((cu[1:] <= cu[:-1]).any()):
            raise AdaptertxError("cu_seqlens must rise strictly from 0 to the number of tokens")
        lengths = cu[1:] - cu[:-1]
        longest = int(lengths.max()) if lengths.numel() else 0
        if longest + self.position_offset > self.pos.shape[0]:
            raise AdaptertxError(f"a sequence is longer than the model's {self.pos.shape[0]} positions")
        on_host = input_ids.device.type == "cpu"
        if on_host and tokens and not 0 <= int(input_ids.min()) <= int(input_ids.max()) < self.word.shape[0]:
            raise AdaptertxError(f"input_ids must be token ids in 0..{self.word.shape[0] - 1}")
        seq = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
        positions = torch.arange(tokens) - cu[:-1][seq] + self.position_offset
        parts = [input_ids.to(torch.int64), positions, cu] if on_host else [positions, cu]
        host = torch.cat(parts)
        if self.device.type == "cuda":
            host = host.pin_memory()
        moved = host.to(self.device, non_blocking=True)
        start = tokens if on_host else 0
        ids = moved[:tokens] if on_host else input_ids.to(device=self.device, dtype=torch.int64)
        positions, cu_dev = moved[start:start + tokens], moved[start + tokens:].to(torch.int32)
        if tokens == 0:
            return torch.zeros(0, self.word.shape[1], dtype=self.dtype, device=self.device), cu_dev, 0
        x = self.word.index_select(0, ids)
        extra = self.pos.index_select(0, positions)
        if self.type0 is not None:
            extra = extra + self.type0
        return add_layernorm(x, extra, *self.emb_ln, self.eps), cu_dev, longest

    def _layer(self, p: dict, w: dict, x: torch.Tensor, cu_dev: torch.Tensor, max_len: int) -> torch.Tensor:
        """One encoder layer on one packed batch; w: the layer's linear weights (:meth:`_Linear.weight`);
        cu_dev: its offsets on the device; max_len: its longest sequence."""
        ctx = varlen_attention(p["qkv"](x, weight=w["qkv"]), cu_dev, self.heads, max_seqlen=max_len)
        x = add_layernorm(p["attn_out"](ctx, weight=w["attn_out"]), x, *p["ln1"], self.eps)
        if self.act == "gelu":
            inter = p["inter"](x, gelu=True, weight=w["inter"])
        else:
            inter = ACT2FN[self.act](p["inter"](x, weight=w["inter"]))
        ffn = p["out"](inter, weight=w["out"])
        if p["adapter"] is not None:
            down_w, down_b, up_w, up_b, scaling = p["adapter"]
            h = add_layernorm(ffn, x, *p["ln2"], self.eps)
            ffn = bottleneck_adapter(h, ffn, down_w, down_b, up_w, up_b, self.adapter_act, scaling)
        elif p["fusion"] is not None:
            # seq_bn's pre_forward: residual = FFN output, input = LN(FFN + x), the query
            # one of the two (query_before_ln); then the library's post_forward LN below.
            temperature, query_before_ln = p["fusion_settings"]
            h = add_layernorm(ffn, x, *p["ln2"], self.eps)
            ffn = adapter_fusion(h, ffn if query_before_ln else h, ffn, p["fusion"], temperature)
        return add_layernorm(ffn, x, *p["ln2"], self.eps)

    def encode(
        self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor, layer: int, out_dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """L2-normalised mean of each sequence's hidden states at ``layer``: (n, dim) in ``out_dtype``."""
        return self.encode_many([(input_ids, cu_seqlens)], layer, out_dtype)[0]

    def encode_many(self, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], layer: int,
                    out_dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
        """:meth:`encode` of several packed batches, computed layer by layer (:meth:`hidden_states_many`);
        each (n, dim) result on the encoder's device."""
        with torch.inference_mode():
            forward = self._forward(batches, layer)
        return [segment_mean_pool_normalize(h, cu_dev, out_dtype=out_dtype) for h, cu_dev in forward]
