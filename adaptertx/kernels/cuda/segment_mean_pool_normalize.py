"""Triton ``segment_mean_pool_normalize``: the L2-normalised mean of each packed segment.

One program per segment reads its two offsets from ``cu_seqlens`` on the device (no host
sync), sums its rows in fp32, divides by the length and normalises with eps ``NORM_EPS``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from adaptertx.kernels.cuda._triton_common import INTERPRETED, cast, pow2
from adaptertx.kernels.segment_mean_pool_normalize import NORM_EPS


@triton.jit
def _segment_pool_kernel(h_ptr, cu_ptr, out_ptr, dim, eps, INTERP: tl.constexpr, BLOCK_T: tl.constexpr,
                         BLOCK_D: tl.constexpr):
    seg = tl.program_id(0)
    start = tl.load(cu_ptr + seg).to(tl.int64)
    end = tl.load(cu_ptr + seg + 1).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    acc = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
    for t0 in range(start, end, BLOCK_T):
        rows = t0 + tl.arange(0, BLOCK_T)
        mask = (rows[:, None] < end) & (cols[None, :] < dim)
        acc += tl.load(h_ptr + rows[:, None] * dim + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    length = tl.maximum(end - start, 1).to(tl.float32)
    mean = tl.sum(acc, axis=0) / length
    norm = tl.sqrt(tl.sum(mean * mean, axis=0))
    y = mean / tl.maximum(norm, eps)
    tl.store(out_ptr + seg.to(tl.int64) * dim + cols, cast(y, out_ptr.dtype.element_ty, INTERP), mask=cols < dim)


def segment_mean_pool_normalize_triton(
    hidden: torch.Tensor, cu_seqlens: torch.Tensor, out_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """hidden (tokens, dim), cu_seqlens (n + 1,) int32/int64 offsets on hidden's device:
    returns (n, dim) in ``out_dtype`` (default hidden's dtype); an empty segment gives zeros."""
    n, dim = cu_seqlens.numel() - 1, hidden.shape[1]
    dtype = out_dtype or hidden.dtype
    if hidden.shape[0] == 0 or n == 0 or dim == 0:
        return torch.zeros(n, dim, dtype=dtype, device=hidden.device)
    hidden, cu_seqlens = hidden.contiguous(), cu_seqlens.contiguous()
    out = torch.empty(n, dim, dtype=dtype, device=hidden.device)
    block_d = pow2(dim)
    block_t = max(1, min(16, 4096 // block_d))
    _segment_pool_kernel[(n,)](hidden, cu_seqlens, out, dim, NORM_EPS, INTERP=INTERPRETED, BLOCK_T=block_t,
                               BLOCK_D=block_d, num_warps=4 if block_d <= 1024 else 8)
    return out
