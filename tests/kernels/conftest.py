"""Shared fixtures for the kernel tests: the backend under test and the error rule."""

from __future__ import annotations

import pytest
import torch

from adaptertx.kernels import _build

# native: the AVX-512 path where the CPU has it; native-generic: the portable C++ path.
BACKENDS = ("ref", "native", "native-generic")


def _select(monkeypatch, backend: str, op: str) -> None:
    if backend == "ref":
        monkeypatch.setenv(_build.ENV, "ref")
        return
    monkeypatch.setenv(_build.ENV, "native")
    if backend == "native-generic":
        monkeypatch.setenv("ADAPTERTX_KERNELS_ISA", "generic")
    else:
        monkeypatch.delenv("ADAPTERTX_KERNELS_ISA", raising=False)
    if not _build.native_available(op):
        pytest.skip(f"native {op} unavailable: {_build.failure(op)}")


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Returns a function ``use(op)`` that routes ``op`` to the parametrised backend."""
    return lambda op: _select(monkeypatch, request.param, op)


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item() if a.numel() else 0.0


def check_rule(out: torch.Tensor, ref32: torch.Tensor, torch_same_dtype: torch.Tensor) -> None:
    """The kernel's error against the fp32 reference is at most twice that of torch in the same dtype.

    float32 outputs are held to a fixed tolerance instead (the fp32 torch computation is the
    reference itself, so twice its error would be zero).
    """
    assert out.shape == ref32.shape
    assert torch.isfinite(out.float()).all()
    if out.dtype == torch.float32:
        torch.testing.assert_close(out, ref32.float(), rtol=1e-5, atol=1e-5)
        return
    err_k = max_err(out, ref32)
    err_t = max_err(torch_same_dtype, ref32)
    assert err_k <= 2 * err_t + 1e-6, f"kernel error {err_k:.3g} > 2 x torch {out.dtype} error {err_t:.3g}"


@pytest.fixture
def rule():
    """The per-dtype error rule, :func:`check_rule`."""
    return check_rule
