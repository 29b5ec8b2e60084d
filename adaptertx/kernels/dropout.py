"""``dropout``: inverted dropout whose mask is a hash of the element index and a seed.

Torch's CPU dropout draws a Bernoulli variable per element from a stateful generator and
multiplies by the mask in a second pass; in an adapter training step on a frozen encoder that
is about a third of the step (attention probabilities are the largest tensors of the forward).
Here the keep decision for element ``i`` is a counter-based hash of ``(i, seed)``
(``adaptertx/csrc/dropout.cpp`` gives the formula), so the native kernel makes one pass over ``x``,
stores no mask, and the backward pass is the same op on the gradient with the same seed.

:class:`Dropout` is a drop-in ``torch.nn.Dropout`` that uses it for float32/bfloat16 CPU
tensors, drawing each call's seed from torch's default generator (so ``torch.manual_seed``
and a saved RNG state make runs repeatable); elsewhere (CUDA, other dtypes, no native build)
it is torch's own dropout. :func:`use_fast_dropout` swaps it into a model.
"""

from __future__ import annotations

import math
import sys

import torch
import torch.nn.functional as F
from torch import nn

from adaptertx.kernels._common import KernelInputError, check_float
from adaptertx.kernels._library import cuda_function, define, kernel_serves, op, use_kernel

OP = "dropout"
_MASK32 = 0xFFFFFFFF
SEED_LIMIT = 2**63


def _check(x: torch.Tensor, p: float, seed: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise KernelInputError(f"{OP}: x must be a torch.Tensor, got {type(x).__name__}")
    check_float(OP, "x", x, x.dim())
    if not 0.0 <= p < 1.0:
        raise KernelInputError(f"{OP}: p must be in [0, 1), got {p}")
    if not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise KernelInputError(f"{OP}: seed must be an int in [0, 2**63), got {seed!r}")


def _lowbias32(v):
    """C. Wellons' lowbias32 on uint32 values held in int64 (a tensor or a Python int)."""
    v = v ^ (v >> 16)
    v = (v * 0x7FEB352D) & _MASK32
    v = v ^ (v >> 15)
    v = (v * 0x846CA68B) & _MASK32
    return v ^ (v >> 16)


def keep_mask_ref(numel: int, p: float, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The keep decisions (bool, length ``numel``) the kernel makes for elements 0..numel-1."""
    k1 = _lowbias32(seed & _MASK32)
    k2 = _lowbias32((seed >> 32) ^ 0x9E3779B9)
    threshold = min(math.floor(p * 2**32), _MASK32)
    i = torch.arange(numel, dtype=torch.int64, device=device)
    h = _lowbias32(_lowbias32((i & _MASK32) ^ k1) ^ (i >> 32) ^ k2)
    return h >= threshold


def _ref(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    keep = keep_mask_ref(x.numel(), p, seed, x.device).view(x.shape)
    wide = torch.promote_types(x.dtype, torch.float32)
    scaled = (x.to(wide) * (1.0 / (1.0 - p))).to(x.dtype)
    return torch.where(keep, scaled, torch.zeros((), dtype=x.dtype, device=x.device))


def _cuda(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    return cuda_function(OP, "dropout_triton")(x, p, seed)


define(OP, "(Tensor x, float p, int seed) -> Tensor",
       fake=lambda x, p, seed: torch.empty_like(x, memory_format=torch.contiguous_format), ref=_ref, cuda=_cuda)


def _apply(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    # Inside the autograd Function, grad mode is off: the kernel serves both passes.
    if use_kernel(OP, x):
        return op(OP)(x, p, seed)
    return _ref(x, p, seed)


class _DropoutFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p, seed):
        ctx.p, ctx.seed = p, seed
        return _apply(x, p, seed)

    @staticmethod
    def backward(ctx, grad):
        return _apply(grad, ctx.p, ctx.seed), None, None


def dropout_ref(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """Pure-torch reference of :func:`dropout` (same signature, checks and bits)."""
    _check(x, p, seed)
    return _ref(x, p, seed)


def dropout(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """Inverted dropout: element ``i`` (row-major) is kept, times ``1 / (1 - p)``, when the hash
    of ``(i, seed)`` clears ``p``, and set to 0 otherwise (a dropped NaN becomes 0).

    x: any shape and float dtype; p in [0, 1); seed in [0, 2**63). The same ``(x.shape, p,
    seed)`` always drops the same elements. Differentiable: the gradient is the same op with
    the same seed. The CPU and CUDA kernels (fp32 multiply, one rounding) and
    :func:`dropout_ref` give the same bits.
    """
    _check(x, p, seed)
    if p == 0.0:
        return x.clone()
    return _DropoutFunction.apply(x, p, seed)


class Dropout(nn.Dropout):
    """``torch.nn.Dropout`` with :func:`dropout` in training wherever its kernel serves the tensor
    (float32/bfloat16 on the CPU, also float16 on CUDA with triton)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return input
        if not kernel_serves(OP, input.device, input.dtype):
            return F.dropout(input, self.p, True, self.inplace)
        seed = int(torch.randint(2**62, (), dtype=torch.int64))
        return _DropoutFunction.apply(input, float(self.p), seed)


_EAGER_CLASSES: dict[type, type] = {}


def _eager_when_training(cls: type) -> type | None:
    """A subclass of an ``adapters``/transformers SDPA self-attention class whose forward takes
    the eager path (whose attention dropout is the module's ``self.dropout``) when training on
    CPU with dropout, and SDPA otherwise. SDPA has no dropout of its own on CPU but falls back
    to its math path with torch's Bernoulli dropout; the eager path computes the same with
    :class:`Dropout`. None when the class has no eager sibling (``<Name without Sdpa>`` in its
    module)."""
    if cls in _EAGER_CLASSES:
        return _EAGER_CLASSES[cls]
    eager = getattr(sys.modules.get(cls.__module__), cls.__name__.replace("Sdpa", ""), None)
    made = None
    if isinstance(eager, type) and "forward" in vars(eager):
        def forward(self, hidden_states, *args, **kwargs):
            if self.training and self.dropout_prob > 0 and hidden_states.device.type == "cpu":
                return eager.forward(self, hidden_states, *args, **kwargs)
            return cls.forward(self, hidden_states, *args, **kwargs)

        made = type(cls.__name__, (cls,), {"forward": forward, "__module__": cls.__module__,
                                           "__qualname__": cls.__qualname__})
    _EAGER_CLASSES[cls] = made
    return made


def use_fast_dropout(model: nn.Module) -> int:
    """Replace every plain ``torch.nn.Dropout`` in ``model`` by :class:`Dropout` (same ``p``;
    they hold no weights, so state dicts are unchanged), and let SDPA self-attention layers
    take their eager path, whose attention dropout is such a module, when training on CPU.
    Returns how many dropout layers were replaced."""
    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if type(child) is nn.Dropout]
    for parent, name, child in swaps:
        setattr(parent, name, Dropout(child.p, child.inplace))
    for module in model.modules():
        cls = type(module)
        if ("Sdpa" in cls.__name__ and hasattr(module, "dropout_prob")
                and isinstance(getattr(module, "dropout", None), Dropout)):
            eager = _eager_when_training(cls)
            if eager is not None:
                module.__class__ = eager
    return len(swaps)
