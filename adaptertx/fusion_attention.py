"""AdapterFusion's attention over its task adapters, recorded while a model predicts.

Pfeiffer et al. (2021) read a Fusion layer's softmax over the task adapters as what the Fusion
leans on. :class:`FusionAttention` records it: both forwards that serve a Fusion at scoring —
the fused path (:class:`adaptertx.fused_fusion.FusedFusion`, whose kernel computes the
probabilities anyway) and the library path (``BertFusion`` with
:func:`adaptertx.fused_fusion.fast_fusion_attention`) — hand their probabilities, (B, T, N)
float32, to the layer's :func:`adaptertx.fused_fusion.attention_sink`; the recorder sums them
over the **real tokens** of each row (the ``attention_mask`` of the base model's forward, taken
by a forward pre-hook: padding never counts) into one group per row (e.g. the gold label), on
the device, with no synchronisation per batch.

:meth:`FusionAttention.take` gives, per layer, the mean over the real tokens of each adapter's
weight (each layer's weights sum to 1), over all rows and per group. An adapter a layer leaves
out (``leave_out``) gets weight 0 there, as it gets no attention.

The record a zero-shot cell stores (:func:`adaptertx.evaluation.evaluate`)::

    {"adapters": [task, ...], "layers": ["0", "1", ...],
     "languages": {lang: {"tokens": n, "mean": [[weight per adapter] per layer],
                          "labels": {gold label: {"tokens": n, "mean": [[...]]}}}}}

(``labels`` for classification targets only; weights to 4 decimals.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from adaptertx.errors import AdaptertxError
from adaptertx.fused_fusion import ATTENTION_SINK, fast_fusion_attention

#: Decimals of a stored attention weight.
DIGITS = 4


def _layer_name(layer) -> str:
    """A Fusion position's label: its layer index (and its place, when not the layer's output)."""
    idx = getattr(layer, "layer_idx", "?")
    where = getattr(layer, "location_key", "output_adapter")
    return str(idx) if where == "output_adapter" else f"{idx}/{where}"


class FusionAttention:
    """Records the attention of the Fusion ``fuse`` of ``model`` while it predicts.

    Use as a context manager (the sinks and the hook are removed on exit); scoring inside
    :meth:`collect`, then :meth:`take` the means. Outputs are unchanged by recording. The
    model's Fusion layers get :func:`adaptertx.fused_fusion.fast_fusion_attention` (the same
    computation), whose library-path forward hands over the probabilities.

    Attributes:
        adapters: the Fusion's adapter names, in its order. layers: one label per Fusion position.
    """

    def __init__(self, model: nn.Module, fuse) -> None:
        from adapters.methods.bottleneck import BottleneckLayer

        self.adapters = [str(c) for c in fuse.children]
        positions = [m for m in model.modules()
                     if isinstance(m, BottleneckLayer) and fuse.name in m.adapter_fusion_layer]
        if not positions:
            raise AdaptertxError(f"the model has no AdapterFusion {fuse.name!r} to record")
        positions.sort(key=lambda m: (getattr(m, "layer_idx", 0), getattr(m, "location_key", "")))
        self.layers = [_layer_name(m) for m in positions]
        fast_fusion_attention(model)  # the library path hands its probabilities to the sink
        self._fusions = []
        for slot, layer in enumerate(positions):
            columns = [i for i, name in enumerate(self.adapters) if name in layer.adapters]
            fusion = layer.adapter_fusion_layer[fuse.name]
            fusion.__dict__[ATTENTION_SINK] = self._sink(slot, columns)
            self._fusions.append(fusion)
        base = getattr(model, "base_model", model)
        self._hook = base.register_forward_pre_hook(self._on_forward, with_kwargs=True)
        self._groups: torch.Tensor | None = None
        self._names: list[str] = []
        self._active = False
        self._reset()

    # ---------------------------------------------------------------- recording

    def _reset(self) -> None:
        self._sums: torch.Tensor | None = None      # (layers, groups, adapters)
        self._tokens: torch.Tensor | None = None    # (groups,)
        self._weights: torch.Tensor | None = None   # this batch: (B, T) real-token mask
        self._onehot: torch.Tensor | None = None    # this batch: (B, groups)
        self._row = 0

    def _on_forward(self, module, args, kwargs):
        if not self._active:
            return None
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        ids = kwargs.get("input_ids", args[0] if args else None)
        if mask is None:
            ref = ids if ids is not None else kwargs["inputs_embeds"][..., 0]
            mask = torch.ones(ref.shape[:2], device=ref.device)
        mask = mask.reshape(-1, mask.shape[-1])
        rows = mask.shape[0]
        n_groups = max(1, len(self._names))
        dtype = torch.float32 if mask.device.type == "mps" else torch.float64
        if self._groups is None:
            onehot = torch.ones(rows, 1, device=mask.device, dtype=dtype)
        else:
            if self._row + rows > len(self._groups):
                raise AdaptertxError(f"fusion attention: {self._row + rows} rows scored, {len(self._groups)} "
                                     f"groups given")
            picked = self._groups[self._row:self._row + rows].to(mask.device)
            onehot = torch.nn.functional.one_hot(picked, n_groups).to(dtype)
        self._row += rows
        self._weights = mask.to(torch.float32)
        self._onehot = onehot
        tokens = (onehot * self._weights.sum(1, keepdim=True).to(dtype)).sum(0)
        if self._sums is None:
            self._sums = torch.zeros(len(self.layers), n_groups, len(self.adapters), device=mask.device, dtype=dtype)
            self._tokens = tokens
        else:
            self._tokens = self._tokens + tokens
        return None

    def _sink(self, slot: int, columns: list[int]):
        full = len(columns) == len(self.adapters)
        index = torch.tensor(columns)

        def sink(probs: torch.Tensor) -> None:
            """probs: (B, T, n) for the rows of the current forward."""
            if not self._active or self._weights is None:
                return
            w = self._weights
            if probs.shape[:2] != w.shape:
                raise AdaptertxError(f"fusion attention: probabilities of shape {tuple(probs.shape)} do not match "
                                     f"the attention mask {tuple(w.shape)}")
            # Elementwise products and sums only: autocast leaves them in float32/float64.
            per_row = (probs.float() * w.unsqueeze(-1)).sum(1).to(self._onehot.dtype)      # (B, n)
            by_group = (self._onehot.unsqueeze(-1) * per_row.unsqueeze(1)).sum(0)          # (groups, n)
            if full:
                self._sums[slot] += by_group
            else:
                self._sums[slot].index_add_(1, index.to(by_group.device), by_group)

        return sink

    @contextlib.contextmanager
    def collect(self, groups: Sequence[str] | None = None) -> Iterator[FusionAttention]:
        """Record the forwards inside the block (after clearing what was recorded). ``groups``:
        one name per row the base model sees, in order (e.g. the gold label of each example),
        or ``None`` for one group; every row must be scored."""
        self._reset()
        if groups is None:
            self._groups, self._names = None, []
        else:
            self._names = sorted(set(groups))
            where = {g: i for i, g in enumerate(self._names)}
            self._groups = torch.tensor([where[g] for g in groups], dtype=torch.long)
        self._active = True
        try:
            yield self
        finally:
            self._active = False
            self._weights = self._onehot = None
        if self._groups is not None and self._row != len(self._groups):
            raise AdaptertxError(f"fusion attention: {len(self._groups)} groups given, {self._row} rows scored")

    def take(self) -> dict:
        """The last :meth:`collect`'s means: ``{"tokens", "mean": [[weight per adapter] per
        layer]}`` over every row, and ``"labels": {group: {"tokens", "mean"}}`` when groups were
        given (``mean`` is ``None`` where no token was scored)."""
        if self._sums is None:
            return {"tokens": 0, "mean": None, **({"labels": {}} if self._names else {})}
        sums = self._sums.double().cpu()        # (layers, groups, adapters)
        tokens = self._tokens.double().cpu()    # (groups,)
        out = _means(sums.sum(1), float(tokens.sum()))
        if self._names:
            out["labels"] = {name: _means(sums[:, g], float(tokens[g])) for g, name in enumerate(self._names)}
        return out

    def close(self) -> None:
        """Remove the sinks and the hook."""
        for fusion in self._fusions:
            fusion.__dict__.pop(ATTENTION_SINK, None)
        self._fusions = []
        self._hook.remove()

    def __enter__(self) -> FusionAttention:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _means(sums: torch.Tensor, tokens: float) -> dict:
    """sums: (layers, adapters) over ``tokens`` real tokens -> the stored means."""
    if tokens <= 0:
        return {"tokens": 0, "mean": None}
    return {"tokens": int(round(tokens)), "mean": [[round(float(v), DIGITS) for v in row] for row in sums / tokens]}


def record_fusion_attention(model: nn.Module):
    """A :class:`FusionAttention` for the Fuse of the model's active setup (``Fuse(...)`` or
    ``Stack(Fuse(...), target)``), or ``None`` when the setup holds no Fuse."""
    from adapters.composition import Fuse

    setup = model.active_adapters
    if isinstance(setup, Fuse):
        return FusionAttention(model, setup)
    fuse = next((c for c in getattr(setup, "children", ()) if isinstance(c, Fuse)), None)
    return FusionAttention(model, fuse) if fuse is not None else None
