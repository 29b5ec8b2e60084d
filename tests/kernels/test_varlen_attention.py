import math

import pytest
import torch

from adaptertx.kernels import KernelInputError, varlen_attention, varlen_attention_ref


def _loop_ref(qkv, lengths, heads, scale=None, dtype=torch.float64):
    """Per sequence, per head, in float64 (or, naively, in ``dtype``)."""
    dim = qkv.shape[1] // 3
    hd = dim // heads
    scale = 1 / math.sqrt(hd) if scale is None else scale
    out, start = torch.zeros(qkv.shape[0], dim, dtype=dtype), 0
    x = qkv.to(dtype)
    for n in lengths:
        for h in range(heads):
            q = x[start : start + n, h * hd : (h + 1) * hd]
            k = x[start : start + n, dim + h * hd : dim + (h + 1) * hd]
            v = x[start : start + n, 2 * dim + h * hd : 2 * dim + (h + 1) * hd]
            out[start : start + n, h * hd : (h + 1) * hd] = torch.softmax(q @ k.T * scale, -1) @ v
        start += n
    return out.float() if dtype == torch.float64 else out


def _cu(lengths, dtype=torch.int64):
    return torch.tensor([0] + torch.tensor(lengths, dtype=torch.int64).cumsum(0).tolist(), dtype=dtype)


@pytest.mark.parametrize(
    "lengths, heads, hd",
    [([1], 1, 1), ([5], 12, 32), ([17, 3, 1, 40], 4, 64), ([2, 0, 9], 2, 24), ([1] * 9, 3, 16),
     (list(range(1, 30)), 6, 20), ([130], 2, 8)],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_reference(backend, lengths, heads, hd, dtype, rule):
    backend("varlen_attention")
    g = torch.Generator().manual_seed(0)
    qkv32 = torch.randn(sum(lengths), 3 * heads * hd, generator=g) * 2
    qkv = qkv32.to(dtype)
    cu = _cu(lengths, torch.int32 if len(lengths) % 2 else torch.int64)
    out = varlen_attention(qkv, cu, heads)
    assert out.dtype == dtype and out.shape == (sum(lengths), heads * hd)
    ref32 = _loop_ref(qkv, lengths, heads)
    # The torch computation in the same dtype is the loop itself in bf16 (not
    # varlen_attention_ref, which is what the ref backend runs).
    rule(out, ref32, _loop_ref(qkv, lengths, heads, dtype=dtype) if dtype == torch.bfloat16 else ref32)


def test_scale_and_non_contiguous(backend):
    backend("varlen_attention")
    qkv = torch.randn(3 * 16, 11).t()  # (11, 48), non-contiguous
    cu = _cu([4, 7])
    torch.testing.assert_close(varlen_attention(qkv, cu, 2, scale=0.3), _loop_ref(qkv, [4, 7], 2, 0.3),
                               rtol=1e-5, atol=1e-5)


def test_empty_input(backend):
    backend("varlen_attention")
    assert varlen_attention(torch.zeros(0, 12), torch.tensor([0]), 2).shape == (0, 4)


@pytest.mark.parametrize(
    "qkv, cu, heads",
    [(torch.randn(5, 10), _cu([5]), 1), (torch.randn(5, 12), _cu([5]), 3), (torch.randn(5, 12), _cu([4]), 2),
     (torch.randn(5, 12), torch.tensor([0.0, 5.0]), 2), (torch.randn(5, 12), torch.tensor([0, 4, 2, 5]), 2),
     (torch.randn(5, 12), _cu([5]), 0), (torch.randint(0, 3, (5, 12)), _cu([5]), 2)],
)
def test_bad_inputs_raise(backend, qkv, cu, heads):
    backend("varlen_attention")
    with pytest.raises(KernelInputError):
        varlen_attention(qkv, cu, heads)
    with pytest.raises(KernelInputError):
        varlen_attention_ref(qkv, cu, heads)
