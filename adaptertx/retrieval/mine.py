"""Blocked k-nearest-neighbour search and BUCC-style bitext mining (ratio margin).

:func:`knn` finds the k most similar database rows of every query row by inner product
(cosine for unit-norm rows) in blocks of ``block`` queries × ``block`` database rows: one
(block, block) float32 similarity tile is alive at a time, so the memory beyond the inputs
and the (n, k) results is bounded by the block size, never by n × m.

:func:`mine` follows XTREME's ``third_party/utils_retrieve.py`` (``mine_bitext`` with
``retrieval="max"``, ``margin="ratio"``; Artetxe & Schwenk 2019): k nearest neighbours in
both directions, each candidate scored ``cos(x, y) / ((mean_k(x) + mean_k(y)) / 2)``, the best
candidate of every source and of every target, then all of them in falling score order with
each source and target used at most once. :func:`optimize_threshold` picks the score
threshold that maximises F1 against gold pairs (XTREME's ``bucc_optimize``, which fails when
the best F1 falls at the last candidate; here that case keeps every candidate).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adaptertx.environment import default_dtype
from adaptertx.errors import AdaptertxError
from adaptertx.kernels import topk_merge
from adaptertx.kernels._build import use_native

DEFAULT_BLOCK = 4096


def _check_matrix(name: str, t) -> None:
    if not isinstance(t, torch.Tensor) or t.dim() != 2 or not t.is_floating_point():
        raise AdaptertxError(f"{name} must be a 2-D floating-point tensor (rows, dim), got "
                             f"{getattr(t, 'shape', type(t).__name__)}")


def _knn_fp32(q_all: torch.Tensor, d_all: torch.Tensor, k: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact blocked top-k in the inputs' dtype: (block, block) tiles and a running top-k.

    With the native :func:`~adaptertx.kernels.topk_merge` each tile is folded into the running
    lists in one pass (ties keep the lowest database row); otherwise each tile's ``topk`` is
    merged with the running one by a second ``topk``.
    """
    n, m = q_all.shape[0], d_all.shape[0]
    sims = torch.empty(n, k, dtype=torch.float32, device=q_all.device)
    index = torch.empty(n, k, dtype=torch.int64, device=q_all.device)
    tile = torch.empty(min(block, n), min(block, m), dtype=q_all.dtype, device=q_all.device)
    fused = q_all.device.type == "cpu" and use_native("topk_merge")
    for q0 in range(0, n, block):
        q = q_all[q0 : q0 + block]
        if fused:
            best_s = sims[q0 : q0 + q.shape[0]].fill_(float("-inf"))
            best_i = index[q0 : q0 + q.shape[0]].fill_(-1)
            for d0 in range(0, m, block):
                d = d_all[d0 : d0 + block]
                t = tile[: q.shape[0], : d.shape[0]]
                torch.mm(q, d.T, out=t)
                topk_merge(t, d0, best_s, best_i)
            continue
        best_s = best_i = None
        for d0 in range(0, m, block):
            d = d_all[d0 : d0 + block]
            t = tile[: q.shape[0], : d.shape[0]]
            torch.mm(q, d.T, out=t)
            s, i = t.topk(min(k, d.shape[0]), dim=1)
            i += d0
            if best_s is None:
                best_s, best_i = s, i
            else:
                s = torch.cat([best_s, s], dim=1)
                i = torch.cat([best_i, i], dim=1)
                best_s, pick = s.topk(min(k, s.shape[1]), dim=1)
                best_i = i.gather(1, pick)
        sims[q0 : q0 + q.shape[0]] = best_s.float()
        index[q0 : q0 + q.shape[0]] = best_i
    return sims, index


# Error bound of a bf16 inner product against the exact one, relative to |x| |y|: both inputs
# rounded to bf16 (unit roundoff u = 2^-8: 2u + u^2), the fp32 accumulation (dim * 2^-24, taken
# for dim <= 4096) and the bf16 rounding of the result (2^-9), with some room.
_BF16_REL_ERR = 2 * 2**-8 + 2**-16 + 4096 * 2**-24 + 2**-9 * 1.01 + 1e-4


def _knn_bf16_certified(q_all, d_all, k: int, block: int, extra: int):
    """Exact top-k from a bf16 search: the top ``k + extra`` candidates by bf16 similarity,
    rescored in float32; a row whose k-th exact score does not beat the best score any
    non-candidate could have (the last candidate's bf16 score plus the bf16 error bound) is
    searched again exactly in float32."""
    n, m = q_all.shape[0], d_all.shape[0]
    c = min(k + extra, m)
    cand_s, cand_i = _knn_fp32(q_all.bfloat16(), d_all.bfloat16(), c, block)
    bound = _BF16_REL_ERR * q_all.norm(dim=1) * d_all.norm(dim=1).max()
    sims = torch.empty(n, k, dtype=torch.float32, device=q_all.device)
    index = torch.empty(n, k, dtype=torch.int64, device=q_all.device)
    for r0 in range(0, n, 1024):
        q = q_all[r0 : r0 + 1024]
        ci = cand_i[r0 : r0 + 1024]
        # (rows, c, dim); index_select copies rows about a third faster than d_all[ci]
        rows = d_all.index_select(0, ci.reshape(-1)).view(*ci.shape, -1)
        exact = torch.bmm(rows, q.unsqueeze(2)).squeeze(2)  # (rows, c) float32
        s, pick = exact.topk(k, dim=1)
        sims[r0 : r0 + 1024] = s
        index[r0 : r0 + 1024] = ci.gather(1, pick)
    if c < m:
        unsure = (sims[:, -1] <= cand_s[:, -1] + bound).nonzero().squeeze(1)
        if unsure.numel():
            s, i = _knn_fp32(q_all[unsure], d_all, k, block)
            sims[unsure], index[unsure] = s, i
    return sims, index


def knn(queries: torch.Tensor, database: torch.Tensor, k: int, *, block: int = DEFAULT_BLOCK,
        method: str = "auto", extra: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest inner products of every query row with the database rows, exactly.

    queries: (n, dim); database: (m, dim), same dim (scored in float32). block: rows of each
    side per similarity tile; the tile, (block, block), is the only large temporary.
    method: ``"fp32"`` searches in float32; ``"bf16"`` searches in bfloat16 (about 4x the
    GEMM rate on CPUs with AVX512-BF16 or AMX) for the top ``k + extra`` candidates, rescores
    them in float32 and re-searches in float32 any row the bf16 error bound cannot certify,
    so the result is the float32 one; ``"auto"`` takes bf16 where the CPU computes it natively.

    Returns:
        sims: (n, min(k, m)) float32, falling along each row.
        index: (n, min(k, m)) int64 database rows of those similarities.
    """
    _check_matrix("queries", queries)
    _check_matrix("database", database)
    if queries.shape[1] != database.shape[1]:
        raise AdaptertxError(f"queries have dim {queries.shape[1]} but the database has {database.shape[1]}")
    if k < 1:
        raise AdaptertxError(f"k must be at least 1, got {k}")
    if block < 1:
        raise AdaptertxError(f"block must be at least 1, got {block}")
    if method not in ("auto", "fp32", "bf16"):
        raise AdaptertxError(f"knn method must be auto, fp32 or bf16, got {method!r}")
    n, m = queries.shape[0], database.shape[0]
    k = min(k, m)
    if n == 0 or k == 0:
        return torch.empty(n, k), torch.empty(n, k, dtype=torch.int64)
    q_all, d_all = queries.float(), database.float()
    if method == "auto":
        method = "bf16" if default_dtype(queries.device) == torch.bfloat16 and queries.shape[1] <= 4096 else "fp32"
    if method == "bf16":
        return _knn_bf16_certified(q_all, d_all, k, block, extra)
    return _knn_fp32(q_all, d_all, k, block)


@dataclass(frozen=True)
class MineResult:
    """Mined candidate pairs, falling by score, each source and target row at most once.

    src, tgt: (c,) int64 row indices into the source and target embeddings; score: (c,)
    float32 ratio-margin scores.
    """

    src: torch.Tensor
    tgt: torch.Tensor
    score: torch.Tensor


def margin_candidates(src_emb: torch.Tensor, tgt_emb: torch.Tensor, k: int = 4, *, block: int = DEFAULT_BLOCK):
    """Ratio-margin scores of each row's k nearest neighbours, both directions.

    Returns ``(fwd_idx, fwd_score, bwd_idx, bwd_score)``: fwd_idx (n, k) target rows of each
    source row's neighbours and fwd_score (n, k) their scores; bwd_* the same from the
    targets' side, (m, k). score = cos / ((mean_k(src row) + mean_k(tgt row)) / 2).
    """
    fwd_sim, fwd_idx = knn(src_emb, tgt_emb, k, block=block)
    bwd_sim, bwd_idx = knn(tgt_emb, src_emb, k, block=block)
    fwd_mean, bwd_mean = fwd_sim.mean(1), bwd_sim.mean(1)
    fwd_score = fwd_sim / ((fwd_mean[:, None] + bwd_mean[fwd_idx]) / 2)
    bwd_score = bwd_sim / ((bwd_mean[:, None] + fwd_mean[bwd_idx]) / 2)
    return fwd_idx, fwd_score, bwd_idx, bwd_score


def mine(src_emb: torch.Tensor, tgt_emb: torch.Tensor, k: int = 4, *, block: int = DEFAULT_BLOCK) -> MineResult:
    """Candidate translation pairs by ratio margin (XTREME ``mine_bitext``, ``retrieval="max"``).

    src_emb: (n, dim) and tgt_emb: (m, dim) unit-norm sentence embeddings; k: neighbourhood
    size (XTREME uses 4); block: tile size of the similarity search (see :func:`knn`).
    """
    _check_matrix("src_emb", src_emb)
    _check_matrix("tgt_emb", tgt_emb)
    if src_emb.shape[0] == 0 or tgt_emb.shape[0] == 0:
        raise AdaptertxError(f"mining needs sentences on both sides, got {src_emb.shape[0]} source and "
                             f"{tgt_emb.shape[0]} target sentences")
    fwd_idx, fwd_score, bwd_idx, bwd_score = margin_candidates(src_emb, tgt_emb, k, block=block)
    f_best, f_pick = fwd_score.max(1)
    b_best, b_pick = bwd_score.max(1)
    n, m = src_emb.shape[0], tgt_emb.shape[0]
    src = torch.cat([torch.arange(n), bwd_idx.gather(1, b_pick[:, None])[:, 0].cpu()])
    tgt = torch.cat([fwd_idx.gather(1, f_pick[:, None])[:, 0].cpu(), torch.arange(m)])
    score = torch.cat([f_best, b_best]).cpu()
    order = torch.sort(score, descending=True, stable=True).indices
    seen_s, seen_t, keep = set(), set(), []
    for i, s, t in zip(order.tolist(), src[order].tolist(), tgt[order].tolist(), strict=True):
        if s not in seen_s and t not in seen_t:
            seen_s.add(s)
            seen_t.add(t)
            keep.append(i)
    keep_t = torch.tensor(keep, dtype=torch.int64)
    return MineResult(src[keep_t], tgt[keep_t], score[keep_t])


@dataclass(frozen=True)
class ThresholdResult:
    """The F1-optimal threshold: pairs scoring ``>= threshold`` are extracted."""

    threshold: float
    extracted: int
    correct: int
    precision: float
    recall: float
    f1: float


def optimize_threshold(scores: torch.Tensor | list[float], correct: torch.Tensor | list[bool], n_gold: int
                       ) -> ThresholdResult:
    """The score threshold maximising F1 of the extracted candidates against ``n_gold`` gold pairs.

    scores: (c,) candidate scores; correct: (c,) whether each candidate is a gold pair. The
    threshold lies midway between the last kept and the first dropped score (candidates with
    equal scores are kept or dropped together); when the best F1 keeps every candidate, it is
    the lowest score. Precision, recall and F1 are fractions in [0, 1].
    """
    scores = torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
    correct = torch.as_tensor(correct, dtype=torch.bool).reshape(-1)
    if scores.shape != correct.shape:
        raise AdaptertxError(f"{scores.numel()} scores but {correct.numel()} correctness flags")
    if n_gold < 1:
        raise AdaptertxError("threshold search needs at least one gold pair")
    if int(correct.sum()) > n_gold:
        raise AdaptertxError(f"{int(correct.sum())} candidates are marked correct "
                             f"but there are only {n_gold} gold pairs")
    if scores.numel() == 0:
        return ThresholdResult(float("inf"), 0, 0, 0.0, 0.0, 0.0)
    order = torch.sort(scores, descending=True, stable=True).indices
    s = scores[order]
    hits = correct[order].to(torch.float64).cumsum(0)
    extracted = torch.arange(1, s.numel() + 1, dtype=torch.float64)
    # Only cut where the score changes (or after the last candidate).
    cut = torch.ones_like(s, dtype=torch.bool)
    cut[:-1] = s[1:] < s[:-1]
    f1 = torch.where(hits > 0, 2 * hits / (extracted + n_gold), torch.zeros_like(hits))
    f1 = torch.where(cut, f1, torch.full_like(f1, -1.0))
    best = int(torch.argmax(f1))  # the first (highest-threshold) of equal maxima
    if f1[best] <= 0:
        return ThresholdResult(float(s[0]) + 1.0, 0, 0, 0.0, 0.0, 0.0)
    threshold = float(s[best]) if best == s.numel() - 1 else float((s[best] + s[best + 1]) / 2)
    n_ext, n_cor = best + 1, int(hits[best])
    p, r = n_cor / n_ext, n_cor / n_gold
    return ThresholdResult(threshold, n_ext, n_cor, p, r, 2 * p * r / (p + r))
