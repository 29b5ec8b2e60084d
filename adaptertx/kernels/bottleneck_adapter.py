"""``bottleneck_adapter``: the AdapterHub sequential bottleneck adapter (``seq_bn``, Pfeiffer).

In ``adapters`` 1.3 a ``seq_bn`` adapter after a BERT layer's FFN output computes, with
``ffn`` the output of ``BertOutput.dense`` and ``input`` the layer's attention output::

    h   = LayerNorm(ffn + input)                 # original_ln_before=True
    out = ffn + scaling * up(act(down(h)))       # residual_before_ln=True: residual is ffn
    y   = LayerNorm(out + input)                 # original_ln_after=True, the same LayerNorm

(``Adapter.pre_forward``, ``Adapter.forward``, ``Adapter.post_forward``; no adapter-own
LayerNorms, no gating). In adaptertx terms::

    h = add_layernorm(ffn, input, ln.weight, ln.bias, eps)
    out = bottleneck_adapter(h, ffn, down_w, down_b, up_w, up_b, "relu", scaling)
    y = add_layernorm(out, input, ln.weight, ln.bias, eps)
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from adaptertx.kernels._common import (
    KernelInputError,
    check_float,
    check_residual,
    check_vector,
    same_device,
)
from adaptertx.kernels._library import cuda_function, define, op, use_kernel

OP = "bottleneck_adapter"

# name -> (code shared with adaptertx/csrc/bottleneck_adapter.cpp, reference function)
ACTIVATIONS = {
    "relu": (0, F.relu),
    "gelu": (1, F.gelu),
    "silu": (2, F.silu),
    "swish": (2, F.silu),
    "leakyrelu": (3, F.leaky_relu),
}


def _check(h, residual, down_w, down_b, up_w, up_b, activation, scaling) -> None:
    check_float(OP, "h", h, 2)
    check_residual(OP, "h", h, residual)
    dim = h.shape[1]
    check_float(OP, "down_w", down_w, 2)
    check_float(OP, "up_w", up_w, 2)
    same_device(OP, "down_w", down_w, h)
    same_device(OP, "up_w", up_w, h)
    if down_w.shape[1] != dim or down_w.shape[0] < 1:
        raise KernelInputError(f"{OP}: down_w must be (bottleneck, {dim}), got {tuple(down_w.shape)}")
    r = down_w.shape[0]
    if tuple(up_w.shape) != (dim, r):
        raise KernelInputError(f"{OP}: up_w must be ({dim}, {r}), got {tuple(up_w.shape)}")
    if down_b is not None:
        check_vector(OP, "down_b", down_b, r, h)
    if up_b is not None:
        check_vector(OP, "up_b", up_b, dim, h)
    if not isinstance(activation, str) or activation.lower() not in ACTIVATIONS:
        raise KernelInputError(f"{OP}: activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    if isinstance(scaling, bool) or not isinstance(scaling, numbers.Real) or not math.isfinite(scaling):
        raise KernelInputError(
            f"{OP}: scaling must be a finite number (pass float(p) for a learned scalar), got {scaling!r}"
        )


def _ref(h, residual, down_w, down_b, up_w, up_b, activation, scaling):
    dt = h.dtype
    act = ACTIVATIONS[activation.lower()][1]
    down = F.linear(h, down_w.to(dt), down_b.to(dt) if down_b is not None else None)
    up = F.linear(act(down), up_w.to(dt), up_b.to(dt) if up_b is not None else None)
    return residual + float(scaling) * up


ACTIVATION_NAMES = {code: name for name, (code, _) in reversed(ACTIVATIONS.items())}


def _op_ref(h, residual, down_w, down_b, up_w, up_b, activation: int, scaling: float):
    return _ref(h, residual, down_w, down_b, up_w, up_b, ACTIVATION_NAMES[activation], scaling)


def _cuda(h, residual, down_w, down_b, up_w, up_b, activation: int, scaling: float):
    return cuda_function(OP, "bottleneck_adapter_triton")(h, residual, down_w, down_b, up_w, up_b,
                                                          ACTIVATION_NAMES[activation], scaling)


define(OP, "(Tensor h, Tensor residual, Tensor down_w, Tensor? down_b, Tensor up_w, Tensor? up_b, int activation, "
       "float scaling) -> Tensor", fake=lambda h, *rest: torch.empty_like(h, memory_format=torch.contiguous_format),
       ref=_op_ref, cuda=_cuda)


def bottleneck_adapter_ref(
    h: torch.Tensor,
    residual: torch.Tensor,
    down_w: torch.Tensor,
    down_b: torch.Tensor | None,
    up_w: torch.Tensor,
    up_b: torch.Tensor | None,
    activation: str = "relu",
    scaling: float = 1.0,
) -> torch.Tensor:
    """Pure-torch reference of :func:`bottleneck_adapter` (same signature and checks)."""
    _check(h, residual, down_w, down_b, up_w, up_b, activation, scaling)
    return _ref(h, residual, down_w, down_b, up_w, up_b, activation, scaling)


def bottleneck_adapter(
    h: torch.Tensor,
    residual: torch.Tensor,
    down_w: torch.Tensor,
    down_b: torch.Tensor | None,
    up_w: torch.Tensor,
    up_b: torch.Tensor | None,
    activation: str = "relu",
    scaling: float = 1.0,
) -> torch.Tensor:
    """``residual + scaling * (act(h @ down_w.T + down_b) @ up_w.T + up_b)``.

    h, residual: (tokens, dim), same dtype; down_w: (bottleneck, dim); down_b: (bottleneck,)
    or None; up_w: (dim, bottleneck); up_b: (dim,) or None; activation: one of
    ``relu``, ``gelu`` (erf), ``silu``/``swish``, ``leakyrelu`` (slope 0.01), as named in an
    adapters ``BnConfig.non_linearity``; scaling: a constant. Returns (tokens, dim) in h's
    dtype. See the module docstring for where this sits in a ``seq_bn`` layer.

    The native path keeps both GEMMs in ATen (oneDNN/MKL; weights are cast to h's dtype if
    needed, so pass them in h's dtype) and fuses the elementwise steps around them.
    """
    _check(h, residual, down_w, down_b, up_w, up_b, activation, scaling)
    if use_kernel(OP, h, residual, down_w, down_b, up_w, up_b):
        code = ACTIVATIONS[activation.lower()][0]
        return op(OP)(h, residual, down_w, down_b, up_w, up_b, code, float(scaling))
    return _ref(h, residual, down_w, down_b, up_w, up_b, activation, scaling)
