"""Triton ``adapter_fusion``: the Fusion attention step between the two GEMMs of ``adapter_fusion``.

The first GEMM gives per token the N adapters' bottleneck pre-activations ``h`` (N r), the score
keys (N r) and the bias scores (N) (see ``adaptertx.kernels.adapter_fusion``). One kernel then
computes, for a tile of tokens held as (tokens, N, r) in registers: the activations, the scores
``sum_r key * act(h) + bias_score`` in fp32, their softmax over the adapters at the temperature,
and the second GEMM's input ``z = [act(h_i) p_i]_i ++ [p_i]_i`` rounded once to h's dtype. The
GEMMs themselves stay torch matmuls. An activation the kernel does not know (not relu, erf gelu,
silu or leaky relu 0.01) is applied by torch before the kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from adaptertx.kernels.adapter_fusion import PackedFusion, activation_code
from adaptertx.kernels.cuda._triton_common import IDENTITY, INTERPRETED, activate, cast, pow2


@triton.jit
def _fusion_attention_kernel(h_ptr, sh, k_ptr, sk, b_ptr, sb, z_ptr, p_ptr, tokens, n, r, temperature,
                             ACT: tl.constexpr, INTERP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                             BLOCK_R: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    ad = tl.arange(0, BLOCK_N)
    un = tl.arange(0, BLOCK_R)
    m2 = (rows[:, None] < tokens) & (ad[None, :] < n)
    m3 = m2[:, :, None] & (un[None, None, :] < r)
    unit = ad[None, :, None] * r + un[None, None, :]
    a = tl.load(h_ptr + rows[:, None, None] * sh + unit, mask=m3, other=0.0).to(tl.float32)
    a = tl.where(m3, activate(a, ACT), 0.0)
    key = tl.load(k_ptr + rows[:, None, None] * sk + unit, mask=m3, other=0.0).to(tl.float32)
    bias = tl.load(b_ptr + rows[:, None] * sb + ad[None, :], mask=m2, other=0.0).to(tl.float32)
    s = (tl.sum(a * key, axis=2) + bias) / temperature
    s = tl.where(ad[None, :] < n, s, float("-inf"))
    e = tl.exp(s - tl.max(s, axis=1)[:, None])
    p = e / tl.sum(e, axis=1)[:, None]
    width = n * r + n
    dt = z_ptr.dtype.element_ty
    tl.store(z_ptr + rows[:, None, None] * width + unit, cast(a * p[:, :, None], dt, INTERP), mask=m3)
    tl.store(z_ptr + rows[:, None] * width + n * r + ad[None, :], cast(p, dt, INTERP), mask=m2)
    tl.store(p_ptr + rows[:, None] * n + ad[None, :], p, mask=m2)


def _unit_columns(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(1) == 1 or t.shape[1] == 1 else t.contiguous()


def fusion_attention_triton(h: torch.Tensor, keys: torch.Tensor, bias_scores: torch.Tensor, activation,
                            temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The Fusion attention step of ``adapter_fusion``, fused: ``(z, probs)``.

    h: (tokens, n r) bottleneck pre-activations of the n adapters; keys: (tokens, n r) score keys;
    bias_scores: (tokens, n) (views of one GEMM output are fine: rows may have any stride);
    activation: the adapters' non-linearity. probs (tokens, n) float32 is the softmax over the
    adapters of ``(sum_r keys * act(h) + bias_scores) / temperature``, and z (tokens, n r + n) in
    h's dtype is ``[act(h_i) * p_i]_i`` followed by ``[p_i]_i``, the second GEMM's input.
    """
    tokens, n = bias_scores.shape
    r = h.shape[1] // n
    code = activation_code(activation)
    if code is None:
        code, h = IDENTITY, activation(h)
    h, keys, bias_scores = _unit_columns(h), _unit_columns(keys), _unit_columns(bias_scores)
    z = torch.empty(tokens, n * r + n, dtype=h.dtype, device=h.device)
    probs = torch.empty(tokens, n, dtype=torch.float32, device=h.device)
    if tokens == 0:
        return z, probs
    block_n, block_r = pow2(n), pow2(r)
    block_m = pow2(4096 // (block_n * block_r), 1, 64) if block_n * block_r <= 4096 else 1
    _fusion_attention_kernel[(triton.cdiv(tokens, block_m),)](
        h, h.stride(0), keys, keys.stride(0), bias_scores, bias_scores.stride(0), z, probs, tokens, n, r,
        float(temperature), ACT=code, INTERP=INTERPRETED, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_R=block_r)
    return z, probs


def adapter_fusion_triton(x: torch.Tensor, query: torch.Tensor, residual: torch.Tensor, packed: PackedFusion,
                          temperature: float = 1.0, *, return_probs: bool = False):
    """``adapter_fusion`` with the attention step in Triton (:func:`fusion_attention_triton`): x,
    query, residual (..., d), one shape and dtype; packed from ``pack_fusion`` in x's dtype. Returns
    (..., d) in x's dtype, and with ``return_probs`` also the (..., n) float32 attention."""
    n, r = packed.n, packed.r
    nr, d = n * r, packed.w_in.shape[1]
    lead = x.shape[:-1]
    x2 = x.reshape(-1, d)
    if query is x:
        y = F.linear(x2, packed.w_in, packed.b_in)
        h, yq = y[:, :nr], y[:, nr:]
    else:
        h = F.linear(x2, packed.w_in[:nr], packed.b_in[:nr])
        yq = F.linear(query.reshape(-1, d), packed.w_in[nr:], packed.b_in[nr:])
    z, probs = fusion_attention_triton(h, yq[:, :nr], yq[:, nr:], packed.activation, temperature)
    out = F.linear(z, packed.w_out).reshape(*lead, d)
    out = out + (F.linear(residual, packed.res_w) if packed.res_w is not None else residual)
    return (out, probs.reshape(*lead, n)) if return_probs else out
