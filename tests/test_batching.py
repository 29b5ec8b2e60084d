"""Length-grouped batches: every row once per pass, deterministic for a seed, and less padding."""

import torch

from adaptertx.training.sampling import GROUP, epoch_plan, length_grouped


def _lengths(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(5, 257, (n,), generator=g)


def _padding_share(batches, lengths) -> float:
    real = sum(int(lengths[b].sum()) for b in batches)
    padded = sum(int(lengths[b].max()) * len(b) for b in batches)
    return 1 - real / padded


def test_every_row_once_and_the_same_batches_for_the_same_seed():
    lengths = _lengths(1000)
    order = torch.randperm(1000, generator=torch.Generator().manual_seed(3))
    a = length_grouped(order, lengths, 16, seed=5)
    assert sorted(torch.cat(a).tolist()) == list(range(1000))
    assert all(len(b) == 16 for b in a[:-1] if len(b) != 1000 % 16) and sum(map(len, a)) == 1000
    assert [b.tolist() for b in a] == [b.tolist() for b in length_grouped(order, lengths, 16, seed=5)]
    assert [b.tolist() for b in a] != [b.tolist() for b in length_grouped(order, lengths, 16, seed=6)]


def test_grouping_cuts_padding_and_keeps_batches_random():
    """Random batches of lengths 5..256 are about half padding; grouped ones a few percent. Each
    bucket still mixes rows from all over the shuffle, and the batch order is shuffled."""
    lengths = _lengths(4096)
    order = torch.randperm(4096, generator=torch.Generator().manual_seed(1))
    plain = length_grouped(order, None, 16, seed=0)
    grouped = length_grouped(order, lengths, 16, seed=0)
    assert _padding_share(plain, lengths) > 0.4
    assert _padding_share(grouped, lengths) < 0.1
    firsts = [int(lengths[b].max()) for b in grouped[:GROUP]]
    assert firsts != sorted(firsts)  # not one long run from short to long


def test_a_mixture_epoch_groups_each_tasks_batches():
    lengths = [_lengths(300, 1), _lengths(200, 2)]
    plan = epoch_plan([300, 200], 8, [0.5, 0.5], seed=4, epoch=0, lengths=lengths)
    again = epoch_plan([300, 200], 8, [0.5, 0.5], seed=4, epoch=0, lengths=lengths)
    assert [(t, i.tolist()) for t, i in plan] == [(t, i.tolist()) for t, i in again]
    plain = epoch_plan([300, 200], 8, [0.5, 0.5], seed=4, epoch=0)
    assert [t for t, _ in plan] == [t for t, _ in plain]  # the task schedule is unchanged
    share = _padding_share([i for t, i in plan if t == 0], lengths[0])
    assert share < _padding_share([i for t, i in plain if t == 0], lengths[0]) / 3
