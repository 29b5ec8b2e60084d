"""``adapter_fusion``: N bottleneck adapters of one layer and their AdapterFusion, computed together.

AdapterFusion (Pfeiffer et al., 2021, "AdapterFusion: Non-Destructive Task Composition for
Transfer Learning", EACL) runs every task adapter at every layer and attends over their
outputs. In ``adapters`` 1.3 (``BottleneckLayer.compose_fuse`` and ``BertFusion.forward``),
with ``x`` the adapters' input (after ``pre_forward``), ``query`` the fusion query and ``res``
the adapter residual, one layer computes for adapters ``i = 1..N``::

    u_i  = s_i * (U_i act(D_i x + e_i) + c_i)          # each adapter's up-projection output
    v_i  = u_i (+ res if residual_before)               # key and value input (one tensor)
    q    = Wq query + bq ;  k_i = Wk v_i + bk ;  w_i = Wv v_i
    p    = softmax_i(q . k_i / T)
    out  = sum_i p_i w_i (+ res unless residual_before)

The library's cost per token is ``N`` small adapters plus ``(2N + 1)`` ``d x d`` products (the
key and value projections of every adapter's output). This op removes the ``2N`` large
products by exact algebra:

- ``q . bk`` and ``q . Wk res`` are the same for every ``i``; softmax ignores them.
- ``q . Wk u_i = s_i (U_i^T Wk^T Wq) query . a_i + (terms without a_i)``: the key side folds
  into ``N`` extra ``(r, d)`` row blocks, stacked under the down-projections so that **one GEMM**
  of ``x`` computes all down-projections and all score keys.
- ``sum_i p_i Wv u_i = [s_1 Wv U_1 | ... | s_N Wv U_N] (p_i a_i)_i + ...``: the value projection
  folds into the up-projections, so **one GEMM** over the concatenated, attention-weighted
  bottleneck activations gives the output.

Per token that is about ``3 N r d + d^2 [residual_before only]`` multiply-adds instead of
``2 N r d + (2N + 1) d^2``. Adapters of different bottleneck sizes are zero-padded to the
largest (exact: padded units get zero weight on both sides). The folded weights are built once
in float64 by :func:`pack_fusion`; :func:`adapter_fusion` uses them (the op
``torch.ops.adaptertx.adapter_fusion``: its CPU kernel ``adaptertx/csrc/adapter_fusion.cpp`` and
CUDA kernel fuse the step between the two GEMMs), :func:`adapter_fusion_ref` is the same
computation in plain torch ops, and :func:`adapter_fusion_unfolded` is the term-by-term
computation in the library's order that the folding is tested against.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from adaptertx.kernels._common import KernelInputError
from adaptertx.kernels._library import cuda_function, define, op, use_kernel
from adaptertx.kernels.bottleneck_adapter import ACTIVATION_NAMES, ACTIVATIONS

OP = "adapter_fusion"


@dataclass(frozen=True)
class FusionWeights:
    """Raw weights of one layer's N adapters and their fusion (hidden size ``d``).

    Attributes:
        down_w: per adapter ``(r_i, d)``; down_b: ``(r_i,)`` or None.
        up_w: per adapter ``(d, r_i)``; up_b: ``(d,)`` or None.
        scaling: per adapter a float, or a ``(1,)`` / ``(d,)`` tensor (learned scaling).
        activation: the adapters' non-linearity (an elementwise callable).
        query_w, query_b: ``(d, d)``, ``(d,)`` or None (no query projection).
        key_w, key_b: ``(d, d)``, ``(d,)`` or None (no key projection).
        value_w: ``(d, d)`` or None (no value projection; the fusion value has no bias).
        residual_before: the fusion adds the residual to the values before attending.
    """

    down_w: list[torch.Tensor]
    down_b: list[torch.Tensor | None]
    up_w: list[torch.Tensor]
    up_b: list[torch.Tensor | None]
    scaling: list
    activation: Callable[[torch.Tensor], torch.Tensor]
    query_w: torch.Tensor | None
    query_b: torch.Tensor | None
    key_w: torch.Tensor | None
    key_b: torch.Tensor | None
    value_w: torch.Tensor | None
    residual_before: bool = False

    def __post_init__(self) -> None:
        n = len(self.down_w)
        if n == 0:
            raise KernelInputError(f"{OP}: needs at least one adapter")
        if not (len(self.down_b) == len(self.up_w) == len(self.up_b) == len(self.scaling) == n):
            raise KernelInputError(f"{OP}: down_w, down_b, up_w, up_b and scaling must have one entry per adapter")
        d = self.down_w[0].shape[1]
        for i, (dw, uw) in enumerate(zip(self.down_w, self.up_w, strict=True)):
            if dw.dim() != 2 or dw.shape[1] != d or tuple(uw.shape) != (d, dw.shape[0]):
                raise KernelInputError(f"{OP}: adapter {i}: down_w must be (r, {d}) and up_w ({d}, r), got "
                                       f"{tuple(dw.shape)} and {tuple(uw.shape)}")
        for name in ("query_w", "key_w", "value_w"):
            w = getattr(self, name)
            if w is not None and tuple(w.shape) != (d, d):
                raise KernelInputError(f"{OP}: {name} must be ({d}, {d}), got {tuple(w.shape)}")

    @property
    def dim(self) -> int:
        return self.down_w[0].shape[1]


@dataclass(frozen=True)
class PackedFusion:
    """Folded weights of :func:`pack_fusion` (float32; ``N`` adapters padded to bottleneck ``R``).

    Attributes:
        w_in: ``(2 N R + N, d)`` rows: all down-projections, then the score keys
            ``s_i U_i^T Wk^T Wq``, then the bias-score rows ``s_i c_i^T Wk^T Wq``; b_in: its bias.
        w_out: ``(d, N R + N)``: ``[s_i Wv U_i]`` then ``[s_i Wv c_i]`` as columns.
        res_w: ``(d, d)`` applied to the residual (``Wv`` when ``residual_before`` with a value
            projection), or None for a plain residual add.
        activation, n, r: the non-linearity, the number of adapters, the padded bottleneck.
    """

    w_in: torch.Tensor
    b_in: torch.Tensor
    w_out: torch.Tensor
    res_w: torch.Tensor | None
    activation: Callable[[torch.Tensor], torch.Tensor]
    n: int
    r: int

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> PackedFusion:
        """The same weights cast/moved (the activation and sizes unchanged)."""
        cast = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
        return PackedFusion(cast(self.w_in), cast(self.b_in), cast(self.w_out), cast(self.res_w),
                            self.activation, self.n, self.r)


def _scale(s, d: int) -> torch.Tensor:
    """A scaling as a (d,) float64 vector."""
    t = torch.as_tensor(s, dtype=torch.float64).detach().cpu().reshape(-1)
    if t.numel() not in (1, d):
        raise KernelInputError(f"{OP}: scaling must be a number or have 1 or {d} entries, got {t.numel()}")
    return t.expand(d).clone()


def pack_fusion(w: FusionWeights) -> PackedFusion:
    """Fold one layer's adapters and fusion into the two GEMMs of :func:`adapter_fusion` (float64
    arithmetic, float32 result, on the weights' device)."""
    device = w.down_w[0].device
    d, n = w.dim, len(w.down_w)
    r = max(t.shape[0] for t in w.down_w)
    f64 = lambda t: t.detach().to(device="cpu", dtype=torch.float64)  # noqa: E731
    eye = torch.eye(d, dtype=torch.float64)
    wq = f64(w.query_w) if w.query_w is not None else eye
    bq = f64(w.query_b) if (w.query_w is not None and w.query_b is not None) else torch.zeros(d, dtype=torch.float64)
    wk = f64(w.key_w) if w.key_w is not None else eye
    wv = f64(w.value_w) if w.value_w is not None else eye
    m = wk.t() @ wq          # scores use q' = Wk^T q = m query + mb
    mb = wk.t() @ bq
    down = torch.zeros(n, r, d, dtype=torch.float64)
    down_b = torch.zeros(n, r, dtype=torch.float64)
    keys = torch.zeros(n, r, d, dtype=torch.float64)
    keys_b = torch.zeros(n, r, dtype=torch.float64)
    bias_rows = torch.zeros(n, d, dtype=torch.float64)
    bias_rows_b = torch.zeros(n, dtype=torch.float64)
    out = torch.zeros(d, n, r, dtype=torch.float64)
    out_bias = torch.zeros(d, n, dtype=torch.float64)
    for i in range(n):
        ri = w.down_w[i].shape[0]
        s = _scale(w.scaling[i], d)
        u = s[:, None] * f64(w.up_w[i])                                   # (d, ri): s_i U_i
        c = s * (f64(w.up_b[i]) if w.up_b[i] is not None else torch.zeros(d, dtype=torch.float64))
        down[i, :ri] = f64(w.down_w[i])
        if w.down_b[i] is not None:
            down_b[i, :ri] = f64(w.down_b[i])
        keys[i, :ri] = u.t() @ m
        keys_b[i, :ri] = u.t() @ mb
        bias_rows[i] = c @ m
        bias_rows_b[i] = c @ mb
        out[:, i, :ri] = wv @ u
        out_bias[:, i] = wv @ c
    w_in = torch.cat([down.reshape(n * r, d), keys.reshape(n * r, d), bias_rows])
    b_in = torch.cat([down_b.reshape(-1), keys_b.reshape(-1), bias_rows_b])
    w_out = torch.cat([out.reshape(d, n * r), out_bias], dim=1)
    res_w = wv if (w.residual_before and w.value_w is not None) else None
    f32 = lambda t: None if t is None else t.to(device=device, dtype=torch.float32).contiguous()  # noqa: E731
    return PackedFusion(f32(w_in), f32(b_in), f32(w_out), f32(res_w), w.activation, n, r)


def _check_inputs(x: torch.Tensor, query: torch.Tensor, residual: torch.Tensor, d: int) -> None:
    for name, t in (("x", x), ("query", query), ("residual", residual)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise KernelInputError(f"{OP}: {name} must be a floating-point tensor")
        if t.dim() < 1 or t.shape[-1] != d:
            raise KernelInputError(f"{OP}: {name} must end in the hidden size {d}, got {tuple(t.shape)}")
    if query.shape != x.shape or residual.shape != x.shape:
        raise KernelInputError(f"{OP}: x, query and residual must have one shape, got {tuple(x.shape)}, "
                               f"{tuple(query.shape)}, {tuple(residual.shape)}")


def activation_code(fn) -> int | None:
    """The kernels' code of an adapter non-linearity (see ``ACTIVATIONS``), or None for one they lack."""
    if fn is F.relu or fn is torch.relu or isinstance(fn, torch.nn.ReLU):
        return ACTIVATIONS["relu"][0]
    exact_gelu = isinstance(fn, torch.nn.GELU) and fn.approximate == "none"
    if fn is F.gelu or exact_gelu or getattr(fn, "act", None) is F.gelu:  # the last: transformers' GELUActivation
        return ACTIVATIONS["gelu"][0]
    if fn is F.silu or isinstance(fn, torch.nn.SiLU):
        return ACTIVATIONS["silu"][0]
    if fn is F.leaky_relu or (isinstance(fn, torch.nn.LeakyReLU) and fn.negative_slope == 0.01):
        return ACTIVATIONS["leakyrelu"][0]
    return None


def _folded(x, query, residual, w_in, b_in, w_out, res_w, n: int, r: int, activation, temperature: float):
    """The two-GEMM computation in torch ops: (out, probs float32)."""
    nr = n * r
    lead = x.shape[:-1]
    if query is x:
        y = F.linear(x, w_in, b_in)
        h, keys, bias_scores = y[..., :nr], y[..., nr:2 * nr], y[..., 2 * nr:]
    else:
        h = F.linear(x, w_in[:nr], b_in[:nr])
        yq = F.linear(query, w_in[nr:], b_in[nr:])
        keys, bias_scores = yq[..., :nr], yq[..., nr:]
    a = activation(h).reshape(*lead, n, r)
    scores = (keys.reshape(*lead, n, r).float() * a.float()).sum(-1) + bias_scores.float()
    probs = torch.softmax(scores / temperature, dim=-1)                 # (..., n) float32
    p = probs.to(a.dtype)
    z = torch.cat([(a * p.unsqueeze(-1)).reshape(*lead, nr), p], dim=-1)  # (..., n r + n)
    out = F.linear(z, w_out)
    out = out + (F.linear(residual, res_w) if res_w is not None else residual)
    return out, probs


def _op_ref(x, query, residual, w_in, b_in, w_out, res_w, n: int, r: int, activation: int, temperature: float):
    ws = [None if t is None else t.to(x.dtype) for t in (w_in, b_in, w_out, res_w)]
    return _folded(x, query, residual, *ws, n, r, ACTIVATIONS[ACTIVATION_NAMES[activation]][1], temperature)


def _cuda(x, query, residual, w_in, b_in, w_out, res_w, n: int, r: int, activation: int, temperature: float):
    packed = PackedFusion(w_in, b_in, w_out, res_w, ACTIVATIONS[ACTIVATION_NAMES[activation]][1], n, r)
    return cuda_function(OP, "adapter_fusion_triton")(x, query, residual, packed, temperature, return_probs=True)


def _fake(x, query, residual, w_in, b_in, w_out, res_w, n, r, activation, temperature):
    return torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty(x.shape[0], n, dtype=torch.float32)


define(OP, "(Tensor x, Tensor query, Tensor residual, Tensor w_in, Tensor b_in, Tensor w_out, Tensor? res_w, int n, "
       "int r, int activation, float temperature) -> (Tensor, Tensor)", fake=_fake, ref=_op_ref, cuda=_cuda)


def _check_temperature(temperature) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise KernelInputError(f"{OP}: temperature must be a positive number, got {temperature!r}")


def adapter_fusion(x: torch.Tensor, query: torch.Tensor, residual: torch.Tensor, packed: PackedFusion,
                   temperature: float = 1.0, *, return_probs: bool = False):
    """The fusion output of N adapters, computed with two GEMMs (see the module docstring).

    x, query, residual: (..., d), one shape and dtype (pass the same tensor as x and query when
    the fusion's query is the adapters' input, the default, to share one GEMM); packed: from
    :func:`pack_fusion`, cast to x's dtype unless under autocast; temperature: the fusion's
    softmax temperature. Returns (..., d) in x's dtype: what ``BertFusion.forward`` returns
    (before ``post_forward``). Scores and softmax are computed in float32. With
    ``return_probs``, returns ``(out, probs)``: probs (..., n) float32, the attention over the
    adapters (the softmax the output is computed with; no extra work). The CPU and CUDA kernels
    serve relu/gelu/silu/leakyrelu adapters outside autograd and autocast; other calls take
    :func:`adapter_fusion_ref`.
    """
    d = packed.w_in.shape[1]
    _check_inputs(x, query, residual, d)
    _check_temperature(temperature)
    code = activation_code(packed.activation)
    autocast = x.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(x.device.type)
    if (code is not None and not autocast
            and use_kernel(OP, x, query, residual, packed.w_in, packed.b_in, packed.w_out, packed.res_w)):
        lead = x.shape[:-1]
        x2 = x.reshape(-1, d)
        q2 = x2 if query is x else query.reshape(-1, d)
        out, probs = op(OP)(x2, q2, residual.reshape(-1, d), packed.w_in, packed.b_in, packed.w_out, packed.res_w,
                            packed.n, packed.r, code, float(temperature))
        out, probs = out.reshape(*lead, d), probs.reshape(*lead, packed.n)
    else:
        out, probs = _folded(x, query, residual, packed.w_in, packed.b_in, packed.w_out, packed.res_w, packed.n,
                             packed.r, packed.activation, temperature)
    return (out, probs) if return_probs else out


def adapter_fusion_ref(x: torch.Tensor, query: torch.Tensor, residual: torch.Tensor, packed: PackedFusion,
                       temperature: float = 1.0, *, return_probs: bool = False):
    """Pure-torch reference of :func:`adapter_fusion` (same signature and checks): the same two
    GEMMs and the step between them as torch ops."""
    _check_inputs(x, query, residual, packed.w_in.shape[1])
    _check_temperature(temperature)
    out, probs = _folded(x, query, residual, packed.w_in, packed.b_in, packed.w_out, packed.res_w, packed.n,
                         packed.r, packed.activation, temperature)
    return (out, probs) if return_probs else out


def adapter_fusion_unfolded(x: torch.Tensor, query: torch.Tensor, residual: torch.Tensor, weights: FusionWeights,
                            temperature: float = 1.0, *, return_probs: bool = False):
    """What :func:`adapter_fusion` computes, unfolded: every adapter, then the fusion attention, term by term
    in the order ``adapters``' ``compose_fuse`` and ``BertFusion.forward`` use (x's dtype; with
    ``return_probs``, ``(out, probs)``, probs (..., n) in x's dtype)."""
    _check_inputs(x, query, residual, weights.dim)
    dt = x.dtype
    cast = lambda t: None if t is None else t.to(dt)  # noqa: E731
    ups = []
    for dw, db, uw, ub, s in zip(weights.down_w, weights.down_b, weights.up_w, weights.up_b, weights.scaling,
                                 strict=True):
        a = weights.activation(F.linear(x, cast(dw), cast(db)))
        s = s.to(dt) if isinstance(s, torch.Tensor) else s
        ups.append(F.linear(a, cast(uw), cast(ub)) * s)
    value = torch.stack(ups, dim=-2)                                    # (..., n, d)
    if weights.residual_before:
        value = value + residual.unsqueeze(-2)
    q = F.linear(query, cast(weights.query_w), cast(weights.query_b)) if weights.query_w is not None else query
    k = F.linear(value, cast(weights.key_w), cast(weights.key_b)) if weights.key_w is not None else value
    v = F.linear(value, cast(weights.value_w)) if weights.value_w is not None else value
    scores = torch.matmul(q.unsqueeze(-2), k.transpose(-2, -1)).squeeze(-2)
    p = torch.softmax(scores / temperature, dim=-1)
    out = torch.matmul(p.unsqueeze(-2), v).squeeze(-2)
    if not weights.residual_before:
        out = out + residual
    return (out, p) if return_probs else out
