"""``varlen_attention``: self-attention of each packed sequence on its own, from fused QKV."""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from adaptertx.kernels._common import KernelInputError, check_float, check_offsets
from adaptertx.kernels._library import cuda_function, define, op, use_kernel

OP = "varlen_attention"


def _check(qkv, cu_seqlens, heads, scale, max_seqlen=None) -> None:
    check_float(OP, "qkv", qkv, 2)
    if qkv.shape[1] % 3:
        raise KernelInputError(f"{OP}: qkv must be (tokens, 3 * dim), got {tuple(qkv.shape)}")
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1 or (qkv.shape[1] // 3) % heads:
        raise KernelInputError(f"{OP}: heads must be a positive int dividing dim={qkv.shape[1] // 3}, got {heads!r}")
    check_offsets(OP, cu_seqlens, qkv.shape[0], qkv)
    if max_seqlen is not None and (isinstance(max_seqlen, bool) or not isinstance(max_seqlen, int) or max_seqlen < 0):
        raise KernelInputError(f"{OP}: max_seqlen must be a non-negative int or None, got {max_seqlen!r}")
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


def _op_ref(qkv, cu_seqlens, heads: int, scale: float, max_seqlen: int):
    return _ref(qkv, cu_seqlens, heads, scale)


def _cuda(qkv, cu_seqlens, heads: int, scale: float, max_seqlen: int):
    return cuda_function(OP, "varlen_attention_cuda")(qkv, cu_seqlens, heads, scale, max_seqlen)


define(OP, "(Tensor qkv, Tensor cu_seqlens, int heads, float scale, int max_seqlen) -> Tensor",
       fake=lambda qkv, cu_seqlens, heads, scale, max_seqlen: qkv.new_empty(qkv.shape[0], qkv.shape[1] // 3),
       ref=_op_ref, cuda=_cuda, cuda_needs="varlen_attn", cuda_dtypes=(torch.bfloat16, torch.float16))


def varlen_attention_ref(qkv: torch.Tensor, cu_seqlens: torch.Tensor, heads: int,
                         scale: float | None = None, max_seqlen: int | None = None) -> torch.Tensor:
    """Pure-torch reference of :func:`varlen_attention` (same signature and checks)."""
    _check(qkv, cu_seqlens, heads, scale, max_seqlen)
    return _ref(qkv, cu_seqlens, heads, scale)


def varlen_attention(qkv: torch.Tensor, cu_seqlens: torch.Tensor, heads: int,
                     scale: float | None = None, max_seqlen: int | None = None) -> torch.Tensor:
    """Unmasked softmax attention of every packed sequence with itself.

    qkv: (tokens, 3 * dim), rows ``[q | k | v]`` as BERT's fused query/key/value projection
    gives them, head h at columns ``h*hd:(h+1)*hd`` of each third (hd = dim / heads);
    cu_seqlens: (n + 1,) int32/int64 offsets from 0 to tokens, non-decreasing (empty
    sequences allowed); scale: default ``1 / sqrt(hd)``. Returns ctx: (tokens, dim) in qkv's
    dtype, ``softmax(q k^T * scale) v`` per sequence and head; max_seqlen: the longest
    sequence, if the caller knows it (the CUDA kernel needs it; without it one host sync
    computes it). The CPU kernel reads q, k, v in place (no gather, no padding), computes in
    float32 and rounds the output once; on CUDA (bfloat16/float16) one
    ``torch.nn.attention.varlen.varlen_attn`` call (flash attention) serves the whole batch.
    """
    _check(qkv, cu_seqlens, heads, scale, max_seqlen)
    if use_kernel(OP, qkv):
        hd = qkv.shape[1] // 3 // heads
        if max_seqlen is None:
            max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max()) if cu_seqlens.numel() > 1 else 0
        return op(OP)(qkv, cu_seqlens, heads, float(scale) if scale is not None else 1.0 / math.sqrt(hd), max_seqlen)
    return _ref(qkv, cu_seqlens, heads, scale)
