"""Task metrics, each as its standard definition; every score is a percentage (0-100).

* :func:`accuracy`: share of predictions equal to their reference.
* :func:`squad_scores`: exact match and token F1 of the official SQuAD evaluation (v2.0
  script; on answerable questions identical to v1.1, as XTREME uses for XQuAD and TyDiQA),
  or, given ``lang``, of MLQA's evaluation (language-aware normalisation, Chinese scored by
  characters).
* :func:`entity_f1`: span-level micro precision / recall / F1 of CoNLL-2000's ``conlleval``
  as implemented by ``seqeval`` in its default mode (an ``I-`` tag after ``O`` or after a
  different type starts an entity).
* :func:`tag_accuracy`: word-level tag accuracy (CCG supertags; beside F1 for UD-POS).
* :func:`tag_f1`: the score XTREME and XTREME-R report for UD-POS (google-research/xtreme
  ``third_party/run_tag.py``): ``seqeval``'s chunk precision / recall / F1 over the tag
  sequences of the whole test set, with word accuracy beside it. A POS tag has no ``B-``/``I-``
  prefix, so seqeval reads its first letter as the chunk tag and the rest as the chunk type
  (``NOUN`` is tag ``N``, type ``OUN``): a run of equal tags is one chunk, ``SCONJ`` and ``SYM``
  (tag ``S``: single) are one chunk per word, ``CCONJ`` and ``SCONJ`` share the type ``CONJ``,
  and ``X`` (type ``_``, that of the ``O`` seqeval puts between sentences) is no chunk at the end
  of a sentence. A chunk counts when its type and both ends match. So F1 is not word accuracy, and the two
  differ by points on the same predictions (either way: clustered errors cost F1 less).
* :func:`bitext_f1`: MTEB's BitextMining F1 of nearest-neighbour matches (its main Tatoeba and
  BUCC score): scikit-learn's support-weighted F1 of the predicted indices against the gold ones.
* :func:`average_precision_at_k`: average precision of one ranking cut at ``k``, as LAReQA's
  reference ``mean_avg_prec_at_k`` computes it (mAP@20 is its mean over questions).

:func:`score` applies a task's metric (``Task.metric``) through :data:`METRICS` to the
predictions of :func:`adaptertx.features.decode_predictions`.
"""

from __future__ import annotations

import hashlib
import re
import string
import sys
import unicodedata
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache

import numpy as np

from adaptertx.errors import AdaptertxError
from adaptertx.tasks import Task

__all__ = ["accuracy", "squad_scores", "normalize_answer", "normalize_answer_mlqa", "entity_f1", "tag_accuracy",
           "tag_f1", "tag_chunks", "bitext_f1", "RETRIEVAL_DIRECTIONS", "METRICS", "score", "MLQA_LANGUAGES",
           "average_precision_at_k", "MAP_K"]


def _check_lengths(predictions: Sequence, references: Sequence, what: str) -> None:
    if len(predictions) != len(references):
        raise AdaptertxError(f"{what}: {len(predictions)} predictions for {len(references)} references")
    if not references:
        raise AdaptertxError(f"{what}: nothing to score")


def accuracy(predictions: Sequence, references: Sequence) -> float:
    """Percentage of ``predictions[i] == references[i]``."""
    _check_lengths(predictions, references, "accuracy")
    return 100.0 * sum(p == r for p, r in zip(predictions, references, strict=True)) / len(references)


def tag_accuracy(pred_tags: Sequence[Sequence[str]], gold_tags: Sequence[Sequence[str]]) -> float:
    """Percentage of words tagged correctly, over all words of all sentences."""
    _check_lengths(pred_tags, gold_tags, "tag_accuracy")
    correct = total = 0
    for i, (p, g) in enumerate(zip(pred_tags, gold_tags, strict=True)):
        if len(p) != len(g):
            raise AdaptertxError(f"tag_accuracy: sentence {i} has {len(p)} predicted tags for {len(g)} words")
        correct += sum(a == b for a, b in zip(p, g, strict=True))
        total += len(g)
    if total == 0:
        raise AdaptertxError("tag_accuracy: the sentences have no words")
    return 100.0 * correct / total


def entity_f1(pred_tags: Sequence[Sequence[str]], gold_tags: Sequence[Sequence[str]]) -> dict[str, float]:
    """Span-level micro ``{"precision", "recall", "f1"}`` over BIO/IOB2 tags (``conlleval``).

    An entity is correct only when its type and both boundaries match. Where neither the
    gold nor the predictions hold an entity, every score is 0 (seqeval's convention).
    """
    _check_lengths(pred_tags, gold_tags, "entity_f1")
    for i, (p, g) in enumerate(zip(pred_tags, gold_tags, strict=True)):
        if len(p) != len(g):
            raise AdaptertxError(f"entity_f1: sentence {i} has {len(p)} predicted tags for {len(g)} words")
    import warnings

    from seqeval.metrics import f1_score, precision_score, recall_score

    gold, pred = [list(g) for g in gold_tags], [list(p) for p in pred_tags]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval warns when there is no entity at all
        return {"precision": 100.0 * float(precision_score(gold, pred, zero_division=0)),
                "recall": 100.0 * float(recall_score(gold, pred, zero_division=0)),
                "f1": 100.0 * float(f1_score(gold, pred, zero_division=0))}


def tag_chunks(tag_seqs: Sequence[Sequence[str]]) -> list[set[tuple[str, int, int]]]:
    """``seqeval``'s chunks ``(type, first word, last word)`` of sentences scored together, per
    sentence: the chunks its ``f1_score`` finds when given all of them at once (the sentences
    joined with an ``O`` between them, as ``run_tag.py`` scores a test set), each in the
    sentence holding its last word; offsets count words over the joined sentences.

    Calling seqeval once over all sentences keeps its behaviour at sentence starts exactly (a
    sentence opening with ``X``, whose seqeval type ``_`` equals that of the ``O`` between
    sentences, continues the previous chunk's start, as it does in ``run_tag.py``)."""
    import warnings
    from bisect import bisect_right

    from seqeval.metrics.sequence_labeling import get_entities

    seqs = [list(t) for t in tag_seqs]
    starts, at = [], 0
    for t in seqs:
        starts.append(at)
        at += len(t) + 1  # the "O" seqeval puts after every sentence
    out: list[set[tuple[str, int, int]]] = [set() for _ in seqs]
    if not any(seqs):
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval warns that POS tags do not look like BIO tags
        chunks = get_entities(seqs)
    for chunk in chunks:
        out[bisect_right(starts, chunk[2]) - 1].add(tuple(chunk))
    return out


def tag_f1(pred_tags: Sequence[Sequence[str]], gold_tags: Sequence[Sequence[str]]) -> dict[str, float]:
    """XTREME's UD-POS scores: ``{"precision", "recall", "f1"}`` of ``seqeval``'s ``f1_score``
    family over the tag sequences (as ``third_party/run_tag.py``), plus ``"accuracy"``
    (:func:`tag_accuracy`). Where neither side holds a chunk, precision, recall and F1 are 0."""
    _check_lengths(pred_tags, gold_tags, "tag_f1")
    accuracy_ = tag_accuracy(pred_tags, gold_tags)
    import warnings

    from seqeval.metrics import f1_score, precision_score, recall_score

    gold, pred = [list(g) for g in gold_tags], [list(p) for p in pred_tags]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # POS tags are not BIO tags; seqeval says so for each
        return {"precision": 100.0 * float(precision_score(gold, pred, zero_division=0)),
                "recall": 100.0 * float(recall_score(gold, pred, zero_division=0)),
                "f1": 100.0 * float(f1_score(gold, pred, zero_division=0)), "accuracy": accuracy_}


def bitext_f1(nearest: Sequence[int]) -> float:
    """MTEB's BitextMining F1 (percent) of nearest-neighbour matches: query ``i``'s gold match is
    candidate ``i`` and ``nearest[i]`` is the candidate it found. As scikit-learn's
    ``f1_score(gold, nearest, average="weighted")`` (each gold index has support 1): a correct
    query ``i`` scores ``2 / (k + 1)``, where ``k`` is how many queries found candidate ``i``,
    a wrong one 0, averaged over queries. At most the accuracy; equal when no candidate is
    found twice.

    >>> round(bitext_f1([0, 0, 2]), 4)  # query 0 right but candidate 0 found twice; query 2 right
    55.5556
    """
    nearest = [int(j) for j in nearest]
    if not nearest:
        raise AdaptertxError("bitext_f1: nothing to score")
    found = Counter(nearest)
    return 100.0 * sum(2.0 / (found[i] + 1) for i, j in enumerate(nearest) if i == j) / len(nearest)


# ----------------------------------------------------------------------------- SQuAD / MLQA

_SQUAD_PUNCT = frozenset(string.punctuation)
_SQUAD_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lowercase, drop ASCII punctuation and a/an/the, collapse spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _SQUAD_PUNCT)
    return " ".join(_SQUAD_ARTICLES.sub(" ", text).split())


# MLQA's evaluation script (mlqa_evaluation_v1.py), language by language.
MLQA_LANGUAGES = ("ar", "de", "en", "es", "hi", "vi", "zh")
_MLQA_ARTICLES = {
    "en": r"\b(a|an|the)\b",
    "es": r"\b(un|una|unos|unas|el|la|los|las)\b",
    "vi": r"\b(của|là|cái|chiếc|những)\b",
    "de": r"\b(ein|eine|einen|einem|eines|einer|der|die|das|den|dem|des)\b",
    "ar": r"\sال^|ال",
}
_CJK = re.compile(r"[\u4e00-\u9fa5]")


@lru_cache(maxsize=1)
def _unicode_punct() -> frozenset[str]:
    """Every Unicode punctuation character (categories P*) plus ASCII punctuation, as MLQA."""
    return frozenset(chr(i) for i in range(sys.maxunicode)
                     if unicodedata.category(chr(i)).startswith("P")).union(string.punctuation)


def _mixed_segmentation(text: str, punct: frozenset[str]) -> list[str]:
    """MLQA's Chinese tokenisation: each CJK character and punctuation mark is a token."""
    out, run = [], ""
    for ch in text:
        if _CJK.search(ch) or ch in punct:
            out.extend(run.split())
            run = ""
            out.append(ch)
        else:
            run += ch
    out.extend(run.split())
    return out


def normalize_answer_mlqa(text: str, lang: str) -> str:
    """MLQA's normalisation for ``lang`` (one of :data:`MLQA_LANGUAGES`).

    Lowercase, drop Unicode punctuation, drop the language's articles (none for hi, zh), then
    split on whitespace (zh: also into single CJK characters) and join with single spaces.
    """
    if lang not in MLQA_LANGUAGES:
        raise AdaptertxError(f"MLQA normalisation knows {', '.join(MLQA_LANGUAGES)}, not {lang!r}")
    punct = _unicode_punct()
    text = "".join(ch for ch in text.lower() if ch not in punct)
    if lang in _MLQA_ARTICLES:
        text = re.sub(_MLQA_ARTICLES[lang], " ", text)
    tokens = _mixed_segmentation(text, punct) if lang == "zh" else text.split()
    return " ".join(t for t in tokens if t.strip())


def _token_f1(pred_tokens: list[str], gold_tokens: list[str], empty_match: bool) -> float:
    if empty_match and (not pred_tokens or not gold_tokens):
        return float(pred_tokens == gold_tokens)
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_example(pred: str | None, ex: Mapping, *, lang: str | None = None) -> tuple[float, float]:
    """``(exact match, F1)`` in [0, 1] of one answer string (``None``: no prediction, 0) against
    one SQuAD-style example, scored as :func:`squad_scores` describes."""
    if pred is None:
        return 0.0, 0.0
    golds = list(ex["answers"]["text"])
    if lang is None:
        golds = [g for g in golds if normalize_answer(g)] or [""]
        p = normalize_answer(pred)
        gold_norm = [normalize_answer(g) for g in golds]
        return (max(float(p == g) for g in gold_norm),
                max(_token_f1(p.split(), g.split(), True) for g in gold_norm))
    if not golds:
        raise AdaptertxError(f"squad_scores: example {ex['id']!r} has no answer; MLQA scoring "
                             f"expects answerable questions")
    p = normalize_answer_mlqa(pred, lang)
    gold_norm = [normalize_answer_mlqa(g, lang) for g in golds]
    return (max(float(p == g) for g in gold_norm),
            max(_token_f1(p.split(), g.split(), False) for g in gold_norm))


def squad_scores(predictions: Mapping[str, str], examples: Sequence[Mapping], *,
                 lang: str | None = None) -> dict[str, float]:
    """``{"exact_match", "f1"}`` (percent) of answer strings against SQuAD-style examples.

    Without ``lang``: the official SQuAD v2.0 evaluation: answers normalised by
    :func:`normalize_answer`, scores maxed over the gold answers (those that normalise to
    nothing are dropped); a question with no gold answer scores 1 only for an empty
    prediction. With ``lang``: MLQA's evaluation (:func:`normalize_answer_mlqa`, v1.1
    scoring). An example without a prediction scores 0; predictions for ids not among the
    examples are ignored.
    """
    if not examples:
        raise AdaptertxError("squad_scores: nothing to score")
    if not isinstance(predictions, Mapping):
        raise AdaptertxError("squad_scores: predictions must map example id to answer text")
    exact = f1 = 0.0
    for ex in examples:
        em_i, f1_i = squad_example(predictions.get(ex["id"]), ex, lang=lang)
        exact += em_i
        f1 += f1_i
    return {"exact_match": 100.0 * exact / len(examples), "f1": 100.0 * f1 / len(examples)}


# ----------------------------------------------------------------------------- dispatch


def _aligned(predictions, examples: Sequence[Mapping], what: str) -> list:
    """Predictions as a list in example order (a mapping is looked up by example id)."""
    if isinstance(predictions, Mapping):
        missing = [ex["id"] for ex in examples if ex["id"] not in predictions]
        if missing:
            raise AdaptertxError(f"{what}: no prediction for {len(missing)} examples, e.g. {missing[0]!r}")
        return [predictions[ex["id"]] for ex in examples]
    predictions = list(predictions)
    _check_lengths(predictions, examples, what)
    return predictions


def _score_accuracy(task: Task, predictions, examples, lang: str | None) -> dict[str, float]:
    preds = _aligned(predictions, examples, task.name)
    if task.family == "tagging":
        return {"accuracy": tag_accuracy(preds, [ex["tags"] for ex in examples])}
    return {"accuracy": accuracy(preds, [ex["label"] for ex in examples])}


def _score_f1_em(task: Task, predictions, examples, lang: str | None) -> dict[str, float]:
    use_lang = lang if task.name == "mlqa" and lang is not None else None
    return squad_scores(predictions, examples, lang=use_lang)


def _score_entity_f1(task: Task, predictions, examples, lang: str | None) -> dict[str, float]:
    preds = _aligned(predictions, examples, task.name)
    return entity_f1(preds, [ex["tags"] for ex in examples])


def _score_tag_f1(task: Task, predictions, examples, lang: str | None) -> dict[str, float]:
    preds = _aligned(predictions, examples, task.name)
    return tag_f1(preds, [ex["tags"] for ex in examples])


MetricFn = Callable[[Task, object, Sequence[Mapping], "str | None"], dict]

# Task.metric → scorer(task, predictions, examples, lang) -> {score name: percent}.
METRICS: dict[str, MetricFn] = {
    "accuracy": _score_accuracy,
    "f1_em": _score_f1_em,
    "entity_f1": _score_entity_f1,
    "tag_f1": _score_tag_f1,
}


def score(task: Task, predictions, examples: Sequence[Mapping], *, lang: str | None = None) -> dict[str, float]:
    """Score ``predictions`` of ``task`` against its ``examples`` with the task's metric.

    Args:
        task: the task (its ``metric`` picks the scorer).
        predictions: as :func:`adaptertx.features.decode_predictions` returns them: labels or
            choice indices or tag lists in example order (or a mapping by example id), or
            ``{example id: answer}`` for extractive QA.
        examples: the gold examples.
        lang: the examples' language; selects MLQA's normalisation for ``mlqa``.

    Returns:
        ``{"accuracy"}``, ``{"exact_match", "f1"}``, ``{"precision", "recall", "f1"}`` or (``tag_f1``)
        ``{"precision", "recall", "f1", "accuracy"}``, in percent.
    """
    scorer = METRICS.get(task.metric)
    if scorer is None:
        raise AdaptertxError(f"task {task.name!r} uses metric {task.metric!r}, which is not scored here "
                             f"(retrieval metrics are in adaptertx.retrieval); known: {', '.join(METRICS)}")
    if not examples:
        raise AdaptertxError(f"task {task.name!r}: no examples to score")
    return scorer(task, predictions, examples, lang)


# ----------------------------------------------------------------------------- per-example counts
#
# A score is a function of sums over test examples. Storing each example's counts lets a
# report recompute any score, and resample test examples for bootstrap intervals, without
# the predictions. Rows per metric (and family):
#   accuracy (classification, multiple choice):                     [correct]
#   accuracy (tagging):                                             [correct words, words]
#   entity_f1:                                                      [true positive, predicted, gold] entities
#   tag_f1:                      [true positive, predicted, gold] chunks (:func:`tag_chunks`), [correct words, words]
#   retrieval_accuracy (Tatoeba), in the order of RETRIEVAL_DIRECTIONS: [en->x hit, x->en hit]
#   f1_em:                                                          [exact match, F1], each in [0, 1]
#   map@20:                                                         [average precision at 20], in [0, 1]


#: The ranking cut of mAP@20 (LAReQA, Mewsli-X).
MAP_K = 20


def average_precision_at_k(relevant: set, ranked: Sequence, k: int = MAP_K) -> float:
    """Average precision of one ranking cut at ``k``, in [0, 1] (LAReQA's reference
    ``mean_avg_prec_at_k`` for one question, Roy et al., 2020).

    For each rank ``i < k`` whose candidate is relevant and not seen earlier in the ranking,
    ``hits += 1`` and ``score += hits / (i + 1)``; the result is ``score / min(len(relevant), k)``.
    A candidate repeated in ``ranked`` counts once (its first rank).

    Args:
        relevant: ids of the relevant candidates (non-empty).
        ranked: candidate ids, best first (only the first ``k`` are read).
        k: the cut (at least 1).

    >>> average_precision_at_k({"a", "b"}, ["a", "x", "b"]) == (1 / 1 + 2 / 3) / 2
    True
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise AdaptertxError(f"average_precision_at_k: k must be a positive integer, got {k!r}")
    relevant = set(relevant)
    if not relevant:
        raise AdaptertxError("average_precision_at_k: the relevant set is empty")
    if isinstance(ranked, (str, bytes)):
        raise AdaptertxError("average_precision_at_k: ranked must be a list of candidate ids, got a string")
    hits, total, seen = 0, 0.0, set()
    for i, cand in enumerate(list(ranked)[:k]):
        if cand in relevant and cand not in seen:
            hits += 1
            total += hits / (i + 1)
        seen.add(cand)
    return total / min(len(relevant), k)


def _entities(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    from seqeval.metrics.sequence_labeling import get_entities

    return set(get_entities(list(tags)))


def _tag_rows(task: Task, preds: list, examples: Sequence[Mapping]) -> list[list[float]]:
    """Tagging rows: ``[correct words, words]`` (``accuracy``), and for ``tag_f1`` the chunk
    counts of :func:`tag_chunks` first, ``[true positive, predicted, gold, correct words, words]``."""
    for i, (p, ex) in enumerate(zip(preds, examples, strict=True)):
        if len(p) != len(ex["tags"]):
            raise AdaptertxError(f"{task.metric}: sentence {i} has {len(p)} predicted tags for "
                                 f"{len(ex['tags'])} words")
    words = [[sum(a == b for a, b in zip(p, ex["tags"], strict=True)), len(ex["tags"])]
             for p, ex in zip(preds, examples, strict=True)]
    if task.metric == "accuracy":
        return words
    pred_chunks, gold_chunks = tag_chunks(preds), tag_chunks([ex["tags"] for ex in examples])
    return [[len(pc & gc), len(pc), len(gc), *w] for pc, gc, w in zip(pred_chunks, gold_chunks, words, strict=True)]


def _prf(tp: float, n_pred: float, n_gold: float) -> dict[str, float]:
    precision = 100.0 * tp / n_pred if n_pred else 0.0
    recall = 100.0 * tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def example_stats(task: Task, predictions, examples: Sequence[Mapping], *,
                  lang: str | None = None) -> list[list[float]]:
    """One row of counts per example (in ``examples`` order); :func:`stats_score` of them
    equals :func:`score` of the same predictions. For ``retrieval_accuracy`` (Tatoeba) a
    prediction is the pair of indices found for the pair ``(en→x, x→en)`` (the English sentence's
    nearest source sentence, the source sentence's nearest English one) and ``ex["target_index"]``
    is the right one."""
    if not examples:
        raise AdaptertxError(f"task {task.name!r}: no examples to score")
    if task.metric == "f1_em":
        if not isinstance(predictions, Mapping):
            raise AdaptertxError("squad_scores: predictions must map example id to answer text")
        use_lang = lang if task.name == "mlqa" and lang is not None else None
        return [list(squad_example(predictions.get(ex["id"]), ex, lang=use_lang)) for ex in examples]
    preds = _aligned(predictions, examples, task.name)
    if task.metric == "entity_f1":
        rows = []
        for i, (p, ex) in enumerate(zip(preds, examples, strict=True)):
            if len(p) != len(ex["tags"]):
                raise AdaptertxError(f"entity_f1: sentence {i} has {len(p)} predicted tags for {len(ex['tags'])} words")
            pe, ge = _entities(p), _entities(ex["tags"])
            rows.append([len(pe & ge), len(pe), len(ge)])
        return rows
    if task.family == "tagging" and task.metric in ("accuracy", "tag_f1"):
        return _tag_rows(task, preds, examples)
    if task.metric == "accuracy":
        return [[float(p == ex["label"])] for p, ex in zip(preds, examples, strict=True)]
    if task.metric == "retrieval_accuracy":
        rows = []
        for i, (p, ex) in enumerate(zip(preds, examples, strict=True)):
            if isinstance(p, (str, bytes)) or not hasattr(p, "__len__") or len(p) != len(RETRIEVAL_DIRECTIONS):
                raise AdaptertxError(f"retrieval_accuracy: pair {i} needs the index each direction found "
                                     f"({', '.join(RETRIEVAL_DIRECTIONS)}), got {p!r}")
            rows.append([float(int(found) == ex["target_index"]) for found in p])
        return rows
    if task.metric == "map@20":
        rows = []
        for i, (p, ex) in enumerate(zip(preds, examples, strict=True)):
            if "relevant" not in ex:
                raise AdaptertxError(f"map@20: example {i} has no 'relevant' set of candidate ids")
            rows.append([average_precision_at_k(set(ex["relevant"]), p, MAP_K)])
        return rows
    raise AdaptertxError(f"task {task.name!r} uses metric {task.metric!r}, which has no per-example counts")


def stats_score(task: Task, sums: Sequence[float]) -> dict[str, float]:
    """The scores (percent, named as :func:`score` names them) from ``sums``, the column sums
    of :func:`example_stats` rows, and, for ``f1_em`` and one-column metrics, ``sums[-1]``
    being divided by the number of examples — so pass ``[*column sums, number of examples]``."""
    *cols, n = sums
    if n <= 0:
        raise AdaptertxError(f"task {task.name!r}: no examples to score")
    key = (task.metric, task.family == "tagging")
    width = _STATS_COLUMNS.get(key, _STATS_COLUMNS.get((task.metric, False)))
    if width is None:
        raise AdaptertxError(f"task {task.name!r} uses metric {task.metric!r}, which has no per-example counts")
    if len(cols) != width:
        raise AdaptertxError(f"task {task.name!r} ({task.metric}) keeps {width} counts per example, these have "
                             f"{len(cols)}: they were written under another definition of the metric; score the "
                             f"cell again")
    if task.metric == "f1_em":
        return {"exact_match": 100.0 * cols[0] / n, "f1": 100.0 * cols[1] / n}
    if task.metric == "entity_f1":
        return _prf(*cols)
    if task.metric == "tag_f1":
        return {**_prf(*cols[:3]), "accuracy": 100.0 * cols[3] / cols[4] if cols[4] else 0.0}
    if task.metric == "accuracy" and task.family == "tagging":
        return {"accuracy": 100.0 * cols[0] / cols[1] if cols[1] else 0.0}
    if task.metric == "retrieval_accuracy":
        return {d: 100.0 * c / n for d, c in zip(RETRIEVAL_DIRECTIONS, cols, strict=True)}
    if task.metric == "accuracy":
        return {"accuracy": 100.0 * cols[0] / n}
    return {"map@20": 100.0 * cols[0] / n}


#: Counts per example of each metric (``(metric, is tagging)``; see the table above).
_STATS_COLUMNS = {("f1_em", False): 2, ("entity_f1", True): 3, ("tag_f1", True): 5, ("accuracy", True): 2,
                  ("accuracy", False): 1, ("retrieval_accuracy", False): 2, ("map@20", False): 1}

#: Tatoeba's two directions, the headline first. en→x (each English sentence searches the
#: source-language sentences) is what XTREME's ``third_party/evaluate_retrieval.py`` scores:
#: its ``similarity_search(x, y)`` indexes the source sentences ``x`` and searches them with the
#: English ones ``y``, for XTREME (Hu et al., 2020) and XTREME-R (Ruder et al., 2021) alike.
#: x→en is what MTEB scores (its queries are the ``xxx`` side of ``xxx-eng``).
RETRIEVAL_DIRECTIONS = ("en_to_x", "x_to_en")


#: The score each metric is compared by (reports, best checkpoints).
PRIMARY = {"accuracy": "accuracy", "f1_em": "f1", "entity_f1": "f1", "tag_f1": "f1",
           "retrieval_accuracy": RETRIEVAL_DIRECTIONS[0], "map@20": "map@20"}


# ------------------------------------------------------------------------------ resampling per-example counts


def stats_sums(stats: Sequence[Sequence[float]]) -> list[float]:
    """Column sums of :func:`example_stats` rows, then the number of rows: what :func:`stats_score` takes."""
    cols = [sum(col) for col in zip(*stats, strict=True)] if len(stats) else []
    return [*cols, len(stats)]


def boot_indices(n: int, key: str, rounds: int) -> np.ndarray:
    """(rounds, n) bootstrap resamples of ``n`` items, seeded by ``key`` and ``n`` (repeatable)."""
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") ^ n  # the whole key counts
    return np.random.default_rng(seed).integers(0, n, size=(rounds, n))


def resampled_scores(task: Task, stats, idx: np.ndarray, primary: str) -> np.ndarray:
    """(rounds,) the ``primary`` score of each resample ``idx`` (from :func:`boot_indices`) of
    ``stats``, the :func:`example_stats` rows of one set of predictions."""
    sums = np.asarray(stats, dtype=np.float64)[idx].sum(axis=1)  # (rounds, columns)
    n = idx.shape[1]
    return np.array([stats_score(task, [*row, n])[primary] for row in sums])
