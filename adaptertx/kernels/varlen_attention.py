"""``varlen_attention``: self-attention of each packed sequence on its own, from fused QKV."""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from adaptertx.kernels._build import native_op, use_native
from adaptertx.kernels._common import KernelInputError, check_float, native_eligible, same_device

OP = "varlen_attention"


def _check(qkv, cu_seqlens, heads, scale) -> None:
    check_float(OP, "qkv", qkv, 2)
    if qkv.shape[1] % 3:
        raise KernelInputError(f"{OP}: qkv must be (tokens, 3 * dim), got {tuple(qkv.shape)}")
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1 or (qkv.shape[1] // 3) % heads:
        raise KernelInputError(f"{OP}: heads must be a positive int dividing dim={qkv.shape[1] // 3}, got {heads!r}")
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
        raise KernelInputError(f"{OP}: cu_seqlens must be a 1-D tensor of n + 1 offsets")
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise KernelInputError(f"{OP}: cu_seqlens must be int32 or int64, got {cu_seqlens.dtype}")
    same_device(OP, "cu_seqlens", cu_seqlens, qkv)
    if int(cu_seqlens[0]) != 0 or int(cu_seqlens[-1]) != qkv.shape[0]:
        raise KernelInputError(f"{OP}: cu_seqlens must start at 0 and end at tokens={qkv.shape[0]}, "
                               f"got {int(cu_seqlens[0])}..{int(cu_seqlens[-1])}")
    if cu_seqlens.numel() > 1 and bool((cu_seqlens[1:] < cu_seqlens[:-1]).any()):
        raise KernelInputError(f"{OP}: cu_seqlens must be non-decreasing")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, numbers.Real)
                              or not math.isfinite(scale)):
        raise KernelInputError(f"{OP}: scale must be a finite number or None, got {scale!r}")


def _ref(qkv, cu_seqlens, heads, scale):
    tokens, three_dim = qkv.shape
    dim = three_dim // 3
    hd = dim // heads
    ctx = qkv.new_zeros(tokens, dim)
    cu = cu_seqlens.to(torch.int64).cpu()
    lengths = (cu[1:] - cu[:-1]).tolist()
    starts = cu[:-1].tolist()
    by_length: dict[int, list[int]] = {}
    for s, n in zip(starts, lengths, strict=True):
        if n:
            by_length.setdefault(n, []).append(s)
    # Sequences of one length attend together as a (count, heads, length, hd) batch.
    for n, firsts in by_length.items():
        index = (torch.tensor(firsts)[:, None] + torch.arange(n)).reshape(-1).to(qkv.device)
        part = qkv.index_select(0, index)
        q, k, v = part.view(len(firsts), n, 3, heads, hd).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)
        ctx.index_copy_(0, index, out.transpose(1, 2).reshape(len(firsts) * n, dim))
    return ctx


def varlen_attention_ref(qkv: torch.Tensor, cu_seqlens: torch.Tensor, heads: int,
                         scale: float | None = None) -> torch.Tensor:
    """Pure-torch reference of :func:`varlen_attention` (same signature and checks)."""
    _check(qkv, cu_seqlens, heads, scale)
    return _ref(qkv, cu_seqlens, heads, scale)


def varlen_attention(qkv: torch.Tensor, cu_seqlens: torch.Tensor, heads: int,
                     scale: float | None = None) -> torch.Tensor:
    """Unmasked softmax attention of every packed sequence with itself.

    qkv: (tokens, 3 * dim), rows ``[q | k | v]`` as BERT's fused query/key/value projection
    gives them, head h at columns ``h*hd:(h+1)*hd`` of each third (hd = dim / heads);
    cu_seqlens: (n + 1,) int32/int64 offsets from 0 to tokens, non-decreasing (empty
    sequences allowed); scale: default ``1 / sqrt(hd)``. Returns ctx: (tokens, dim) in qkv's
    dtype, ``softmax(q k^T * scale) v`` per sequence and head. The native kernel reads q, k, v
    in place (no gather, no padding), computes in float32 and rounds the output once.
    """
    _check(qkv, cu_seqlens, heads, scale)
    if native_eligible(qkv) and use_native(OP):
        hd = qkv.shape[1] // 3 // heads
        return native_op(OP)(qkv, cu_seqlens.cpu(), heads, float(scale) if scale is not None else 1.0 / math.sqrt(hd))
    return _ref(qkv, cu_seqlens, heads, scale)
