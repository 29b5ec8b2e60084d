"""Triton ``dequantize_rows``: int8 rows times their per-row scale, fp32 math, rounded once."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from adaptertx.kernels.cuda._triton_common import INTERPRETED, cast

BLOCK = 1024


@triton.jit
def _dequantize_kernel(q_ptr, s_ptr, out_ptr, numel, cols, INTERP: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    q = tl.load(q_ptr + offs, mask=mask, other=0).to(tl.float32)
    s = tl.load(s_ptr + offs // cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, cast(q * s, out_ptr.dtype.element_ty, INTERP), mask=mask)


def dequantize_rows_triton(qweight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``qweight * scale[:, None]`` in fp32, rounded once to ``dtype``: qweight (out, in) int8, scale (out,)."""
    qweight, scale = qweight.contiguous(), scale.contiguous()
    out = torch.empty(qweight.shape, dtype=dtype, device=qweight.device)
    if qweight.numel() == 0:
        return out
    _dequantize_kernel[(triton.cdiv(qweight.numel(), BLOCK),)](qweight, scale, out, qweight.numel(),
                                                               qweight.shape[1], INTERP=INTERPRETED,
                                                               BLOCK=BLOCK)
    return out
