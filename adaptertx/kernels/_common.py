"""Input checks shared by the kernel ops and the test of whether a call can go native."""

from __future__ import annotations

import torch

from adaptertx.errors import AdaptertxError

NATIVE_DTYPES = (torch.float32, torch.bfloat16)


class KernelInputError(AdaptertxError, ValueError):
    """A kernel op was called with tensors of the wrong shape, dtype or device."""


def check_float(op: str, name: str, t, ndim: int) -> None:
    """Raise unless ``t`` is a floating-point tensor with ``ndim`` dimensions."""
    if not isinstance(t, torch.Tensor):
        raise KernelInputError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise KernelInputError(f"{op}: {name} must have {ndim} dimension(s), got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise KernelInputError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")


def check_vector(op: str, name: str, t, size: int, like: torch.Tensor) -> None:
    """Raise unless ``t`` is a floating (size,) tensor on ``like``'s device."""
    check_float(op, name, t, 1)
    if t.shape[0] != size:
        raise KernelInputError(f"{op}: {name} must have shape ({size},), got {tuple(t.shape)}")
    same_device(op, name, t, like)


def same_device(op: str, name: str, t: torch.Tensor, like: torch.Tensor) -> None:
    if t.device != like.device:
        raise KernelInputError(f"{op}: {name} is on {t.device} but the input is on {like.device}")


def check_residual(op: str, name: str, x: torch.Tensor, residual: torch.Tensor) -> None:
    """``residual`` must be a float tensor of ``x``'s shape, dtype and device (``name`` names ``x``)."""
    check_float(op, "residual", residual, 2)
    if residual.shape != x.shape or residual.dtype != x.dtype:
        raise KernelInputError(
            f"{op}: residual must match {name} in shape and dtype, got {tuple(residual.shape)} {residual.dtype} "
            f"for {name} {tuple(x.shape)} {x.dtype}"
        )
    same_device(op, "residual", residual, x)


def native_eligible(main: torch.Tensor, *tensors) -> bool:
    """True when the native CPU kernel can serve a call on these tensors.

    The native kernels take float32/bfloat16 CPU tensors and keep no autograd graph, so a
    call on tensors that require grad while grad mode is on goes to the reference instead.
    """
    if main.device.type != "cpu" or main.dtype not in NATIVE_DTYPES:
        return False
    if torch.is_grad_enabled():
        if main.requires_grad or any(t is not None and t.requires_grad for t in tensors):
            return False
    return True
