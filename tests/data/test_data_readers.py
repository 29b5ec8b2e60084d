"""read_file: round trips for every format and clear errors on malformed input."""

from __future__ import annotations

import gzip
import json
import lzma

import pytest

from adaptertx.data import FORMATS, read_file
from adaptertx.errors import AdaptertxError

CONLLU = (
    "# sent_id = 1\n"
    "1-2\tdu\t_\t_\t_\t_\t_\t_\t_\t_\n"
    "1\tde\tde\tADP\t_\t_\t3\tcase\t_\t_\n"
    "2\tle\tle\tDET\t_\t_\t3\tdet\t_\t_\n"
    "3\tchat\tchat\tNOUN\t_\t_\t0\troot\t_\t_\n"
    "3.1\tx\tx\tNOUN\t_\t_\t_\t_\t_\t_\n"
    "\n"
    "1\tOui\toui\tINTJ\t_\t_\t0\troot\t_\t_\n"
)
# The XNLI-1.0 release's xnli.test.tsv: its 19-column header, parse columns as released (empty here).
XNLI10_HEADER = ("language\tgold_label\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
                 "sentence2_parse\tsentence1\tsentence2\tpromptID\tpairID\tgenre\tlabel1\tlabel2\tlabel3\tlabel4\t"
                 "label5\tsentence1_tokenized\tsentence2_tokenized\tmatch")


def xnli10_row(lang, label, s1, s2, pair):
    return "\t".join([lang, label, "", "", "", "", s1, s2, "1", pair, "facetoface", label, label, label, label,
                      label, s1, s2, "True"])


XNLI10 = "\n".join([XNLI10_HEADER,
                    xnli10_row("de", "neutral", "Er sagte, Mama, ich bin daheim.", "Er rief seine Mutter an.", "1"),
                    xnli10_row("de", "contradiction", "Er sagte, Mama, ich bin daheim.", "Er sagte kein Wort.", "2"),
                    xnli10_row("sw", "neutral", "Alisema, Mama, niko nyumbani.", "Alimpigia mama yake simu.", "1"),
                    xnli10_row("sw", "contradiction", "Alisema, Mama, niko nyumbani.", "Hakusema neno.", "2")]) + "\n"
SQUAD = {"version": "1.1", "data": [{"title": "T", "paragraphs": [{"context": "Paris is in France.", "qas": [
    {"id": "q1", "question": "Where is Paris?", "answers": [{"text": "France", "answer_start": 12}]}]}]}]}

GOOD = {
    "xnli_tsv": ("p\th\tentailment\np2\th2\tcontradictory\n",
                 [{"id": "0", "text_a": "p", "text_b": "h", "label": "entailment"},
                  {"id": "1", "text_a": "p2", "text_b": "h2", "label": "contradiction"}]),
    "xnli10_tsv": (XNLI10, {"de": [{"id": "1", "text_a": "Er sagte, Mama, ich bin daheim.",
                                    "text_b": "Er rief seine Mutter an.", "label": "neutral"},
                                   {"id": "2", "text_a": "Er sagte, Mama, ich bin daheim.",
                                    "text_b": "Er sagte kein Wort.", "label": "contradiction"}],
                            "sw": [{"id": "1", "text_a": "Alisema, Mama, niko nyumbani.",
                                    "text_b": "Alimpigia mama yake simu.", "label": "neutral"},
                                   {"id": "2", "text_a": "Alisema, Mama, niko nyumbani.",
                                    "text_b": "Hakusema neno.", "label": "contradiction"}]}),
    "pawsx_tsv": ("a\tb\t1\nc\td\t0\n", [{"id": "0", "text_a": "a", "text_b": "b", "label": "1"},
                                           {"id": "1", "text_a": "c", "text_b": "d", "label": "0"}]),
    "mrpc_tsv": ("\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t1\t2\ta\tb\n1\t3\t4\tc\td\n",
                 [{"id": "1-2", "text_a": "a", "text_b": "b", "label": "0"},
                  {"id": "3-4", "text_a": "c", "text_b": "d", "label": "1"}]),
    "anli_jsonl": (json.dumps({"uid": "u", "premise": "p", "hypothesis": "h", "label": "n"}) + "\n"
                   + json.dumps({"uid": "v", "premise": "p", "hypothesis": "h2", "label": "e"}) + "\n",
                   [{"id": "u", "text_a": "p", "text_b": "h", "label": "neutral"},
                    {"id": "v", "text_a": "p", "text_b": "h2", "label": "entailment"}]),
    "copa_jsonl": (json.dumps({"premise": "p", "choice1": "a", "choice2": "b", "question": "effect", "label": 1,
                               "idx": 7}) + "\n",
                   [{"id": "7", "context": "p", "question": "What happened as a result?", "choices": ["a", "b"],
                     "label": 1}]),
    "xcopa_jsonl": (json.dumps({"premise": "p", "choice1": "a", "choice2": "b", "question": "cause", "label": 0,
                                "idx": 1, "changed": False}) + "\n",
                    [{"id": "1", "context": "p", "question": "What was the cause?", "choices": ["a", "b"],
                      "label": 0}]),
    "siqa_jsonl": (json.dumps({"context": "c", "question": "q", "answerA": "a", "answerB": "b", "answerC": "c",
                               "correct": "B"}) + "\n",
                   [{"id": "0", "context": "c", "question": "q", "choices": ["a", "b", "c"], "label": 1}]),
    "commonsenseqa_jsonl": (
        json.dumps({"id": "x", "question": {"stem": "q?", "choices": [{"label": "A", "text": "a"},
                                                                      {"label": "B", "text": "b"}]},
                    "answerKey": "B"}) + "\n"
        + json.dumps({"id": "y", "question": "q2?", "choices": {"label": ["A", "B"], "text": ["c", "d"]},
                      "answerKey": "A"}) + "\n",
        [{"id": "x", "context": "", "question": "q?", "choices": ["a", "b"], "label": 1},
         {"id": "y", "context": "", "question": "q2?", "choices": ["c", "d"], "label": 0}]),
    "cosmosqa_csv": ('id,context,question,answer0,answer1,answer2,answer3,label\nk,"c, with comma",q,a,b,c,d,3\n',
                     [{"id": "k", "context": "c, with comma", "question": "q", "choices": ["a", "b", "c", "d"],
                       "label": 3}]),
    "hellaswag_txt": ("ctx\n2\ne0\ne1\ne2\ne3\n",
                      [{"id": "0", "context": "ctx", "question": "", "choices": ["e0", "e1", "e2", "e3"], "label": 2}]),
    "conllu": (CONLLU, [{"id": "0", "tokens": ["de", "le", "chat"], "tags": ["ADP", "DET", "NOUN"]},
                        {"id": "1", "tokens": ["Oui"], "tags": ["INTJ"]}]),
    "conll_ner": ("-DOCSTART- O\n\nEU B-ORG\nrejects O\n\nPeter B-PER\nBlackburn I-PER\n",
                  [{"id": "0", "tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]},
                   {"id": "1", "tokens": ["Peter", "Blackburn"], "tags": ["B-PER", "I-PER"]}]),
    "panx_tsv": ("Hy\tO\nJan\tB-PER\n", [{"id": "0", "tokens": ["Hy", "Jan"], "tags": ["O", "B-PER"]}]),
    "udpos_tsv": ("From\tADP\nhere\tADV\n\nOk\tINTJ\n\n",
                  [{"id": "0", "tokens": ["From", "here"], "tags": ["ADP", "ADV"]},
                   {"id": "1", "tokens": ["Ok"], "tags": ["INTJ"]}]),
    "squad_json": (json.dumps(SQUAD), [{"id": "q1", "title": "T", "context": "Paris is in France.",
                                        "question": "Where is Paris?",
                                        "answers": {"text": ["France"], "answer_start": [12]}}]),
    "bucc_sentences": ("zh-1\t你好\nzh-2\t再见\n", {"zh-1": "你好", "zh-2": "再见"}),
    "bucc_gold": ("zh-1\ten-9\n", [("zh-1", "en-9")]),
}

# (format, file content, expected line number in the message or None for JSON paths)
BAD = [
    ("xnli_tsv", "p\th\tentailment\np\th\n", 2, "expected 3"),
    ("xnli_tsv", "p\th\tentailment\np\th\tmaybe\n", 2, "not one of"),
    ("xnli_tsv", "p\t\tneutral\n", 1, "hypothesis"),
    ("pawsx_tsv", "a\tb\t1\na\tb\t2\n", 2, "not 0 or 1"),
    ("mrpc_tsv", "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\ta\n", 2, "expected 5"),
    ("mrpc_tsv", "a\tb\n", 1, "header"),
    ("anli_jsonl", json.dumps({"uid": "u", "premise": "p", "label": "e"}) + "\n", 1, "hypothesis"),
    ("anli_jsonl", '{"uid": "u",\n', 1, "invalid JSON"),
    ("copa_jsonl", json.dumps({"premise": "p", "choice1": "a", "choice2": "b", "question": "cause", "label": 0}) + "\n"
     + json.dumps({"premise": "p", "choice1": "a", "choice2": "b", "question": "why", "label": 0}) + "\n", 2, "cause"),
    ("xcopa_jsonl", json.dumps({"premise": "p", "choice1": "a", "choice2": "b", "question": "cause",
                                "label": 2}) + "\n", 1, "label"),
    ("siqa_jsonl", json.dumps({"context": "c", "question": "q", "answerA": "a", "answerB": "b", "answerC": "c",
                               "correct": "D"}) + "\n", 1, "correct"),
    ("siqa_jsonl", json.dumps({"context": "c", "question": "q", "answerA": "a", "answerC": "c", "correct": "A"}) + "\n",
     1, "answerB"),
    ("commonsenseqa_jsonl", json.dumps({"id": "y", "question": "q",
                                        "choices": {"label": ["A", "B"], "text": ["c", "d"]},
                                        "answerKey": "E"}) + "\n", 1, "answerKey"),
    ("cosmosqa_csv", "id,context,question,answer0,answer1,answer2,answer3,label\n"
                     "k,c,q,a,b,c,d,3\nk2,c,q,a,b,c,d\n", 3, "columns"),
    ("cosmosqa_csv", "id,context,question,answer0,answer1,answer2,answer3,label\nk,c,q,a,b,c,d,7\n", 2, "label"),
    ("hellaswag_txt", "ctx\n2\ne0\ne1\ne2\ne3\nctx\n9\ne0\ne1\ne2\ne3\n", 8, "label"),
    ("hellaswag_txt", "ctx\n2\ne0\ne1\n", 4, "multiple of 6"),
    ("conllu", "1\tde\tde\tADP\t_\t_\t3\tcase\t_\t_\n2\tle\tle\tDET\t_\t_\t3\n", 2, "expected 10"),
    ("conllu", "1\tde\tde\tFOO\t_\t_\t3\tcase\t_\t_\n", 1, "UPOS"),
    ("conll_ner", "EU B-ORG\nrejects\n", 2, "columns"),
    ("conll_ner", "EU B-ORG\n\nrejects X-FOO\n", 3, "BIO"),
    ("panx_tsv", "Hy\tO\nJan B-PER\n", 2, "columns"),
    ("udpos_tsv", "From\tADP\nhere\tADVERB\n", 2, "UPOS"),
    ("squad_json", '{"data": [\n{"title": }]}', 2, "invalid JSON"),
    ("bucc_sentences", "zh-1\ta\nzh-1\tb\n", 2, "duplicate"),
    ("bucc_gold", "zh-1\ten-1\nzh-2\n", 2, "expected 2"),
]


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_every_format_covered():
    # tatoeba_pair below; xquadr_json in test_lareqa.py; the Mewsli-X formats in test_mewsli.py
    assert set(GOOD) | {"tatoeba_pair", "xquadr_json", "mewsli_candidates", "mewsli_mentions"} == set(FORMATS)


@pytest.mark.parametrize("fmt", sorted(GOOD))
def test_round_trip(tmp_path, fmt):
    text, expected = GOOD[fmt]
    assert read_file(_write(tmp_path, f"f.{fmt}", text), fmt) == expected


@pytest.mark.parametrize("fmt", ["xnli_tsv", "conll_ner", "squad_json"])
def test_compressed_files(tmp_path, fmt):
    text, expected = GOOD[fmt]
    (tmp_path / "a.xz").write_bytes(lzma.compress(text.encode()))
    (tmp_path / "a.gz").write_bytes(gzip.compress(text.encode()))
    assert read_file(tmp_path / "a.xz", fmt) == expected == read_file(tmp_path / "a.gz", fmt)


def test_crlf_is_accepted(tmp_path):
    p = tmp_path / "x.tsv"
    p.write_bytes(b"p\th\tneutral\r\np\th2\tentailment\r\n")
    assert [r["label"] for r in read_file(p, "xnli_tsv")] == ["neutral", "entailment"]


def test_tatoeba_pair(tmp_path):
    src = _write(tmp_path, "t.deu", "Hallo.\nDanke.\n")
    eng = _write(tmp_path, "t.eng", "Hello.\nThanks.\n")
    expected = [{"id": "0", "source": "Hallo.", "target": "Hello."},
                {"id": "1", "source": "Danke.", "target": "Thanks."}]
    assert read_file(src, "tatoeba_pair", target=eng) == expected
    assert read_file((src, eng), "tatoeba_pair") == expected
    short = _write(tmp_path, "s.eng", "Hello.\n")
    with pytest.raises(AdaptertxError, match="has 2 lines but .*s.eng has 1"):
        read_file(src, "tatoeba_pair", target=short)
    blank = _write(tmp_path, "b.eng", "Hello.\n\n")
    with pytest.raises(AdaptertxError, match=r"b\.eng, line 2"):
        read_file(src, "tatoeba_pair", target=blank)


@pytest.mark.parametrize("fmt,text,line,what", BAD)
def test_malformed_names_file_and_line(tmp_path, fmt, text, line, what):
    p = _write(tmp_path, "bad.txt", text)
    with pytest.raises(AdaptertxError) as err:
        read_file(p, fmt)
    msg = str(err.value)
    assert str(p) in msg and f"line {line}" in msg and what in msg, msg


@pytest.mark.parametrize("fmt", sorted(GOOD))
def test_empty_file(tmp_path, fmt):
    p = _write(tmp_path, "empty.txt", "\n")
    with pytest.raises(AdaptertxError, match=r"empty\.txt: file is empty; expected"):
        read_file(p, fmt)


@pytest.mark.parametrize("fmt", ["xnli_tsv", "conllu", "udpos_tsv", "squad_json", "anli_jsonl"])
def test_non_utf8(tmp_path, fmt):
    p = tmp_path / "latin1.txt"
    p.write_bytes(b"ok\tok\tneutral\ncaf\xe9\tx\tneutral\n")
    with pytest.raises(AdaptertxError, match=r"latin1\.txt, line 2: not valid UTF-8"):
        read_file(p, fmt)


def test_squad_structure_errors_name_the_json_path(tmp_path):
    bad = json.loads(json.dumps(SQUAD))
    bad["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = 3
    p = _write(tmp_path, "q.json", json.dumps(bad))
    with pytest.raises(AdaptertxError,
                       match=r"q\.json: data\[0\]\.paragraphs\[0\]\.qas\[0\]\.answers\[0\]: context at answer_start 3"):
        read_file(p, "squad_json")
    del bad["data"][0]["paragraphs"][0]["qas"][0]["id"]
    p = _write(tmp_path, "q.json", json.dumps(bad))
    with pytest.raises(AdaptertxError, match="missing field 'id'"):
        read_file(p, "squad_json")


def test_duplicate_ids_rejected(tmp_path):
    two = json.loads(json.dumps(SQUAD))
    two["data"][0]["paragraphs"][0]["qas"].append(two["data"][0]["paragraphs"][0]["qas"][0])
    with pytest.raises(AdaptertxError, match="duplicate example id 'q1'"):
        read_file(_write(tmp_path, "d.json", json.dumps(two)), "squad_json")


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(AdaptertxError, match="unknown format 'csv'.*xnli_tsv"):
        read_file(tmp_path / "x", "csv")
    with pytest.raises(AdaptertxError, match="no such file"):
        read_file(tmp_path / "missing.tsv", "xnli_tsv")


# ------------------------------------------------------------- refused because they cannot be scored, NFC, formats

# CoNLL-U as UD releases it, without comment lines: "del" is the multiword token of the syntactic
# words "de" + "el" (range line 2-3); 4.1 is an empty node. UD scores the syntactic words.
CONLLU_ES = (
    "1\tVino\tvenir\tVERB\t_\t_\t0\troot\t_\t_\n"
    "2-3\tdel\t_\t_\t_\t_\t_\t_\t_\t_\n"
    "2\tde\tde\tADP\t_\t_\t4\tcase\t_\t_\n"
    "3\tel\tel\tDET\t_\tDefinite=Def\t4\tdet\t_\t_\n"
    "4\tmar\tmar\tNOUN\t_\t_\t1\tobl\t_\tSpaceAfter=No\n"
    "4.1\tvino\tvenir\tVERB\t_\t_\t_\t_\t1:conj\t_\n"
    "5\t.\t.\tPUNCT\t_\t_\t1\tpunct\t_\t_\n"
)


def test_text_is_read_in_nfc(tmp_path):
    import unicodedata

    words = ["Ọ̀jọ́", "Ajé", "ní", "Èkó"]  # MasakhaNER 2.0 Yoruba ships decomposed (NFD)
    nfd = [unicodedata.normalize("NFD", w) for w in words]
    nfc = [unicodedata.normalize("NFC", w) for w in words]
    assert nfd != nfc
    ner = _write(tmp_path, "test.txt", "".join(f"{w} {t}\n" for w, t in zip(nfd, ["O", "B-ORG", "O", "B-LOC"],
                                                                             strict=True)))
    assert read_file(ner, "conll_ner")[0]["tokens"] == nfc
    pos = _write(tmp_path, "pos.tsv", "".join(f"{w}\tNOUN\n" for w in nfd))
    assert read_file(pos, "udpos_tsv")[0]["tokens"] == nfc
    copa = _write(tmp_path, "c.jsonl", json.dumps({"premise": nfd[0], "choice1": nfd[1], "choice2": "b",
                                                   "question": "cause", "label": 0, "idx": 0}) + "\n")
    row = read_file(copa, "copa_jsonl")[0]  # json.dumps escapes the marks: normalised after parsing
    assert row["context"] == nfc[0] and row["choices"][0] == nfc[1]


def test_squad_offsets_follow_nfc(tmp_path):
    import unicodedata

    raw = unicodedata.normalize("NFD", "Ìlú Èkó wà ní Nàìjíríà.")
    answer = unicodedata.normalize("NFD", "Nàìjíríà")
    qa = {"id": "yo-1", "question": "Níbo ni Èkó wà?", "answers": [{"text": answer, "answer_start": raw.index(answer)}]}
    doc = {"data": [{"title": "Èkó", "paragraphs": [{"context": raw, "qas": [qa]}]}]}
    row = read_file(_write(tmp_path, "yo.json", json.dumps(doc)), "squad_json")[0]
    start, text = row["answers"]["answer_start"][0], row["answers"]["text"][0]
    assert row["context"] == unicodedata.normalize("NFC", raw) and text == "Nàìjíríà"
    assert start == row["context"].index("Nàìjíríà") < raw.index(answer)
    assert row["context"][start:start + len(text)] == text


def test_squad_blank_gold_answers_are_refused(tmp_path):
    # what XTREME's download script leaves of TyDiQA-GoldP's test set: every answer "" at offset 0
    blank = json.loads(json.dumps(SQUAD))
    qas = blank["data"][0]["paragraphs"][0]["qas"]
    qas[0]["answers"] = [{"text": "", "answer_start": 0}]
    qas.append({"id": "q2", "question": "What is Paris?", "answers": [{"text": "", "answer_start": 0}]})
    p = _write(tmp_path, "tydiqa.goldp.sw.dev.json", json.dumps(blank))
    with pytest.raises(AdaptertxError) as err:
        read_file(p, "squad_json")
    msg = str(err.value)
    assert msg == (f"{p}: 2 of 2 questions have only empty gold answers (first: data[0].paragraphs[0].qas[0]), so "
                   f"nothing can be scored; XTREME's download script blanks the test answers: use the release's "
                   f"own file")
    qas[1]["answers"] = [{"text": "the capital", "answer_start": 0}]
    p = _write(tmp_path, "q.json", json.dumps(blank))
    with pytest.raises(AdaptertxError) as err:
        read_file(p, "squad_json")
    assert str(err.value) == (f"{p}: data[0].paragraphs[0].qas[1].answers[0]: context at answer_start 0 is "
                              f"'Paris is in', not the answer 'the capital'; the offsets do not match the context")


@pytest.mark.parametrize("fmt,text", [
    ("xnli_tsv", "p\th\tentailment\np2\th2\tentailment\n"),
    ("pawsx_tsv", "id\tsentence1\tsentence2\tlabel\n1\ta\tb\t1\n2\tc\td\t1\n"),
    ("xnli10_tsv", "\n".join([XNLI10_HEADER, xnli10_row("de", "entailment", "a", "b", "1"),
                              xnli10_row("de", "entailment", "c", "d", "2"), xnli10_row("sw", "neutral", "a", "b", "1"),
                              xnli10_row("sw", "entailment", "c", "d", "2")]) + "\n"),
])
def test_one_label_only_is_refused(tmp_path, fmt, text):
    p = _write(tmp_path, "one.tsv", text)
    with pytest.raises(AdaptertxError) as err:
        read_file(p, fmt)
    where = f"{p} (de)" if fmt == "xnli10_tsv" else str(p)
    label = "'1'" if fmt == "pawsx_tsv" else "'entailment'"
    assert str(err.value) == (f"{where}: all 2 examples have the label {label}; a classification set needs at "
                              f"least two labels to be scored")


def test_conllu_is_told_apart_from_tsv(tmp_path):
    from adaptertx.data import detect_format

    plain = _write(tmp_path, "es.txt", CONLLU_ES)  # no comments, no .conllu: known by its columns
    assert detect_format(plain, "udpos_tsv") == "conllu"
    assert read_file(plain, "conllu") == [{"id": "0", "tokens": ["Vino", "de", "el", "mar", "."],
                                           "tags": ["VERB", "ADP", "DET", "NOUN", "PUNCT"]}]
    with pytest.raises(AdaptertxError, match=r"es\.txt: this is CoNLL-U .* read it with the conllu format"):
        read_file(plain, "udpos_tsv")
    named = tmp_path / "es_ancora-ud-test.conllu.xz"
    named.write_bytes(lzma.compress(("# sent_id = 1\n" + CONLLU_ES).encode()))
    assert detect_format(named, "udpos_tsv") == "conllu"
    tsv = _write(tmp_path, "test-es.tsv", "Vino\tVERB\nmar\tNOUN\n")
    assert detect_format(tsv, "udpos_tsv") == "udpos_tsv"
    assert detect_format(_write(tmp_path, "xnli.test.tsv", XNLI10), "xnli_tsv") == "xnli10_tsv"
    assert detect_format(tsv, "xnli_tsv") == "xnli_tsv"
    bad = _write(tmp_path, "bad.conllu", CONLLU_ES.replace("2-3\t", "2-\t"))
    with pytest.raises(AdaptertxError, match=r"bad\.conllu, line 2: word id '2-' is not an integer, a range"):
        read_file(bad, "conllu")
