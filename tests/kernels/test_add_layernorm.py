import pytest
import torch
import torch.nn.functional as F

from adaptertx.kernels import KernelInputError, add_layernorm, add_layernorm_ref

SHAPES = [(1, 768), (7, 383), (5, 1), (0, 16), (65, 384)]


def _inputs(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 2 + 0.5
    r = torch.randn(shape, generator=g)
    w = 1 + 0.1 * torch.randn(shape[1], generator=g)
    b = 0.1 * torch.randn(shape[1], generator=g)
    return x.to(dtype), r.to(dtype), w.to(dtype), b.to(dtype)


def _ln64(x, r, w=None, b=None, eps=1e-5):
    """LayerNorm(x + r) over the last dim, from its definition in float64 (biased variance)."""
    s = x.double() + r.double()
    mean = s.mean(-1, keepdim=True)
    var = ((s - mean) ** 2).mean(-1, keepdim=True)
    out = (s - mean) / torch.sqrt(var + eps)
    if w is not None:
        out = out * w.double()
    if b is not None:
        out = out + b.double()
    return out


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("eps", [1e-12, 1e-5])
def test_matches_reference(backend, shape, dtype, eps, rule):
    backend("add_layernorm")
    x, r, w, b = _inputs(shape, dtype)
    out = add_layernorm(x, r, w, b, eps)
    assert out.dtype == dtype
    # Against float64, and against torch's own LayerNorm in x's dtype (not add_layernorm_ref,
    # which is what the ref backend runs).
    rule(out, _ln64(x, r, w, b, eps), F.layer_norm(x + r, (shape[1],), w, b, eps))


def test_no_affine_and_large_offset(backend):
    backend("add_layernorm")
    x, r, _, _ = _inputs((9, 100), torch.float32)
    x = x + 1000.0  # a large common offset: the two-pass variance must stay accurate
    torch.testing.assert_close(
        add_layernorm(x, r, None, None), _ln64(x, r).float(), rtol=1e-4, atol=1e-4
    )


def test_non_contiguous(backend):
    backend("add_layernorm")
    x = torch.randn(48, 30).t()
    r = torch.randn(30, 48)
    w, b = torch.randn(48), torch.randn(48)
    torch.testing.assert_close(add_layernorm(x, r, w, b, 1e-12), _ln64(x, r, w, b, 1e-12).float())


def test_bad_inputs_raise(backend):
    backend("add_layernorm")
    x = torch.randn(4, 8)
    for args in [
        (x, torch.randn(4, 9), None, None, 1e-5),
        (x, x.bfloat16(), None, None, 1e-5),
        (x, x, torch.randn(9), None, 1e-5),
        (x, x, None, None, -1.0),
        (torch.randn(4, 0), torch.randn(4, 0), None, None, 1e-5),
    ]:
        with pytest.raises(KernelInputError):
            add_layernorm(*args)
        with pytest.raises(KernelInputError):
            add_layernorm_ref(*args)
