"""Triton ``add_layernorm``: ``LayerNorm(x + residual)`` over the last dim, one program per row.

The sum stays in fp32 (it is never rounded to x's dtype); the output is rounded once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from adaptertx.kernels.cuda._triton_common import INTERPRETED, cast, pow2


@triton.jit
def _add_layernorm_kernel(x_ptr, r_ptr, w_ptr, b_ptr, out_ptr, dim, eps,
                          HAS_W: tl.constexpr, HAS_B: tl.constexpr, INTERP: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64) * dim
    cols = tl.arange(0, BLOCK)
    mask = cols < dim
    s = tl.load(x_ptr + row + cols, mask=mask, other=0.0).to(tl.float32)
    s += tl.load(r_ptr + row + cols, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(s, axis=0) / dim
    diff = tl.where(mask, s - mean, 0.0)
    var = tl.sum(diff * diff, axis=0) / dim
    y = diff * (1.0 / tl.sqrt(var + eps))
    if HAS_W:
        y = y * tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_B:
        y = y + tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row + cols, cast(y, out_ptr.dtype.element_ty, INTERP), mask=mask)


def add_layernorm_triton(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """``LayerNorm(x + residual)``: x, residual (tokens, dim); weight, bias (dim,) or None."""
    x, residual = x.contiguous(), residual.contiguous()
    out = torch.empty_like(x)
    if x.numel() == 0:
        return out
    w = weight.contiguous() if weight is not None else x
    b = bias.contiguous() if bias is not None else x
    block = pow2(x.shape[1])
    _add_layernorm_kernel[(x.shape[0],)](
        x, residual, w, b, out, x.shape[1], float(eps),
        HAS_W=weight is not None, HAS_B=bias is not None, INTERP=INTERPRETED, BLOCK=block,
        num_warps=min(16, pow2(block // 256)),
    )
    return out
