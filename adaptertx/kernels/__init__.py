"""Fused kernels for adaptertx's encoder and training fast paths, each a ``torch.library`` op with a
pure-torch reference.

Every op ``<op>`` is the operator ``torch.ops.adaptertx.<op>`` (schema, fake and reference
defined in :mod:`adaptertx.kernels._library`), with a CPU kernel built from
``adaptertx/csrc/<op>.cpp`` on first use (never at import) and a CUDA kernel in
:mod:`adaptertx.kernels.cuda` (Triton; flash attention for ``varlen_attention``). The function
``<op>`` checks its inputs and picks the device's kernel or the reference ``<op>_ref``, which
has the same signature, defaults and checks. ``ADAPTERTX_KERNELS`` chooses per device;
:func:`backend_status` says which backend serves each op on each device and why.
"""

from adaptertx.kernels._build import OPS
from adaptertx.kernels._common import KernelInputError
from adaptertx.kernels._library import backend_status
from adaptertx.kernels.adapter_fusion import adapter_fusion, adapter_fusion_ref, pack_fusion
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
    "adapter_fusion",
    "adapter_fusion_ref",
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
    "pack_fusion",
    "segment_mean_pool_normalize",
    "segment_mean_pool_normalize_ref",
    "topk_merge",
    "topk_merge_ref",
    "use_fast_dropout",
    "varlen_attention",
    "varlen_attention_ref",
]
