import pytest
import torch
import torch.nn.functional as F

from adaptertx.kernels import KernelInputError, segment_mean_pool_normalize, segment_mean_pool_normalize_ref


def _loop_ref(hidden, lengths):
    rows, start = [], 0
    for n in lengths:
        seg = hidden[start : start + n].double()
        mean = seg.mean(0) if n else torch.zeros(hidden.shape[1], dtype=torch.float64)
        rows.append(F.normalize(mean, dim=0, eps=1e-12))
        start += n
    return torch.stack(rows).float() if rows else torch.zeros(0, hidden.shape[1])


def _bf16_torch(hidden, lengths):
    """The same pooling done naively in bfloat16 (padding + masked mean)."""
    out, start = [], 0
    for n in lengths:
        seg = hidden[start : start + n]
        out.append(F.normalize(seg.sum(0) / max(n, 1), dim=0))
        start += n
    return torch.stack(out)


@pytest.mark.parametrize(
    "lengths, dim",
    [([5], 768), ([1], 383), ([3, 1, 7, 2], 1), ([13, 0, 4], 384), ([1] * 17, 64), (list(range(1, 40)), 100)],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cu_dtype", [torch.int32, torch.int64])
def test_matches_reference(backend, lengths, dim, dtype, cu_dtype, rule):
    backend("segment_mean_pool_normalize")
    g = torch.Generator().manual_seed(0)
    hidden = (torch.randn(sum(lengths), dim, generator=g) + 0.3).to(dtype)
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=cu_dtype)
    out = segment_mean_pool_normalize(hidden, cu)
    assert out.dtype == dtype and out.shape == (len(lengths), dim)
    ref32 = _loop_ref(hidden.float(), lengths)
    rule(out, ref32, _bf16_torch(hidden, lengths) if dtype == torch.bfloat16 else ref32)
    out32 = segment_mean_pool_normalize(hidden, cu, out_dtype=torch.float32)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32, _loop_ref(hidden, lengths), rtol=1e-5, atol=1e-6)


def test_empty_segment_is_zero_and_no_segments(backend):
    backend("segment_mean_pool_normalize")
    hidden = torch.randn(3, 8)
    out = segment_mean_pool_normalize(hidden, torch.tensor([0, 0, 3]))
    assert torch.equal(out[0], torch.zeros(8))
    empty = segment_mean_pool_normalize(torch.zeros(0, 8), torch.tensor([0]))
    assert empty.shape == (0, 8)


def test_non_contiguous(backend):
    backend("segment_mean_pool_normalize")
    hidden = torch.randn(32, 10).t()  # (10, 32)
    cu = torch.tensor([0, 4, 10])
    torch.testing.assert_close(segment_mean_pool_normalize(hidden, cu), _loop_ref(hidden, [4, 6]))


@pytest.mark.parametrize(
    "cu",
    [
        torch.tensor([1, 5]),
        torch.tensor([0, 4]),
        torch.tensor([0, 4, 2, 5]),
        torch.tensor([0.0, 5.0]),
        torch.tensor([], dtype=torch.int64),
        torch.tensor([[0, 5]]),
    ],
)
def test_bad_offsets_raise(backend, cu):
    backend("segment_mean_pool_normalize")
    hidden = torch.randn(5, 4)
    with pytest.raises(KernelInputError):
        segment_mean_pool_normalize(hidden, cu)
    with pytest.raises(KernelInputError):
        segment_mean_pool_normalize_ref(hidden, cu)
