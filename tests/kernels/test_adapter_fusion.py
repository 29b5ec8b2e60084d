import logging

import pytest
import torch
import torch.nn.functional as F

from adaptertx.errors import AdaptertxError
from adaptertx.kernels import KernelInputError
from adaptertx.kernels.adapter_fusion import (
    FusionWeights,
    adapter_fusion,
    adapter_fusion_ref,
    adapter_fusion_unfolded,
    pack_fusion,
)


def weights(d=16, ranks=(4, 4, 4), query=True, key=True, value=True, residual_before=False, scaling=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g) / s[-1] ** 0.5  # noqa: E731
    n = len(ranks)
    return FusionWeights(
        down_w=[rnd(r, d) for r in ranks], down_b=[0.1 * rnd(r) for r in ranks],
        up_w=[rnd(d, r) for r in ranks], up_b=[0.1 * rnd(d) for _ in ranks],
        scaling=scaling or [1.0] * n, activation=F.relu,
        query_w=rnd(d, d) if query else None, query_b=0.1 * rnd(d) if query else None,
        key_w=rnd(d, d) if key else None, key_b=0.1 * rnd(d) if key else None,
        value_w=torch.eye(d) + 0.3 * rnd(d, d) if value else None, residual_before=residual_before)


def inputs(shape, d=16, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, d, generator=g).to(dtype) for _ in range(3)]


@pytest.mark.parametrize("kw", [
    dict(),                                           # adapters' "dynamic" fusion
    dict(value=False),                                # "static"
    dict(residual_before=True),
    dict(residual_before=True, value=False),
    dict(query=False, key=False, value=False),
    dict(ranks=(2, 5, 3)),                            # different bottlenecks: zero-padded
    dict(ranks=(4,)),                                 # a fusion of one
    dict(scaling=[0.5, torch.tensor([2.0]), torch.linspace(0.5, 1.5, 16)]),  # learned / channel scaling
])
@pytest.mark.parametrize("shape", [(1,), (7,), (2, 5), (0,)])
def test_fused_equals_reference_fp32(kw, shape, backend):
    backend("adapter_fusion")
    w = weights(**kw)
    x, q, res = inputs(shape)
    packed = pack_fusion(w)
    torch.testing.assert_close(adapter_fusion(x, x, res, packed), adapter_fusion_unfolded(x, x, res, w),
                               rtol=1e-5, atol=1e-5)
    # A query other than the adapters' input (query_before_ln) takes two input GEMMs.
    torch.testing.assert_close(adapter_fusion(x, q, res, packed), adapter_fusion_unfolded(x, q, res, w),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw", [dict(), dict(value=False), dict(residual_before=True), dict(ranks=(2, 5, 3)),
                                dict(ranks=(4,))])
@pytest.mark.parametrize("shape", [(1,), (2, 5), (0,)])
def test_attention_probabilities_equal_the_reference(kw, shape, backend):
    """The softmax over the adapters the output is computed with, returned on request; the output
    is unchanged by asking for it."""
    backend("adapter_fusion")
    w = weights(**kw)
    x, q, res = inputs(shape)
    packed = pack_fusion(w)
    for query in (x, q):
        out, probs = adapter_fusion(x, query, res, packed, 2.0, return_probs=True)
        ref_out, ref_probs = adapter_fusion_unfolded(x, query, res, w, 2.0, return_probs=True)
        assert probs.dtype == torch.float32 and probs.shape == (*shape, len(w.down_w))
        torch.testing.assert_close(probs, ref_probs, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out, adapter_fusion(x, query, res, packed, 2.0), rtol=0, atol=0)
        torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
        if probs.numel():
            torch.testing.assert_close(probs.sum(-1), torch.ones(shape))


def test_temperature():
    w = weights()
    x, _, res = inputs((6,))
    torch.testing.assert_close(adapter_fusion(x, x, res, pack_fusion(w), 7.0),
                               adapter_fusion_unfolded(x, x, res, w, 7.0))


@pytest.mark.parametrize("activation", [F.relu, F.gelu, F.silu, F.leaky_relu, torch.nn.GELU(), torch.tanh])
def test_each_activation_against_the_unfolded_computation_and_the_reference(activation, backend):
    """Each non-linearity the kernels know (tanh they do not: it takes the reference), with a
    query other than the input and one equal to it."""
    backend("adapter_fusion")
    w = weights(ranks=(3, 6))
    w = FusionWeights(w.down_w, w.down_b, w.up_w, w.up_b, w.scaling, activation, w.query_w, w.query_b, w.key_w,
                      w.key_b, w.value_w)
    x, q, res = inputs((2, 9))
    packed = pack_fusion(w)
    for query in (x, q):
        out, probs = adapter_fusion(x, query, res, packed, 1.5, return_probs=True)
        ref_out, ref_probs = adapter_fusion_ref(x, query, res, packed, 1.5, return_probs=True)
        torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(probs, ref_probs, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out, adapter_fusion_unfolded(x, query, res, w, 1.5), rtol=1e-5, atol=1e-5)


def test_bf16_error_at_most_twice_torchs(backend):
    backend("adapter_fusion")
    w = weights(d=64, ranks=(8,) * 9)
    x, _, res = inputs((32,), d=64)
    ref32 = adapter_fusion_unfolded(x, x, res, w)
    xb, rb = x.bfloat16(), res.bfloat16()
    ours = adapter_fusion(xb, xb, rb, pack_fusion(w).to(torch.bfloat16))
    torch_bf16 = adapter_fusion_unfolded(xb, xb, rb, w)
    assert ours.dtype == torch.bfloat16
    assert (ours.float() - ref32).abs().max() <= 2 * (torch_bf16.float() - ref32).abs().max()


def test_bad_input_is_a_clear_error():
    w = weights()
    x, _, res = inputs((3,))
    with pytest.raises(KernelInputError, match="end in the hidden size 16"):
        adapter_fusion(x[:, :8], x[:, :8], res[:, :8], pack_fusion(w))
    with pytest.raises(KernelInputError, match="one shape"):
        adapter_fusion(x, x, res[:2], pack_fusion(w))
    with pytest.raises(KernelInputError, match="at least one adapter"):
        FusionWeights([], [], [], [], [], F.relu, None, None, None, None, None)
    with pytest.raises(KernelInputError, match="down_w must be"):
        FusionWeights([torch.zeros(4, 16)], [None], [torch.zeros(16, 3)], [None], [1.0], F.relu,
                      None, None, None, None, None)


# ------------------------------------------------------------------------------ on a model


@pytest.fixture(scope="module")
def fusion_model(tiny_xlmr_dir):
    """A tiny adapters model with 3 random seq_bn adapters and two fusions over them."""
    from adapters import AutoAdapterModel
    from adapters.composition import Fuse

    logging.getLogger("adapters").setLevel(logging.ERROR)
    model = AutoAdapterModel.from_pretrained(tiny_xlmr_dir)
    for n in ("a", "b", "c"):
        model.add_adapter(n, config="seq_bn")
    model.add_adapter_fusion(Fuse("a", "b", "c"))
    model.add_adapter_fusion(Fuse("b", "c"), config="static")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adapter" in name:
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model.eval()


IDS = torch.tensor([[0, 3293, 83, 2, 2, 10, 3034, 2], [0, 47, 1294, 2, 2, 7, 2, 1]])
MASK = torch.tensor([[1] * 8, [1] * 7 + [0]])


def hidden(model, setup):
    model.set_active_adapters(setup)
    with torch.no_grad():
        out = model.base_model(input_ids=IDS, attention_mask=MASK).last_hidden_state
    return out


def library(model, setup):
    """The library's forward with any fused path switched off for the call."""
    from adaptertx.fused_fusion import library_fusion_forward

    with library_fusion_forward(model):
        return hidden(model, setup)


def test_fused_model_forward_equals_the_library(fusion_model):
    from adapters.composition import Fuse

    from adaptertx.fused_fusion import enable_fused_fusion

    abc, bc = Fuse("a", "b", "c"), Fuse("b", "c")
    ref_abc, ref_bc, ref_single = library(fusion_model, abc), library(fusion_model, bc), library(fusion_model, "a")
    with enable_fused_fusion(fusion_model, abc) as h1, enable_fused_fusion(fusion_model, ["b", "c"]) as h2:
        assert h1.layers == h2.layers == 2
        torch.testing.assert_close(hidden(fusion_model, abc), ref_abc, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(hidden(fusion_model, bc), ref_bc, rtol=1e-5, atol=1e-5)
        # Another active setup runs the library's forward.
        assert torch.equal(hidden(fusion_model, "a"), ref_single)
        # So does training mode (and anything recording gradients of the fusion).
        fusion_model.train()
        try:
            fusion_model.set_active_adapters(abc)
            fusion_model.train_adapter_fusion(abc)
            fusion_model.eval()
            with torch.enable_grad():
                out = fusion_model.base_model(input_ids=IDS, attention_mask=MASK).last_hidden_state
            out.sum().backward()
            assert any(p.grad is not None for n, p in fusion_model.named_parameters() if "adapter_fusion_layer" in n)
        finally:
            fusion_model.zero_grad(set_to_none=True)
            for p in fusion_model.parameters():
                p.requires_grad_(False)
            fusion_model.eval()
    assert not any("compose_fuse" in m.__dict__ for m in fusion_model.modules())


def test_fused_model_bf16_within_twice_the_librarys_error(fusion_model):
    import copy

    from adapters.composition import Fuse

    from adaptertx.fused_fusion import enable_fused_fusion

    abc = Fuse("a", "b", "c")
    ref32 = library(fusion_model, abc)
    model = copy.deepcopy(fusion_model).to(torch.bfloat16)
    lib16 = library(model, abc)
    with enable_fused_fusion(model, abc):
        ours = hidden(model, abc)
    assert ours.dtype == torch.bfloat16
    assert (ours.float() - ref32).abs().max() <= 2 * (lib16.float() - ref32).abs().max()


def test_fused_path_refuses_what_it_cannot_run(fusion_model):
    from adapters.composition import Fuse, Stack

    from adaptertx.fused_fusion import enable_fused_fusion

    with pytest.raises(AdaptertxError, match="no AdapterFusion 'a,c'"):
        enable_fused_fusion(fusion_model, Fuse("a", "c"))
    with pytest.raises(AdaptertxError, match="needs a Fuse"):
        enable_fused_fusion(fusion_model, Stack("a", "b"))


@pytest.fixture(scope="module")
def stacked_fusion(tiny_xlmr_dir):
    """Stack(Fuse(a, b, c), t) on a tiny model, random adapter and fusion weights, in train mode."""
    from adapters import AutoAdapterModel
    from adapters.composition import Fuse, Stack

    logging.getLogger("adapters").setLevel(logging.ERROR)
    model = AutoAdapterModel.from_pretrained(tiny_xlmr_dir)
    for n in ("a", "b", "c", "t"):
        model.add_adapter(n, config="seq_bn")
    model.add_adapter_fusion(Fuse("a", "b", "c"), config={"temperature": True, "query": True, "key": True,
                                                          "value": True, "value_before_softmax": True,
                                                          "residual_before": False, "value_initialized": False,
                                                          "regularization": False, "dropout_prob": 0.0,
                                                          "query_before_ln": False})
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adapter" in name:
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    model.set_active_adapters(Stack(Fuse("a", "b", "c"), "t"))
    return model


def _forward_and_grads(model, autocast=False):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model.base_model(input_ids=IDS, attention_mask=MASK).last_hidden_state
    out.float().pow(2).mean().backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()
             if p.grad is not None and "adapter_fusion_layer" in n}
    temps = [m.T for m in model.modules() if type(m).__name__ == "BertFusion"]
    return out.detach().float(), grads, temps


def test_fast_fusion_attention_equals_the_library_forward_and_backward(stacked_fusion):
    import copy

    from adaptertx.fused_fusion import fast_fusion_attention

    library_model = copy.deepcopy(stacked_fusion)
    fast_model = copy.deepcopy(stacked_fusion)
    assert fast_fusion_attention(fast_model) == fast_model.config.num_hidden_layers
    ref_out, ref_grads, ref_t = _forward_and_grads(library_model)
    out, grads, t = _forward_and_grads(fast_model)
    assert torch.allclose(out, ref_out, atol=1e-5, rtol=1e-5)
    assert grads.keys() == ref_grads.keys() and grads
    for n in grads:
        assert torch.allclose(grads[n], ref_grads[n], atol=1e-5, rtol=1e-4), n
    assert t == ref_t and t[0] < 50.0  # the temperature anneals the same way

    # bf16 autocast: error against fp32 at most twice the library's own bf16 error.
    lib16, _, _ = _forward_and_grads(copy.deepcopy(stacked_fusion), autocast=True)
    fast16_model = copy.deepcopy(stacked_fusion)
    fast_fusion_attention(fast16_model)
    fast16, _, _ = _forward_and_grads(fast16_model, autocast=True)
    ref32, _, _ = _forward_and_grads(copy.deepcopy(stacked_fusion))
    assert (fast16 - ref32).abs().max() <= 2 * (lib16 - ref32).abs().max() + 1e-6


def test_fused_inference_serves_a_fusion_inside_a_stack(stacked_fusion):
    """Stack(Fuse(a, b, c), t), the zero-shot protocol's setup: the fused path computes the
    Fuse, the library the target adapter on top; outputs equal the library's, in eval mode."""
    import copy

    from adapters.composition import Fuse, Stack

    from adaptertx.fused_fusion import enable_fused_fusion

    model = copy.deepcopy(stacked_fusion).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    calls = []
    setup = Stack(Fuse("a", "b", "c"), "t")
    fusions = [m for m in model.modules() if type(m).__name__ == "BertFusion"]
    temps = [m.T for m in fusions]  # this fusion anneals its softmax temperature on every forward
    ref = library(model, setup)
    after = [m.T for m in fusions]
    for m, t in zip(fusions, temps, strict=True):
        m.T = t
    with enable_fused_fusion(model, Fuse("a", "b", "c")) as handle:
        for m in model.modules():
            if "compose_fuse" in m.__dict__:
                fused = m.__dict__["_adaptertx_fused_fusions"]["a,b,c"]
                m.__dict__["_adaptertx_fused_fusions"]["a,b,c"] = lambda state, f=fused: calls.append(1) or f(state)
        ours = hidden(model, setup)
        assert len(calls) == handle.layers == model.config.num_hidden_layers
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert [m.T for m in fusions] == after
    # Without the target adapter on top the result differs: the stack really ran it.
    assert not torch.allclose(library(model, Fuse("a", "b", "c")), ref, atol=1e-3)
