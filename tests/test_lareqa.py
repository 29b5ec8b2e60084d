"""LAReQA (XQuAD-R): the mAP@20 metric, the XQuAD-R reader and language-agnostic scoring."""

import json

import pytest
import torch

from adaptertx.data import read_file
from adaptertx.errors import AdaptertxError
from adaptertx.evaluation import NONE, EvalConfig, evaluate
from adaptertx.metrics import PRIMARY, average_precision_at_k, example_stats, stats_score
from adaptertx.tasks import get_task

# Two paragraphs per language; question ids shared across languages (as in XQuAD-R).
PARAGRAPHS = {
    "en": [
        (["Paris is the capital of France.", "It lies on the Seine.", "Many tourists visit it."],
         [("q1", "What river is Paris on?", "Seine"), ("q2", "What is the capital of France?", "Paris")]),
        (["Berlin has many museums.", "The city has three million people."],
         [("q3", "How many people live in Berlin?", "three million")]),
    ],
    "de": [
        (["Paris ist die Hauptstadt Frankreichs.", "Es liegt an der Seine.", "Viele Touristen besuchen es."],
         [("q1", "An welchem Fluss liegt Paris?", "Seine"), ("q2", "Was ist die Hauptstadt Frankreichs?", "Paris")]),
        (["Berlin hat viele Museen.", "Die Stadt hat drei Millionen Einwohner."],
         [("q3", "Wie viele Menschen leben in Berlin?", "drei Millionen")]),
    ],
}


def xquadr(paragraphs, breaks=True) -> dict:
    """An XQuAD-R document: sentences joined by one space, breaks as [start, end) offsets."""
    pars = []
    for sentences, qas in paragraphs:
        context, spans = "", []
        for s in sentences:
            if context:
                context += " "
            spans.append([len(context), len(context) + len(s)])
            context += s
        par = {"context": context,
               "qas": [{"id": qid, "question": q, "answers": [{"text": a, "answer_start": context.index(a)}]}
                       for qid, q, a in qas]}
        if breaks:
            par.update(sentences=sentences, sentence_breaks=spans)
        pars.append(par)
    return {"version": "1.1", "data": [{"title": "T", "paragraphs": pars}]}


@pytest.fixture()
def files(tmp_path):
    out = {}
    for lang, pars in PARAGRAPHS.items():
        p = tmp_path / f"{lang}.json"
        p.write_text(json.dumps(xquadr(pars)), encoding="utf-8")
        out[lang] = str(p)
    return out


# ------------------------------------------------------------------------------ metric


def test_average_precision_by_hand():
    assert average_precision_at_k({"a", "b"}, ["a", "x", "b"]) == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert average_precision_at_k({"a", "b"}, ["x", "a", "y", "b"]) == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert average_precision_at_k({"a"}, ["x", "y"]) == 0.0
    assert average_precision_at_k({"a"}, []) == 0.0
    # Relevant beyond the cut do not count.
    assert average_precision_at_k({"a"}, ["x", "y", "a"], k=2) == 0.0
    # More relevant than k: the divisor is k.
    rel = {f"r{i}" for i in range(30)}
    assert average_precision_at_k(rel, [f"r{i}" for i in range(30)]) == pytest.approx(1.0)
    assert average_precision_at_k(rel, ["r0", "x"], k=2) == pytest.approx((1 / 1) / 2)
    # A candidate repeated in the ranking counts once.
    assert average_precision_at_k({"a", "b"}, ["a", "a", "b"]) == pytest.approx((1 / 1 + 2 / 3) / 2)
    with pytest.raises(AdaptertxError, match="relevant set is empty"):
        average_precision_at_k(set(), ["a"])
    with pytest.raises(AdaptertxError, match="k must be a positive integer"):
        average_precision_at_k({"a"}, ["a"], k=0)


def test_map_stats_rows_and_score():
    task = get_task("lareqa")
    assert PRIMARY[task.metric] == "map@20"
    examples = [{"id": "q1", "relevant": {"a", "b"}}, {"id": "q2", "relevant": {"c"}}]
    stats = example_stats(task, [["a", "x", "b"], ["x", "y"]], examples)
    assert stats == [[pytest.approx((1 + 2 / 3) / 2)], [0.0]]
    assert stats_score(task, [stats[0][0] + stats[1][0], 2]) == {"map@20": pytest.approx(100 * (1 + 2 / 3) / 4)}
    by_id = example_stats(task, {"q2": ["c"], "q1": ["b"]}, examples)
    assert by_id == [[pytest.approx(0.5)], [1.0]]
    with pytest.raises(AdaptertxError, match="no 'relevant' set"):
        example_stats(task, [["a"]], [{"id": "q1"}])


# ------------------------------------------------------------------------------ reader


def test_reader(files, tmp_path):
    en = read_file(files["en"], "xquadr_json")
    assert en["candidates"] == [
        {"id": "0.0.0", "text": "Paris is the capital of France.", "context": en["candidates"][0]["context"]},
        {"id": "0.0.1", "text": "It lies on the Seine.", "context": en["candidates"][0]["context"]},
        {"id": "0.0.2", "text": "Many tourists visit it.", "context": en["candidates"][0]["context"]},
        {"id": "0.1.0", "text": "Berlin has many museums.", "context": en["candidates"][3]["context"]},
        {"id": "0.1.1", "text": "The city has three million people.", "context": en["candidates"][3]["context"]},
    ]
    assert en["candidates"][0]["context"].startswith("Paris is") and en["candidates"][3]["context"].startswith("Berlin")
    assert en["questions"] == [
        {"id": "q1", "question": "What river is Paris on?", "answer_sentence": "0.0.1"},
        {"id": "q2", "question": "What is the capital of France?", "answer_sentence": "0.0.0"},
        {"id": "q3", "question": "How many people live in Berlin?", "answer_sentence": "0.1.1"},
    ]
    de = read_file(files["de"], "xquadr_json")
    assert [q["answer_sentence"] for q in de["questions"]] == ["0.0.1", "0.0.0", "0.1.1"]

    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(xquadr(PARAGRAPHS["en"], breaks=False)), encoding="utf-8")
    with pytest.raises(AdaptertxError,
                       match=r"plain\.json: data\[0\]\.paragraphs\[0\]: no 'sentences' and 'sentence_breaks'"):
        read_file(plain, "xquadr_json")
    doc = xquadr(PARAGRAPHS["en"])
    doc["data"][0]["paragraphs"][1]["sentence_breaks"] = [[0, 24]]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(AdaptertxError, match=r"paragraphs\[1\]: 2 sentences but 1 sentence breaks"):
        read_file(bad, "xquadr_json")
    doc = xquadr(PARAGRAPHS["en"])
    doc["data"][0]["paragraphs"][1]["sentence_breaks"] = [[0, 24], [25, 999]]
    bad.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(AdaptertxError, match=r"sentence_breaks\[1\]: expected \[start, end\]"):
        read_file(bad, "xquadr_json")


# ------------------------------------------------------------------------------ scoring


def _brute_force(model_dir, files):
    """mAP@20 per language from the full cosine matrix (torch sort), by the reference definition."""
    from adaptertx.retrieval import SentenceEncoder, load_encoder, resolve_layer_prefix

    sets = {lang: read_file(path, "xquadr_json") for lang, path in files.items()}
    ids = [f"{lang}:{c['id']}" for lang, s in sets.items() for c in s["candidates"]]
    texts = [c["text"] for s in sets.values() for c in s["candidates"]]
    gold = {}
    for lang, s in sets.items():
        for q in s["questions"]:
            gold.setdefault(q["id"], set()).add(f"{lang}:{q['answer_sentence']}")
    model, tokenizer, _ = load_encoder(model_dir)
    layer, prefix = resolve_layer_prefix(model, None, None)
    assert prefix == ""  # not an e5 model: no query/passage prefixes
    encoder = SentenceEncoder(model, tokenizer, layer=layer, prefix=prefix)
    cands = encoder(texts)
    out = {}
    for lang, s in sets.items():
        qs = encoder([q["question"] for q in s["questions"]])
        order = torch.argsort(qs @ cands.T, dim=1, descending=True)
        aps = []
        for q, row in zip(s["questions"], order.tolist(), strict=True):
            ranked = [ids[j] for j in row][:20]
            hits, total = 0, 0.0
            for i, c in enumerate(ranked):
                if c in gold[q["id"]] and c not in ranked[:i]:
                    hits += 1
                    total += hits / (i + 1)
            aps.append(total / min(len(gold[q["id"]]), 20))
        out[lang] = aps
    return out


def test_lareqa_scores_equal_brute_force(files, tiny_xlmr_dir, tmp_path):
    cfg = EvalConfig("lareqa", model=tiny_xlmr_dir, quant="none", data_files=(("en", files["en"]), ("de", files["de"])))
    result = evaluate(cfg, NONE, tmp_path / "unused", progress=False)
    assert result.metric == "map@20" and result.primary == "map@20"
    assert set(result.languages) == {"en", "de"}
    assert set(result.missing) == set(get_task("lareqa").languages) - {"en", "de"}
    assert "--data-file ar=xquad-r/ar.json" in result.missing["ar"]
    brute = _brute_force(tiny_xlmr_dir, files)
    task = get_task("lareqa")
    for lang in ("en", "de"):
        r = result.languages[lang]
        assert r.n == 3 and r.split == "test" and r.source == files[lang]
        assert [s[0] for s in r.stats] == pytest.approx(brute[lang], abs=1e-6)
        assert r.scores["map@20"] == pytest.approx(100 * sum(brute[lang]) / 3, abs=1e-3)
        total = sum(s[0] for s in r.stats)
        assert stats_score(task, [total, len(r.stats)])["map@20"] == pytest.approx(r.scores["map@20"], abs=1e-3)
    # Every question's relevant set spans both languages: two answers, so AP is never 1 with one hit.
    assert all(0.0 <= s[0] <= 1.0 for r in result.languages.values() for s in r.stats)


def test_lareqa_without_files_and_bad_input(files, tiny_xlmr_dir, tmp_path):
    result = evaluate(EvalConfig("lareqa", model=tiny_xlmr_dir, quant="none", languages=("de",)), NONE,
                      tmp_path / "unused", progress=False)
    assert not result.languages and "--data-file de=xquad-r/de.json" in result.missing["de"]
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(xquadr(PARAGRAPHS["en"], breaks=False)), encoding="utf-8")
    cfg = EvalConfig("lareqa", model=tiny_xlmr_dir, quant="none", data_files=(("en", str(plain)),))
    with pytest.raises(AdaptertxError, match="no 'sentences' and 'sentence_breaks'"):
        evaluate(cfg, NONE, tmp_path / "unused", progress=False)
