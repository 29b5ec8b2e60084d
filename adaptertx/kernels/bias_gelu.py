"""``bias_gelu``: the bias add and exact (erf) GELU after the FFN's first linear layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from adaptertx.kernels._common import check_float, check_vector
from adaptertx.kernels._library import cuda_function, define, op, use_kernel

OP = "bias_gelu"


def _check(x: torch.Tensor, bias: torch.Tensor) -> None:
    check_float(OP, "x", x, 2)
    check_vector(OP, "bias", bias, x.shape[1], x)


def _ref(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return F.gelu(x + bias.to(x.dtype))


def _cuda(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return cuda_function(OP, "bias_gelu_triton")(x, bias)


define(OP, "(Tensor x, Tensor bias) -> Tensor",
       fake=lambda x, bias: torch.empty_like(x, memory_format=torch.contiguous_format), ref=_ref, cuda=_cuda)


def bias_gelu_ref(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Pure-torch reference of :func:`bias_gelu` (same signature and checks)."""
    _check(x, bias)
    return _ref(x, bias)


def bias_gelu(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``gelu(x + bias)`` with the exact erf GELU that BERT and XLM-R use.

    x: (tokens, dim); bias: (dim,), any float dtype. Returns (tokens, dim) in x's dtype.
    The CPU (C++) and CUDA (Triton) kernels compute in float32 and round once; they accept
    non-contiguous x (copied first). Other calls, and calls that need autograd, take
    :func:`bias_gelu_ref`.
    """
    _check(x, bias)
    if use_kernel(OP, x, bias):
        return op(OP)(x, bias)
    return _ref(x, bias)
