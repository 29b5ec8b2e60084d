"""Helpers shared by the Triton kernels: launch sizes, the dot product and the activations."""

from __future__ import annotations

import os

import triton
import triton.language as tl

# Triton 3.7's interpreter (TRITON_INTERPRET=1) gets two bfloat16 steps wrong: tl.dot on bf16
# operands multiplies their bit patterns as integers (fp32 and fp16 are right), and fp32 -> bf16
# conversions (``.to``, stores) truncate instead of rounding to nearest even. On a GPU the kernels
# keep bf16 dot operands for the tensor cores and use the hardware conversion; under the
# interpreter, ``dot`` upcasts the operands to fp32 and ``cast`` rounds with integer bit
# arithmetic. Kernels take this flag as a constexpr (INTERP). Read once, when the kernels are
# defined, which is also when the interpreter setting takes effect.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

#: The activation code for "none" (an activation applied before the kernel); the other codes are
#: those of ``adaptertx.kernels.bottleneck_adapter.ACTIVATIONS`` (see :func:`activate`).
IDENTITY = -1


def pow2(n: int, low: int = 1, high: int | None = None) -> int:
    """The next power of two >= n, clamped to [low, high]."""
    p = max(low, triton.next_power_of_2(max(int(n), 1)))
    return min(p, high) if high is not None else p


def dot_block(n: int, high: int = 64) -> int:
    """A tile size for a ``tl.dot`` dimension of size ``n`` (a power of two in [16, high])."""
    return pow2(n, 16, high)


@triton.jit
def dot(a, b, acc, INTERP: tl.constexpr):
    """``acc + a @ b`` in fp32. fp32 operands use full fp32 products (no TF32, as torch's default);
    under the interpreter bf16 operands are widened first (see ``INTERPRETED``)."""
    if INTERP:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision="ieee")


@triton.jit
def cast(x, dtype: tl.constexpr, INTERP: tl.constexpr):
    """``x`` rounded to nearest even in ``dtype`` (by hand for bf16 under the interpreter)."""
    if x.dtype == dtype:
        return x
    if INTERP and dtype == tl.bfloat16:
        x = x.to(tl.float32)
        bits = x.to(tl.uint32, bitcast=True)
        bits = bits + (0x7FFF + ((bits >> 16) & 1))
        rounded = (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
        return tl.where(x == x, rounded, x.to(tl.bfloat16))
    return x.to(dtype)


@triton.jit
def gelu_erf(x):
    """The exact GELU ``x * Phi(x)`` (fp32)."""
    return 0.5 * x * (1.0 + tl.erf(x * 0.7071067811865476))


@triton.jit
def activate(x, ACT: tl.constexpr):
    """The activation with code ``ACT`` on fp32 ``x``: 0 relu, 1 gelu (erf), 2 silu, 3 leaky relu
    (slope 0.01), -1 identity."""
    if ACT == 0:
        x = tl.maximum(x, 0.0)
    elif ACT == 1:
        x = gelu_erf(x)
    elif ACT == 2:
        x = x / (1.0 + tl.exp(-x))
    elif ACT == 3:
        x = tl.where(x >= 0.0, x, 0.01 * x)
    return x
