"""Lazy JIT build of the C++ kernels in ``adaptertx/csrc/`` and the choice of backend for each op.

Each op ``<op>`` has one source, ``adaptertx/csrc/<op>.cpp`` (plus the shared
``adaptertx/csrc/common.h``), shipped inside the package so an installed wheel builds them too.
It is built on first use with :func:`torch.utils.cpp_extension.load` into
``adaptertx.io.cache_dir() / "torch_extensions" / <name>``, where ``<name>`` carries a hash
of the sources, the compiler flags and the torch version, so a changed source rebuilds. The
sources are compiled from a copy in that folder, so the compiler command does not depend on
where the package lives and one cached build serves a checkout, another worktree and an
installed wheel alike. The build uses no ``-march`` flag: the AVX-512 code paths are chosen
at run time, so a cached build also runs on machines without AVX-512.

Each source registers its kernel for the CPU dispatch key of an operator that
:mod:`adaptertx.kernels._library` defines (``TORCH_LIBRARY_IMPL``, no schema of its own).

``ADAPTERTX_KERNELS`` selects the backend, for every device (``auto``, ``ref``, ``native``) or per
device (``cpu=native,cuda=ref``; a device left out is ``auto``). For the CPU: ``auto`` (native
when it builds and the CPU has AVX-512, else the reference, with one log line saying why),
``ref`` (always the pure-torch reference) or ``native`` (the native build is required, a failed
build raises; on a CPU without AVX-512 this runs the kernels' portable scalar path, which is
correct but slower than torch's own vectorised ops). ``ADAPTERTX_KERNELS_ISA=generic`` makes the native kernels take
that portable path even where AVX-512 exists (for testing it).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import logging
import os
import threading
from pathlib import Path

import torch

from adaptertx.errors import AdaptertxError
from adaptertx.io import atomic_write_bytes, cache_dir

log = logging.getLogger("adaptertx.kernels")

OPS = ("bias_gelu", "add_layernorm", "bottleneck_adapter", "adapter_fusion", "segment_mean_pool_normalize",
       "varlen_attention", "dropout", "dequantize_rows", "topk_merge")
CHOICES = ("auto", "ref", "native")
CSRC = Path(__file__).resolve().parents[1] / "csrc"
_SHARED_SOURCES = ("common.h",)
_CFLAGS = ("-O3", "-fopenmp")
_LDFLAGS = ("-fopenmp",)
ENV = "ADAPTERTX_KERNELS"

_lock = threading.Lock()
_loaded: dict[str, bool] = {}
_failed: dict[str, str] = {}


def modes() -> dict[str, str]:
    """``ADAPTERTX_KERNELS`` per device type: ``{"cpu": ..., "cuda": ...}``, each ``auto``, ``ref`` or ``native``."""
    return dict(_parse_modes(os.environ.get(ENV, "")))


@functools.lru_cache(maxsize=8)
def _parse_modes(value: str) -> tuple[tuple[str, str], ...]:
    """The per-device choices of one ``ADAPTERTX_KERNELS`` value (read on every kernel call, so cached)."""
    raw = value.strip().lower() or "auto"
    if "=" not in raw:
        if raw not in CHOICES:
            raise AdaptertxError(f"{ENV}={raw!r}: expected 'auto', 'ref', 'native' or per device 'cpu=...,cuda=...'")
        return (("cpu", raw), ("cuda", raw))
    out = {"cpu": "auto", "cuda": "auto"}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        device, _, choice = part.partition("=")
        device, choice = device.strip(), choice.strip()
        if device not in out or choice not in CHOICES:
            raise AdaptertxError(f"{ENV}={raw!r}: {part!r} is not DEVICE=CHOICE with DEVICE in cpu, cuda and "
                                 f"CHOICE in {', '.join(CHOICES)}")
        out[device] = choice
    return tuple(out.items())


def mode(device_type: str = "cpu") -> str:
    """The ``ADAPTERTX_KERNELS`` choice for ``device_type``: ``auto``, ``ref`` or ``native``."""
    return dict(_parse_modes(os.environ.get(ENV, "")))[device_type]


def _source(op: str) -> Path:
    return CSRC / f"{op}.cpp"


def _sources(op: str) -> tuple[Path, ...]:
    return (_source(op), *(CSRC / s for s in _SHARED_SOURCES))


def _build_name(op: str) -> str:
    digest = hashlib.sha256()
    for path in _sources(op):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    digest.update(" ".join(_CFLAGS + _LDFLAGS).encode())
    digest.update(torch.__version__.encode())
    return f"adaptertx_{op}_{digest.hexdigest()[:12]}"


def _first_error_line(exc: BaseException) -> str:
    text = str(exc)
    for line in text.splitlines():
        if "error" in line.lower() and "Error building extension" not in line:
            return line.strip()[:300]
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return first[:300]


def _stage_sources(op: str, build_dir: Path) -> Path:
    """Copy ``op``'s sources into ``build_dir / "src"`` and return that folder.

    ninja records the compiler command, which names the source and include paths, and rebuilds
    when it changes; compiling these copies keeps the command the same wherever the package is.
    A copy that already holds the same bytes is left alone, so its time stamp stays older than
    the built object and nothing rebuilds.
    """
    staged = build_dir / "src"
    for path in _sources(op):
        data = path.read_bytes()
        target = staged / path.name
        if not target.is_file() or target.read_bytes() != data:
            atomic_write_bytes(target, data)
    return staged


def _build(op: str) -> None:
    from torch.utils import cpp_extension

    name = _build_name(op)
    build_dir = cache_dir() / "torch_extensions" / name
    build_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(build_dir):
        staged = _stage_sources(op, build_dir)
        cpp_extension.load(
            name=name,
            sources=[str(staged / _source(op).name)],
            extra_cflags=list(_CFLAGS),
            extra_ldflags=list(_LDFLAGS),
            extra_include_paths=[str(staged)],
            build_directory=str(build_dir),
            is_python_module=False,
            verbose=False,
        )


@contextlib.contextmanager
def _exclusive(build_dir: Path):
    """One process at a time in ``build_dir`` (an ``flock``, which the system releases when its
    holder dies). torch marks a build in progress with a plain ``lock`` file, taken on every load,
    and waits for ever while one exists; a process killed in that moment leaves it behind. Under
    this lock no other load is running, so such a file is stale and is removed."""
    with open(build_dir / ".adaptertx.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            stale = build_dir / "lock"
            if stale.exists():
                log.warning("adaptertx kernels: removing %s, left by a process that died while loading", stale)
                stale.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def native_available(op: str) -> bool:
    """Build (once) and load the native kernel for ``op``; False, with a reason kept, on failure."""
    if op in _loaded:
        return True
    if op in _failed:
        return False
    with _lock:
        if op in _loaded or op in _failed:
            return op in _loaded
        if not _source(op).is_file():
            _failed[op] = f"source not found ({_source(op)})"
        else:
            try:
                _build(op)
                if not torch._C._dispatch_has_kernel_for_dispatch_key(f"adaptertx::{op}", "CPU"):
                    raise RuntimeError(f"the built library registers no CPU kernel for adaptertx::{op}")
                _loaded[op] = True
            except Exception as exc:  # a compiler or loader failure of any kind
                _failed[op] = f"build failed: {_first_error_line(exc)}"
        if op in _failed:
            log.warning("adaptertx kernel %s: using the pure-torch reference (%s)", op, _failed[op])
    return op in _loaded


def cpu_has_avx512() -> bool:
    """Whether torch's own CPU dispatch found AVX-512 (the native kernels' fast path needs it)."""
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


NO_AVX512 = "CPU lacks AVX-512 (the portable native path is slower than torch)"


def use_native(op: str) -> bool:
    """Whether a call of ``op`` goes to the native kernel under the current ``ADAPTERTX_KERNELS``."""
    m = mode()
    if m == "ref":
        return False
    if m == "auto" and not cpu_has_avx512():
        return False
    if native_available(op):
        return True
    if m == "native":
        raise AdaptertxError(f"{ENV}=native but the {op} kernel is unavailable: {_failed[op]}")
    return False


def is_loaded(op: str) -> bool:
    """Whether ``op``'s native CPU kernel is built and loaded in this process."""
    return op in _loaded


def failure(op: str) -> str | None:
    """Why ``op``'s native CPU kernel could not be built or loaded, or None."""
    return _failed.get(op)
