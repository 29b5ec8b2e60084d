import pytest
import torch
import torch.nn.functional as F

from adaptertx.kernels import KernelInputError, bias_gelu, bias_gelu_ref

SHAPES = [(1, 768), (7, 383), (5, 1), (33, 64), (0, 16), (130, 3072)]


def _gelu64(x, b):
    """The exact (erf) GELU of x + b, computed in float64 from the formula."""
    z = x.double() + b.double()
    return 0.5 * z * (1 + torch.erf(z / 2**0.5))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_reference(backend, shape, dtype, rule):
    backend("bias_gelu")
    g = torch.Generator().manual_seed(0)
    x32 = torch.randn(shape, generator=g) * 3
    b32 = torch.randn(shape[1], generator=g)
    x, b = x32.to(dtype), b32.to(dtype)
    out = bias_gelu(x, b)
    assert out.dtype == dtype
    # Against float64, and against torch's own GELU in x's dtype (not bias_gelu_ref, which is
    # what the ref backend runs).
    rule(out, _gelu64(x, b), F.gelu(x + b))


def test_extreme_values(backend):
    backend("bias_gelu")
    x = torch.tensor([[-1e4, -30.0, -6.0, -1e-3, 0.0, 1e-3, 6.0, 30.0, 1e4]])
    out = bias_gelu(x, torch.zeros(9))
    torch.testing.assert_close(out, _gelu64(x, torch.zeros(9)).float(), rtol=1e-5, atol=1e-6)


def test_non_contiguous_and_fp32_bias_with_bf16_x(backend, rule):
    backend("bias_gelu")
    x = torch.randn(64, 40).t()  # (40, 64), non-contiguous
    b = torch.randn(64)
    torch.testing.assert_close(bias_gelu(x, b), _gelu64(x, b).float(), rtol=1e-5, atol=1e-5)
    xb = x.bfloat16()
    rule(bias_gelu(xb, b), _gelu64(xb, b), F.gelu(xb + b.bfloat16()))


def test_grad_falls_back_to_differentiable_path(backend):
    backend("bias_gelu")
    x = torch.randn(4, 8, requires_grad=True)
    bias_gelu(x, torch.zeros(8)).sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


@pytest.mark.parametrize(
    "x, b",
    [
        (torch.randn(3), torch.randn(3)),
        (torch.randn(2, 3), torch.randn(4)),
        (torch.randn(2, 3), torch.randn(1, 3)),
        (torch.ones(2, 3, dtype=torch.int64), torch.ones(3)),
    ],
)
def test_bad_inputs_raise(backend, x, b):
    backend("bias_gelu")
    with pytest.raises(KernelInputError):
        bias_gelu(x, b)
    with pytest.raises(ValueError):
        bias_gelu_ref(x, b)
