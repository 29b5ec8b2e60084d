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
SQUAD = {"version": "1.1", "data": [{"title": "T", "paragraphs": [{"context": "Paris is in France.", "qas": [
    {"id": "q1", "question": "Where is Paris?", "answers": [{"text": "France", "answer_start": 12}]}]}]}]}

GOOD = {
    "xnli_tsv": ("p\th\tentailment\np2\th2\tcontradictory\n",
                 [{"id": "0", "text_a": "p", "text_b": "h", "label": "entailment"},
                  {"id": "1", "text_a": "p2", "text_b": "h2", "label": "contradiction"}]),
    "pawsx_tsv": ("a\tb\t1\n", [{"id": "0", "text_a": "a", "text_b": "b", "label": "1"}]),
    "mrpc_tsv": ("\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t1\t2\ta\tb\n",
                 [{"id": "1-2", "text_a": "a", "text_b": "b", "label": "0"}]),
    "anli_jsonl": (json.dumps({"uid": "u", "premise": "p", "hypothesis": "h", "label": "n"}) + "\n",
                   [{"id": "u", "text_a": "p", "text_b": "h", "label": "neutral"}]),
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
    p.write_bytes(b"p\th\tneutral\r\n")
    assert read_file(p, "xnli_tsv")[0]["label"] == "neutral"


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
