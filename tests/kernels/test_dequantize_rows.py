import pytest
import torch

from adaptertx.kernels import KernelInputError, dequantize_rows, dequantize_rows_ref
from adaptertx.quantize import Int8Linear, quantize_rows

SHAPES = [(1, 1), (3, 15), (5, 16), (7, 17), (64, 384), (0, 8), (2, 0), (33, 130)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_reference_bit_for_bit(backend, shape, dtype):
    backend("dequantize_rows")
    g = torch.Generator().manual_seed(0)
    q = torch.randint(-127, 128, shape, generator=g, dtype=torch.int8)
    scale = torch.rand(shape[0], generator=g) * 0.1 + 1e-4
    out = dequantize_rows(q, scale, dtype)
    assert out.dtype == dtype and out.shape == q.shape
    assert torch.equal(out, dequantize_rows_ref(q, scale, dtype))
    # fp32: the exact product (exact in float64: a 7-bit integer times an fp32 scale) rounded once.
    # bf16: the fp32 product rounded to bf16, as a bf16 nn.Linear holding the fp32 weight has it.
    exact = q.double() * scale.double()[:, None]
    assert torch.equal(out, exact.float() if dtype == torch.float32 else exact.float().bfloat16())


def test_non_contiguous_and_bf16_scale(backend):
    backend("dequantize_rows")
    q = torch.randint(-127, 128, (40, 24), dtype=torch.int8).t()
    scale = torch.rand(24).bfloat16()
    assert torch.equal(dequantize_rows(q, scale, torch.bfloat16), (q.float() * scale.float()[:, None]).bfloat16())


def test_int8_linear_round_trip_uses_it(backend):
    backend("dequantize_rows")
    lin = torch.nn.Linear(48, 20)
    q, s = quantize_rows(lin.weight)
    layer = Int8Linear(q, s, lin.bias, compute_dtype=torch.float32)
    torch.testing.assert_close(layer.dequantize(), lin.weight.detach(), atol=s.max().item() / 2 + 1e-7, rtol=0)
    x = torch.randn(3, 48)
    torch.testing.assert_close(layer(x), x @ layer.dequantize().T + lin.bias, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "args, message",
    [((torch.ones(2, 3), torch.ones(2), torch.float32), "2-D int8"),
     ((torch.ones(2, dtype=torch.int8), torch.ones(2), torch.float32), "2-D int8"),
     ((torch.ones(2, 3, dtype=torch.int8), torch.ones(3), torch.float32), r"float \(2,\) tensor"),
     ((torch.ones(2, 3, dtype=torch.int8), torch.ones(2, dtype=torch.int32), torch.float32), r"float \(2,\) tensor"),
     ((torch.ones(2, 3, dtype=torch.int8), torch.ones(2), torch.int32), "floating-point dtype")],
)
def test_bad_input(args, message):
    with pytest.raises(KernelInputError, match=message):
        dequantize_rows(*args)
