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


def check_offsets(op: str, cu_seqlens, tokens: int, like: torch.Tensor) -> None:
    """Raise unless ``cu_seqlens`` is a 1-D int32/int64 tensor on ``like``'s device.

    Its values (from 0 to ``tokens``, non-decreasing) are checked when it is on the CPU only:
    reading a device tensor's values would stop the host until the device catches up, once per
    call and layer; callers that build offsets on the device check them on the host first.
    """
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
        raise KernelInputError(f"{op}: cu_seqlens must be a 1-D tensor of n + 1 offsets")
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise KernelInputError(f"{op}: cu_seqlens must be int32 or int64, got {cu_seqlens.dtype}")
    same_device(op, "cu_seqlens", cu_seqlens, like)
    if cu_seqlens.device.type != "cpu" or isinstance(cu_seqlens, torch._subclasses.FakeTensor):
        return
    if int(cu_seqlens[0]) != 0 or int(cu_seqlens[-1]) != tokens:
        raise KernelInputError(f"{op}: cu_seqlens must start at 0 and end at tokens={tokens}, "
                               f"got {int(cu_seqlens[0])}..{int(cu_seqlens[-1])}")
    if cu_seqlens.numel() > 1 and bool((cu_seqlens[1:] < cu_seqlens[:-1]).any()):
        raise KernelInputError(f"{op}: cu_seqlens must be non-decreasing")
