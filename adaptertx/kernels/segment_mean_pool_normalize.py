"""``segment_mean_pool_normalize``: sentence embeddings from a packed (tokens, dim) batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from adaptertx.kernels._common import KernelInputError, check_float, check_offsets
from adaptertx.kernels._library import cuda_function, define, op, use_kernel

OP = "segment_mean_pool_normalize"
NORM_EPS = 1e-12


def _check(hidden, cu_seqlens, out_dtype) -> None:
    check_float(OP, "hidden", hidden, 2)
    check_offsets(OP, cu_seqlens, hidden.shape[0], hidden)
    if out_dtype is not None and not (isinstance(out_dtype, torch.dtype) and out_dtype.is_floating_point):
        raise KernelInputError(f"{OP}: out_dtype must be a floating torch.dtype or None, got {out_dtype!r}")


def _ref(hidden, cu_seqlens, out_dtype):
    n = cu_seqlens.numel() - 1
    cu = cu_seqlens.to(torch.int64)
    lengths = cu[1:] - cu[:-1]
    # output_size: no read of the lengths back to the host (none on a GPU, and it runs on meta)
    ids = torch.repeat_interleave(torch.arange(n, device=hidden.device), lengths, output_size=hidden.shape[0])
    sums = torch.zeros(n, hidden.shape[1], dtype=torch.float32, device=hidden.device)
    sums = sums.index_add(0, ids, hidden.float())
    means = sums / lengths.clamp(min=1).unsqueeze(1).to(torch.float32)
    return F.normalize(means, dim=1, eps=NORM_EPS).to(out_dtype or hidden.dtype)


def _op_ref(hidden, cu_seqlens):
    return _ref(hidden, cu_seqlens, None)


def _cuda(hidden, cu_seqlens):
    return cuda_function(OP, "segment_mean_pool_normalize_triton")(hidden, cu_seqlens, None)


def _fake(hidden, cu_seqlens):
    return hidden.new_empty(cu_seqlens.shape[0] - 1, hidden.shape[1])


define(OP, "(Tensor hidden, Tensor cu_seqlens) -> Tensor", fake=_fake, ref=_op_ref, cuda=_cuda)


def segment_mean_pool_normalize_ref(
    hidden: torch.Tensor, cu_seqlens: torch.Tensor, out_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Pure-torch reference of :func:`segment_mean_pool_normalize` (same signature and checks)."""
    _check(hidden, cu_seqlens, out_dtype)
    return _ref(hidden, cu_seqlens, out_dtype)


def segment_mean_pool_normalize(
    hidden: torch.Tensor, cu_seqlens: torch.Tensor, out_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """L2-normalised mean of each packed segment.

    hidden: (tokens, dim), the token states of n sequences packed back to back;
    cu_seqlens: (n + 1,) int32/int64 offsets, ``cu_seqlens[0] == 0``,
    ``cu_seqlens[-1] == tokens``, non-decreasing; segment i is
    ``hidden[cu_seqlens[i]:cu_seqlens[i+1]]``. Returns (n, dim) in ``out_dtype`` (default:
    hidden's dtype): ``mean / max(||mean||, 1e-12)``, summed and normalised in float32. An
    empty segment gives a zero row; n = 0 gives a (0, dim) tensor.
    """
    _check(hidden, cu_seqlens, out_dtype)
    if use_kernel(OP, hidden):
        return op(OP)(hidden, cu_seqlens).to(out_dtype or hidden.dtype)
    return _ref(hidden, cu_seqlens, out_dtype)
