import pytest
import torch
import torch.nn.functional as F

from adaptertx.errors import AdaptertxError
from adaptertx.retrieval.mine import knn, margin_candidates, mine, optimize_threshold


def _assert_same_topk(idx, full, ref_i):
    """Indices equal to the reference's except at exact fp32 ties (where knn keeps the lowest row)."""
    differ = idx != ref_i
    assert torch.equal(full.gather(1, idx)[differ], full.gather(1, ref_i)[differ])


def _emb(n, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, dim, generator=g), dim=1)


@pytest.mark.parametrize("method", ["fp32", "bf16", "auto"])
@pytest.mark.parametrize("n, m, k, block", [(37, 53, 4, 8), (5, 3, 4, 2), (64, 64, 1, 64), (10, 100, 7, 7)])
def test_knn_equals_full_sort(n, m, k, block, method):
    x, y = _emb(n), _emb(m, seed=1)
    sims, idx = knn(x, y, k, block=block, method=method, extra=3)
    full = x @ y.T
    ref_s, ref_i = full.topk(min(k, m), dim=1)
    torch.testing.assert_close(sims, ref_s)
    assert torch.equal(idx, ref_i)


def test_knn_bf16_falls_back_to_fp32_on_near_ties():
    """Database rows closer than the bf16 error: the certified search still returns the fp32 top-k."""
    g = torch.Generator().manual_seed(5)
    base = _emb(1, dim=64)
    y = F.normalize(base + 1e-3 * torch.randn(300, 64, generator=g), dim=1)
    y = torch.cat([y, _emb(200, dim=64, seed=2)])
    x = F.normalize(base + 1e-3 * torch.randn(20, 64, generator=g), dim=1)
    sims, idx = knn(x, y, 4, block=64, method="bf16", extra=4)
    full = x @ y.T
    ref_s, ref_i = full.topk(4, dim=1)
    torch.testing.assert_close(sims, ref_s)
    _assert_same_topk(idx, full, ref_i)


def test_margin_scores_equal_brute_force():
    x, y, k = _emb(23), _emb(31, seed=1), 4
    fwd_idx, fwd_score, bwd_idx, bwd_score = margin_candidates(x, y, k, block=5)
    sim = (x.double() @ y.double().T)
    fwd_mean = sim.sort(1, descending=True).values[:, :k].mean(1)
    bwd_mean = sim.T.sort(1, descending=True).values[:, :k].mean(1)
    margin = sim / ((fwd_mean[:, None] + bwd_mean[None, :]) / 2)  # every pair, brute force
    torch.testing.assert_close(fwd_score.double(), margin.gather(1, fwd_idx), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bwd_score.double(), margin.T.gather(1, bwd_idx), rtol=1e-5, atol=1e-6)
    # mining: every candidate is the best-margin partner of its source or of its target (among the
    # k nearest), each row used at most once, scores falling
    found = mine(x, y, k, block=5)
    assert len(set(found.src.tolist())) == len(found.src) and len(set(found.tgt.tolist())) == len(found.tgt)
    assert torch.all(found.score[:-1] >= found.score[1:])
    for s, t, sc in zip(found.src.tolist(), found.tgt.tolist(), found.score.tolist(), strict=True):
        assert sc == pytest.approx(float(margin[s, t]), rel=1e-5)
        best_f = margin[s, fwd_idx[s]].max()
        best_b = margin[bwd_idx[t], t].max()
        assert sc == pytest.approx(float(best_f), rel=1e-5) or sc == pytest.approx(float(best_b), rel=1e-5)


def test_mine_recovers_planted_pairs():
    x = _emb(200, dim=32)
    g = torch.Generator().manual_seed(3)
    perm = torch.randperm(200, generator=g)
    y = F.normalize(x[perm] + 0.05 * torch.randn(200, 32, generator=g), dim=1)
    found = mine(x, y, 4, block=64)
    pairs = set(zip(found.src.tolist(), found.tgt.tolist(), strict=True))
    truth = {(int(perm[j]), j) for j in range(200)}
    assert len(pairs & truth) == 200


def test_threshold_best_at_last_candidate():
    # all candidates correct: the best F1 keeps every one, the threshold is the lowest score
    r = optimize_threshold([0.9, 0.8, 0.7], [True, True, True], n_gold=5)
    assert r.extracted == 3 and r.threshold == pytest.approx(0.7)
    assert r.precision == 1.0 and r.recall == pytest.approx(0.6)
    r = optimize_threshold([3.0, 2.0, 1.0, 0.5], [True, False, True, True], n_gold=3)
    assert r.extracted == 4 and r.threshold == 0.5 and r.f1 == pytest.approx(2 * 0.75 * 1.0 / 1.75)


def test_threshold_brute_force_and_ties():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 12, (60,), generator=g).double() / 4  # many ties
    correct = torch.rand(60, generator=g) < 0.4
    n_gold = int(correct.sum()) + 3
    r = optimize_threshold(scores, correct, n_gold)
    best = 0.0
    for th in sorted(set(scores.tolist())):
        kept = scores >= th
        c = int((correct & kept).sum())
        if c:
            p, rec = c / int(kept.sum()), c / n_gold
            best = max(best, 2 * p * rec / (p + rec))
    assert r.f1 == pytest.approx(best)
    kept = scores >= r.threshold
    assert int(kept.sum()) == r.extracted and int((kept & correct).sum()) == r.correct


def test_threshold_and_mine_bad_input():
    with pytest.raises(AdaptertxError, match="at least one gold pair"):
        optimize_threshold([1.0], [True], n_gold=0)
    with pytest.raises(AdaptertxError, match="2 scores but 1"):
        optimize_threshold([1.0, 2.0], [True], n_gold=1)
    assert optimize_threshold([1.0, 0.5], [False, False], n_gold=2).f1 == 0.0
    with pytest.raises(AdaptertxError, match="sentences on both sides"):
        mine(_emb(3), torch.zeros(0, 16))
    with pytest.raises(AdaptertxError, match="dim"):
        knn(_emb(3), _emb(3, dim=8), 2)
    with pytest.raises(AdaptertxError, match="k must be"):
        knn(_emb(3), _emb(3), 0)
    with pytest.raises(AdaptertxError, match="method"):
        knn(_emb(3), _emb(3), 1, method="int4")
