"""``dequantize_rows``: int8 rows times their fp32 scales, rounded once to fp32 or bf16.

The int8 base (:mod:`adaptertx.quantize`) rebuilds each linear layer's weight just in time
on every forward and backward. As three torch ops (int8 → fp32, multiply, cast) that moves
about 19 bytes per weight; the native kernel moves 3 (bf16) and gives the same bits.
"""

from __future__ import annotations

import torch

from adaptertx.kernels._common import NATIVE_DTYPES, KernelInputError
from adaptertx.kernels._library import cuda_function, define, op, use_kernel

OP = "dequantize_rows"


def _check(qweight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> None:
    if not isinstance(qweight, torch.Tensor) or qweight.dtype != torch.int8 or qweight.dim() != 2:
        got = f"{qweight.dtype} {tuple(qweight.shape)}" if isinstance(qweight, torch.Tensor) else type(qweight).__name__
        raise KernelInputError(f"{OP}: qweight must be a 2-D int8 tensor, got {got}")
    if not isinstance(scale, torch.Tensor) or not scale.is_floating_point() or scale.shape != (qweight.shape[0],):
        got = f"{scale.dtype} {tuple(scale.shape)}" if isinstance(scale, torch.Tensor) else type(scale).__name__
        raise KernelInputError(f"{OP}: scale must be a float ({qweight.shape[0]},) tensor, got {got}")
    if scale.device != qweight.device:
        raise KernelInputError(f"{OP}: scale is on {scale.device} but qweight is on {qweight.device}")
    if not dtype.is_floating_point:
        raise KernelInputError(f"{OP}: dtype must be a floating-point dtype, got {dtype}")


def _ref(qweight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (qweight.float() * scale.float()[:, None]).to(dtype)


def _cuda(qweight, scale, dtype):
    return cuda_function(OP, "dequantize_rows_triton")(qweight, scale, dtype)


define(OP, "(Tensor qweight, Tensor scale, ScalarType dtype) -> Tensor",
       fake=lambda qweight, scale, dtype: qweight.new_empty(qweight.shape, dtype=dtype), ref=_ref, cuda=_cuda)


def dequantize_rows_ref(qweight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Pure-torch reference of :func:`dequantize_rows` (same signature and checks)."""
    _check(qweight, scale, dtype)
    return _ref(qweight, scale, dtype)


def dequantize_rows(qweight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``(qweight * scale[:, None])`` computed in fp32 and rounded once to ``dtype``: (out, in).

    qweight: (out, in) int8; scale: (out,) float. CPU calls for float32/bfloat16 outputs take
    the native kernel (bit-identical to the reference); others take
    :func:`dequantize_rows_ref`. Never differentiable (the int8 weight is frozen).
    """
    _check(qweight, scale, dtype)
    if dtype in NATIVE_DTYPES and use_kernel(OP, qweight, scale, dtypes=(torch.int8,)):
        return op(OP)(qweight, scale, dtype)
    return _ref(qweight, scale, dtype)
