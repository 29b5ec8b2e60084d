import pytest
import torch

from adaptertx.kernels import KernelInputError, topk_merge, topk_merge_ref


def _fresh(rows, k):
    return torch.full((rows, k), float("-inf")), torch.full((rows, k), -1, dtype=torch.int64)


def _merge_all(fn, tiles, k):
    best_s, best_i = _fresh(tiles[0].shape[0], k)
    offset = 0
    for t in tiles:
        fn(t, offset, best_s, best_i)
        offset += t.shape[1]
    return best_s, best_i


@pytest.mark.parametrize("rows, widths, k", [(1, [1], 1), (5, [37, 3], 4), (3, [2], 4), (64, [1000, 17, 300], 32),
                                             (17, [16, 16, 15], 5), (2, [0, 9], 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_reference_and_full_sort(backend, rows, widths, k, dtype):
    backend("topk_merge")
    g = torch.Generator().manual_seed(0)
    # rounded scores: many exact ties, which must keep the lowest column
    tiles = [torch.randn(rows, w, generator=g).round(decimals=1).to(dtype) for w in widths]
    got = _merge_all(topk_merge, tiles, k)
    ref = _merge_all(topk_merge_ref, tiles, k)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    full = torch.cat([t.float() for t in tiles], dim=1)
    kk = min(k, full.shape[1])
    s, i = full.sort(dim=1, descending=True, stable=True)
    assert torch.equal(got[0][:, :kk], s[:, :kk]) and torch.equal(got[1][:, :kk], i[:, :kk])
    assert (got[1][:, kk:] == -1).all()


def test_non_contiguous_rows(backend):
    backend("topk_merge")
    tile = torch.randn(8, 40)[:, 5:30]  # row stride 40
    got, ref = _fresh(8, 3), _fresh(8, 3)
    topk_merge(tile, 7, *got)
    topk_merge_ref(tile, 7, *ref)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])


def test_bad_inputs():
    s, i = _fresh(4, 2)
    with pytest.raises(KernelInputError):
        topk_merge(torch.randn(3, 5), 0, s, i)
    with pytest.raises(KernelInputError):
        topk_merge(torch.randn(4, 5), -1, s, i)
    with pytest.raises(KernelInputError):
        topk_merge(torch.randn(4, 5), 0, s.double(), i)
    with pytest.raises(KernelInputError):
        topk_merge(torch.randn(4, 5), 0, s, i.int())
