"""adaptertx.data.remote: Hub rows -> the common schema, and a real ``datasets.load_dataset`` round
trip against a local server speaking the Hub API (tests/hub_server.py)."""

import ast
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hub_server import HubServer

from adaptertx.data.readers import read_copa_jsonl
from adaptertx.data.remote import convert, hub_config, hub_source, load_remote, remote_splits
from adaptertx.errors import AdaptertxError
from adaptertx.tasks import MASAKHANER_LABELS, NER_LABELS, UPOS_LABELS, get_task

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent

NLI = datasets.ClassLabel(names=["entailment", "neutral", "contradiction"])
UPOS = datasets.ClassLabel(names=list(UPOS_LABELS))
PANX = datasets.ClassLabel(names=list(NER_LABELS))


def features(**kw) -> datasets.Features:
    return datasets.Features(kw)


STR = datasets.Value("string")
TOKENS = datasets.List(datasets.Value("string"))
SQUAD_ANSWERS = {"text": datasets.List(STR), "answer_start": datasets.List(datasets.Value("int32"))}

# ------------------------------------------------------------------ converters on real feature types


def test_nli_labels_become_names_and_unlabelled_rows_are_refused():
    feats = features(premise=STR, hypothesis=STR, label=NLI, idx=datasets.Value("int32"))
    ds = datasets.Dataset.from_dict({"premise": ["A man sleeps.", "Kids play.", "It rains."],
                                     "hypothesis": ["A person rests.", "Kids are outside.", "It is dry."],
                                     "label": [0, 1, 2], "idx": [10, 11, 12]}, features=feats)
    assert convert("mnli", ds) == [
        {"id": "10", "text_a": "A man sleeps.", "text_b": "A person rests.", "label": "entailment"},
        {"id": "11", "text_a": "Kids play.", "text_b": "Kids are outside.", "label": "neutral"},
        {"id": "12", "text_a": "It rains.", "text_b": "It is dry.", "label": "contradiction"}]
    test = datasets.Dataset.from_dict({"premise": ["p"], "hypothesis": ["h"], "label": [-1], "idx": [0]},
                                      features=feats)
    with pytest.raises(AdaptertxError, match="label -1 .*unlabelled"):
        convert("mnli", test)
    xnli = datasets.Dataset.from_dict({"premise": ["Er schläft."], "hypothesis": ["Er ist wach."], "label": [2]},
                                      features=features(premise=STR, hypothesis=STR, label=NLI))
    assert convert("xnli", xnli) == [{"id": "0", "text_a": "Er schläft.", "text_b": "Er ist wach.",
                                      "label": "contradiction"}]


def test_paraphrase_pairs():
    qqp = datasets.Dataset.from_dict(
        {"question1": ["How do I learn Python?", "What is AI?"], "question2": ["How to learn Python?", "Who is Ada?"],
         "label": [1, 0], "idx": [0, 1]},
        features=features(question1=STR, question2=STR, label=datasets.ClassLabel(names=["not_duplicate", "duplicate"]),
                          idx=datasets.Value("int32")))
    assert convert("qqp", qqp) == [
        {"id": "0", "text_a": "How do I learn Python?", "text_b": "How to learn Python?", "label": "1"},
        {"id": "1", "text_a": "What is AI?", "text_b": "Who is Ada?", "label": "0"}]
    paws = datasets.Dataset.from_dict({"id": [7, 7], "sentence1": ["a", "b"], "sentence2": ["c", "d"], "label": [0, 1]},
                                      features=features(id=datasets.Value("int32"), sentence1=STR, sentence2=STR,
                                                        label=datasets.ClassLabel(names=["0", "1"])))
    rows = convert("pawsx", paws)  # the Hub's ids repeat here: row numbers keep them unique
    assert [r["id"] for r in rows] == ["0", "1"] and [r["label"] for r in rows] == ["0", "1"]
    bad = datasets.Dataset.from_dict({"question1": ["a"], "question2": ["b"], "label": [3]})
    with pytest.raises(AdaptertxError, match="label 3; expected 0..1"):
        convert("qqp", bad)


def test_squad_schema_with_and_without_titles():
    squad = datasets.Dataset.from_dict(
        {"id": ["5733be284776f41900661182"], "title": ["University_of_Notre_Dame"],
         "context": ["Architecturally, the school has a Catholic character."],
         "question": ["What character does the school have?"],
         "answers": [{"text": ["a Catholic character"], "answer_start": [32]}]},
        features=features(id=STR, title=STR, context=STR, question=STR, answers=SQUAD_ANSWERS))
    assert convert("squad", squad) == [{
        "id": "5733be284776f41900661182", "title": "University_of_Notre_Dame",
        "context": "Architecturally, the school has a Catholic character.",
        "question": "What character does the school have?",
        "answers": {"text": ["a Catholic character"], "answer_start": [32]}}]
    xquad = datasets.Dataset.from_dict(
        {"id": ["q1", "q2"], "context": ["Berlin ist groß.", "Berlin ist groß."], "question": ["Was?", "Wer?"],
         "answers": [{"text": ["groß"], "answer_start": [11]}, {"text": [], "answer_start": []}]},
        features=features(id=STR, context=STR, question=STR, answers=SQUAD_ANSWERS))
    rows = convert("xquad", xquad)
    assert rows[0]["title"] == "" and rows[1]["answers"] == {"text": [], "answer_start": []}


def test_hub_rows_are_read_in_nfc():
    import unicodedata

    ctx = unicodedata.normalize("NFD", "Ìlú Èkó wà ní Nàìjíríà.")
    answer = unicodedata.normalize("NFD", "Nàìjíríà")
    qa = datasets.Dataset.from_dict(
        {"id": ["yo-1"], "context": [ctx], "question": [unicodedata.normalize("NFD", "Níbo?")],
         "answers": [{"text": [answer], "answer_start": [ctx.index(answer)]}]},
        features=features(id=STR, context=STR, question=STR, answers=SQUAD_ANSWERS))
    row = convert("xquad", qa)[0]
    start = row["answers"]["answer_start"][0]
    assert row["context"] == unicodedata.normalize("NFC", ctx) != ctx and row["question"] == "Níbo?"
    assert row["context"][start:start + len("Nàìjíríà")] == row["answers"]["text"][0] == "Nàìjíríà"
    tags = datasets.Dataset.from_dict({"tokens": [[unicodedata.normalize("NFD", "Èkó")]], "ner_tags": [[5]]},
                                      features=features(tokens=TOKENS, ner_tags=datasets.List(PANX)))
    assert convert("panx", tags)[0]["tokens"] == ["Èkó"]


def test_tydiqa_keeps_the_requested_language():
    ds = datasets.Dataset.from_dict(
        {"id": ["english-1", "swahili-2", "english-3"], "title": ["t"] * 3, "context": ["c c"] * 3,
         "question": ["q"] * 3, "answers": [{"text": ["c"], "answer_start": [0]}] * 3},
        features=features(id=STR, title=STR, context=STR, question=STR, answers=SQUAD_ANSWERS))
    assert [r["id"] for r in convert("tydiqa", ds, "sw")] == ["swahili-2"]
    assert [r["id"] for r in convert("tydiqa", ds, "en")] == ["english-1", "english-3"]


def test_xcopa_rows_match_the_bundled_reader(tmp_path):
    rows = {"premise": ["Mtu alivunja mguu wake.", "Nilimimina maji."], "choice1": ["Alianguka.", "Kikombe kilijaa."],
            "choice2": ["Alicheka.", "Kikombe kilivunjika."], "question": ["cause", "effect"], "label": [0, 0],
            "idx": [1, 2], "changed": [False, True]}
    ds = datasets.Dataset.from_dict(rows, features=features(
        premise=STR, choice1=STR, choice2=STR, question=STR, label=datasets.Value("int32"),
        idx=datasets.Value("int32"), changed=datasets.Value("bool")))
    path = tmp_path / "xcopa.jsonl"
    path.write_text("".join(json.dumps({k: rows[k][i] for k in rows}) + "\n" for i in range(2)), encoding="utf-8")
    assert convert("xcopa", ds) == read_copa_jsonl(path) == [
        {"id": "1", "context": "Mtu alivunja mguu wake.", "question": "What was the cause?",
         "choices": ["Alianguka.", "Alicheka."], "label": 0},
        {"id": "2", "context": "Nilimimina maji.", "question": "What happened as a result?",
         "choices": ["Kikombe kilijaa.", "Kikombe kilivunjika."], "label": 0}]
    bad = datasets.Dataset.from_dict(dict(rows, question=["cause", "why"]))
    with pytest.raises(AdaptertxError, match="question 'why' is not 'cause' or 'effect'"):
        convert("xcopa", bad)


def test_tag_ids_become_names():
    udpos = datasets.Dataset.from_dict({"tokens": [["Das", "Haus", "."]], "pos_tags": [[5, 7, 12]]},
                                       features=features(tokens=TOKENS, pos_tags=datasets.List(UPOS)))
    assert convert("udpos", udpos) == [{"id": "0", "tokens": ["Das", "Haus", "."], "tags": ["DET", "NOUN", "PUNCT"]}]
    panx = datasets.Dataset.from_dict(
        {"tokens": [["Angela", "Merkel", "besucht", "Paris"]], "ner_tags": [[1, 2, 0, 5]], "langs": [["de"] * 4]},
        features=features(tokens=TOKENS, ner_tags=datasets.List(PANX), langs=TOKENS))
    assert convert("panx", panx)[0]["tags"] == ["B-PER", "I-PER", "O", "B-LOC"]
    masakha = datasets.Dataset.from_dict(
        {"id": ["0", "1"], "tokens": [["Jumatatu", "Nairobi"], ["Ali"]], "ner_tags": [[7, 5], [1]]},
        features=features(id=STR, tokens=TOKENS,
                          ner_tags=datasets.List(datasets.ClassLabel(names=list(MASAKHANER_LABELS)))))
    assert convert("masakhaner", masakha) == [
        {"id": "0", "tokens": ["Jumatatu", "Nairobi"], "tags": ["B-DATE", "B-LOC"]},
        {"id": "1", "tokens": ["Ali"], "tags": ["B-PER"]}]
    # MasakhaNER's DATE tags are outside PAN-X's label set: refused, not silently mapped.
    with pytest.raises(AdaptertxError, match=r"tags \['B-DATE'\] outside"):
        convert("panx", masakha)
    short = datasets.Dataset.from_dict({"tokens": [["a", "b"]], "pos_tags": [[1]]})
    with pytest.raises(AdaptertxError, match="2 tokens but 1 tags"):
        convert("udpos", short)
    with pytest.raises(AdaptertxError, match="no column"):
        convert("udpos", datasets.Dataset.from_dict({"tokens": [["a"]], "ner_tags": [[0]]}))


def test_tatoeba_pairs_in_file_order():
    ds = datasets.Dataset.from_dict({"source_sentence": ["我爱你。\n", "你好"],
                                     "target_sentence": ["I love you.\n", "Hello"],
                                     "source_lang": ["cmn", "cmn"], "target_lang": ["eng", "eng"]})
    assert convert("tatoeba", ds) == [{"id": "0", "source": "我爱你。", "target": "I love you."},
                                      {"id": "1", "source": "你好", "target": "Hello"}]


def test_hub_configs_and_splits():
    assert hub_config(get_task("tatoeba"), "zh") == "tatoeba.cmn"
    assert hub_config(get_task("tatoeba"), "de") == "tatoeba.deu"
    assert hub_config(get_task("tatoeba"), "kab") == "tatoeba.kab"
    assert hub_config(get_task("masakhaner"), "sw") == "swa"
    assert hub_config(get_task("masakhaner"), "yo") == "yor"
    assert hub_config(get_task("mlqa"), "de") == "mlqa.de.de"
    assert hub_config(get_task("squad"), "en") is None
    assert hub_source("udpos", "kk") == "google/xtreme/udpos.kk"
    assert remote_splits("mnli") == ("train", "validation", "test")
    assert remote_splits("tatoeba") == ("test",) and remote_splits("ccg") == ()


def test_bad_requests_fail_before_touching_the_network():
    with pytest.raises(AdaptertxError, match="no Hub dataset: CCGbank is LDC-licensed"):
        load_remote("ccg", "en", "train")
    with pytest.raises(AdaptertxError, match="no split 'dev'"):
        load_remote("mnli", "en", "dev")
    with pytest.raises(AdaptertxError, match="unlabelled"):
        load_remote("mnli", "en", "test")
    with pytest.raises(AdaptertxError, match="has no language 'fr'"):
        load_remote("xcopa", "fr", "test")
    with pytest.raises(AdaptertxError, match="cannot be loaded from the Hub .*bundled data \\('hellaswag'\\)"):
        load_remote("hellaswag", "en", "train")
    with pytest.raises(AdaptertxError, match="unknown task"):
        load_remote("nosuchtask", "en", "train")


# ------------------------------------------------------------------ the round trip through a local Hub


def parquet(columns: dict, schema: pa.Schema) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table(columns, schema=schema), buf)
    return buf.getvalue()


def card(configs: dict[str, tuple[datasets.Features, dict[str, int]]]) -> bytes:
    """A dataset card as the Hub has it: ``dataset_info`` (features per config) and ``configs`` (data files)."""
    front = {"dataset_info": [], "configs": []}
    for name, (feats, splits) in configs.items():
        front["dataset_info"].append({"config_name": name, "features": feats._to_yaml_list(),
                                      "splits": [{"name": s, "num_examples": n} for s, n in splits.items()]})
        front["configs"].append({"config_name": name,
                                 "data_files": [{"split": s, "path": f"{name}/{s}-*"} for s in splits]})
    return f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n\n# test card\n".encode()


INT = pa.int64()
TAGS = pa.list_(pa.int64())
WORDS = pa.list_(pa.string())


def glue_repo() -> dict[str, bytes]:
    nli = pa.schema([("premise", pa.string()), ("hypothesis", pa.string()), ("label", INT), ("idx", pa.int32())])
    qqp = pa.schema([("question1", pa.string()), ("question2", pa.string()), ("label", INT), ("idx", pa.int32())])
    nli_feats = features(premise=STR, hypothesis=STR, label=NLI, idx=datasets.Value("int32"))
    qqp_feats = features(question1=STR, question2=STR, label=datasets.ClassLabel(names=["not_duplicate", "duplicate"]),
                         idx=datasets.Value("int32"))
    return {
        "README.md": card({"mnli": (nli_feats, {"train": 3, "validation_matched": 1, "test_matched": 1}),
                           "qqp": (qqp_feats, {"train": 2, "validation": 1})}),
        "mnli/train-00000-of-00001.parquet": parquet(
            {"premise": ["A man sleeps.", "Kids play outside.", "It rains."],
             "hypothesis": ["A person rests.", "Children are in a park.", "It is dry."],
             "label": [0, 1, 2], "idx": [0, 1, 2]}, nli),
        "mnli/validation_matched-00000-of-00001.parquet": parquet(
            {"premise": ["The cat sat."], "hypothesis": ["A cat sat."], "label": [0], "idx": [0]}, nli),
        "mnli/test_matched-00000-of-00001.parquet": parquet(
            {"premise": ["Hidden."], "hypothesis": ["Label."], "label": [-1], "idx": [0]}, nli),
        "qqp/train-00000-of-00001.parquet": parquet(
            {"question1": ["How do I learn Python?", "What is AI?"], "question2": ["How to learn Python?", "Who?"],
             "label": [1, 0], "idx": [0, 1]}, qqp),
        "qqp/validation-00000-of-00001.parquet": parquet(
            {"question1": ["Is it sunny?"], "question2": ["Is the sun out?"], "label": [1], "idx": [0]}, qqp),
    }


def xtreme_repo() -> dict[str, bytes]:
    udpos = pa.schema([("tokens", WORDS), ("pos_tags", TAGS)])
    panx = pa.schema([("tokens", WORDS), ("ner_tags", TAGS), ("langs", WORDS)])
    tatoeba = pa.schema([("source_sentence", pa.string()), ("target_sentence", pa.string()),
                         ("source_lang", pa.string()), ("target_lang", pa.string())])
    return {
        "README.md": card({
            "udpos.kk": (features(tokens=TOKENS, pos_tags=datasets.List(UPOS)), {"train": 1, "test": 2}),
            "PAN-X.de": (features(tokens=TOKENS, ner_tags=datasets.List(PANX), langs=TOKENS), {"test": 1}),
            "tatoeba.cmn": (features(source_sentence=STR, target_sentence=STR, source_lang=STR, target_lang=STR),
                            {"validation": 2}),
        }),
        "udpos.kk/train-00000-of-00001.parquet": parquet(
            {"tokens": [["Мен", "келдім"]], "pos_tags": [[10, 15]]}, udpos),
        "udpos.kk/test-00000-of-00001.parquet": parquet(
            {"tokens": [["Бұл", "үй", "."], ["Ол", "оқиды"]], "pos_tags": [[5, 7, 12], [10, 15]]}, udpos),
        "PAN-X.de/test-00000-of-00001.parquet": parquet(
            {"tokens": [["Angela", "Merkel", "besucht", "Paris"]], "ner_tags": [[1, 2, 0, 5]], "langs": [["de"] * 4]},
            panx),
        "tatoeba.cmn/validation-00000-of-00001.parquet": parquet(
            {"source_sentence": ["我爱你。", "你好"], "target_sentence": ["I love you.", "Hello"],
             "source_lang": ["cmn", "cmn"], "target_lang": ["eng", "eng"]}, tatoeba),
    }


def xcopa_repo() -> dict[str, bytes]:
    schema = pa.schema([("premise", pa.string()), ("choice1", pa.string()), ("choice2", pa.string()),
                        ("question", pa.string()), ("label", pa.int32()), ("idx", pa.int32()), ("changed", pa.bool_())])
    feats = features(premise=STR, choice1=STR, choice2=STR, question=STR, label=datasets.Value("int32"),
                     idx=datasets.Value("int32"), changed=datasets.Value("bool"))
    return {
        "README.md": card({"sw": (feats, {"validation": 1, "test": 2})}),
        "sw/validation-00000-of-00001.parquet": parquet(
            {"premise": ["Mvua ilinyesha."], "choice1": ["Ardhi ililowa."], "choice2": ["Jua liliwaka."],
             "question": ["effect"], "label": [0], "idx": [0], "changed": [False]}, schema),
        "sw/test-00000-of-00001.parquet": parquet(
            {"premise": ["Mtu alivunja mguu wake.", "Nilimimina maji."], "choice1": ["Alianguka.", "Kikombe kilijaa."],
             "choice2": ["Alicheka.", "Kikombe kilivunjika."], "question": ["cause", "effect"], "label": [0, 0],
             "idx": [1, 2], "changed": [False, True]}, schema),
    }


def squad_repo() -> dict[str, bytes]:
    answers = pa.struct([("text", pa.list_(pa.string())), ("answer_start", pa.list_(pa.int32()))])
    schema = pa.schema([("id", pa.string()), ("title", pa.string()), ("context", pa.string()),
                        ("question", pa.string()), ("answers", answers)])
    feats = features(id=STR, title=STR, context=STR, question=STR, answers=SQUAD_ANSWERS)
    row = {"id": ["56be4db0acb8001400a502ec"], "title": ["Super_Bowl_50"],
           "context": ["Super Bowl 50 was an American football game."],
           "question": ["What was Super Bowl 50?"],
           "answers": [{"text": ["an American football game"], "answer_start": [18]}]}
    return {"README.md": card({"plain_text": (feats, {"train": 1, "validation": 1})}),
            "plain_text/train-00000-of-00001.parquet": parquet(row, schema),
            "plain_text/validation-00000-of-00001.parquet": parquet(dict(row, id=["v1"]), schema)}


# Run in a fresh interpreter: huggingface_hub and datasets read HF_ENDPOINT when imported.
ROUND_TRIP = """
import json, sys
from adaptertx.data.remote import load_remote
from adaptertx.errors import AdaptertxError
from adaptertx.evaluation import EvalConfig, eval_sets
from adaptertx.tasks import get_task
from adaptertx.training.data import english_splits

out = {}
for task, lang, split in [("mnli", "en", "validation"), ("qqp", "en", "train"), ("udpos", "kk", "test"),
                          ("tatoeba", "zh", "test"), ("xcopa", "sw", "test"), ("squad", "en", "validation")]:
    out[f"{task}/{lang}/{split}"] = load_remote(task, lang, split)
train, dev, test = english_splits(get_task("mnli"), None)
out["english_splits"] = [train, dev, test]
for target, langs in (("panx", ("de", "sw", "fr")), ("udpos", ("kk",))):
    sets, missing = eval_sets(get_task(target), EvalConfig(target=target, languages=langs))
    out[f"eval/{target}"] = {lang: [split, source, rows] for lang, (rows, split, source) in sets.items()}
    out[f"missing/{target}"] = missing
try:
    load_remote("xcopa", "et", "test")
except AdaptertxError as e:
    out["missing_config"] = str(e)
print("RESULT" + json.dumps(out, ensure_ascii=False))
"""


def hub_env(endpoint: str, tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf"), HF_DATASETS_CACHE=str(tmp_path / "hf-datasets"),
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1", PYTHONPATH=str(ROOT))
    return env


def test_load_dataset_round_trip_through_a_local_hub(tmp_path):
    with HubServer("unused-token") as hub:
        for repo, files in (("nyu-mll/glue", glue_repo()), ("google/xtreme", xtreme_repo()),
                            ("cambridgeltl/xcopa", xcopa_repo()), ("rajpurkar/squad", squad_repo())):
            hub.add_dataset(repo, files)
        proc = subprocess.run([sys.executable, "-c", ROUND_TRIP], env=hub_env(hub.url, tmp_path), cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        requests = [(m, p) for m, p, _ in hub.requests]
        assert hub.unknown == [], hub.unknown
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1])

    assert out["mnli/en/validation"] == [{"id": "0", "text_a": "The cat sat.", "text_b": "A cat sat.",
                                          "label": "entailment"}]
    assert out["qqp/en/train"] == [
        {"id": "0", "text_a": "How do I learn Python?", "text_b": "How to learn Python?", "label": "1"},
        {"id": "1", "text_a": "What is AI?", "text_b": "Who?", "label": "0"}]
    assert out["udpos/kk/test"] == [{"id": "0", "tokens": ["Бұл", "үй", "."], "tags": ["DET", "NOUN", "PUNCT"]},
                                    {"id": "1", "tokens": ["Ол", "оқиды"], "tags": ["PRON", "VERB"]}]
    assert out["tatoeba/zh/test"] == [{"id": "0", "source": "我爱你。", "target": "I love you."},
                                      {"id": "1", "source": "你好", "target": "Hello"}]
    assert out["xcopa/sw/test"] == [
        {"id": "1", "context": "Mtu alivunja mguu wake.", "question": "What was the cause?",
         "choices": ["Alianguka.", "Alicheka."], "label": 0},
        {"id": "2", "context": "Nilimimina maji.", "question": "What happened as a result?",
         "choices": ["Kikombe kilijaa.", "Kikombe kilivunjika."], "label": 0}]
    assert out["squad/en/validation"] == [{"id": "v1", "title": "Super_Bowl_50",
                                           "context": "Super Bowl 50 was an American football game.",
                                           "question": "What was Super Bowl 50?",
                                           "answers": {"text": ["an American football game"], "answer_start": [18]}}]
    # mnli has no bundled data: training reads the Hub's train and validation_matched splits.
    train, dev, test = out["english_splits"]
    assert sorted(r["label"] for r in train) == ["contradiction", "entailment", "neutral"]
    assert dev == out["mnli/en/validation"] and test is None
    # Evaluation: languages the bundled data lacks come from the Hub, the bundled ones stay bundled.
    panx = out["eval/panx"]
    assert panx["de"] == ["test", "hub:google/xtreme/PAN-X.de",
                          [{"id": "0", "tokens": ["Angela", "Merkel", "besucht", "Paris"],
                            "tags": ["B-PER", "I-PER", "O", "B-LOC"]}]]
    assert panx["sw"][1] == "bundled"
    # A language the Hub repository lacks is listed as missing with the Hub's answer; the others go on.
    assert out["missing/panx"]["fr"].startswith("could not load panx fr test from google/xtreme (config PAN-X.fr)")
    assert out["eval/udpos"]["kk"][:2] == ["test", "hub:google/xtreme/udpos.kk"]
    assert "could not load xcopa et test from cambridgeltl/xcopa (config et)" in out["missing_config"]
    # What the client asked for: the card, the file listing, then the parquet files by commit.
    assert ("HEAD", "/datasets/nyu-mll/glue/resolve/main/README.md") in requests
    assert any(m == "GET" and p.startswith("/api/datasets/google/xtreme/tree/") for m, p in requests)
    assert any(m == "GET" and p.endswith("/udpos.kk/test-00000-of-00001.parquet") for m, p in requests)


def test_unreachable_hub_fails_fast_with_a_clear_error(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = """
import socket

connects = []  # the work done: every connect attempt, with its timeout
_connect = socket.socket.connect


def counting_connect(sock, address):
    connects.append((address, sock.gettimeout()))
    return _connect(sock, address)


socket.socket.connect = counting_connect
from adaptertx.data.remote import load_remote
from adaptertx.errors import AdaptertxError
from adaptertx.evaluation import EvalConfig, eval_sets
from adaptertx.tasks import get_task
from adaptertx.training.data import english_splits
for call in (lambda: load_remote("mnli", "en", "train"), lambda: load_remote("xcopa", "sw", "test"),
             lambda: english_splits(get_task("mnli"), None)):
    try:
        call()
    except AdaptertxError as e:
        print("ERROR", e)
sets, missing = eval_sets(get_task("panx"), EvalConfig(target="panx", languages=("de",)))
print("MISSING", missing["de"])
print("CONNECTS", connects)
"""
    proc = subprocess.run([sys.executable, "-c", script], env=hub_env(f"http://127.0.0.1:{port}", tmp_path),
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == (f"ERROR the Hugging Face Hub (http://127.0.0.1:{port}) is unreachable, so mnli en train cannot "
                        "be loaded from nyu-mll/glue (config mnli); use your own copy with --data-file")
    assert "use the bundled data ('xcopa') where it has this language and split, or your own copy" in lines[1]
    assert lines[2] == ("ERROR task 'mnli' has no bundled English data and the Hub, where it is (nyu-mll/glue), "
                        "is unreachable")
    assert lines[3] == "MISSING no bundled panx data for de; it is in the Hub (google/xtreme), or pass --data-file"
    # Fast: each of the four calls costs one refused connect to the endpoint, with a short
    # timeout, and nothing else touches the network (no download and its retries).
    connects = ast.literal_eval(lines[4].removeprefix("CONNECTS "))
    assert [address for address, _ in connects] == [("127.0.0.1", port)] * 4
    assert all(0 < timeout <= 5 for _, timeout in connects)
