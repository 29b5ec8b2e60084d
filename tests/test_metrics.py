"""Metrics against hand-computed values."""

from __future__ import annotations

import pytest

from adaptertx.errors import AdaptertxError
from adaptertx.metrics import (
    METRICS,
    accuracy,
    bitext_f1,
    entity_f1,
    normalize_answer,
    normalize_answer_mlqa,
    score,
    squad_scores,
    tag_accuracy,
)
from adaptertx.tasks import get_task


def qa(id_, *answers):
    return {"id": id_, "title": "", "context": "", "question": "",
            "answers": {"text": list(answers), "answer_start": [0] * len(answers)}}


def test_accuracy():
    assert accuracy(["a", "b", "c", "a"], ["a", "b", "a", "b"]) == 50.0
    assert accuracy([1], [1]) == 100.0
    with pytest.raises(AdaptertxError, match="2 predictions for 1 references"):
        accuracy([1, 2], [1])
    with pytest.raises(AdaptertxError, match="nothing to score"):
        accuracy([], [])


def test_squad_normalisation():
    assert normalize_answer("The  Cat!") == "cat"
    assert normalize_answer("  An apple, a day\t") == "apple day"
    assert normalize_answer("theatre") == "theatre"  # articles only as whole words
    assert squad_scores({"q": "The  Cat!"}, [qa("q", "cat")]) == {"exact_match": 100.0, "f1": 100.0}


def test_squad_partial_overlap_f1():
    # pred tokens [big, black, cat], gold [black, cat, sat]: 2 shared, P = R = 2/3.
    s = squad_scores({"q": "the big black cat"}, [qa("q", "black cat sat")])
    assert s["exact_match"] == 0.0
    assert s["f1"] == pytest.approx(100 * 2 / 3)
    # Repeated tokens count with multiplicity: pred [a, b, b] vs gold [b]: P 1/3, R 1.
    s = squad_scores({"q": "x y y"}, [qa("q", "y")])
    assert s["f1"] == pytest.approx(100 * 2 * (1 / 3) / (1 / 3 + 1))


def test_squad_max_over_gold_and_average():
    examples = [qa("a", "Paris", "the city of Paris"), qa("b", "1912"), qa("c", "blue")]
    s = squad_scores({"a": "city of Paris", "b": "1912", "c": "red"}, examples)
    assert s["exact_match"] == pytest.approx(200 / 3)
    assert s["f1"] == pytest.approx(200 / 3)


def test_squad_unanswerable_and_missing():
    examples = [qa("none"), qa("has", "cat")]
    assert squad_scores({"none": "", "has": "cat"}, examples) == {"exact_match": 100.0, "f1": 100.0}
    assert squad_scores({"none": "a dog", "has": ""}, examples) == {"exact_match": 0.0, "f1": 0.0}
    # A gold answer that normalises to nothing counts as no answer (SQuAD v2.0 script).
    assert squad_scores({"q": ""}, [qa("q", "The")])["exact_match"] == 100.0
    # A missing prediction scores 0 and still counts in the average.
    assert squad_scores({"has": "cat"}, examples) == {"exact_match": 50.0, "f1": 50.0}


def test_mlqa_normalisation():
    assert normalize_answer_mlqa("La Casa", "es") == "casa"
    assert normalize_answer_mlqa("«Der Hund»", "de") == "hund"
    assert normalize_answer_mlqa("北京大学。", "zh") == "北 京 大 学"
    # Unicode punctuation goes with MLQA's normalisation, not with SQuAD's ASCII set.
    assert squad_scores({"q": "«casa»"}, [qa("q", "casa")], lang="es")["exact_match"] == 100.0
    assert squad_scores({"q": "«casa»"}, [qa("q", "casa")])["exact_match"] == 0.0
    # Chinese is scored by characters: pred 4 chars, gold 2 shared: P 1/2, R 1.
    s = squad_scores({"q": "北京大学"}, [qa("q", "北京")], lang="zh")
    assert s["exact_match"] == 0.0
    assert s["f1"] == pytest.approx(100 * 2 / 3)
    with pytest.raises(AdaptertxError, match="not 'sw'"):
        normalize_answer_mlqa("x", "sw")


def test_entity_f1_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"],
            ["O", "B-ORG", "I-ORG", "O"],
            ["B-MISC", "O"],
            ["O", "O"]]
    pred = [["B-PER", "O", "O", "B-LOC"],    # PER boundary error; LOC right
            ["O", "I-ORG", "I-ORG", "O"],    # I- after O starts an entity (conlleval): ORG right
            ["B-PER", "O"],                  # wrong type
            ["B-LOC", "O"]]                  # spurious entity
    # gold entities 4, predicted 5, correct 2.
    s = entity_f1(pred, gold)
    assert s["precision"] == pytest.approx(40.0)
    assert s["recall"] == pytest.approx(50.0)
    assert s["f1"] == pytest.approx(100 * 2 * 0.4 * 0.5 / 0.9)
    assert entity_f1(gold, gold)["f1"] == 100.0
    assert entity_f1([["O"]], [["O"]]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    with pytest.raises(AdaptertxError, match="sentence 0 has 1 predicted tags for 2 words"):
        entity_f1([["O"]], [["O", "O"]])


def test_tag_accuracy_is_over_words():
    gold = [["NOUN", "VERB", "PUNCT"], ["DET"]]
    pred = [["NOUN", "NOUN", "PUNCT"], ["PRON"]]
    assert tag_accuracy(pred, gold) == 50.0  # 2 of 4 words, not the mean of 2/3 and 0


def test_score_dispatch():
    assert set(METRICS) == {"accuracy", "f1_em", "entity_f1", "tag_f1"}
    xnli = get_task("xnli")
    examples = [{"id": "1", "label": "neutral"}, {"id": "2", "label": "entailment"}]
    assert score(xnli, ["neutral", "contradiction"], examples) == {"accuracy": 50.0}
    assert score(xnli, {"2": "entailment", "1": "neutral"}, examples) == {"accuracy": 100.0}
    with pytest.raises(AdaptertxError, match="no prediction for 1 examples"):
        score(xnli, {"1": "neutral"}, examples)
    xcopa = get_task("xcopa")
    assert score(xcopa, [1, 1], [{"id": "a", "label": 1}, {"id": "b", "label": 0}]) == {"accuracy": 50.0}
    udpos = get_task("udpos")
    # UD-POS: XTREME's seqeval F1 over the tag chunks, accuracy beside it. NOUN is right; a
    # sentence-final X is no chunk at all in seqeval (its type "_" is that of the "O" after the
    # sentence, so it never closes): one predicted chunk, right; two gold ones.
    assert score(udpos, [["NOUN", "X"]], [{"id": "s", "tokens": ["a", "b"], "tags": ["NOUN", "VERB"]}]) == \
        pytest.approx({"precision": 100.0, "recall": 50.0, "f1": 200 / 3, "accuracy": 50.0})
    ccg = get_task("ccg")  # CCG supertagging stays word accuracy
    assert score(ccg, [["N", "S"]], [{"id": "s", "tokens": ["a", "b"], "tags": ["N", "NP"]}]) == {"accuracy": 50.0}
    panx = get_task("panx")
    tagged = [{"id": "s", "tokens": ["a", "b"], "tags": ["B-PER", "O"]}]
    assert score(panx, [["B-PER", "O"]], tagged)["f1"] == 100.0
    mlqa = get_task("mlqa")
    assert score(mlqa, {"q": "«casa»"}, [qa("q", "casa")], lang="es")["exact_match"] == 100.0
    assert score(get_task("xquad"), {"q": "«casa»"}, [qa("q", "casa")], lang="es")["exact_match"] == 0.0
    with pytest.raises(AdaptertxError, match="retrieval_accuracy"):
        score(get_task("tatoeba"), [], [{"id": "x"}])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bitext_f1_is_mteb_sklearn_weighted_f1(seed):
    # MTEB's BitextMining F1: sklearn's support-weighted F1 of the found indices against gold i.
    import random

    from sklearn.metrics import accuracy_score, f1_score

    rng = random.Random(seed)
    n = 200
    nearest = [i if rng.random() < 0.6 else rng.randrange(n // 4) for i in range(n)]
    gold = list(range(n))
    want = 100 * f1_score(gold, nearest, average="weighted", zero_division=0)
    assert bitext_f1(nearest) == pytest.approx(want, abs=1e-9)
    assert bitext_f1(nearest) < 100 * accuracy_score(gold, nearest)  # candidates found twice cost F1
    assert bitext_f1(gold) == 100.0
    with pytest.raises(AdaptertxError, match="nothing to score"):
        bitext_f1([])
