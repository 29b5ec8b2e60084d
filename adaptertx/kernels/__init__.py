"""Fused CPU kernels for adaptertx's encoder fast paths, each with a pure-torch reference.

Every op ``<op>`` has one C++ source ``adaptertx/csrc/<op>.cpp``, a dispatching function ``<op>`` and a
reference ``<op>_ref`` with the same signature, defaults and input checks. The native kernel
is built on first use (never at import) and serves float32/bfloat16 CPU tensors; anything
else, a failed build, or ``ADAPTERTX_KERNELS=ref`` takes the reference.
:func:`backend_status` says which backend each op uses and why.
"""

from adaptertx.kernels._build import OPS, backend_status
from adaptertx.kernels._common import KernelInputError
from adaptertx.kernels.add_layernorm import add_layernorm, add_layernorm_ref
from adaptertx.kernels.bias_gelu import bias_gelu, bias_gelu_ref
from adaptertx.kernels.bottleneck_adapter import bottleneck_adapter, bottleneck_adapter_ref
from adaptertx.kernels.dequantize_rows import dequantize_rows, dequantize_rows_ref
from adaptertx.kernels.dropout import Dropout, dropout, dropout_ref, use_fast_dropout
from adaptertx.kernels.segment_mean_pool_normalize import (
    segment_mean_pool_normalize,
    segment_mean_pool_normalize_ref,
)
from adaptertx.kernels.topk_merge import topk_merge, topk_merge_ref
from adaptertx.kernels.varlen_attention import varlen_attention, varlen_attention_ref

__all__ = [
    "OPS",
    "Dropout",
    "KernelInputError",
    "add_layernorm",
    "add_layernorm_ref",
    "backend_status",
    "bias_gelu",
    "bias_gelu_ref",
    "bottleneck_adapter",
    "bottleneck_adapter_ref",
    "dequantize_rows",
    "dequantize_rows_ref",
    "dropout",
    "dropout_ref",
    "segment_mean_pool_normalize",
    "segment_mean_pool_normalize_ref",
    "topk_merge",
    "topk_merge_ref",
    "use_fast_dropout",
    "varlen_attention",
    "varlen_attention_ref",
]
