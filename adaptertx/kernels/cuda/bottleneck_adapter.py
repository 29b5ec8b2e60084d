"""Triton ``bottleneck_adapter``: ``residual + scaling * (act(h @ down_w.T + down_b) @ up_w.T + up_b)``.

One kernel: a program takes ``BLOCK_M`` tokens, accumulates their (BLOCK_M, r) down-projection
over the hidden dim in registers (fp32), adds the bias and applies the activation, rounds the
activations to h's dtype (the tensor-core operand on a GPU), then writes the up-projection
tile by tile with bias, scaling and residual in the epilogue. The weights are read in h's
dtype (cast by the kernel if they are stored in another).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from adaptertx.kernels.bottleneck_adapter import ACTIVATIONS
from adaptertx.kernels.cuda._triton_common import INTERPRETED, activate, cast, dot, dot_block, pow2


@triton.jit
def _down(h_ptr, dw_ptr, db_ptr, rows, tokens, dim, r,
          HAS_DB: tl.constexpr, ACT: tl.constexpr, INTERP: tl.constexpr,
          BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr):
    """act(h[rows] @ down_w.T + down_b) as (BLOCK_M, BLOCK_R) fp32; padded columns are act(0) = 0."""
    dt = h_ptr.dtype.element_ty
    ks = tl.arange(0, BLOCK_K)
    rs = tl.arange(0, BLOCK_R)
    acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for k0 in range(0, dim, BLOCK_K):
        kk = k0 + ks
        h = tl.load(h_ptr + rows[:, None] * dim + kk[None, :],
                    mask=(rows[:, None] < tokens) & (kk[None, :] < dim), other=0.0)
        w = tl.load(dw_ptr + rs[None, :] * dim + kk[:, None],
                    mask=(rs[None, :] < r) & (kk[:, None] < dim), other=0.0)
        acc = dot(h, cast(w, dt, INTERP), acc, INTERP)
    if HAS_DB:
        acc += cast(tl.load(db_ptr + rs, mask=rs < r, other=0.0), dt, INTERP).to(tl.float32)[None, :]
    return activate(acc, ACT)


@triton.jit
def _bottleneck_kernel(h_ptr, res_ptr, dw_ptr, db_ptr, uw_ptr, ub_ptr, out_ptr, tokens, dim, r, scaling,
                       HAS_DB: tl.constexpr, HAS_UB: tl.constexpr, ACT: tl.constexpr, INTERP: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
                       BLOCK_N: tl.constexpr):
    dt = h_ptr.dtype.element_ty
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    a = cast(_down(h_ptr, dw_ptr, db_ptr, rows, tokens, dim, r, HAS_DB, ACT, INTERP, BLOCK_M, BLOCK_K, BLOCK_R),
             dt, INTERP)
    rs = tl.arange(0, BLOCK_R)
    for n0 in range(0, dim, BLOCK_N):
        ns = n0 + tl.arange(0, BLOCK_N)
        w = tl.load(uw_ptr + ns[None, :] * r + rs[:, None],
                    mask=(ns[None, :] < dim) & (rs[:, None] < r), other=0.0)
        up = dot(a, cast(w, dt, INTERP), tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), INTERP)
        if HAS_UB:
            up += cast(tl.load(ub_ptr + ns, mask=ns < dim, other=0.0), dt, INTERP).to(tl.float32)[None, :]
        mask = (rows[:, None] < tokens) & (ns[None, :] < dim)
        offs = rows[:, None] * dim + ns[None, :]
        y = tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32) + scaling * up
        tl.store(out_ptr + offs, cast(y, out_ptr.dtype.element_ty, INTERP), mask=mask)


def bottleneck_adapter_triton(
    h: torch.Tensor,
    residual: torch.Tensor,
    down_w: torch.Tensor,
    down_b: torch.Tensor | None,
    up_w: torch.Tensor,
    up_b: torch.Tensor | None,
    activation: str = "relu",
    scaling: float = 1.0,
) -> torch.Tensor:
    """The fused bottleneck adapter: h, residual (tokens, dim); down_w (r, dim); up_w (dim, r);
    biases or None; activation a key of ``ACTIVATIONS``; scaling a number. Returns h's dtype."""
    h, residual = h.contiguous(), residual.contiguous()
    down_w, up_w = down_w.contiguous(), up_w.contiguous()
    out = torch.empty_like(h)
    tokens, dim = h.shape
    if h.numel() == 0:
        return out
    r = down_w.shape[0]
    block_r = pow2(r, 16)
    block_m = 16 if block_r > 128 else 32
    _bottleneck_kernel[(triton.cdiv(tokens, block_m),)](
        h, residual, down_w, down_b.contiguous() if down_b is not None else h, up_w,
        up_b.contiguous() if up_b is not None else h, out, tokens, dim, r, float(scaling),
        HAS_DB=down_b is not None, HAS_UB=up_b is not None, ACT=ACTIVATIONS[activation.lower()][0],
        INTERP=INTERPRETED, BLOCK_M=block_m, BLOCK_K=dot_block(dim), BLOCK_R=block_r, BLOCK_N=dot_block(dim),
    )
    return out
