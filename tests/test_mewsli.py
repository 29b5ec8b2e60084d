"""Mewsli-X: the release's two readers and entity retrieval scored by mAP@20."""

import json

import pytest
import torch
from click.testing import CliRunner

from adaptertx.cli import main
from adaptertx.data import read_file
from adaptertx.errors import AdaptertxError
from adaptertx.evaluation import NONE, EvalConfig, evaluate
from adaptertx.tasks import get_task

# Candidate entities as the release writes them (descriptions in mixed languages).
ENTITIES = [
    ("Q90", "Paris", "fr", "Paris est la capitale de la France."),
    ("Q64", "Berlin", "de", "Berlin ist die Hauptstadt Deutschlands."),
    ("Q38768", "Richter scale", "en", "The Richter scale is a measure of the strength of earthquakes."),
    ("Q1490", "Tokyo", "en", "Tokyo is the capital of Japan."),
    ("Q2807", "Madrid", "es", "Madrid es la capital de España."),
    ("Q84", "London", "en", "London is the capital of the United Kingdom."),
    ("Q1524", "Athens", "en", "Athens is the capital of Greece."),
    ("Q220", "Rome", "it", "Roma è la capitale d'Italia."),
]

# Articles: (document id, language, sentences, [(example id, entity, mention surface)]).
ARTICLES = [
    ("d1", "de", ["Am Montag reiste der Minister nach Paris.", "Danach flog er weiter nach Madrid."],
     [("m1", "Q90", "Paris"), ("m2", "Q2807", "Madrid")]),
    ("d2", "de", ["Das Beben hatte eine Stärke von 6,8 auf der Richterskala."], [("m3", "Q38768", "Richterskala")]),
    ("d3", "es", ["El presidente visitó Berlín y Londres.", "Volvió a Roma el viernes."],
     [("m4", "Q64", "Berlín"), ("m5", "Q84", "Londres"), ("m6", "Q220", "Roma")]),
]


def article(doc, lang, sentences, mentions, text=True) -> dict:
    body, spans = "", []
    for s in sentences:
        if body:
            body += " "
        spans.append([len(body), len(body) + len(s)])
        body += s
    return {"context": {"document_id": doc, "document_url": f"https://example.org/{doc}", "document_title": doc,
                        "section_title": "", "language": lang, "text": body if text else "", "sentence_spans": spans},
            "mentions": [{"example_id": ex, "entity_id": qid,
                          "mention_span": {"text": m, "start": body.index(m), "end": body.index(m) + len(m)}}
                         for ex, qid, m in mentions]}


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture()
def release(tmp_path):
    """A Mewsli-X dataset folder as get-mewsli-x.sh leaves it (files the scorer ignores included)."""
    d = tmp_path / "dataset"
    d.mkdir()
    write_jsonl(d / "candidate_set_entities.jsonl",
                [{"entity_id": q, "title": t, "description": desc, "description_url": f"https://{lang}.wikipedia.org/{t}",
                  "description_language": lang, "sentence_spans": [[0, len(desc)]]} for q, t, lang, desc in ENTITIES])
    write_jsonl(d / "wikinews_mentions-test.jsonl", [article(*a) for a in ARTICLES])
    write_jsonl(d / "wikinews_mentions_no_text-test.jsonl", [article(*a, text=False) for a in ARTICLES])
    write_jsonl(d / "wikipedia_pairs-train.jsonl", [{"unused": True}])
    (d / "de").mkdir()  # the per-language extraction folders are not files
    return d


def test_readers(release, tmp_path):
    cands = read_file(release / "candidate_set_entities.jsonl", "mewsli_candidates")
    assert [c["id"] for c in cands] == [e[0] for e in ENTITIES]
    assert cands[0] == {"id": "Q90", "text": "Paris est la capitale de la France.", "language": "fr"}
    rows = read_file(release / "wikinews_mentions-test.jsonl", "mewsli_mentions")
    assert [r["id"] for r in rows] == ["m1", "m2", "m3", "m4", "m5", "m6"]
    assert rows[1] == {"id": "m2", "language": "de", "entity_id": "Q2807", "mention": "Madrid",
                       "sentence": "Danach flog er weiter nach Madrid."}
    assert rows[5]["sentence"] == "Volvió a Roma el viernes."

    with pytest.raises(AdaptertxError, match=r"line 1: context.text is empty.*get-mewsli-x.sh"):
        read_file(release / "wikinews_mentions_no_text-test.jsonl", "mewsli_mentions")
    doc = article(*ARTICLES[0])
    doc["mentions"][0]["mention_span"]["start"] += 1
    bad = write_jsonl(tmp_path / "bad.jsonl", [doc])
    with pytest.raises(AdaptertxError,
                       match=r"bad\.jsonl, line 1: mentions\[0\]: the article text at .* not the mention 'Paris'"):
        read_file(bad, "mewsli_mentions")
    doc = article(*ARTICLES[0])
    doc["context"]["sentence_spans"][1] = [40, 999]
    write_jsonl(tmp_path / "bad.jsonl", [doc])
    with pytest.raises(AdaptertxError, match=r"context.sentence_spans\[1\]: expected \[start, end\]"):
        read_file(bad, "mewsli_mentions")
    write_jsonl(tmp_path / "bad.jsonl", [{"entity_id": "Q1", "description": " "}])
    with pytest.raises(AdaptertxError, match="'description' is missing or empty"):
        read_file(bad, "mewsli_candidates")
    write_jsonl(tmp_path / "bad.jsonl", [{"entity_id": "Q1", "description": "a"},
                                         {"entity_id": "Q1", "description": "b"}])
    with pytest.raises(AdaptertxError, match="duplicate example id 'Q1'"):
        read_file(bad, "mewsli_candidates")


def _brute_force(model_dir, release, pool=None):
    """AP@20 per mention from the full cosine matrix (torch sort): 1/rank of the gold entity."""
    from adaptertx.retrieval import SentenceEncoder, load_encoder, resolve_layer_prefix

    cands = [c for c in read_file(release / "candidate_set_entities.jsonl", "mewsli_candidates")
             if pool is None or c["id"] in pool]
    rows = read_file(release / "wikinews_mentions-test.jsonl", "mewsli_mentions")
    model, tokenizer, _ = load_encoder(model_dir)
    layer, prefix = resolve_layer_prefix(model, None, None)
    assert prefix == ""  # not an e5 model: no query/passage prefixes
    encoder = SentenceEncoder(model, tokenizer, layer=layer, max_length=128)
    emb = encoder([c["text"] for c in cands])
    out = {}
    for r in rows:
        q = encoder([f"{r['mention']}: {r['sentence']}"])
        order = torch.argsort(q @ emb.T, dim=1, descending=True)[0].tolist()
        ranked = [cands[j]["id"] for j in order]
        rank = ranked.index(r["entity_id"]) + 1 if r["entity_id"] in ranked else len(ranked) + 21
        out.setdefault(r["language"], []).append(1 / rank if rank <= 20 else 0.0)
    return out


def test_scores_equal_brute_force_from_the_release_folder(release, tiny_xlmr_dir, tmp_path):
    out = tmp_path / "result.json"
    res = CliRunner().invoke(main, ["evaluate", "mewsli_x", "--model", tiny_xlmr_dir, "--quant", "none",
                                    "--data-dir", str(release), "--max-length", "128", "--out", str(tmp_path / "run"),
                                    "--json", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())
    assert result["metric"] == "map@20"
    assert set(result["languages"]) == {"de", "es"}
    assert set(result["missing"]) == set(get_task("mewsli_x").languages) - {"de", "es"}
    brute = _brute_force(tiny_xlmr_dir, release)
    for lang, n in (("de", 3), ("es", 3)):
        r = result["languages"][lang]
        assert r["n"] == n and r["split"] == "test" and r["source"].endswith("wikinews_mentions-test.jsonl")
        assert [s[0] for s in r["stats"]] == pytest.approx(brute[lang], abs=1e-6)
        assert r["scores"]["map@20"] == pytest.approx(100 * sum(brute[lang]) / n, abs=1e-3)
    assert "map@20" in res.output and "de" in res.output


def test_subsampled_pool_keeps_every_gold_entity(release, tiny_xlmr_dir, tmp_path):
    files = (("mentions", str(release / "wikinews_mentions-test.jsonl")),
             ("candidates", str(release / "candidate_set_entities.jsonl")))
    cfg = EvalConfig("mewsli_x", model=tiny_xlmr_dir, quant="none", max_length=128, data_files=files,
                     languages=("de",), max_candidates=4)
    result = evaluate(cfg, NONE, tmp_path / "unused", progress=False)
    assert set(result.languages) == {"de"} and not result.missing
    assert any("subsampled to 4 of 8 entities" in n for n in result.notes)
    # The de mentions' gold entities (Q90, Q2807, Q38768) plus one sampled distractor (seed 0).
    import random

    others = [i for i, e in enumerate(ENTITIES) if e[0] not in {"Q90", "Q2807", "Q38768"}]
    extra = {ENTITIES[i][0] for i in random.Random(0).sample(others, 1)}
    brute = _brute_force(tiny_xlmr_dir, release, pool={"Q90", "Q2807", "Q38768", *extra})
    assert [s[0] for s in result.languages["de"].stats] == pytest.approx(brute["de"], abs=1e-6)
    # A pool at least as large as the file is the full pool, and says nothing.
    full = evaluate(EvalConfig("mewsli_x", model=tiny_xlmr_dir, quant="none", max_length=128, data_files=files,
                               languages=("de",), max_candidates=50), NONE, tmp_path / "unused", progress=False)
    assert not full.notes


def test_bad_input(release, tiny_xlmr_dir, tmp_path):
    result = evaluate(EvalConfig("mewsli_x", model=tiny_xlmr_dir, quant="none", languages=("ta",)), NONE,
                      tmp_path / "unused", progress=False)
    assert not result.languages and "get-mewsli-x.sh" in result.missing["ta"]
    mentions = str(release / "wikinews_mentions-test.jsonl")
    with pytest.raises(AdaptertxError, match="mewsli_x needs its candidates file"):
        evaluate(EvalConfig("mewsli_x", model=tiny_xlmr_dir, quant="none", data_files=(("mentions", mentions),)),
                 NONE, tmp_path / "unused", progress=False)
    with pytest.raises(AdaptertxError, match="not de="):
        evaluate(EvalConfig("mewsli_x", model=tiny_xlmr_dir, quant="none", data_files=(("de", mentions),)),
                 NONE, tmp_path / "unused", progress=False)
    few = write_jsonl(tmp_path / "few.jsonl", [{"entity_id": "Q90", "description": "Paris."}])
    with pytest.raises(AdaptertxError, match="links to Q2807, which is not in the candidate set"):
        evaluate(EvalConfig("mewsli_x", model=tiny_xlmr_dir, quant="none",
                            data_files=(("mentions", mentions), ("candidates", few))),
                 NONE, tmp_path / "unused", progress=False)
    with pytest.raises(AdaptertxError, match="max_candidates must be at least 1"):
        EvalConfig("mewsli_x", max_candidates=0)
