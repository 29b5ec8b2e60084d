"""Triton ``bias_gelu``: ``gelu(x + bias)`` (erf GELU), fp32 math, rounded once to x's dtype."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from adaptertx.kernels.cuda._triton_common import INTERPRETED, cast, gelu_erf

BLOCK = 1024


@triton.jit
def _bias_gelu_kernel(x_ptr, b_ptr, out_ptr, numel, dim, INTERP: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + offs % dim, mask=mask, other=0.0).to(tl.float32)
    y = gelu_erf(x + b)
    tl.store(out_ptr + offs, cast(y, out_ptr.dtype.element_ty, INTERP), mask=mask)


def bias_gelu_triton(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``gelu(x + bias)``: x (tokens, dim), bias (dim,) any float dtype; returns x's dtype."""
    x = x.contiguous()
    bias = bias.contiguous()
    out = torch.empty_like(x)
    if x.numel() == 0:
        return out
    _bias_gelu_kernel[(triton.cdiv(x.numel(), BLOCK),)](x, bias, out, x.numel(), x.shape[1], INTERP=INTERPRETED,
                                                        BLOCK=BLOCK)
    return out
