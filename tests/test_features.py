"""Encoding examples for the adapters heads and decoding head outputs back to predictions."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from adaptertx.data import load
from adaptertx.errors import AdaptertxError
from adaptertx.features import IGNORE_INDEX, decode_predictions, encode_examples, postprocess_qa
from adaptertx.metrics import normalize_answer
from adaptertx.tasks import get_task


@pytest.fixture(scope="module")
def tok(tiny_xlmr):
    """The default model's tokenizer (XLM-R's vocabulary), as loaded with the tiny XLM-R."""
    return tiny_xlmr[1]


def one_hot(index: torch.Tensor, n: int) -> torch.Tensor:
    return F.one_hot(index.clamp(min=0), n).float()


# ----------------------------------------------------------------------------- classification


def test_classification_pairs_and_labels(tok):
    task = get_task("xnli")
    examples = load("xnli", "en", "validation")[:40]
    f = encode_examples(task, examples, tok)
    assert len(f) == 40 and f.truncated == 0
    assert f.tensors["labels"].tolist() == [task.labels.index(ex["label"]) for ex in examples]
    # Exactly what the tokenizer gives for the pair, padded on the right; no token_type_ids
    # since XLM-R's tokenizer returns none.
    assert "token_type_ids" not in f.tensors
    ids = tok(examples[3]["text_a"], examples[3]["text_b"])["input_ids"]
    assert f.tensors["input_ids"][3, :len(ids)].tolist() == ids
    assert f.tensors["attention_mask"][3].sum() == len(ids)
    assert (f.tensors["input_ids"][3, len(ids):] == tok.pad_token_id).all()
    logits = one_hot(f.tensors["labels"], len(task.labels))
    assert decode_predictions(task, f, logits) == [ex["label"] for ex in examples]


def test_classification_truncates_and_counts(tok):
    task = get_task("mrpc")
    long = "word " * 400
    examples = [{"id": "a", "text_a": long, "text_b": "short", "label": "1"},
                {"id": "b", "text_a": "tiny", "text_b": "pair", "label": "0"}]
    f = encode_examples(task, examples, tok, max_length=32)
    assert f.truncated == 1
    assert f.seq_len == 32 and f.tensors["attention_mask"][1].sum() < 32


def test_classification_bad_label(tok):
    examples = [{"id": "ex-7", "text_a": "a", "text_b": "b", "label": "maybe"}]
    with pytest.raises(AdaptertxError, match=r"example 'ex-7' has label 'maybe', not one of entailment, neutral, "
                                             r"contradiction"):
        encode_examples(get_task("xnli"), examples, tok)


def test_token_type_ids_pass_through(tmp_path):
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    bert_tok = BertTokenizerFast(str(tmp_path / "vocab.txt"))
    f = encode_examples(get_task("mrpc"), [{"id": "x", "text_a": "a b", "text_b": "c", "label": "1"},
                                           {"id": "y", "text_a": "a", "text_b": "b", "label": "0"}], bert_tok)
    assert f.tensors["token_type_ids"].tolist() == [[0, 0, 0, 0, 1, 1], [0, 0, 0, 1, 1, 0]]


# ----------------------------------------------------------------------------- multiple choice


def test_multiple_choice_shapes_and_pairs(tok):
    task = get_task("copa")
    examples = load("copa", "en", "train")[:10]
    f = encode_examples(task, examples, tok)
    assert f.tensors["input_ids"].shape[:2] == (10, 2)
    assert f.tensors["labels"].tolist() == [ex["label"] for ex in examples]
    ex = examples[0]
    ids = tok(ex["context"] + " " + ex["question"], ex["choices"][1])["input_ids"]
    assert f.tensors["input_ids"][0, 1, :len(ids)].tolist() == ids
    assert decode_predictions(task, f, one_hot(f.tensors["labels"], 2)) == [ex["label"] for ex in examples]
    # CommonsenseQA has no context: the question alone is paired with each of 5 choices.
    csqa = load("commonsenseqa", "en", "train")[:3]
    g = encode_examples(get_task("commonsenseqa"), csqa, tok)
    ids = tok(csqa[0]["question"], csqa[0]["choices"][4])["input_ids"]
    assert g.tensors["input_ids"][0, 4, :len(ids)].tolist() == ids


def test_multiple_choice_errors(tok):
    task = get_task("copa")
    good = {"id": "c1", "context": "x", "question": "q", "choices": ["a", "b"], "label": 1}
    with pytest.raises(AdaptertxError, match=r"example 'c2' has 3 choices, expected 2"):
        encode_examples(task, [good, dict(good, id="c2", choices=["a", "b", "c"])], tok)
    with pytest.raises(AdaptertxError, match=r"example 'c3' has label 2, expected an integer in 0..1"):
        encode_examples(task, [dict(good, id="c3", label=2)], tok)
    with pytest.raises(AdaptertxError, match=r"example 'c4' has label '1'"):
        encode_examples(task, [dict(good, id="c4", label="1")], tok)


# ----------------------------------------------------------------------------- extractive QA


@pytest.fixture(scope="module")
def qa_examples():
    return load("xquad", "en", "test") + load("mlqa", "en", "train")[:300]


@pytest.fixture(scope="module")
def qa_features(tok, qa_examples):
    return encode_examples(get_task("xquad"), qa_examples, tok, max_length=192, doc_stride=64)


def test_qa_gold_positions_round_trip(qa_features, qa_examples):
    f = qa_features
    windows = {}
    for ex_id in f.example_ids:
        windows[ex_id] = windows.get(ex_id, 0) + 1
    assert sum(n > 1 for n in windows.values()) >= 50  # long contexts split into several windows
    starts = one_hot(f.tensors["start_positions"], f.seq_len)
    ends = one_hot(f.tensors["end_positions"], f.seq_len)
    pred = decode_predictions(get_task("xquad"), f, (starts, ends))
    assert list(pred) == [ex["id"] for ex in qa_examples]
    ok = [normalize_answer(pred[ex["id"]]) == normalize_answer(ex["answers"]["text"][0]) for ex in qa_examples]
    assert sum(ok) / len(ok) >= 0.98
    multi_ok = [o for ex, o in zip(qa_examples, ok, strict=True) if windows[ex["id"]] > 1]
    assert sum(multi_ok) / len(multi_ok) >= 0.98
    # The answer is found in a later window for some examples.
    first_row = {}
    for row, ex_id in enumerate(f.example_ids):
        first_row.setdefault(ex_id, row)
    later = {ex_id for row, ex_id in enumerate(f.example_ids)
             if row != first_row[ex_id] and f.tensors["start_positions"][row] > 0
             and f.tensors["start_positions"][first_row[ex_id]] == 0}
    assert len(later) >= 10


def test_qa_windows(qa_features, tok):
    f = qa_features
    assert f.seq_len <= 192
    assert f.truncated == 0
    rows = [r for r, ex_id in enumerate(f.example_ids) if ex_id == f.example_ids[r - 1]][:20]
    for r in rows:
        prev = [o for o in f.offsets[r - 1] if o is not None]
        cur = [o for o in f.offsets[r] if o is not None]
        # Consecutive windows overlap by doc_stride tokens and move forward.
        assert prev[-64:] == cur[:64]
        assert cur[-1][1] > prev[-1][1]
    for r in range(len(f)):
        # Positions sit on context tokens or on CLS.
        for key in ("start_positions", "end_positions"):
            p = int(f.tensors[key][r])
            assert p == f.cls_index[r] == 0 or f.offsets[r][p] is not None
        assert f.tensors["start_positions"][r] <= f.tensors["end_positions"][r]


def test_qa_unanswerable_and_null_threshold(tok):
    task = get_task("squad_v2")
    context = "Alice went to Paris in 1999 to study painting."
    examples = [{"id": "no", "title": "", "context": context, "question": "Where did Bob go?",
                 "answers": {"text": [], "answer_start": []}},
                {"id": "yes", "title": "", "context": context, "question": "Where did Alice go?",
                 "answers": {"text": ["Paris"], "answer_start": [14]}}]
    f = encode_examples(task, examples, tok)
    assert f.tensors["start_positions"][0] == f.tensors["end_positions"][0] == 0
    start, end = one_hot(f.tensors["start_positions"], f.seq_len), one_hot(f.tensors["end_positions"], f.seq_len)
    assert decode_predictions(task, f, (start, end)) == {"no": "", "yes": "Paris"}
    # Without null answers the best span wins even where the null score is higher.
    pred = postprocess_qa(f, start, end, version_2_with_negative=False)
    assert pred["no"] != "" and pred["yes"] == "Paris"
    # A null score 2 above the best span: null under threshold 1, span under threshold 3.
    s, e = start.clone(), end.clone()
    s[1, 0] = e[1, 0] = 2.0
    assert postprocess_qa(f, s, e, null_score_diff_threshold=1.0)["yes"] == ""
    assert postprocess_qa(f, s, e, null_score_diff_threshold=3.0)["yes"] == "Paris"
    # max_answer_length in tokens: the one-hot span is 1 token long.
    e2 = end.clone()
    e2[1, int(f.tensors["end_positions"][1]) + 3] = 0.5
    assert postprocess_qa(f, start, e2, max_answer_length=4)["yes"] == "Paris"


def test_qa_long_question_and_errors(tok):
    task = get_task("xquad")
    ex = {"id": "q", "title": "", "context": "The sky is blue.", "question": "why " * 200,
          "answers": {"text": ["blue"], "answer_start": [11]}}
    f = encode_examples(task, [ex], tok, max_length=128, doc_stride=32)
    assert f.truncated == 1 and f.seq_len <= 128
    pred = decode_predictions(task, f, (one_hot(f.tensors["start_positions"], f.seq_len),
                                        one_hot(f.tensors["end_positions"], f.seq_len)))
    assert normalize_answer(pred["q"]) == "blue"
    with pytest.raises(AdaptertxError, match="doc_stride 128 must be below"):
        encode_examples(task, [ex], tok, max_length=128, doc_stride=128)
    with pytest.raises(AdaptertxError, match="example 'bad' has an answer at characters 11..50"):
        encode_examples(task, [dict(ex, id="bad", answers={"text": ["x" * 39], "answer_start": [11]})], tok)
    with pytest.raises(AdaptertxError, match="must be a pair"):
        decode_predictions(task, f, f.tensors["start_positions"])


# ----------------------------------------------------------------------------- tagging


@pytest.mark.parametrize("name,dataset,lang,split", [
    ("conll03", "conll03", "en", "validation"), ("udpos", "udpos", "en", "test"),
    ("udpos", "udpos", "zh", "validation"), ("panx", "panx", "sw", "test")])
def test_tagging_round_trip(tok, name, dataset, lang, split):
    task = get_task(name)
    examples = load(dataset, lang, split)[:200]
    f = encode_examples(task, examples, tok)
    assert f.truncated == 0
    labels = f.tensors["labels"]
    # One label per word, on its first sub-token; -100 elsewhere (specials and padding too).
    assert ((labels != IGNORE_INDEX).sum(dim=1).tolist() == [len(ex["tokens"]) for ex in examples])
    assert (labels[:, 0] == IGNORE_INDEX).all()
    assert (labels[f.tensors["attention_mask"] == 0] == IGNORE_INDEX).all()
    pred = decode_predictions(task, f, one_hot(labels, len(task.labels)))
    assert pred == [ex["tags"] for ex in examples]


def test_tagging_first_subword_and_truncation(tok):
    task = get_task("panx")
    ex = {"id": "s", "tokens": ["Johannesburgerstrasse", "in", "", "Nairobi"],
          "tags": ["B-LOC", "O", "O", "B-LOC"]}
    f = encode_examples(task, [ex], tok)
    pieces = tok(ex["tokens"], is_split_into_words=True)
    first = [i for i, w in enumerate(pieces.word_ids()) if w is not None and w != pieces.word_ids()[i - 1]]
    labelled = (f.tensors["labels"][0] != IGNORE_INDEX).nonzero().flatten().tolist()
    # The zero-width word has no token of its own and is encoded as <unk>.
    assert len(labelled) == 4 and labelled[:2] == first[:2]
    assert f.tensors["input_ids"][0, labelled[2]] == tok.unk_token_id
    assert decode_predictions(task, f, one_hot(f.tensors["labels"], len(task.labels))) == [ex["tags"]]
    # Words cut by max_length count as truncated and decode to "O".
    long = {"id": "l", "tokens": ["Nairobi"] * 50, "tags": ["B-LOC"] * 50}
    g = encode_examples(task, [long, ex], tok, max_length=16)
    assert g.truncated == 1 and g.seq_len == 16
    pred = decode_predictions(task, g, one_hot(g.tensors["labels"], len(task.labels)))
    assert len(pred[0]) == 50 and pred[0][:5] == ["B-LOC"] * 5 and pred[0][-1] == "O"


def test_tagging_errors(tok):
    task = get_task("conll03")
    with pytest.raises(AdaptertxError, match=r"example 't1' has tag 'B-DATE', not one of O, B-PER"):
        encode_examples(task, [{"id": "t1", "tokens": ["x"], "tags": ["B-DATE"]}], tok)
    with pytest.raises(AdaptertxError, match=r"example 't2' has 2 tokens but 1 tags"):
        encode_examples(task, [{"id": "t2", "tokens": ["x", "y"], "tags": ["O"]}], tok)
    with pytest.raises(AdaptertxError, match="'tatoeba' is a retrieval task"):
        encode_examples(get_task("tatoeba"), [{"id": "r"}], tok)


# ----------------------------------------------------------------------------- batches and heads


def test_batch_cuts_padding_and_decodes_from_batches(tok):
    task = get_task("udpos")
    examples = load("udpos", "en", "test")[:37]
    f = encode_examples(task, examples, tok)
    lengths = f.tensors["attention_mask"].sum(dim=1)
    b = f.batch([2, 5])
    assert b["input_ids"].shape[1] == int(lengths[[2, 5]].max())
    assert b["input_ids"].is_contiguous() and set(b) == {"input_ids", "attention_mask", "labels"}
    assert set(f.batch([0], labels=False)) == {"input_ids", "attention_mask"}
    with pytest.raises(AdaptertxError, match="out of range"):
        f.batch([37])
    full = one_hot(f.tensors["labels"], len(task.labels))
    parts = [one_hot(batch["labels"], len(task.labels)) for batch in f.batches(8)]
    assert sum(p.shape[0] for p in parts) == 37
    assert decode_predictions(task, f, parts) == decode_predictions(task, f, full) == [ex["tags"] for ex in examples]


def test_features_feed_the_adapters_heads(tiny_xlmr):
    from adapters import XLMRobertaAdapterModel

    model, tokenizer = tiny_xlmr
    torch.manual_seed(0)
    heads = XLMRobertaAdapterModel(model.config).eval()
    cases = [("xnli", "xnli", "validation"), ("copa", "copa", "train"), ("xquad", "xquad", "validation"),
             ("conll03", "conll03", "validation")]
    for name, dataset, split in cases:
        task = get_task(name)
        f = encode_examples(task, load(dataset, "en", split)[:4], tokenizer, max_length=128, doc_stride=32)
        if task.family == "classification":
            heads.add_classification_head(name, num_labels=len(task.labels))
        elif task.family == "multiple_choice":
            heads.add_multiple_choice_head(name, num_choices=task.num_choices)
        elif task.family == "extractive_qa":
            heads.add_qa_head(name)
        else:
            heads.add_tagging_head(name, num_labels=len(task.labels))
        heads.active_head = name
        outs = [heads(**batch) for batch in f.batches(4)]
        assert all(torch.isfinite(o.loss) for o in outs)
        if task.family == "extractive_qa":
            pred = decode_predictions(task, f, ([o.start_logits for o in outs], [o.end_logits for o in outs]))
            assert len(pred) == 4
        else:
            pred = decode_predictions(task, f, [o.logits for o in outs])
            assert len(pred) == 4


def test_decode_checks(tok):
    task = get_task("xnli")
    f = encode_examples(task, load("xnli", "en", "validation")[:4], tok)
    with pytest.raises(AdaptertxError, match="got 3 rows of logits for 4 feature rows"):
        decode_predictions(task, f, torch.zeros(3, 3))
    with pytest.raises(AdaptertxError, match="encoded for task 'xnli', not 'pawsx'"):
        decode_predictions(get_task("pawsx"), f, torch.zeros(4, 2))
    with pytest.raises(AdaptertxError, match="apply to extractive QA only"):
        decode_predictions(task, f, torch.zeros(4, 3), n_best=5)
    assert len(replace(f, truncated=3)) == 4
