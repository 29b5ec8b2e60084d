"""Triton kernels of the fused ops for CUDA tensors, one module per op (``<op>_triton``).

Each module imports triton at its top, so this package imports none of them: the dispatcher
imports a module when a CUDA call first needs it. The kernels also run on CPU tensors under
Triton's interpreter (``TRITON_INTERPRET=1`` set before a module is imported), which is how
they are tested without a GPU.
"""
