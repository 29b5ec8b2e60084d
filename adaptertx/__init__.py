"""adaptertx: English intermediate-task adapters on a frozen 8-bit encoder, merged and
evaluated zero-shot across languages."""

import logging as _logging

__version__ = "0.1.0"

# bitsandbytes warns at import, on CPUs with AVX512-BF16, that its optional 4-bit CPU kernel
# (the `kernels` package) is missing; adaptertx never uses 4-bit weights, so that one line is
# dropped. Every other bitsandbytes message is kept.
_logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
    lambda record: not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward"))
