import pytest
import torch
import torch.nn.functional as F

from adaptertx.kernels import KernelInputError, add_layernorm, bottleneck_adapter, bottleneck_adapter_ref

ACT32 = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu, "swish": F.silu, "leakyrelu": F.leaky_relu}


def _params(tokens, dim, r, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(tokens, dim, generator=g)
    res = torch.randn(tokens, dim, generator=g)
    dw = torch.randn(r, dim, generator=g) / dim**0.5
    db = torch.randn(r, generator=g) * 0.1
    uw = torch.randn(dim, r, generator=g) / r**0.5
    ub = torch.randn(dim, generator=g) * 0.1
    return [t.to(dtype) for t in (h, res, dw, db, uw, ub)]


def _ref32(h, res, dw, db, uw, ub, act, scaling):
    f = [t.float() if t is not None else None for t in (h, res, dw, db, uw, ub)]
    return f[1] + scaling * F.linear(ACT32[act](F.linear(f[0], f[2], f[3])), f[4], f[5])


@pytest.mark.parametrize("tokens, dim, r", [(1, 768, 48), (7, 383, 5), (3, 1, 1), (0, 16, 4), (50, 384, 24)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("act", ["relu", "gelu", "silu", "leakyrelu"])
def test_matches_reference(backend, tokens, dim, r, dtype, act, rule):
    backend("bottleneck_adapter")
    h, res, dw, db, uw, ub = _params(tokens, dim, r, dtype)
    out = bottleneck_adapter(h, res, dw, db, uw, ub, act, 0.5)
    assert out.dtype == dtype and out.shape == h.shape
    rule(out, _ref32(h, res, dw, db, uw, ub, act, 0.5), bottleneck_adapter_ref(h, res, dw, db, uw, ub, act, 0.5))


def test_no_biases_and_case_insensitive_activation(backend):
    backend("bottleneck_adapter")
    h, res, dw, _, uw, _ = _params(10, 32, 8, torch.float32)
    out = bottleneck_adapter(h, res, dw, None, uw, None, "ReLU", 2.0)
    torch.testing.assert_close(out, _ref32(h, res, dw, None, uw, None, "relu", 2.0), rtol=1e-5, atol=1e-5)


def test_matches_adapters_seq_bn_layer(backend):
    """Mirror of adapters 1.3's Pfeiffer (seq_bn) output adapter on a BERT layer."""
    backend("bottleneck_adapter")
    pytest.importorskip("adapters")
    from adapters import SeqBnConfig
    from adapters.methods.modeling import Adapter

    torch.manual_seed(0)
    dim = 32
    config = SeqBnConfig(reduction_factor=4, init_weights="bert")
    adapter = Adapter("a", dim, dim // 4, config).eval()
    torch.nn.init.normal_(adapter.adapter_up.weight, std=0.2)  # large enough to matter in the sum
    ln = torch.nn.LayerNorm(dim, eps=1e-12)
    torch.nn.init.normal_(ln.weight, 1.0, 0.1)
    torch.nn.init.normal_(ln.bias, 0.0, 0.1)
    ffn, inp = torch.randn(9, dim), torch.randn(9, dim)
    with torch.no_grad():
        hs, _, residual = adapter.pre_forward(ffn, inp, ln)
        out, _, _ = adapter(hs, residual_input=residual)
        expected = adapter.post_forward(out, ffn, inp, ln)

        down, up = adapter.adapter_down[0], adapter.adapter_up
        h = add_layernorm(ffn, inp, ln.weight, ln.bias, ln.eps)
        o = bottleneck_adapter(h, ffn, down.weight, down.bias, up.weight, up.bias, config.non_linearity, config.scaling)
        got = add_layernorm(o, inp, ln.weight, ln.bias, ln.eps)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_bad_inputs_raise(backend):
    backend("bottleneck_adapter")
    h, res, dw, db, uw, ub = _params(4, 16, 4, torch.float32)
    bad = [
        (h, res[:, :8], dw, db, uw, ub, "relu", 1.0),
        (h, res, dw.t(), db, uw, ub, "relu", 1.0),
        (h, res, dw, db, uw.t(), ub, "relu", 1.0),
        (h, res, dw, db[:2], uw, ub, "relu", 1.0),
        (h, res, dw, db, uw, ub, "tanhh", 1.0),
        (h, res, dw, db, uw, ub, "relu", torch.ones(16)),
        (h, res, dw, db, uw, ub, "relu", float("nan")),
    ]
    for args in bad:
        with pytest.raises(KernelInputError):
            bottleneck_adapter(*args)
        with pytest.raises(KernelInputError):
            bottleneck_adapter_ref(*args)
