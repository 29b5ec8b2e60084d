import pytest
import torch
from torch import nn

from adaptertx.errors import AdaptertxError
from adaptertx.quantize import Int8Linear, linear_weight_bytes, quantize_linears, quantize_rows


@pytest.fixture
def linear():
    torch.manual_seed(0)
    return nn.Linear(96, 160)


def test_quantize_rows_round_trip_error_is_half_a_step(linear):
    q, s = quantize_rows(linear.weight)
    assert q.dtype == torch.int8 and q.abs().max() == 127
    err = (q.float() * s[:, None] - linear.weight).abs()
    assert (err <= s[:, None] / 2 + 1e-7).all()
    q0, s0 = quantize_rows(torch.zeros(3, 4))
    assert (q0 == 0).all() and (s0 == 1).all()


@pytest.mark.parametrize("shape", [(1, 96), (7, 96), (2, 5, 96)])
def test_forward_and_input_gradient_equal_the_bf16_reference(linear, shape):
    layer = Int8Linear.from_linear(linear)
    ref = nn.Linear(96, 160).to(torch.bfloat16)
    with torch.no_grad():
        ref.weight.copy_(layer.dequantize())
        ref.bias.copy_(linear.bias)
    ref.requires_grad_(False)
    x = torch.randn(shape, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    y, y_ref = layer(x), ref(x_ref.to(torch.bfloat16))
    assert torch.equal(y, y_ref)
    grad = torch.randn_like(y)
    y.backward(grad)
    y_ref.backward(grad)
    assert x.grad.dtype == torch.float32
    torch.testing.assert_close(x.grad, x_ref.grad)


def test_fp32_compute_matches_the_original_layer_within_quantisation_error(linear):
    layer = Int8Linear.from_linear(linear, compute_dtype=torch.float32)
    x = torch.randn(8, 96)
    err = (layer(x) - linear(x)).abs().max()
    assert 0 < err < 0.02 * linear(x).abs().max()


def test_weights_are_frozen_and_four_times_smaller(tiny_xlmr):
    import copy

    model = copy.deepcopy(tiny_xlmr[0])
    fp32_bytes = linear_weight_bytes(model)
    n_linear = sum(type(m) is nn.Linear for m in model.modules())
    assert n_linear == 6 * model.config.num_hidden_layers + 1  # q, k, v, out, ffn in/out; pooler
    assert quantize_linears(model) == n_linear
    assert not any(type(m) is nn.Linear for m in model.modules())
    assert linear_weight_bytes(model) <= 0.3 * fp32_bytes
    assert not any("qweight" in name for name, _ in model.named_parameters())
    batch = {"input_ids": torch.tensor([[0, 3293, 83, 10, 3034, 2]])}
    out = model(**batch).last_hidden_state
    out.float().sum().backward()  # gradients reach nothing frozen
    assert all(p.grad is None or "qweight" not in n for n, p in model.named_parameters())
    ref = tiny_xlmr[0](**batch).last_hidden_state
    cos = torch.nn.functional.cosine_similarity(out.float(), ref, dim=-1)
    assert cos.min() > 0.99


def test_bad_shapes_are_clear_errors(linear):
    layer = Int8Linear.from_linear(linear)
    with pytest.raises(AdaptertxError, match="expects inputs with 96 features, got 95"):
        layer(torch.randn(2, 95))
    with pytest.raises(AdaptertxError, match="2-D weight"):
        quantize_rows(torch.randn(3))
    with pytest.raises(AdaptertxError, match="scale must have shape"):
        Int8Linear(torch.zeros(4, 3, dtype=torch.int8), torch.ones(3), None)
