"""adaptertx: English intermediate-task adapters on a frozen 8-bit encoder, merged and
evaluated zero-shot across languages."""

__version__ = "0.1.0"
