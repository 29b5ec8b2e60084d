"""CUDA backend of ``varlen_attention``: one flash-attention call per layer for the whole packed batch.

``torch.nn.attention.varlen.varlen_attn`` (torch 2.10 and later, flash-backed, no extra
package) takes q, k and v as (tokens, heads, head_dim) views of the fused QKV projection, the
int32 offsets and the longest sequence; where the flash-attn package is installed,
``flash_attn_varlen_qkvpacked_func`` is used instead (it reads the packed QKV directly).
"""

from __future__ import annotations

import importlib.util

import torch

_FLASH_ATTN = importlib.util.find_spec("flash_attn") is not None


def varlen_attention_cuda(qkv: torch.Tensor, cu_seqlens: torch.Tensor, heads: int, scale: float,
                          max_seqlen: int) -> torch.Tensor:
    """``softmax(q k^T * scale) v`` per packed sequence: qkv (tokens, 3 * dim) bf16/fp16 on CUDA,
    cu_seqlens (n + 1,) on the same device, max_seqlen the longest sequence. Returns (tokens, dim)."""
    tokens, three_dim = qkv.shape
    dim = three_dim // 3
    if tokens == 0:
        return qkv.new_empty(0, dim)
    cu = cu_seqlens if cu_seqlens.dtype == torch.int32 else cu_seqlens.to(torch.int32)
    packed = qkv.view(tokens, 3, heads, dim // heads)
    if _FLASH_ATTN:
        from flash_attn import flash_attn_varlen_qkvpacked_func

        out = flash_attn_varlen_qkvpacked_func(packed, cu, max_seqlen, softmax_scale=scale)
    else:
        from torch.nn.attention.varlen import varlen_attn

        q, k, v = packed.unbind(1)
        out = varlen_attn(q, k, v, cu, cu, max_seqlen, max_seqlen, scale=scale)
    return out.reshape(tokens, dim)
