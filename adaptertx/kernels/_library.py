"""The fused ops as ``torch.library`` operators, and which backend serves a call on each device.

Every op ``<op>`` is one operator ``torch.ops.adaptertx.<op>``, defined here from Python as
bitsandbytes defines its own: the schema once, a fake (meta) implementation for
``FakeTensorMode``/``torch.compile``, and the pure-torch reference registered as the default
kernel for every device (``CompositeExplicitAutograd``). Device kernels are registered on top:
the C++ sources in ``adaptertx/csrc/`` for the CPU (:mod:`adaptertx.kernels._build` loads
them on first use), and for CUDA the functions of :mod:`adaptertx.kernels.cuda` (Triton
kernels, and ``torch.nn.attention.varlen.varlen_attn`` for attention), imported on first call.

The Python function ``adaptertx.kernels.<op>`` checks its inputs and then asks
:func:`use_kernel` whether the device's kernel should serve the call; if not (the
reference was chosen, the kernel is missing, the dtype is not served, or the call needs
autograd) it runs the reference itself.

``ADAPTERTX_KERNELS`` chooses per device: one value for every device (``auto``, ``ref``,
``native``), or ``cpu=VALUE,cuda=VALUE`` (a device left out is ``auto``). ``native`` on CUDA
means the CUDA kernels (a missing triton then raises), on the CPU the C++ build.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
from collections.abc import Callable

import torch

from adaptertx.errors import AdaptertxError
from adaptertx.kernels import _build
from adaptertx.kernels._common import NATIVE_DTYPES

LIB = torch.library.Library("adaptertx", "FRAGMENT")
NAMESPACE = "adaptertx"
DEVICE_TYPES = ("cpu", "cuda")
CPU_DTYPES = NATIVE_DTYPES
CUDA_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# op -> (what the CUDA kernel needs, the dtypes it serves); filled by define().
_CUDA: dict[str, tuple[str, tuple[torch.dtype, ...]]] = {}
# CUDA kernels that failed on their first call (op -> why), and those that have run.
_CUDA_FAILED: dict[str, str] = {}
_CUDA_RAN: set[str] = set()
log = logging.getLogger("adaptertx.kernels")


def define(op: str, schema: str, *, fake: Callable, ref: Callable, cuda: Callable | None = None,
           cuda_needs: str = "triton", cuda_dtypes: tuple[torch.dtype, ...] = CUDA_DTYPES) -> None:
    """Define ``adaptertx::<op>`` with ``schema`` (``"(Tensor x, ...) -> Tensor"``), its fake, the
    reference as the default kernel and, if given, a CUDA kernel needing ``cuda_needs``."""
    LIB.define(f"{op}{schema}")
    torch.library.register_fake(f"{NAMESPACE}::{op}", fake, lib=LIB)
    LIB.impl(op, ref, "CompositeExplicitAutograd")
    if cuda is not None:
        LIB.impl(op, guarded(op, cuda, ref), "CUDA")
        _CUDA[op] = (cuda_needs, cuda_dtypes)


def guarded(name: str, cuda: Callable, ref: Callable) -> Callable:
    """``cuda`` as ``name``'s CUDA kernel: if its first call fails (triton missing, a kernel that
    does not compile for this GPU), one log line says why and the reference serves that call and
    every later one; once it has run, its errors are the caller's (out of memory is never caught)."""
    def kernel(*args):
        if name in _CUDA_FAILED:
            return ref(*args)
        try:
            out = cuda(*args)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:  # an import, compiler or launch failure of any kind
            if name in _CUDA_RAN:
                raise
            text = str(exc).strip().splitlines()
            _CUDA_FAILED[name] = f"its CUDA kernel failed: {type(exc).__name__}: {text[0][:200] if text else ''}"
            log.warning("adaptertx kernel %s: using the pure-torch reference on CUDA (%s)", name, _CUDA_FAILED[name])
            return ref(*args)
        _CUDA_RAN.add(name)
        return out

    return kernel


def op(name: str):
    """The operator ``torch.ops.adaptertx.<name>``."""
    return getattr(torch.ops.adaptertx, name)


def cuda_function(module: str, name: str) -> Callable:
    """``adaptertx.kernels.cuda.<module>.<name>``, imported on first use (it imports triton)."""
    return getattr(importlib.import_module(f"adaptertx.kernels.cuda.{module}"), name)


def has_kernel(name: str, key: str) -> bool:
    """Whether ``adaptertx::<name>`` has a kernel of its own for dispatch key ``key`` (``CPU``, ``CUDA``)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"{NAMESPACE}::{name}", key)


@functools.cache
def _have(requirement: str) -> str | None:
    """None when ``requirement`` is met, else why not."""
    if requirement == "triton":
        return None if importlib.util.find_spec("triton") is not None else (
            "triton is not installed (pip install 'adaptertx[gpu]')")
    if requirement == "varlen_attn":
        return None if importlib.util.find_spec("torch.nn.attention.varlen") is not None else (
            f"torch {torch.__version__} has no torch.nn.attention.varlen (torch >= 2.10 has)")
    raise ValueError(requirement)


def cuda_source(name: str) -> str:
    needs = _CUDA[name][0]
    return "torch varlen_attn (flash)" if needs == "varlen_attn" else f"triton (adaptertx/kernels/cuda/{name}.py)"


def cuda_unavailable(name: str) -> str | None:
    """Why ``name`` has no usable CUDA kernel here, or None when it has one."""
    if name not in _CUDA:
        return "no CUDA kernel (the reference runs on the GPU)"
    return _CUDA_FAILED.get(name) or _have(_CUDA[name][0])


def _needs_grad(tensors) -> bool:
    if not torch.is_grad_enabled():
        return False
    return any(t is not None and t.requires_grad for t in tensors)


def kernel_serves(name: str, device: torch.device, dtype: torch.dtype,
                  dtypes: tuple[torch.dtype, ...] | None = None) -> bool:
    """Whether ``name``'s kernel for ``device`` serves ``dtype`` under ``ADAPTERTX_KERNELS`` (the
    CPU kernel is built now if needed; ``dtypes`` overrides the dtypes the kernel serves)."""
    kind = device.type
    if kind == "cpu":
        return dtype in (dtypes or CPU_DTYPES) and _build.use_native(name)
    if kind != "cuda":
        return False
    choice = _build.mode("cuda")
    if choice == "ref":
        return False
    missing = cuda_unavailable(name)
    if missing is not None:
        if choice == "native" and name in _CUDA:
            raise AdaptertxError(f"{_build.ENV} asks for the CUDA kernel of {name}, which is unavailable: {missing}")
        if name in _CUDA and name not in _CUDA_FAILED:
            _note_missing(name, missing)
        return False
    return dtype in (dtypes or _CUDA[name][1])


@functools.cache
def _note_missing(name: str, why: str) -> None:
    log.warning("adaptertx kernel %s: using the pure-torch reference on CUDA (%s)", name, why)


def use_kernel(name: str, main: torch.Tensor, *tensors, dtypes: tuple[torch.dtype, ...] | None = None) -> bool:
    """Whether a call of ``name`` on ``main`` (and ``tensors``) goes to its device's kernel.

    False, so the reference runs, when autograd must see the call, the dtype is not one the
    kernel serves (default: float32/bfloat16 on the CPU, also float16 on CUDA), the device
    has no kernel, or ``ADAPTERTX_KERNELS`` chose the reference for that device.
    """
    if _needs_grad((main, *tensors)):
        return False
    return kernel_serves(name, main.device, main.dtype, dtypes)


def _cpu_line(name: str, build: bool) -> str:
    m = _build.mode("cpu")
    src = f"adaptertx/csrc/{name}.cpp"
    if m == "ref":
        return f"reference: {_build.ENV} chose it"
    if m == "auto" and not _build.cpu_has_avx512():
        return f"reference: {_build.NO_AVX512}"
    if _build.is_loaded(name) or (build and _build.native_available(name)):
        return f"native ({src})"
    if _build.failure(name):
        return f"reference: {_build.failure(name)}"
    return f"not built yet ({src} builds on first use)"


def _cuda_line(name: str) -> str:
    if _build.mode("cuda") == "ref":
        return f"reference: {_build.ENV} chose it"
    missing = cuda_unavailable(name)
    if missing is not None:
        return f"reference: {missing}"
    gpu = "" if torch.cuda.is_available() else "; no GPU here"
    return f"{cuda_source(name)}{gpu}"


def backend_status(build: bool = True) -> dict[str, dict[str, str]]:
    """For each op and device type, the backend a call uses now and why.

    With ``build=True`` (the default) a CPU kernel not yet built is built now (about ten
    seconds per op the first time, then cached); with ``build=False`` it is reported as not
    built yet. Device kernels serve calls outside autograd in the dtypes they support; other
    calls take the reference.
    """
    try:
        for kind in DEVICE_TYPES:
            _build.mode(kind)
    except AdaptertxError as exc:
        return {name: {kind: f"error: {exc}" for kind in DEVICE_TYPES} for name in _build.OPS}
    return {name: {"cpu": _cpu_line(name, build), "cuda": _cuda_line(name)} for name in _build.OPS}
