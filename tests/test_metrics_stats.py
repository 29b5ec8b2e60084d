"""Per-example counts (``example_stats``) and scores from their sums (``stats_score``) against
:func:`adaptertx.metrics.score` (seqeval for entity F1) on real bundled examples."""

from __future__ import annotations

import random

import pytest

from adaptertx import data
from adaptertx.errors import AdaptertxError
from adaptertx.metrics import PRIMARY, example_stats, score, squad_example, stats_score
from adaptertx.tasks import get_task


def from_stats(task, rows):
    cols = [sum(col) for col in zip(*rows, strict=True)]
    return stats_score(task, [*cols, len(rows)])


def assert_same(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=1e-9, rel=0), k


def check(task_name, preds, examples, lang=None):
    """``stats_score`` of the rows equals ``score``; returns the score."""
    task = get_task(task_name)
    rows = example_stats(task, preds, examples, lang=lang)
    assert len(rows) == len(examples)
    want = score(task, preds, examples, lang=lang)
    assert_same(from_stats(task, rows), want)
    assert PRIMARY[task.metric] in want
    return want, rows


def test_classification_accuracy_xnli():
    task = get_task("xnli")
    examples = data.load("xnli", "de", "test")[:48]
    rng = random.Random(1)
    preds = [rng.choice(task.labels) for _ in examples]
    want, rows = check("xnli", preds, examples)
    assert want["accuracy"] == 100.0 * sum(p == ex["label"] for p, ex in zip(preds, examples, strict=True)) / 48
    assert 0 < want["accuracy"] < 100
    assert all(len(r) == 1 and r[0] in (0.0, 1.0) for r in rows)
    # A mapping by example id gives the same rows as a list in example order.
    assert example_stats(task, {ex["id"]: p for ex, p in zip(examples, preds, strict=True)}, examples) == rows


def test_multiple_choice_accuracy_xcopa():
    examples = data.load("xcopa", "sw", "test")[:40]
    rng = random.Random(2)
    preds = [rng.randrange(2) for _ in examples]
    want, rows = check("xcopa", preds, examples)
    assert want["accuracy"] == 100.0 * sum(p == ex["label"] for p, ex in zip(preds, examples, strict=True)) / 40
    assert 0 < want["accuracy"] < 100
    assert check("xcopa", [ex["label"] for ex in examples], examples)[0] == {"accuracy": 100.0}


def test_tagging_accuracy_udpos_is_over_words():
    task = get_task("udpos")
    examples = data.load("udpos", "en", "test")[:30]
    rng = random.Random(3)
    preds = [[t if rng.random() < 0.7 else rng.choice(task.labels) for t in ex["tags"]] for ex in examples]
    want, rows = check("udpos", preds, examples)
    assert [r[4] for r in rows] == [len(ex["tags"]) for ex in examples]
    # Word-level, not a mean of sentence accuracies (sentences differ in length).
    per_sentence = sum(r[3] / r[4] for r in rows) / len(rows) * 100
    assert abs(per_sentence - want["accuracy"]) > 1e-6
    assert 0 < want["accuracy"] < 100


def _perturb(tags, labels, rng, p):
    return [rng.choice(labels) if rng.random() < p else t for t in tags]


@pytest.mark.parametrize("p", [0.0, 0.1, 0.3, 1.0])
def test_entity_f1_masakhaner_random(p):
    task = get_task("masakhaner")
    examples = data.load("masakhaner", "sw", "test")[:40]
    rng = random.Random(int(p * 100) + 4)
    preds = [_perturb(ex["tags"], task.labels, rng, p) for ex in examples]
    want, rows = check("masakhaner", preds, examples)
    assert sum(r[2] for r in rows) > 0  # gold entities present
    if p == 0.0:
        assert want == {"precision": 100.0, "recall": 100.0, "f1": 100.0}
    else:
        assert want["f1"] < 100


def test_entity_f1_bio_edge_cases():
    # Handmade sentences with awkward BIO: I- after O, type change inside a span, entities at
    # sentence end, a sentence with no entities at all, an I- at the very start.
    gold = [
        ["B-PER", "I-PER", "O", "B-LOC"],             # entity at sentence end
        ["O", "I-ORG", "I-ORG", "O"],                 # I- after O starts an entity
        ["B-PER", "I-PER", "I-LOC", "I-LOC"],         # type change: PER(0-1), LOC(2-3)
        ["O", "O", "O"],                              # no entity
        ["I-DATE", "O", "B-DATE", "I-DATE"],          # I- at the start; entity at the end
        ["B-LOC", "B-LOC", "I-LOC", "O"],             # adjacent same-type entities
    ]
    pred = [
        ["B-PER", "I-PER", "O", "I-LOC"],             # both right (I-LOC after O = B-LOC)
        ["O", "B-ORG", "I-ORG", "O"],                 # right
        ["B-PER", "I-PER", "I-PER", "I-LOC"],         # PER(0-2) wrong, LOC(3) wrong
        ["O", "B-PER", "O"],                          # a false positive
        ["B-DATE", "O", "B-DATE", "O"],               # DATE(0) right, DATE(2) wrong boundary
        ["B-LOC", "I-LOC", "I-LOC", "O"],             # one wrong span for two gold
    ]
    examples = [{"id": str(i), "tokens": ["w"] * len(g), "tags": g} for i, g in enumerate(gold)]
    want, rows = check("masakhaner", pred, examples)
    assert rows == [[2, 2, 2], [1, 1, 1], [0, 2, 2], [0, 1, 0], [1, 2, 2], [0, 1, 2]]
    tp, n_pred, n_gold = 4, 9, 9
    assert want["precision"] == pytest.approx(100 * tp / n_pred)
    assert want["recall"] == pytest.approx(100 * tp / n_gold)
    # Nothing predicted and nothing gold: every score 0, as seqeval.
    empty = [{"id": "e", "tokens": ["w", "w"], "tags": ["O", "O"]}]
    assert check("masakhaner", [["O", "O"]], empty)[0] == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def _qa_predictions(examples, rng):
    """Answers of every kind: exact gold, gold with case/punctuation/article noise, a
    context span, an empty string, and no prediction at all (id left out)."""
    preds = {}
    for i, ex in enumerate(examples):
        golds = ex["answers"]["text"]
        kind = i % 6
        if kind == 0 and golds:
            preds[ex["id"]] = rng.choice(golds)
        elif kind == 1 and golds:
            preds[ex["id"]] = "The " + golds[0].upper() + "!"
        elif kind == 2:
            words = ex["context"].split()
            start = rng.randrange(max(1, len(words) - 4))
            preds[ex["id"]] = " ".join(words[start:start + rng.randint(1, 4)])
        elif kind == 3 and golds:
            preds[ex["id"]] = golds[0][: max(1, len(golds[0]) // 2)] + " extra"
        elif kind == 4:
            preds[ex["id"]] = ""
        # kind 5: no prediction
    return preds


def test_squad_f1_em_xquad_with_unanswerable():
    examples = data.load("xquad", "de", "test")[:36]
    unanswerable = [dict(examples[0], id="no-answer-1", answers={"text": [], "answer_start": []}),
                    dict(examples[1], id="no-answer-2", answers={"text": [], "answer_start": []})]
    examples = examples + unanswerable
    preds = _qa_predictions(examples, random.Random(5))
    preds["no-answer-1"] = ""  # right: abstains
    preds["no-answer-2"] = "irgendwas"  # wrong
    for task_name in ("xquad", "squad_v2"):
        want, rows = check(task_name, preds, examples)
        assert rows[-2] == [1.0, 1.0] and rows[-1] == [0.0, 0.0]
        assert 0 < want["exact_match"] < want["f1"] < 100
        # Predictions for ids not among the examples are ignored.
        assert check(task_name, {**preds, "stranger": "x"}, examples)[0] == want


@pytest.mark.parametrize("lang,split", [("zh", "validation"), ("en", "train")])
def test_mlqa_language_aware(lang, split):
    examples = data.load("mlqa", lang, split)[:36]
    preds = _qa_predictions(examples, random.Random(6))
    want, rows = check("mlqa", preds, examples, lang=lang)
    assert 0 < want["exact_match"] < want["f1"] < 100
    # The language matters: rows under MLQA's rules are not SQuAD's for these predictions.
    if lang == "zh":
        squad_rows = example_stats(get_task("xquad"), preds, examples)
        assert rows != squad_rows
    # The row of one example is squad_example's (exact match, F1).
    ex = examples[0]
    assert rows[0] == list(squad_example(preds.get(ex["id"]), ex, lang=lang))


def test_mlqa_chinese_scored_by_characters():
    ex = {"id": "q", "context": "", "question": "", "answers": {"text": ["北京大学"], "answer_start": [0]}}
    task = get_task("mlqa")
    rows = example_stats(task, {"q": "北京"}, [ex], lang="zh")
    assert rows == [[0.0, pytest.approx(2 * 1.0 * 0.5 / 1.5)]]
    assert_same(from_stats(task, rows), score(task, {"q": "北京"}, [ex], lang="zh"))


def test_retrieval_accuracy_counts():
    # A prediction is what each direction found for the pair: (en→x, x→en), the headline first.
    task = get_task("tatoeba")
    assert PRIMARY[task.metric] == "en_to_x"
    examples = [{"id": str(i), "source": "s", "target": "t", "target_index": i} for i in range(4)]
    rows = example_stats(task, [(0, 0), (1, 2), (3, 2), (3, 3)], examples)
    assert rows == [[1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    assert from_stats(task, rows) == {"en_to_x": 75.0, "x_to_en": 75.0}
    assert from_stats(task, rows[1:2]) == {"en_to_x": 100.0, "x_to_en": 0.0}
    with pytest.raises(AdaptertxError, match="needs the index each direction found"):
        example_stats(task, [0, 1, 3, 3], examples)
    with pytest.raises(AdaptertxError, match="keeps 2 counts per example, these have 1"):
        stats_score(task, [3, 4])


def test_errors():
    xnli = get_task("xnli")
    examples = data.load("xnli", "de", "test")[:4]
    with pytest.raises(AdaptertxError, match="3 predictions for 4 references"):
        example_stats(xnli, ["entailment"] * 3, examples)
    with pytest.raises(AdaptertxError, match="no prediction for 1 examples"):
        example_stats(xnli, {ex["id"]: "neutral" for ex in examples[:3]}, examples)
    with pytest.raises(AdaptertxError, match="no examples"):
        example_stats(xnli, [], [])
    tagged = data.load("udpos", "en", "test")[:2]
    short = [ex["tags"][:-1] for ex in tagged]
    with pytest.raises(AdaptertxError, match=r"sentence 0 has \d+ predicted tags for \d+ words"):
        example_stats(get_task("udpos"), short, tagged)
    ner = data.load("masakhaner", "sw", "test")[:2]
    with pytest.raises(AdaptertxError, match=r"entity_f1: sentence 0 has"):
        example_stats(get_task("masakhaner"), [ex["tags"] + ["O"] for ex in ner], ner)
    qa = data.load("xquad", "de", "test")[:2]
    with pytest.raises(AdaptertxError, match="must map example id to answer text"):
        example_stats(get_task("xquad"), ["a", "b"], qa)
    with pytest.raises(AdaptertxError, match="expects answerable questions"):
        unanswerable = dict(qa[0], answers={"text": [], "answer_start": []})
        example_stats(get_task("mlqa"), {qa[0]["id"]: "x"}, [unanswerable], lang="de")
    bucc = get_task("bucc")
    with pytest.raises(AdaptertxError, match=f"{bucc.metric!r}, which has no per-example counts"):
        example_stats(bucc, [0], [{"id": "0"}])
    with pytest.raises(AdaptertxError, match=f"{bucc.metric!r}, which has no per-example counts"):
        stats_score(bucc, [1.0, 2.0])
    for name in ("lareqa", "bucc"):  # retrieval is scored in adaptertx.evaluation, not by score()
        with pytest.raises(AdaptertxError, match="not scored here"):
            score(get_task(name), [0], [{"id": "0"}])
    with pytest.raises(AdaptertxError, match="no examples to score"):
        stats_score(xnli, [0.0, 0])


def _seqeval_corpus(preds, examples):
    """seqeval's scores over the whole test set at once, as XTREME's run_tag.py computes them."""
    import warnings

    from seqeval.metrics import f1_score, precision_score, recall_score

    gold = [list(ex["tags"]) for ex in examples]
    pred = [list(p) for p in preds]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {"precision": 100 * precision_score(gold, pred), "recall": 100 * recall_score(gold, pred),
                "f1": 100 * f1_score(gold, pred)}


@pytest.mark.parametrize("lang,split,p", [("en", "test", 0.1), ("de", "validation", 0.2), ("zh", "validation", 0.05)])
def test_udpos_f1_is_run_tag_seqeval_over_the_test_set(lang, split, p):
    # Real UD-POS sentences (German has sentences that open with X, where seqeval continues the
    # previous chunk's start: scoring sentences one by one would differ there).
    task = get_task("udpos")
    assert task.metric == "tag_f1" and PRIMARY[task.metric] == "f1"
    examples = data.load("udpos", lang, split)[:1500]
    if lang == "de":
        assert any(ex["tags"][0] == "X" for ex in examples)
    rng = random.Random(lang)
    preds = [_perturb(ex["tags"], task.labels, rng, p) for ex in examples]
    want, rows = check("udpos", preds, examples)
    reference = _seqeval_corpus(preds, examples)
    for k in ("precision", "recall", "f1"):
        assert want[k] == pytest.approx(reference[k], abs=1e-9), k
    words = [(a, b) for pt, ex in zip(preds, examples, strict=True) for a, b in zip(pt, ex["tags"], strict=True)]
    assert want["accuracy"] == pytest.approx(100 * sum(a == b for a, b in words) / len(words))
    assert abs(want["f1"] - want["accuracy"]) > 0.1  # a different score on the same predictions
    assert [r[3:] for r in rows] == [[sum(a == b for a, b in zip(pt, ex["tags"], strict=True)), len(ex["tags"])]
                                     for pt, ex in zip(preds, examples, strict=True)]
    # The bootstrap resamples rows: any multiset of rows gives the score of those counts.
    sample = [rows[i] for i in random.Random(5).choices(range(len(rows)), k=len(rows))]
    tp, n_pred, n_gold, right, n_words = (sum(c) for c in zip(*sample, strict=True))
    got = from_stats(task, sample)
    assert got["f1"] == pytest.approx(200 * tp / (n_pred + n_gold))
    assert got["accuracy"] == pytest.approx(100 * right / n_words)


def test_udpos_chunks_by_hand():
    # seqeval reads a POS tag's first letter as the chunk tag and the rest as its type: a run
    # of equal tags is one chunk, SCONJ/SYM (tag S, "single") one chunk per word.
    gold = [["DET", "NOUN", "NOUN", "VERB", "PUNCT"],
            ["SCONJ", "SCONJ", "PRON", "VERB"]]
    pred = [["DET", "NOUN", "VERB", "VERB", "PUNCT"],   # DET, PUNCT right; NOUN(1-1) and VERB(2-3) wrong
            ["SCONJ", "SCONJ", "PRON", "VERB"]]         # all four chunks right
    examples = [{"id": str(i), "tokens": ["w"] * len(g), "tags": g} for i, g in enumerate(gold)]
    want, rows = check("udpos", pred, examples)
    assert [r[:3] for r in rows] == [[2, 4, 4], [4, 4, 4]]
    assert want["f1"] == pytest.approx(100 * 6 / 8) and want["accuracy"] == pytest.approx(100 * 8 / 9)
    assert want == pytest.approx({**_seqeval_corpus(pred, examples), "accuracy": 100 * 8 / 9})


def test_udpos_stats_of_another_definition_are_refused():
    with pytest.raises(AdaptertxError, match="keeps 5 counts per example, these have 2"):
        stats_score(get_task("udpos"), [10, 12, 3])
