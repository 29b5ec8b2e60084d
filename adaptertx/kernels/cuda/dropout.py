"""Triton ``dropout``: the same keep bits as ``adaptertx/csrc/dropout.cpp`` and ``keep_mask_ref``.

Element ``i`` (row-major) is kept when ``h(i) >= floor(p * 2^32)``, with
``h(i) = lowbias32(lowbias32(lo32(i) ^ k1) ^ hi32(i) ^ k2)``, ``k1 = lowbias32(lo32(seed))``,
``k2 = lowbias32(hi32(seed) ^ 0x9E3779B9)`` and lowbias32 C. Wellons' 32-bit hash; kept elements
are multiplied by ``1 / (1 - p)`` in fp32 (fp64 for fp64 inputs) and rounded once. All hash
arithmetic is on uint32 tensors, whose multiplies and shifts wrap mod 2^32 as in C.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from adaptertx.kernels.cuda._triton_common import INTERPRETED, cast

BLOCK = 1024
_MASK32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9
_M1 = 0x7FEB352D
_M2 = 0x846CA68B


def _lowbias32_host(v: int) -> int:
    v ^= v >> 16
    v = (v * _M1) & _MASK32
    v ^= v >> 15
    v = (v * _M2) & _MASK32
    return v ^ (v >> 16)


def _as_int32(v: int) -> int:
    """A uint32 value as the int32 with the same bits (so every launch passes an i32 argument)."""
    return v - 2**32 if v >= 2**31 else v


@triton.jit
def _lowbias32(x):
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    return x ^ (x >> 16)


@triton.jit
def _dropout_kernel(x_ptr, out_ptr, scale_ptr, numel, k1, k2, thr, INTERP: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < numel
    lo = (i & 0xFFFFFFFF).to(tl.uint32)
    hi = (i >> 32).to(tl.uint32)
    h = _lowbias32(_lowbias32(lo ^ k1.to(tl.uint32, bitcast=True)) ^ hi ^ k2.to(tl.uint32, bitcast=True))
    keep = h >= thr.to(tl.uint32, bitcast=True)
    scale = tl.load(scale_ptr)
    x = tl.load(x_ptr + i, mask=mask, other=0.0).to(scale.dtype)
    y = tl.where(keep, x * scale, 0.0)
    tl.store(out_ptr + i, cast(y, out_ptr.dtype.element_ty, INTERP), mask=mask)


def dropout_triton(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """Inverted dropout of x (any shape, float) with keep probability ``1 - p`` decided by the
    hash of ``(i, seed)``; p in [0, 1), seed in [0, 2**63). Same bits as the reference."""
    x = x.contiguous()
    out = torch.empty_like(x)
    if x.numel() == 0:
        return out
    k1 = _lowbias32_host(seed & _MASK32)
    k2 = _lowbias32_host((seed >> 32) ^ _GOLDEN)
    thr = min(math.floor(p * 2**32), _MASK32)
    wide = torch.promote_types(x.dtype, torch.float32)
    scale = torch.full((1,), 1.0 / (1.0 - p), dtype=wide, device=x.device)
    _dropout_kernel[(triton.cdiv(x.numel(), BLOCK),)](x, out, scale, x.numel(), _as_int32(k1), _as_int32(k2),
                                                      _as_int32(thr), INTERP=INTERPRETED, BLOCK=BLOCK)
    return out
