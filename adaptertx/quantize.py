"""The frozen 8-bit base: int8 weight storage with bf16 compute.

:class:`Int8Linear` keeps a linear layer's weight as int8 with one fp32 scale per output row
(absmax / 127): a quarter of the fp32 bytes. Each call dequantises the weight just in time
to bf16 (``q * s`` in fp32, rounded once) and runs a bf16 matmul — AMX on recent Xeons,
tensor cores on GPUs — so the result equals a bf16 ``nn.Linear`` holding the dequantised
weight, bit for bit. Gradients flow to the input and never to the frozen weight; only the
int8 tensor is kept for the backward pass.
"""

from __future__ import annotations

import torch
from torch import nn

from adaptertx.errors import AdaptertxError

# (qweight * scale[:, None]) in fp32, rounded once to a dtype; one pass on CPU.
from adaptertx.kernels.dequantize_rows import dequantize_rows


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8 quantisation.

    Args:
        weight: (out, in) float tensor.

    Returns:
        qweight: (out, in) int8, ``round(weight / scale)`` clamped to [-127, 127].
        scale: (out,) float32, each row's absmax / 127 (1 for an all-zero row).
    """
    if weight.dim() != 2:
        raise AdaptertxError(f"int8 quantisation expects a 2-D weight, got shape {tuple(weight.shape)}")
    w = weight.detach().float()
    scale = w.abs().amax(dim=1) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    qweight = torch.clamp(torch.round(w / scale[:, None]), -127, 127).to(torch.int8)
    return qweight, scale


class _Int8MatMul(torch.autograd.Function):
    """``y = x @ W.T + b`` with ``W`` dequantised to ``compute_dtype`` just in time.

    Only the int8 weight is kept for backward (the dequantised copy is rebuilt there), and
    the gradient goes to ``x`` only.
    """

    @staticmethod
    def forward(ctx, x, qweight, scale, bias, compute_dtype):
        ctx.save_for_backward(qweight, scale)
        ctx.compute_dtype = compute_dtype
        ctx.x_dtype = x.dtype
        weight = dequantize_rows(qweight, scale, compute_dtype)
        return torch.nn.functional.linear(x.to(compute_dtype), weight,
                                          None if bias is None else bias.to(compute_dtype))

    @staticmethod
    def backward(ctx, grad_out):
        qweight, scale = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:
            weight = dequantize_rows(qweight, scale, ctx.compute_dtype)
            grad_x = torch.matmul(grad_out.to(ctx.compute_dtype), weight).to(ctx.x_dtype)
        return grad_x, None, None, None, None


class Int8Linear(nn.Module):
    """A frozen ``nn.Linear`` stored as int8 rows + fp32 scales, computed in bf16.

    Args:
        qweight: (out, in) int8.
        scale: (out,) float32.
        bias: (out,) or None; kept in fp32, frozen.
        compute_dtype: dtype of the matmul (bf16 by default; fp32 for reference checks).

    Input ``x``: (..., in) of any float dtype; output (..., out) in ``compute_dtype``.
    """

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                 compute_dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        if qweight.dtype != torch.int8 or qweight.dim() != 2:
            raise AdaptertxError(f"Int8Linear needs a 2-D int8 weight, got {qweight.dtype} {tuple(qweight.shape)}")
        if scale.shape != (qweight.shape[0],):
            raise AdaptertxError(f"Int8Linear scale must have shape ({qweight.shape[0]},), got {tuple(scale.shape)}")
        self.in_features = qweight.shape[1]
        self.out_features = qweight.shape[0]
        self.compute_dtype = compute_dtype
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale.float())
        self.register_buffer("bias", None if bias is None else bias.detach().float())

    @classmethod
    def from_linear(cls, linear: nn.Linear, compute_dtype: torch.dtype = torch.bfloat16) -> Int8Linear:
        """Quantise an ``nn.Linear`` (its weight and bias are copied, not shared)."""
        qweight, scale = quantize_rows(linear.weight)
        return cls(qweight, scale, linear.bias, compute_dtype)

    def dequantize(self) -> torch.Tensor:
        """The (out, in) fp32 weight this layer computes with."""
        return dequantize_rows(self.qweight, self.scale, torch.float32)

    @property
    def weight(self) -> torch.Tensor:
        """Read-only fp32 view of the weight, for code that inspects ``.weight``."""
        return self.dequantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise AdaptertxError(f"Int8Linear expects inputs with {self.in_features} features, got {x.shape[-1]}")
        return _Int8MatMul.apply(x, self.qweight, self.scale, self.bias, self.compute_dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, compute_dtype={self.compute_dtype}")


_INT8_CLASSES: dict[type, type] = {}


def _int8_class(cls: type) -> type:
    """``cls`` (an ``nn.Linear`` subclass that wraps the plain linear forward, such as the
    ``adapters`` library's LoRA layers) re-based on :class:`Int8Linear`: its own ``forward``
    runs unchanged and its call to the linear forward reaches the int8 matmul."""
    if cls not in _INT8_CLASSES:
        bases = tuple(b for b in cls.__bases__ if b is not nn.Linear) + (Int8Linear,)
        _INT8_CLASSES[cls] = type(f"Int8{cls.__name__}", bases, {"__module__": __name__})
    return _INT8_CLASSES[cls]


def _quantize_in_place(module: nn.Linear, compute_dtype: torch.dtype) -> None:
    qweight, scale = quantize_rows(module.weight)
    bias = None if module.bias is None else module.bias.detach().float()
    del module._parameters["weight"]
    module._parameters.pop("bias", None)
    module.__class__ = _int8_class(type(module))
    module.compute_dtype = compute_dtype
    module.register_buffer("qweight", qweight)
    module.register_buffer("scale", scale)
    module.register_buffer("bias", bias)


def quantize_linears(model: nn.Module, compute_dtype: torch.dtype = torch.bfloat16,
                     skip: tuple[str, ...] = ()) -> int:
    """Store every linear layer of ``model`` in int8 (in place); returns how many.

    A plain ``nn.Linear`` is replaced by an :class:`Int8Linear`; a subclass that wraps the
    linear forward (the ``adapters`` library's ``LoRALinear`` layers, present in every
    adapter model) keeps its own ``forward`` and state and computes its base output in int8,
    so LoRA still trains on top. Layers whose qualified name contains one of ``skip`` (e.g.
    ``"heads"``) are left as they are. Quantise before adding adapters and heads.
    """
    replaced = 0
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if not isinstance(child, nn.Linear) or isinstance(child, Int8Linear) or any(s in full for s in skip):
                continue
            if type(child) is nn.Linear:
                setattr(module, child_name, Int8Linear.from_linear(child, compute_dtype))
            elif getattr(child, "fan_in_fan_out", False):
                raise AdaptertxError(f"{full}: int8 storage does not support transposed (Conv1D-style) weights")
            else:
                _quantize_in_place(child, compute_dtype)
            replaced += 1
    return replaced


def linear_weight_bytes(model: nn.Module) -> int:
    """Bytes held by the weights (and scales) of the model's linear layers, fp or int8."""
    total = 0
    for module in model.modules():
        if isinstance(module, Int8Linear):
            total += module.qweight.numel() * 1 + module.scale.numel() * 4
        elif isinstance(module, nn.Linear):
            total += module.weight.numel() * module.weight.element_size()
    return total
