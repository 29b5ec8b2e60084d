"""The floor every score stands beside: chance, and the training split's majority predictor.

A score means something only next to what a model that learned nothing would get. Two floors:

- **majority**: the score of always predicting the training split's most frequent label
  (classification, multiple choice), of tagging every word with the most frequent tag (for
  NER that is ``O`` everywhere: entity F1 0), or of answering nothing (extractive QA: 0).
  It is scored with the task's own metric on the same examples as the model, so it is
  exactly comparable; zero-shot, it is the English training label's score on each language.
- **chance**: the expected score of a uniform random guess: ``100 / labels`` for
  classification and word-level tag accuracy, ``100 / choices`` for multiple choice,
  ``100 / candidates`` for retrieval, 0 for entity F1 and extractive QA; none for UD-POS's
  chunk F1 (:func:`adaptertx.metrics.tag_f1`), whose majority floor is 0 or near it. BUCC's
  mining F1 has :func:`mining_chance`: each source sentence paired with a random target.

:func:`versus_floor` is the test a trained adapter must pass to count as having learned: the
paired difference between its score and the majority floor on the same held-out English
examples, with a 95% paired bootstrap interval over examples; it learned when the interval
lies above zero (:func:`learned`).
"""

from __future__ import annotations

import numpy as np

from adaptertx.errors import AdaptertxError
from adaptertx.metrics import PRIMARY, boot_indices, example_stats, resampled_scores, stats_score, stats_sums
from adaptertx.tasks import Task

#: Bootstrap rounds of :func:`versus_floor`.
ROUNDS = 1000


def majority_label(task: Task, train_rows: list[dict]):
    """The most frequent label (classification, multiple choice) or word tag (tagging) of the
    training rows, ties to the smallest; ``None`` for other families or without rows."""
    if not train_rows or task.family not in ("classification", "multiple_choice", "tagging"):
        return None
    counts: dict = {}
    for row in train_rows:
        for label in row["tags"] if task.family == "tagging" else (row["label"],):
            counts[label] = counts.get(label, 0) + 1
    if not counts:
        return None
    return min(counts, key=lambda label: (-counts[label], str(label)))


def floor_predictions(task: Task, rows: list[dict], train_rows: list[dict]):
    """The majority predictor's predictions for ``rows``, in the form
    :func:`adaptertx.features.decode_predictions` returns; ``None`` where it has none."""
    if task.family == "extractive_qa":
        return {row["id"]: "" for row in rows}
    label = majority_label(task, train_rows)
    if label is None:
        return None
    if task.family == "tagging":
        return [[label] * len(row["tags"]) for row in rows]
    return [label] * len(rows)


def chance(task: Task, rows: list[dict] | None = None, candidates: int | None = None) -> float | None:
    """The expected primary score (percent) of a uniform random guess (see the module doc)."""
    if task.metric in ("entity_f1", "f1_em"):
        return 0.0
    if task.metric == "tag_f1":  # XTREME's chunk F1 of random tags has no closed form; the majority floor stands
        return None
    if task.family == "retrieval":
        return 100.0 / candidates if candidates else None
    if task.family == "multiple_choice":
        sizes = [len(r["choices"]) for r in rows or () if r.get("choices")]
        if sizes:
            return 100.0 * float(np.mean([1.0 / s for s in sizes]))
        return 100.0 / task.num_choices if task.num_choices else None
    if task.labels:
        return 100.0 / len(task.labels)
    return None


def mining_chance(sources: int, targets: int, gold: int) -> float:
    """BUCC's chance F1 (percent): every one of ``sources`` sentences paired with a uniformly
    random one of ``targets`` and extracted. Each of the ``gold`` pairs is then found with
    probability ``1 / targets``, so the expected hits are ``gold / targets`` and
    F1 = 2 · hits / (extracted + gold).

    >>> round(mining_chance(1000, 1000, 100), 4)
    0.0182
    """
    if sources <= 0 or targets <= 0 or gold <= 0:
        raise AdaptertxError(f"mining chance needs sentences on both sides and gold pairs "
                             f"(got {sources}, {targets}, {gold})")
    return 100.0 * 2 * (gold / targets) / (sources + gold)


def majority_score(task: Task, rows: list[dict], train_rows: list[dict], *, lang: str | None = None) -> float | None:
    """The majority floor's primary score (percent) on ``rows``; ``None`` where it has none."""
    preds = floor_predictions(task, rows, train_rows)
    if preds is None or not rows:
        return None
    return stats_score(task, stats_sums(example_stats(task, preds, rows, lang=lang)))[PRIMARY[task.metric]]


def floors(task: Task, rows: list[dict], train_rows: list[dict] | None, *, lang: str | None = None,
           candidates: int | None = None) -> dict:
    """``{"majority": ..., "chance": ...}`` for ``rows`` (either may be ``None``)."""
    return {"majority": None if train_rows is None else majority_score(task, rows, train_rows, lang=lang),
            "chance": chance(task, rows, candidates)}


def versus_floor(task: Task, predictions, rows: list[dict], train_rows: list[dict], *, lang: str | None = "en",
                 rounds: int = ROUNDS) -> dict | None:
    """The model's primary score minus the majority floor's on the same ``rows``, in points,
    with a 95% paired bootstrap interval over examples (one resample for both sides; the
    resamples are seeded by the task and the number of rows, so the result is repeatable)::

        {"metric", "score", "floor", "difference", "low", "high", "n"}

    ``None`` where the task has no majority predictor or there are no rows.
    """
    floor_preds = floor_predictions(task, rows, train_rows)
    if floor_preds is None or not rows:
        return None
    if not isinstance(predictions, dict) and len(predictions) != len(rows):
        raise AdaptertxError(f"{task.name}: {len(predictions)} predictions for {len(rows)} examples")
    ours = example_stats(task, predictions, rows, lang=lang)
    base = example_stats(task, floor_preds, rows, lang=lang)
    key = PRIMARY[task.metric]
    score = stats_score(task, stats_sums(ours))[key]
    floor = stats_score(task, stats_sums(base))[key]
    n = len(rows)
    idx = boot_indices(n, f"floor/{task.name}", rounds)
    diffs = resampled_scores(task, ours, idx, key) - resampled_scores(task, base, idx, key)
    low, high = (float(v) for v in np.percentile(diffs, [2.5, 97.5]))
    return {"metric": key, "score": score, "floor": floor, "difference": score - floor, "low": low, "high": high,
            "n": n}


def learned(versus: dict | None) -> bool | None:
    """Whether a :func:`versus_floor` result shows the model clearly above its floor (the
    interval's low end above zero); ``None`` when there is nothing to judge by."""
    if not versus or versus.get("low") is None:
        return None
    return versus["low"] > 0
