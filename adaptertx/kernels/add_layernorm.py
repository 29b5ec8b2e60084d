"""``add_layernorm``: BERT's post-LN residual step, ``LayerNorm(x + residual)``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from adaptertx.kernels._common import KernelInputError, check_float, check_residual, check_vector
from adaptertx.kernels._library import cuda_function, define, op, use_kernel

OP = "add_layernorm"


def _check(x, residual, weight, bias, eps) -> None:
    check_float(OP, "x", x, 2)
    check_residual(OP, "x", x, residual)
    if x.shape[1] < 1:
        raise KernelInputError(f"{OP}: the normalised dim must be at least 1, got shape {tuple(x.shape)}")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None:
            check_vector(OP, name, p, x.shape[1], x)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise KernelInputError(f"{OP}: eps must be a finite number >= 0, got {eps!r}")


def _ref(x, residual, weight, bias, eps):
    w = weight.to(x.dtype) if weight is not None else None
    b = bias.to(x.dtype) if bias is not None else None
    return F.layer_norm(x + residual, (x.shape[1],), w, b, float(eps))


def _cuda(x, residual, weight, bias, eps):
    return cuda_function(OP, "add_layernorm_triton")(x, residual, weight, bias, eps)


define(OP, "(Tensor x, Tensor residual, Tensor? weight, Tensor? bias, float eps) -> Tensor",
       fake=lambda x, residual, weight, bias, eps: torch.empty_like(x, memory_format=torch.contiguous_format),
       ref=_ref, cuda=_cuda)


def add_layernorm_ref(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Pure-torch reference of :func:`add_layernorm` (same signature and checks)."""
    _check(x, residual, weight, bias, eps)
    return _ref(x, residual, weight, bias, eps)


def add_layernorm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """``LayerNorm(x + residual)`` over the last dim, as in BERT's ``BertSelfOutput``/``BertOutput``.

    x, residual: (tokens, dim), same dtype; weight, bias: (dim,) or None, any float dtype;
    eps as in ``torch.nn.LayerNorm`` (BERT configs use 1e-12, XLM-R 1e-5). Returns
    (tokens, dim) in x's dtype. The native kernel keeps the sum in float32 (it is never
    rounded to bfloat16) and rounds the output once.
    """
    _check(x, residual, weight, bias, eps)
    if use_kernel(OP, x, residual, weight, bias):
        return op(OP)(x, residual, weight, bias, float(eps))
    return _ref(x, residual, weight, bias, eps)
