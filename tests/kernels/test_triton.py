"""The Triton kernels (adaptertx.kernels.cuda) against the pure-torch references.

On a machine without CUDA they run on CPU tensors under Triton's interpreter (the root conftest
sets ``TRITON_INTERPRET=1``); with CUDA, on the GPU. The error rule: the kernel's max abs error
against a wider reference (the inputs upcast: bf16 -> fp32, fp32 -> fp64) is at most twice the
error of the same-dtype torch reference, plus a tiny floor relative to the output's size.
"""

from __future__ import annotations

import pytest

pytest.importorskip("triton")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from adaptertx.kernels.adapter_fusion import FusionWeights, adapter_fusion_ref, pack_fusion  # noqa: E402
from adaptertx.kernels.add_layernorm import add_layernorm_ref  # noqa: E402
from adaptertx.kernels.bias_gelu import bias_gelu_ref  # noqa: E402
from adaptertx.kernels.bottleneck_adapter import ACTIVATIONS, bottleneck_adapter_ref  # noqa: E402
from adaptertx.kernels.cuda.adapter_fusion import adapter_fusion_triton, fusion_attention_triton  # noqa: E402
from adaptertx.kernels.cuda.add_layernorm import add_layernorm_triton  # noqa: E402
from adaptertx.kernels.cuda.bias_gelu import bias_gelu_triton  # noqa: E402
from adaptertx.kernels.cuda.bottleneck_adapter import bottleneck_adapter_triton  # noqa: E402
from adaptertx.kernels.cuda.dequantize_rows import dequantize_rows_triton  # noqa: E402
from adaptertx.kernels.cuda.dropout import dropout_triton  # noqa: E402
from adaptertx.kernels.cuda.int8_linear import int8_linear_triton  # noqa: E402
from adaptertx.kernels.cuda.segment_mean_pool_normalize import segment_mean_pool_normalize_triton  # noqa: E402
from adaptertx.kernels.dequantize_rows import dequantize_rows_ref  # noqa: E402
from adaptertx.kernels.dropout import dropout_ref, keep_mask_ref  # noqa: E402
from adaptertx.kernels.segment_mean_pool_normalize import NORM_EPS, segment_mean_pool_normalize_ref  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = (torch.float32, torch.bfloat16)
FLOOR = 1e-6
#: (tokens, dim): one token, odd sizes, the largest the interpreter runs quickly, empty.
SHAPES = [(1, 7), (5, 33), (64, 100), (0, 16)]


def rand(*shape, dtype=torch.float32, seed=0, scale=1.0, transpose=False):
    """Random values on DEVICE; ``transpose`` gives a non-contiguous tensor of the same shape."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(*(shape[::-1] if transpose else shape), generator=g) * scale
    return (t.t() if transpose else t).to(device=DEVICE, dtype=dtype)


def wide(t):
    """A float tensor upcast for the reference (bf16 -> fp32, fp32 -> fp64); others unchanged."""
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        return t
    return t.double() if t.dtype == torch.float32 else t.float()


def max_err(a, b) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def check(out, same, ref, ulps=0):
    """The error rule: ``out`` (kernel) and ``same`` (torch, same dtype) against ``ref`` (wide); the
    floor is FLOOR, or ``ulps`` units in the last place of ``out``'s dtype, relative to the output."""
    assert out.shape == ref.shape and out.dtype == same.dtype and out.device == same.device
    assert torch.isfinite(out.float()).all()
    size = max(1.0, ref.abs().max().item() if ref.numel() else 0.0)
    floor = max(FLOOR, ulps * torch.finfo(out.dtype).eps) * size
    err_k, err_t = max_err(out, ref), max_err(same, ref)
    assert err_k <= 2 * err_t + floor, f"kernel error {err_k:.3g} > 2 x torch {same.dtype} error {err_t:.3g}"


def check_op(kernel, ref, *args):
    out = kernel(*args)
    check(out, ref(*args), ref(*map(wide, args)))
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_bias_gelu(shape, dtype):
    x, b = rand(*shape, dtype=dtype, scale=2.0, transpose=shape[0] == 5), rand(shape[1], dtype=dtype, seed=1)
    check_op(bias_gelu_triton, bias_gelu_ref, x, b)


def test_bias_gelu_float32_bias_on_bfloat16():
    x, b = rand(5, 33, dtype=torch.bfloat16), rand(33, seed=1)
    out = bias_gelu_triton(x, b)
    check(out, bias_gelu_ref(x, b), bias_gelu_ref(x.float(), b))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES + [(3, 1)])
@pytest.mark.parametrize("affine", ["both", "weight", "none"])
def test_add_layernorm(shape, dtype, affine):
    x = rand(*shape, dtype=dtype, scale=3.0, transpose=shape[0] == 5)
    res = rand(*shape, dtype=dtype, seed=1) + 0.5
    w = rand(shape[1], dtype=dtype, seed=2) if affine != "none" else None
    b = rand(shape[1], dtype=dtype, seed=3) if affine == "both" else None
    for eps in (1e-5, 1e-12):
        check_op(add_layernorm_triton, add_layernorm_ref, x, res, w, b, eps)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("r", [5, 16, 40, 256])
def test_bottleneck_adapter(shape, dtype, r):
    tokens, dim = shape
    h = rand(tokens, dim, dtype=dtype, transpose=tokens == 5)
    res = rand(tokens, dim, dtype=dtype, seed=1)
    down_w, up_w = rand(r, dim, dtype=dtype, seed=2, scale=dim**-0.5), rand(dim, r, dtype=dtype, seed=3)
    down_b, up_b = rand(r, dtype=dtype, seed=4, scale=0.1), rand(dim, dtype=dtype, seed=5, scale=0.1)
    for activation in ACTIVATIONS:
        check_op(bottleneck_adapter_triton, bottleneck_adapter_ref, h, res, down_w, down_b, up_w, up_b,
                 activation, 0.5)
    check_op(bottleneck_adapter_triton, bottleneck_adapter_ref, h, res, down_w, None, up_w, None, "GELU", 2.0)


def _segment_pool_wide(hidden, cu):
    """The fp64 reference: mean of each segment, then mean / max(||mean||, eps)."""
    bounds = cu.tolist()
    rows = [hidden[a:b].double().sum(0) / max(b - a, 1) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    means = torch.stack(rows) if rows else hidden.new_zeros(0, hidden.shape[1], dtype=torch.float64)
    return means / means.norm(dim=1, keepdim=True).clamp(min=NORM_EPS)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("lengths,dim", [([1], 7), ([3, 0, 20, 1, 40], 33), ([0, 64], 100), ([], 16), ([0, 0], 5)])
def test_segment_mean_pool_normalize(lengths, dim, dtype, index_dtype):
    cu = torch.tensor([0] + lengths, dtype=torch.int64).cumsum(0).to(device=DEVICE, dtype=index_dtype)
    hidden = rand(sum(lengths), dim, dtype=dtype, scale=2.0) + 0.3
    ref = _segment_pool_wide(hidden, cu)
    for out_dtype in (None, torch.float32):
        out = segment_mean_pool_normalize_triton(hidden, cu, out_dtype)
        check(out, segment_mean_pool_normalize_ref(hidden, cu, out_dtype), ref)
    for i, n in enumerate(lengths):
        if n == 0:
            assert not out[i].any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 7), (17, 33), (48, 100), (0, 16), (5, 0)])
def test_dequantize_rows_is_bit_identical(shape, dtype):
    g = torch.Generator().manual_seed(0)
    q = torch.randint(-128, 128, shape, generator=g, dtype=torch.int8).to(DEVICE)
    scale = (torch.rand(shape[0], generator=g) * 0.02 + 1e-3).to(DEVICE)
    out = dequantize_rows_triton(q, scale, dtype)
    assert out.dtype == dtype and torch.equal(out, dequantize_rows_ref(q, scale, dtype))
    if shape[0]:
        assert torch.equal(dequantize_rows_triton(q.t().contiguous().t(), scale, dtype), out)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens,k,n", [(1, 7, 5), (33, 100, 17), (64, 128, 48), (0, 16, 8), (3, 16, 130)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_int8_linear(tokens, k, n, dtype, with_bias):
    g = torch.Generator().manual_seed(0)
    q = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8).to(DEVICE)
    scale = (torch.rand(n, generator=g) * 0.02 + 1e-3).to(DEVICE)
    x = rand(tokens, k, dtype=dtype, seed=1, transpose=tokens == 33)
    bias = rand(n, dtype=dtype, seed=2, scale=0.1) if with_bias else None
    out = int8_linear_triton(x, q, scale, bias)
    same = F.linear(x, dequantize_rows_ref(q, scale, dtype), bias)
    ref = F.linear(wide(x), dequantize_rows_ref(q, scale, wide(x).dtype), wide(bias))
    check(out, same, ref)


def test_int8_linear_keeps_leading_dims():
    g = torch.Generator().manual_seed(0)
    q = torch.randint(-127, 128, (9, 20), generator=g, dtype=torch.int8).to(DEVICE)
    scale = (torch.rand(9, generator=g) * 0.02).to(DEVICE)
    x = rand(2, 3, 20)
    out = int8_linear_triton(x, q, scale, None)
    assert out.shape == (2, 3, 9)
    torch.testing.assert_close(out, F.linear(x, dequantize_rows_ref(q, scale, x.dtype)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (1000,), (1024,), (1025,), (3, 7, 11), (2, 1500), (0, 4)])
@pytest.mark.parametrize("seed", [0, 12345, 2**32 + 7, 2**62 + 123])
def test_dropout_mask_is_bit_identical(shape, dtype, seed):
    numel = torch.Size(shape).numel()
    for p in (0.1, 0.5, 0.9):
        out = dropout_triton(torch.ones(shape, dtype=dtype, device=DEVICE), p, seed)
        assert torch.equal((out != 0).reshape(-1), keep_mask_ref(numel, p, seed, DEVICE))
        x = rand(*shape, dtype=dtype, seed=seed % 1000, transpose=len(shape) == 2)
        assert torch.equal(dropout_triton(x, p, seed), dropout_ref(x, p, seed))


def test_dropout_edges():
    x = rand(40, 33)
    assert torch.equal(dropout_triton(x, 0.0, 3), x)
    keep = keep_mask_ref(x.numel(), 0.5, 3, DEVICE)
    dropped, kept = int((~keep).nonzero()[0]), int(keep.nonzero()[0])
    x.view(-1)[[dropped, kept]] = float("nan")
    out = dropout_triton(x, 0.5, 3)
    assert out.view(-1)[dropped] == 0 and out.view(-1)[kept].isnan()  # a dropped NaN becomes 0
    torch.testing.assert_close(out, dropout_ref(x, 0.5, 3), rtol=0, atol=0, equal_nan=True)
    x64 = rand(100, dtype=torch.float64)
    assert torch.equal(dropout_triton(x64, 0.3, 5), dropout_ref(x64, 0.3, 5))


def fusion_weights(d, ranks, activation=F.relu, residual_before=False, value=True):
    g = torch.Generator().manual_seed(0)
    rnd = lambda *s: torch.randn(*s, generator=g) / s[-1] ** 0.5  # noqa: E731
    return FusionWeights(
        down_w=[rnd(r, d) for r in ranks], down_b=[0.1 * rnd(r) for r in ranks],
        up_w=[rnd(d, r) for r in ranks], up_b=[0.1 * rnd(d) for _ in ranks],
        scaling=[1.0] * len(ranks), activation=activation, query_w=rnd(d, d), query_b=0.1 * rnd(d),
        key_w=rnd(d, d), key_b=0.1 * rnd(d), value_w=torch.eye(d) + 0.3 * rnd(d, d) if value else None,
        residual_before=residual_before)


def _fusion_step(h, keys, bias_scores, activation, temperature):
    """The attention step as ``adapter_fusion_ref`` computes it, in h's dtype (probs in fp32 or wider)."""
    n = bias_scores.shape[1]
    a = activation(h).unflatten(-1, (n, -1))
    wide_scores = torch.promote_types(h.dtype, torch.float32)
    scores = (keys.unflatten(-1, (n, -1)).to(wide_scores) * a.to(wide_scores)).sum(-1) + bias_scores.to(wide_scores)
    probs = torch.softmax(scores / temperature, dim=-1)
    p = probs.to(h.dtype)
    return torch.cat([(a * p[..., None]).flatten(1), p], dim=1), probs


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens", [1, 7, 50, 0])
@pytest.mark.parametrize("n,r,activation", [(3, 4, F.relu), (3, 5, F.gelu), (1, 4, torch.nn.SiLU()), (2, 8, F.silu),
                                            (5, 3, torch.tanh)])  # tanh is not a kernel activation
def test_fusion_attention_step(tokens, n, r, activation, dtype):
    """The kernel's step on (views of) one GEMM output, against the step upcast."""
    y = rand(tokens, 2 * n * r + n, dtype=dtype, seed=n + r)
    args = (y[:, :n * r], y[:, n * r:2 * n * r], y[:, 2 * n * r:])
    z, probs = fusion_attention_triton(*args, activation, 0.7)
    same_z, same_probs = _fusion_step(*args, activation, 0.7)
    ref_z, ref_probs = _fusion_step(*map(wide, args), activation, 0.7)
    check(z, same_z, ref_z)
    assert probs.dtype == torch.float32 and probs.shape == (tokens, n)
    assert max_err(probs, ref_probs) <= 2 * max_err(same_probs, ref_probs) + FLOOR


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lead", [(1,), (7,), (2, 5), (0,)])
@pytest.mark.parametrize("kw", [
    dict(d=16, ranks=(4, 4, 4)),
    dict(d=33, ranks=(2, 5, 3), activation=F.gelu),
    dict(d=16, ranks=(4,), residual_before=True),
    dict(d=24, ranks=(8, 8), activation=torch.nn.SiLU(), residual_before=True, value=False),
    dict(d=16, ranks=(3, 6), activation=torch.tanh),
])
def test_adapter_fusion(kw, lead, dtype):
    """End to end. Both paths share the first GEMM and the last two roundings (second GEMM,
    residual add), which on a few outputs can differ by up to an ulp by luck: the floor is one ulp."""
    packed = pack_fusion(fusion_weights(**kw)).to(dtype=dtype, device=DEVICE)
    ref_packed = packed.to(dtype=torch.float64 if dtype == torch.float32 else torch.float32)
    x, q, res = (rand(*lead, kw["d"], dtype=dtype, seed=s) for s in (1, 2, 3))
    xw = wide(x)
    for query in (x, q):
        out, probs = adapter_fusion_triton(x, query, res, packed, 0.7, return_probs=True)
        same, same_probs = adapter_fusion_ref(x, query, res, packed, 0.7, return_probs=True)
        ref = adapter_fusion_ref(xw, xw if query is x else wide(q), wide(res), ref_packed, 0.7)
        check(out, same, ref, ulps=1)
        assert probs.dtype == torch.float32 and probs.shape == same_probs.shape
        torch.testing.assert_close(probs, same_probs, rtol=0, atol=2e-2 if dtype == torch.bfloat16 else 1e-5)
        assert torch.equal(adapter_fusion_triton(x, query, res, packed, 0.7), out)
