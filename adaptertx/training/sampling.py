"""How a multi-task run draws its batches.

Batches are task-homogeneous. The task of each batch is drawn independently with probability
(:func:`sampling_probabilities`, ``n_i`` = the task's training examples)

- ``proportional``: ``p_i = n_i / sum_j n_j``;
- ``temperature``: ``p_i ∝ n_i^(1/T)`` (``T = 1`` is proportional, ``T → ∞`` uniform);
- ``uniform``: ``p_i = 1 / N``,

from a generator seeded by the run seed and the epoch (:func:`task_schedule`), so the schedule
is the same on every run, process and resume. An **epoch** is as many batches as the tasks'
training splits fill together (``sum_i ceil(n_i / batch_size)``); a task drawn more often than
it has batches cycles through fresh shuffles of its data, one drawn less often sees part of it
(:func:`epoch_plan`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from adaptertx.errors import AdaptertxError

SAMPLINGS = ("proportional", "temperature", "uniform")


def sampling_probabilities(sizes: Sequence[int], sampling: str = "proportional",
                           temperature: float = 2.0) -> list[float]:
    """The probability of drawing each task's batch: ``p_i ∝ n_i^(1/T)``.

    ``proportional`` is ``T = 1``, ``uniform`` is ``T = ∞``; ``temperature`` uses the given ``T``.
    Computed in log space, so small temperatures do not overflow.

    Args:
        sizes: ``n_i``, the training examples of each task (each at least 1).
        sampling: ``proportional``, ``temperature`` or ``uniform``.
        temperature: ``T`` for ``temperature`` sampling (> 0).

    Returns:
        one probability per task, summing to 1.
    """
    if sampling not in SAMPLINGS:
        raise AdaptertxError(f"unknown sampling {sampling!r}; choose one of {', '.join(SAMPLINGS)}")
    if not sizes:
        raise AdaptertxError("no tasks to sample from")
    if any(int(n) < 1 for n in sizes):
        raise AdaptertxError(f"every task needs at least one training example, got sizes {list(sizes)}")
    if sampling == "uniform":
        return [1.0 / len(sizes)] * len(sizes)
    if sampling == "temperature" and not (math.isfinite(temperature) and temperature > 0):
        raise AdaptertxError(f"temperature must be a positive number, got {temperature}")
    inv_t = 1.0 if sampling == "proportional" else 1.0 / temperature
    logs = [math.log(n) * inv_t for n in sizes]
    top = max(logs)
    weights = [math.exp(v - top) for v in logs]
    total = sum(weights)
    return [w / total for w in weights]


def _mix(*parts: int) -> int:
    """One generator seed from several integers (deterministic, within 63 bits)."""
    out = 0
    for p in parts:
        out = (out * 1_000_003 + int(p) + 1) % (2 ** 63 - 1)
    return out


def task_schedule(probabilities: Sequence[float], length: int, seed: int, epoch: int) -> list[int]:
    """The task index of each of an epoch's ``length`` batches, drawn i.i.d. from ``probabilities``.

    Deterministic in ``(probabilities, length, seed, epoch)``: inverse-CDF sampling of
    ``length`` fp64 uniforms from a generator seeded by ``seed`` and ``epoch``.
    """
    if length < 0:
        raise AdaptertxError(f"schedule length must be non-negative, got {length}")
    gen = torch.Generator().manual_seed(_mix(seed, epoch))
    cdf = torch.tensor(list(probabilities), dtype=torch.float64).cumsum(0)
    cdf = cdf / cdf[-1]
    u = torch.rand(length, generator=gen, dtype=torch.float64)
    return torch.searchsorted(cdf, u, right=True).clamp(max=len(cdf) - 1).tolist()


def epoch_plan(rows: Sequence[int], batch_size: int, probabilities: Sequence[float], seed: int, epoch: int,
               rank: int = 0, world: int = 1) -> list[tuple[int, torch.Tensor]]:
    """One epoch's batches: ``(task index, row indices)`` in training order.

    The epoch has ``sum_i ceil(rows[i] / (batch_size * world))`` batches; their tasks come from
    :func:`task_schedule`. The ``k``-th batch of task ``i`` in the epoch is batch ``k mod b_i`` of
    pass ``k // b_i`` over this process's share of a shuffle of task ``i``'s rows (a new shuffle
    per pass, seeded by seed, epoch, task and pass), where ``b_i`` is the number of batches that
    share fills.

    Args:
        rows: encoded training rows per task (QA: windows).
        rank, world: this process and the number of processes (each takes every ``world``-th row).

    Returns:
        ``(task, indices)`` pairs; ``indices``: (at most batch_size,) int64 row indices of the task.
    """
    length = sum(math.ceil(n / (batch_size * world)) for n in rows)
    schedule = task_schedule(probabilities, length, seed, epoch)
    passes: dict[tuple[int, int], list[torch.Tensor]] = {}
    drawn = [0] * len(rows)
    plan = []
    for t in schedule:
        share = len(range(rank, rows[t], world))
        per_pass = max(1, math.ceil(share / batch_size))
        k = drawn[t]
        drawn[t] += 1
        key = (t, k // per_pass)
        if key not in passes:
            order = torch.randperm(rows[t], generator=torch.Generator().manual_seed(_mix(seed, epoch, t, key[1])))
            order = order[rank::world]
            passes[key] = [order[i:i + batch_size] for i in range(0, len(order), batch_size)] or [order]
        plan.append((t, passes[key][k % per_pass]))
    return plan
