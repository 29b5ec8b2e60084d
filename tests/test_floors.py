"""The floors every score is shown beside: the majority predictor, chance, and the learned test."""

import math
import random

import pytest

from adaptertx.errors import AdaptertxError
from adaptertx.floors import chance, floor_predictions, floors, learned, majority_label, majority_score, versus_floor
from adaptertx.metrics import score
from adaptertx.tasks import get_task


def test_majority_label_takes_the_training_label_ties_to_the_smallest():
    task = get_task("mrpc")
    train_rows = [{"id": f"t{i}", "label": y} for i, y in enumerate(["1", "1", "0", "0", "0", "1", "0"])]
    assert majority_label(task, train_rows) == "0"
    assert majority_label(task, train_rows[:4]) == "0"  # a tie goes to the smallest label
    rows = [{"id": str(i), "label": y} for i, y in enumerate(["0", "0", "0", "1", "1"])]
    assert majority_score(task, rows, train_rows) == pytest.approx(60.0)
    # The test split's own majority is not the floor: with training label 1 it is 40%.
    assert majority_score(task, rows, [{"id": "t", "label": "1"}]) == pytest.approx(40.0)


def test_tagging_floors_are_the_most_frequent_training_tag():
    pos = get_task("udpos")
    train_rows = [{"id": "a", "tags": ["NOUN", "VERB", "NOUN"]}, {"id": "b", "tags": ["DET", "NOUN"]}]
    rows = [{"id": "x", "tags": ["NOUN", "VERB", "ADJ", "NOUN"]}, {"id": "y", "tags": ["PRON", "NOUN"]}]
    assert floor_predictions(pos, rows, train_rows) == [["NOUN"] * 4, ["NOUN"] * 2]
    # Scored with UD-POS's own metric (XTREME's seqeval F1, checked against seqeval in the metric tests).
    want = score(pos, [["NOUN"] * 4, ["NOUN"] * 2], rows)["f1"]
    assert floors(pos, rows, train_rows)["majority"] == pytest.approx(want)
    ner = get_task("conll03")
    ner_train = [{"id": "a", "tags": ["B-PER", "O", "O"]}, {"id": "b", "tags": ["O", "B-LOC"]}]
    ner_rows = [{"id": "x", "tags": ["B-ORG", "I-ORG", "O"]}]
    assert floor_predictions(ner, ner_rows, ner_train) == [["O", "O", "O"]]
    assert floors(ner, ner_rows, ner_train) == {"majority": 0.0, "chance": 0.0}  # all-O: entity F1 0


def test_chance_per_family():
    assert chance(get_task("mrpc")) == pytest.approx(50.0)
    assert chance(get_task("xnli")) == pytest.approx(100 / 3)
    rows = [{"choices": ["a", "b"]}, {"choices": ["a", "b", "c", "d"]}]
    assert chance(get_task("commonsenseqa"), rows) == pytest.approx(100 * (1 / 2 + 1 / 4) / 2)
    assert chance(get_task("commonsenseqa")) == pytest.approx(20.0)
    assert chance(get_task("tatoeba"), candidates=200) == pytest.approx(0.5)
    assert chance(get_task("xquad")) == 0.0 and chance(get_task("masakhaner")) == 0.0
    assert chance(get_task("udpos")) is None  # chunk F1 of random tags: no closed form
    qa_rows = [{"id": "q", "answers": {"text": ["Paris"], "answer_start": [0]}, "context": "Paris", "question": "?"}]
    assert floors(get_task("xquad"), qa_rows, [])["majority"] == 0.0  # answering nothing scores 0


def _classification(n, model_right, floor_right, seed=0):
    """n MRPC rows with training majority "0", and predictions right on ``model_right`` of them."""
    rng = random.Random(seed)
    rows = [{"id": str(i), "label": "0" if i < floor_right else "1"} for i in range(n)]
    right = set(rng.sample(range(n), model_right))
    preds = [r["label"] if i in right else ("1" if r["label"] == "0" else "0") for i, r in enumerate(rows)]
    return rows, preds, [{"id": "t", "label": "0"}]


def test_versus_floor_pairs_the_model_with_the_majority_predictor():
    task = get_task("mrpc")
    rows, preds, train_rows = _classification(400, 300, 200)
    out = versus_floor(task, preds, rows, train_rows)
    assert out["score"] == pytest.approx(75.0) and out["floor"] == pytest.approx(50.0)
    assert out["difference"] == pytest.approx(25.0) and out["n"] == 400 and out["metric"] == "accuracy"
    # The paired bootstrap agrees with the normal approximation of the mean per-example difference.
    diffs = [float(p == r["label"]) - float(r["label"] == "0") for p, r in zip(preds, rows, strict=True)]
    mean = sum(diffs) / len(diffs)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
    half = 100 * 1.96 * sd / math.sqrt(len(diffs))
    assert out["low"] == pytest.approx(25.0 - half, abs=1.0) and out["high"] == pytest.approx(25.0 + half, abs=1.0)
    assert learned(out) is True
    assert versus_floor(task, preds, rows, train_rows) == out  # repeatable


def test_a_model_that_predicts_the_floor_did_not_learn():
    task = get_task("mrpc")
    rows, _, train_rows = _classification(50, 25, 30)
    out = versus_floor(task, ["0"] * 50, rows, train_rows)
    assert (out["difference"], out["low"], out["high"]) == (0.0, 0.0, 0.0)
    assert learned(out) is False and learned(None) is None


def test_ner_versus_the_all_o_floor():
    task = get_task("conll03")
    rows = [{"id": str(i), "tags": ["B-PER", "O"] if i % 2 else ["O", "B-LOC"]} for i in range(40)]
    train_rows = [{"id": "t", "tags": ["O", "O", "B-PER"]}]
    perfect = [r["tags"] for r in rows]
    out = versus_floor(task, perfect, rows, train_rows)
    assert out["score"] == pytest.approx(100.0) and out["floor"] == 0.0 and out["low"] == pytest.approx(100.0)
    half = [r["tags"] if i < 20 else ["O", "O"] for i, r in enumerate(rows)]
    out = versus_floor(task, half, rows, train_rows)
    assert out["score"] == pytest.approx(100 * 2 * 0.5 / 1.5)  # precision 1, recall 1/2
    assert 0 < out["low"] < out["difference"] < out["high"] < 100


def test_versus_floor_refuses_misaligned_predictions():
    task = get_task("mrpc")
    rows, preds, train_rows = _classification(10, 5, 5)
    with pytest.raises(AdaptertxError, match="9 predictions for 10 examples"):
        versus_floor(task, preds[:9], rows, train_rows)
    assert versus_floor(get_task("tatoeba"), [], rows, train_rows) is None
