"""``topk_merge``: fold a tile of similarity scores into each row's running top-k, in place.

The blocked nearest-neighbour search (:func:`adaptertx.retrieval.mine.knn`) computes one
(queries, database) similarity tile at a time. ``tile.topk`` followed by a concatenate and
a second ``topk`` sorts every tile row; the native kernel keeps each row's k-th best score as
a threshold and inserts only the values above it, so almost every score costs one vector
compare and the tile is read once.
"""

from __future__ import annotations

import torch

from adaptertx.kernels._common import KernelInputError, check_float
from adaptertx.kernels._library import define, op, use_kernel

OP = "topk_merge"


def _check(scores, offset, best_s, best_i) -> None:
    check_float(OP, "scores", scores, 2)
    check_float(OP, "best_s", best_s, 2)
    if best_s.dtype != torch.float32 or not best_s.is_contiguous():
        raise KernelInputError(f"{OP}: best_s must be a contiguous float32 (rows, k) tensor, got {best_s.dtype}")
    if (not isinstance(best_i, torch.Tensor) or best_i.dtype != torch.int64 or best_i.shape != best_s.shape
            or not best_i.is_contiguous()):
        raise KernelInputError(f"{OP}: best_i must be a contiguous int64 tensor shaped like best_s "
                               f"{tuple(best_s.shape)}")
    if best_s.shape[0] != scores.shape[0]:
        raise KernelInputError(f"{OP}: scores have {scores.shape[0]} rows but best_s has {best_s.shape[0]}")
    if best_s.device != scores.device or best_i.device != scores.device:
        raise KernelInputError(f"{OP}: scores, best_s and best_i must be on one device")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise KernelInputError(f"{OP}: offset must be a non-negative int, got {offset!r}")


def _ref(scores, offset, best_s, best_i) -> None:
    k = best_s.shape[1]
    if k == 0 or scores.shape[1] == 0:
        return
    cols = torch.arange(offset, offset + scores.shape[1], device=scores.device).expand(scores.shape[0], -1)
    s = torch.cat([best_s, scores.float()], dim=1)
    i = torch.cat([best_i, cols], dim=1)
    s_sorted, pick = s.sort(dim=1, descending=True, stable=True)
    best_s.copy_(s_sorted[:, :k])
    best_i.copy_(i.gather(1, pick[:, :k]))


define(OP, "(Tensor scores, int offset, Tensor(a!) best_s, Tensor(b!) best_i) -> ()",
       fake=lambda scores, offset, best_s, best_i: None, ref=_ref)


def topk_merge_ref(scores: torch.Tensor, offset: int, best_s: torch.Tensor, best_i: torch.Tensor) -> None:
    """Pure-torch reference of :func:`topk_merge` (same signature and checks)."""
    _check(scores, offset, best_s, best_i)
    _ref(scores, offset, best_s, best_i)


def topk_merge(scores: torch.Tensor, offset: int, best_s: torch.Tensor, best_i: torch.Tensor) -> None:
    """Merge a score tile into running top-k lists, in place.

    scores: (rows, cols) float32/bfloat16, finite; column j is database row ``offset + j``.
    best_s: (rows, k) float32, falling along each row (start from ``-inf``); best_i: (rows, k)
    int64 (start from -1). Afterwards ``best_s[r]`` holds the k largest of the old
    ``best_s[r]`` and ``scores[r]``, falling; ties keep their order (the old entries, then the
    tile's columns left to right), as a stable descending sort does, so merging tiles in
    database order keeps the lowest index among equal scores. Native for CPU tensors outside
    autograd; bit-identical to :func:`topk_merge_ref`.
    """
    _check(scores, offset, best_s, best_i)
    if scores.stride(1) == 1 and use_kernel(OP, scores):
        op(OP)(scores, offset, best_s, best_i)
        return
    _ref(scores, offset, best_s, best_i)
