import functools
import math
import sys

import pytest
import torch
import torch.nn.functional as F

from adaptertx.kernels import Dropout, KernelInputError, _build, dropout, dropout_ref, use_fast_dropout

DROPOUT = sys.modules["adaptertx.kernels.dropout"]

SHAPES = [(0,), (1,), (15,), (16,), (17,), (33, 7), (3, 5, 17), (2, 12, 19, 19)]


def _lowbias32_uint32(x: int) -> int:
    """lowbias32 with explicit 32-bit wrap-around (the published algorithm, in plain Python)."""
    m = 2**32
    x ^= x >> 16
    x = (x * 0x7FEB352D) % m
    x ^= x >> 15
    x = (x * 0x846CA68B) % m
    return x ^ (x >> 16)


def _keep_python(i: int, p: float, seed: int) -> bool:
    k1 = _lowbias32_uint32(seed % 2**32)
    k2 = _lowbias32_uint32(((seed >> 32) ^ 0x9E3779B9) % 2**32)
    h = _lowbias32_uint32(_lowbias32_uint32((i % 2**32) ^ k1) ^ (i >> 32) ^ k2)
    return h >= math.floor(p * 2**32)


@functools.cache
def _keep_list(numel: int, p: float, seed: int) -> tuple[bool, ...]:
    return tuple(_keep_python(i, p, seed) for i in range(numel))


def _dropout_python(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """Inverted dropout from the plain-integer hash: element i of x in row-major order kept,
    times 1 / (1 - p) in float32 and rounded once to x's dtype, when its hash clears p."""
    keep = torch.tensor(_keep_list(x.numel(), p, seed), dtype=torch.bool).view(x.shape)
    return torch.where(keep, (x.float() * (1.0 / (1.0 - p))).to(x.dtype), torch.zeros((), dtype=x.dtype))



def test_reference_hash_matches_plain_integer_arithmetic():
    # The reference computes uint32 products in int64 tensors (overflowing, then masked); check
    # it bit for bit against unbounded Python integers, including indices past 2**32.
    for seed in (0, 1, 12345, 2**40 + 7, 2**62 - 1):
        keep = DROPOUT.keep_mask_ref(300, 0.3, seed)
        assert keep.tolist() == [_keep_python(i, 0.3, seed) for i in range(300)]
    i = torch.tensor([2**32 - 1, 2**32, 2**32 + 5, 2**40 + 3])
    h = DROPOUT._lowbias32(DROPOUT._lowbias32((i & 0xFFFFFFFF) ^ 11) ^ (i >> 32) ^ 29)
    assert h.tolist() == [_lowbias32_uint32(_lowbias32_uint32((v % 2**32) ^ 11) ^ (v >> 32) ^ 29) for v in i.tolist()]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_matches_reference_bit_for_bit(backend, shape, dtype, p):
    backend("dropout")
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 3).to(dtype)
    out = dropout(x, p, 987654321)
    assert out.dtype == dtype and out.shape == x.shape
    # Against the plain-integer hash, not dropout_ref (which is what the ref backend runs).
    expected = _dropout_python(x, p, 987654321)
    assert torch.equal(out, expected) and torch.equal(dropout_ref(x, p, 987654321), expected)


def test_non_contiguous_input_uses_row_major_order(backend):
    backend("dropout")
    x = torch.randn(40, 64).t()
    assert torch.equal(dropout(x, 0.2, 5), dropout(x.contiguous(), 0.2, 5))
    assert torch.equal(dropout(x, 0.2, 5), _dropout_python(x, 0.2, 5))


def test_keep_rate_and_independence(backend):
    backend("dropout")
    n, p = 1_000_000, 0.1
    x = torch.ones(n)
    a, b = dropout(x, p, 1) != 0, dropout(x, p, 2) != 0
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(1 - a.float().mean().item() - p) < 5 * sigma
    # Two seeds: agreement of independent masks is p^2 + (1-p)^2.
    agree = (a == b).float().mean().item()
    assert abs(agree - (p * p + (1 - p) ** 2)) < 5 * math.sqrt(0.2 / n)
    # Neighbouring elements are independent too (no stripes).
    both = (a[:-1] & a[1:]).float().mean().item()
    assert abs(both - (1 - p) ** 2) < 5 * math.sqrt(0.2 / n)
    assert torch.equal(dropout(x, p, 1), dropout(x, p, 1))


def test_backward_is_the_same_mask(backend):
    backend("dropout")
    x = torch.randn(7, 33, requires_grad=True)
    g = torch.randn(7, 33)
    dropout(x, 0.3, 77).backward(g)
    assert torch.equal(x.grad, dropout(g, 0.3, 77))


def test_gradcheck_in_float64():
    x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: dropout(t, 0.4, 3), (x,))


def test_p_zero_keeps_everything(backend):
    backend("dropout")
    x = torch.randn(9, 5)
    assert torch.equal(dropout(x, 0.0, 1), x)


@pytest.mark.parametrize(
    "args, message",
    [((torch.ones(3), 1.0, 0), "p must be in"), ((torch.ones(3), -0.1, 0), "p must be in"),
     ((torch.ones(3), 0.1, -1), "seed must be"), ((torch.ones(3), 0.1, 2**63), "seed must be"),
     ((torch.ones(3, dtype=torch.int64), 0.1, 0), "floating-point"), (([1.0], 0.1, 0), "torch.Tensor")],
)
def test_bad_input(args, message):
    with pytest.raises(KernelInputError, match=message):
        dropout(*args)


def test_module_is_identity_in_eval_and_repeatable_under_a_seed(backend):
    backend("dropout")
    layer = Dropout(0.25)
    x = torch.randn(64, 48)
    layer.eval()
    assert layer(x) is x
    layer.train()
    torch.manual_seed(3)
    first = layer(x)
    torch.manual_seed(3)
    assert torch.equal(layer(x), first)
    assert not torch.equal(layer(x), first)  # the next call draws a new seed
    dropped = (first == 0).float().mean().item()
    assert 0.15 < dropped < 0.35


def test_module_leaves_other_dtypes_to_torch(backend):
    backend("dropout")
    layer = Dropout(0.5).train()
    x = torch.ones(1000, dtype=torch.float64)
    torch.manual_seed(0)
    ours = layer(x)
    torch.manual_seed(0)
    assert torch.equal(ours, F.dropout(x, 0.5, True))


def _tiny_bert(attn: str):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, attn_implementation=attn)
    return BertForSequenceClassification(config)


def test_use_fast_dropout_swaps_layers_and_keeps_outputs():
    model = _tiny_bert("sdpa")
    reference = _tiny_bert("sdpa")
    keys = set(model.state_dict())
    n = sum(type(m) is torch.nn.Dropout for m in model.modules())
    assert use_fast_dropout(model) == n > 0
    assert set(model.state_dict()) == keys
    assert not any(type(m) is torch.nn.Dropout for m in model.modules())
    ids = torch.randint(0, 99, (3, 11))
    model.eval(), reference.eval()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)


def test_training_step_after_swap_draws_no_bernoulli_and_matches_eager_without_dropout(monkeypatch):
    from torch.profiler import profile

    monkeypatch.delenv("ADAPTERTX_KERNELS", raising=False)
    if not _build.use_native("dropout"):
        pytest.skip("native dropout unavailable here")
    model = _tiny_bert("sdpa")
    use_fast_dropout(model)
    model.train()
    ids = torch.randint(0, 99, (3, 11))
    with profile() as prof:
        model(ids, labels=torch.tensor([0, 1, 0])).loss.backward()
    names = {e.name for e in prof.events()}
    assert "adaptertx::dropout" in names and "aten::bernoulli_" not in names
    # With every dropout layer at p=0 (the attention's dropout_prob left as it is, so training
    # takes the eager path), training-mode logits equal SDPA's in eval.
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    model.train()
    train_logits = model(ids).logits
    model.eval()
    torch.testing.assert_close(train_logits, model(ids).logits, rtol=1e-5, atol=1e-5)
