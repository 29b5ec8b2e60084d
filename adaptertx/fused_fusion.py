"""Fused AdapterFusion inference on an ``adapters`` model.

:func:`enable_fused_fusion` swaps, layer by layer, the ``adapters`` library's AdapterFusion
forward (every task adapter separately, then key and value projections of every adapter's
output) for :func:`adaptertx.kernels.adapter_fusion.adapter_fusion` (all adapters of a layer
in one GEMM, the fusion attention folded into it, one GEMM out). Outputs equal the library's
(same dtype rules as the kernels); the cost per adapter is a bottleneck adapter's, not two
``d x d`` products.

The fused path serves inference only. It replaces each layer's ``compose_fuse`` for that
fusion, so it serves the fusion wherever the active setup applies it: alone (``Fuse(a, b)``)
or inside a composition, e.g. ``Stack(Fuse(a, b), target)`` (the zero-shot protocol's target
adapter over a Fusion, :mod:`adaptertx.evaluate`). A layer uses it in eval mode when no
gradient of its adapter or fusion weights is being recorded; otherwise (training, fusion
attentions requested) the library's forward runs. The folded weights are taken when the path is enabled: call
:meth:`FusedFusion.refresh` after changing the adapter or fusion weights.

Both forwards hand the Fusion's attention probabilities to the layer's :func:`attention_sink`
when one is set, so :mod:`adaptertx.fusion_attention` records the same weights on either path.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from torch import nn

from adaptertx.errors import AdaptertxError
from adaptertx.kernels.adapter_fusion import FusionWeights, PackedFusion, adapter_fusion, pack_fusion

log = logging.getLogger(__name__)


def _fuse_block(setup):
    from adapters.composition import Fuse, parse_composition

    if isinstance(setup, (list, tuple)) and all(isinstance(n, str) for n in setup):
        setup = Fuse(*setup)
    block = parse_composition(setup) if not isinstance(setup, Fuse) else setup
    if not isinstance(block, Fuse):
        raise AdaptertxError(f"fused inference needs a Fuse(...) of adapters, got {setup!r}")
    if any(not isinstance(c, str) for c in block.children):
        raise AdaptertxError("fused inference supports a Fuse of plain adapters (no nested compositions)")
    return block


def layer_weights(layer, block) -> FusionWeights:
    """The raw weights of ``block``'s adapters and fusion in one ``BottleneckLayer``."""
    from adapters.methods.modeling import Activation_Function_Class

    fusion = layer.adapter_fusion_layer[block.name]
    down_w, down_b, up_w, up_b, scaling, acts = [], [], [], [], [], []
    # An adapter left out of this layer (leave_out) is skipped, as the library's compose_fuse does.
    for name in [n for n in block.children if n in layer.adapters]:
        adapter = layer.adapters[name]
        seq = list(adapter.adapter_down)
        if (len(seq) != 2 or not isinstance(seq[0], nn.Linear) or not isinstance(seq[1], Activation_Function_Class)
                or not isinstance(adapter.adapter_up, nn.Linear)):
            raise AdaptertxError(f"adapter {name!r} is not a plain bottleneck adapter (Linear, activation, Linear: "
                                 f"no ln_before, no PHM layers); fused inference cannot run it")
        down_w.append(seq[0].weight)
        down_b.append(seq[0].bias)
        up_w.append(adapter.adapter_up.weight)
        up_b.append(adapter.adapter_up.bias)
        scaling.append(adapter.scaling)
        acts.append(seq[1].f if hasattr(seq[1], "f") else seq[1])
    cfg = fusion.config
    return FusionWeights(
        down_w, down_b, up_w, up_b, scaling, _same_activation(acts, block),
        query_w=fusion.query.weight if cfg["query"] else None, query_b=fusion.query.bias if cfg["query"] else None,
        key_w=fusion.key.weight if cfg["key"] else None, key_b=fusion.key.bias if cfg["key"] else None,
        value_w=fusion.value.weight if cfg["value"] else None, residual_before=bool(cfg["residual_before"]))


def _same_activation(acts, block):
    names = {getattr(a, "__name__", type(a).__name__) for a in acts}
    if len(names) != 1:
        raise AdaptertxError(f"the adapters of {block.name!r} use different non-linearities "
                             f"({', '.join(sorted(names))}); fused inference needs one")
    return acts[0]


_REGISTRY = "_adaptertx_fused_fusions"
#: Where a Fusion layer (``BertFusion``) holds the callable that receives its attention
#: probabilities, (B, T, N) float32, on every forward (:mod:`adaptertx.fusion_attention`).
ATTENTION_SINK = "_adaptertx_attention_sink"


def attention_sink(fusion: nn.Module):
    """The callable a Fusion layer hands its attention probabilities to, or ``None``."""
    return fusion.__dict__.get(ATTENTION_SINK)


def _dispatcher(layer, registry: dict):
    """A layer's ``compose_fuse``: the fused path of that fusion when it is enabled and usable,
    else the library's."""
    library_compose_fuse = type(layer).compose_fuse.__get__(layer)

    def compose_fuse(adapter_setup, state, lvl: int = 0):
        fused = registry.get(adapter_setup.name)
        if fused is not None:
            out = fused(state)
            if out is not None:
                return out
        return library_compose_fuse(adapter_setup, state, lvl)

    return compose_fuse


class FusedFusion:
    """The fused path, enabled on every layer of a model that holds the fusion.

    Use as a context manager or call :meth:`disable`; :attr:`layers` counts the layers served.
    """

    def __init__(self, model: nn.Module, setup) -> None:
        from adapters.methods.bottleneck import BottleneckLayer

        self.model = model
        self.block = _fuse_block(setup)
        self._layers = [m for m in model.modules()
                        if isinstance(m, BottleneckLayer) and self.block.name in m.adapter_fusion_layer]
        if not self._layers:
            raise AdaptertxError(f"the model has no AdapterFusion {self.block.name!r}; add or load it first")
        self._packed: dict[int, dict] = {}
        self.refresh()
        for layer in self._layers:
            registry = layer.__dict__.get(_REGISTRY)
            if registry is None:
                registry = {}
                layer.__dict__[_REGISTRY] = registry
                layer.__dict__["compose_fuse"] = _dispatcher(layer, registry)
            registry[self.block.name] = self._forward_for(layer)

    @property
    def layers(self) -> int:
        return len(self._layers)

    def refresh(self) -> None:
        """Re-fold the weights (after the adapters or the fusion changed)."""
        self._packed = {id(layer): {None: pack_fusion(layer_weights(layer, self.block))} for layer in self._layers}

    def _packed_for(self, layer, x: torch.Tensor) -> PackedFusion:
        by_dtype = self._packed[id(layer)]
        key = None if torch.is_autocast_enabled(x.device.type) or x.dtype == torch.float32 else x.dtype
        if key not in by_dtype:
            by_dtype[key] = by_dtype[None].to(dtype=x.dtype, device=x.device)
        packed = by_dtype[key]
        if packed.w_in.device != x.device:
            packed = by_dtype[key] = packed.to(device=x.device)
        return packed

    def _usable(self, layer) -> bool:
        from adapters.context import ForwardContext

        if layer.training:
            return False
        context = ForwardContext.get_context()
        if context is not None and getattr(context, "output_adapter_fusion_attentions", False):
            return False
        if torch.is_grad_enabled():
            fusion = layer.adapter_fusion_layer[self.block.name]
            params = [*fusion.parameters(), *(p for n in self.block.children for p in layer.adapters[n].parameters())]
            if any(p.requires_grad for p in params):
                return False
        return True

    def _forward_for(self, layer):
        block = self.block

        def forward(state):
            """``compose_fuse`` of ``block`` on the composition state, or ``None`` (library)."""
            if not self._usable(layer):
                return None
            fusion_config, _ = layer.adapters_config.get_fusion(block.name)
            last = block.last()
            x, query, residual = layer.adapters[last].pre_forward(state.hidden_states, state.input_tensor,
                                                                  state.layer_norm, fusion_config=fusion_config)
            fusion = layer.adapter_fusion_layer[block.name]
            temperature = fusion.T
            fusion.T = max(fusion.T - fusion.reduction, 1.0)  # the library anneals on every forward
            sink = attention_sink(fusion)
            out = adapter_fusion(x, query, residual, self._packed_for(layer, x), temperature,
                                 return_probs=sink is not None)
            if sink is not None:
                out, probs = out
                sink(probs)
            return state._replace(hidden_states=out, adapter_residual=residual, last=last)

        return forward

    def disable(self) -> None:
        """Give every layer back the library's forward."""
        for layer in self._layers:
            registry = layer.__dict__.get(_REGISTRY, {})
            registry.pop(self.block.name, None)
            if not registry:
                layer.__dict__.pop(_REGISTRY, None)
                layer.__dict__.pop("compose_fuse", None)
        self._layers = []

    def __enter__(self) -> FusedFusion:
        return self

    def __exit__(self, *exc) -> None:
        self.disable()


@contextlib.contextmanager
def library_fusion_forward(model: nn.Module) -> Iterator[None]:
    """Within the block, every fusion of ``model`` runs the ``adapters`` library's forward;
    the fused paths enabled before are back afterwards (for side-by-side comparisons)."""
    saved = [(m, m.__dict__.pop("compose_fuse")) for m in model.modules() if _REGISTRY in m.__dict__]
    try:
        yield
    finally:
        for m, fn in saved:
            m.__dict__["compose_fuse"] = fn


def enable_fused_fusion(model: nn.Module, setup) -> FusedFusion:
    """Serve the AdapterFusion ``setup`` (a ``Fuse`` or its adapter names) of ``model`` with the
    fused path at inference; returns the handle that disables it again."""
    handle = FusedFusion(model, setup)
    log.debug("fused AdapterFusion %s on %d layers", handle.block.name, handle.layers)
    return handle


# ------------------------------------------------------------------------------ fusion attention


def _tokens_linear(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``linear`` over the last dim of ``x`` (B, T, N, D) as one 2-D GEMM. ``nn.Linear`` on this
    4-D input can fall back to a batched product that copies the weight B·T times."""
    flat = x.reshape(-1, x.shape[-1])
    return linear(flat).view(*x.shape[:-1], -1)


def fusion_scores(query: torch.Tensor, keys: torch.Tensor, broadcast: bool | None = None) -> torch.Tensor:
    """``query . key_i`` per token: query (B, T, D), keys (B, T, N, D) -> (B, T, N) float32.

    On the CPU (``broadcast``, the default there) a broadcast product summed in fp32, which
    keeps fp32 copies of the keys but never takes the batched-product path that copies weights;
    elsewhere one batched matrix product in the inputs' dtype with fp32 accumulation (no fp32
    copy of the (B, T, N, D) keys: half the memory on a GPU)."""
    if broadcast if broadcast is not None else query.device.type == "cpu":
        return (query.unsqueeze(2).float() * keys.float()).sum(-1)
    return torch.matmul(keys, query.unsqueeze(-1)).squeeze(-1).float()


def fusion_context(probs: torch.Tensor, values: torch.Tensor, broadcast: bool | None = None) -> torch.Tensor:
    """``sum_i p_i value_i`` per token: probs (B, T, N) float32, values (B, T, N, D) -> (B, T, D)
    in values' dtype; the CPU and other paths as in :func:`fusion_scores`."""
    if broadcast if broadcast is not None else values.device.type == "cpu":
        return (probs.unsqueeze(-1) * values.float()).sum(2).to(values.dtype)
    return torch.matmul(probs.to(values.dtype).unsqueeze(-2), values).squeeze(-2)


def _fusion_attention_forward(self, query, key, value, residual, output_attentions: bool = False):
    """``adapters``' ``BertFusion.forward`` with the two per-token matrix products (query·keys
    over N adapters, probabilities·values) as broadcast products summed in fp32.

    The library's key and value projections of (B, T, N, D) inputs can run as a batched product
    that copies the (D, D) weight B·T times (under bf16 autocast on CPU, ~25x the cost of the
    rest of the model); here they are one 2-D GEMM each, and the per-token products over the N
    adapters are broadcast products summed in fp32 on the CPU and batched products in the inputs'
    dtype elsewhere (:func:`fusion_scores`, :func:`fusion_context`). Shapes: query, residual (B, T, D); key,
    value (B, T, N, D). The probabilities (B, T, N) go to the layer's :func:`attention_sink` when
    one is set (:mod:`adaptertx.fusion_attention`).
    """
    from torch import nn as _nn

    if self.config["residual_before"]:
        value = value + residual[:, :, None, :]
    query_layer = self.query(query) if self.config["query"] else query
    key_layer = _tokens_linear(self.key, key) if self.config["key"] else key
    if self.config["value"] and self.config["value_before_softmax"]:
        value_layer = _tokens_linear(self.value, value)
    else:
        value_layer = value
    scores = fusion_scores(query_layer, key_layer)  # (B, T, N) float32
    scores = self.dropout(scores)
    probs = _nn.Softmax(dim=-1)(scores / self.T)
    self.T = max(self.T - self.reduction, 1.0)
    sink = attention_sink(self)
    if sink is not None:
        sink(probs.detach())
    context = fusion_context(probs, value_layer)  # (B, T, D)
    if self.config["value"] and not self.config["value_before_softmax"]:
        context = self.value(context)
    if not self.config["residual_before"]:
        context = context + residual
    if output_attentions:
        return context, probs.detach().cpu().numpy()
    return context


def fast_fusion_attention(model: nn.Module) -> int:
    """Give every AdapterFusion layer of ``model`` :func:`_fusion_attention_forward` (same
    computation as the library's, see its doc); returns how many layers were changed.
    Training and inference both use it; adapters added later keep the library's forward."""
    import types

    from adapters.methods.modeling import BertFusion

    changed = 0
    for module in model.modules():
        if isinstance(module, BertFusion) and getattr(module, "_adaptertx_fast", False) is False:
            module.forward = types.MethodType(_fusion_attention_forward, module)
            module._adaptertx_fast = True
            changed += 1
    return changed
