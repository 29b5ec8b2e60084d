"""Triton ``int8_linear``: ``x @ (qweight * scale[:, None]).T + bias`` without dequantising the weight.

A tiled GEMM: each (BLOCK_K, BLOCK_N) int8 weight tile is loaded and converted to x's dtype
(exact: int8 values fit bf16's mantissa), products accumulate in fp32, and the epilogue applies
the per-output-row scale and the bias before one rounding to x's dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from adaptertx.kernels.cuda._triton_common import INTERPRETED, cast, dot, dot_block


@triton.jit
def _int8_linear_kernel(x_ptr, q_ptr, s_ptr, b_ptr, out_ptr, m, n, k, HAS_BIAS: tl.constexpr,
                        INTERP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    dt = x_ptr.dtype.element_ty
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, k, BLOCK_K):
        kk = k0 + ks
        x = tl.load(x_ptr + rows[:, None] * k + kk[None, :], mask=(rows[:, None] < m) & (kk[None, :] < k), other=0.0)
        q = tl.load(q_ptr + cols[None, :] * k + kk[:, None], mask=(cols[None, :] < n) & (kk[:, None] < k), other=0)
        acc = dot(x, q.to(tl.float32).to(dt), acc, INTERP)
    acc = acc * tl.load(s_ptr + cols, mask=cols < n, other=0.0).to(tl.float32)[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=cols < n, other=0.0).to(tl.float32)[None, :]
    mask = (rows[:, None] < m) & (cols[None, :] < n)
    tl.store(out_ptr + rows[:, None] * n + cols[None, :], cast(acc, out_ptr.dtype.element_ty, INTERP), mask=mask)


def int8_linear_triton(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor,
                       bias: torch.Tensor | None) -> torch.Tensor:
    """x (..., in) float; qweight (out, in) int8; scale (out,) float; bias (out,) or None.
    Returns (..., out) in x's dtype."""
    n, k = qweight.shape
    lead = x.shape[:-1]
    x2 = x.reshape(lead.numel(), k).contiguous()
    qweight, scale = qweight.contiguous(), scale.contiguous()
    out = torch.empty(x2.shape[0], n, dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out.reshape(*lead, n)
    block_m, block_n = dot_block(x2.shape[0]), dot_block(n, 128)
    grid = (triton.cdiv(x2.shape[0], block_m), triton.cdiv(n, block_n))
    _int8_linear_kernel[grid](x2, qweight, scale, bias.contiguous() if bias is not None else scale, out,
                              x2.shape[0], n, k, HAS_BIAS=bias is not None, INTERP=INTERPRETED,
                              BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=dot_block(k))
    return out.reshape(*lead, n)
