"""The user's own test files: released layouts read as released (``--data-dir``, ``--data-file``),
one file per language, unknown language codes refused unless sized, and what the readers refuse."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from adaptertx.cli import main
from adaptertx.errors import AdaptertxError
from adaptertx.evaluation import ALL_LANGUAGES, EvalConfig, data_dir_files, eval_sets, file_language
from adaptertx.evaluation.common import is_low, own_sets
from adaptertx.experiment import Study
from adaptertx.tasks import get_task

XNLI_DE = "Und er hat gesagt, Mama, ich bin daheim.\tEr rief seine Mutter an.\tneutral\n" \
          "Und er hat gesagt, Mama, ich bin daheim.\tEr sagte kein Wort.\tcontradictory\n"
XNLI_SW = "Na akasema, Mama, niko nyumbani.\tAlimpigia mama yake simu.\tneutral\n" \
          "Na akasema, Mama, niko nyumbani.\tHakusema neno.\tentailment\n"
# CoNLL-U as UD ships it (kk_ktb-ud-test.conllu): comments, a multiword token range, an empty node.
CONLLU_KK = ("# sent_id = 1\n# text = Мен үйдемін.\n"
             "1-2\tүйдемін\t_\t_\t_\t_\t_\t_\t_\t_\n"
             "1\tүйде\tүй\tNOUN\t_\tCase=Loc\t0\troot\t_\t_\n"
             "2\tмін\tе\tAUX\t_\t_\t1\tcop\t_\t_\n"
             "2.1\tМен\tмен\tPRON\t_\t_\t_\t_\t1:nsubj\t_\n"
             "3\t.\t.\tPUNCT\t_\t_\t1\tpunct\t_\t_\n\n")
CONLLU_TR = ("1\tAli\tAli\tPROPN\t_\t_\t2\tnsubj\t_\t_\n"
             "2\tgeldi\tgel\tVERB\t_\t_\t0\troot\t_\tSpaceAfter=No\n"
             "3\t.\t.\tPUNCT\t_\t_\t2\tpunct\t_\t_\n")
# MasakhaNER 1.0 data/<iso639-3>/{train,dev,test}.txt: token, space, BIO tag.
NER_HAU = "Shugaban B-PER\nkasar O\nNijar B-LOC\nya O\nce O\n\nA O\nKano B-LOC\n"
NER_YOR = "Ọ̀gá B-PER\nilé O\nìwé O\nní O\nÈkó B-LOC\n"
XNLI10_HEADER = ("language\tgold_label\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
                 "sentence2_parse\tsentence1\tsentence2\tpromptID\tpairID\tgenre\tlabel1\tlabel2\tlabel3\tlabel4\t"
                 "label5\tsentence1_tokenized\tsentence2_tokenized\tmatch")


def _xnli10_row(lang, label, s1, s2, pair):
    return "\t".join([lang, label, "", "", "", "", s1, s2, "1", pair, "facetoface", label, label, label, label, label,
                      s1, s2, "True"])


XNLI10 = "\n".join([XNLI10_HEADER,
                    _xnli10_row("de", "neutral", "Er sagte, Mama, ich bin daheim.", "Er rief seine Mutter an.", "1"),
                    _xnli10_row("de", "contradiction", "Er sagte, Mama, ich bin daheim.", "Er sagte kein Wort.", "2"),
                    _xnli10_row("sw", "neutral", "Alisema, Mama, niko nyumbani.", "Alimpigia mama yake simu.", "1"),
                    _xnli10_row("sw", "contradiction", "Alisema, Mama, niko nyumbani.", "Hakusema neno.", "2")]) + "\n"


def _files(root, files: dict[str, str]):
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return root


def _names(found):
    return {lang: path.rsplit("/", 2)[-2:] for lang, path in found}


# ---------------------------------------------------------------- released layouts


def test_xtreme_names(tmp_path):
    root = _files(tmp_path / "xnli", {"test-de.tsv": XNLI_DE, "test-sw.tsv.xz": "", ".DS_Store": ""})
    assert dict(data_dir_files(root)) == {"de": str(root / "test-de.tsv"), "sw": str(root / "test-sw.tsv.xz")}
    dev = _files(tmp_path / "pawsx", {"dev-de.tsv": "", "dev-zh.tsv": ""})
    assert [lang for lang, _ in data_dir_files(dev)] == ["de", "zh"]


def test_ud_names_read_as_conllu(tmp_path):
    root = _files(tmp_path / "ud", {"kk_ktb-ud-test.conllu": CONLLU_KK, "tr_imst-ud-test.conllu": CONLLU_TR})
    files = data_dir_files(root)
    assert [lang for lang, _ in files] == ["kk", "tr"]
    own = own_sets(get_task("udpos"), EvalConfig("udpos", data_files=files))
    # the syntactic words: range line 1-2 and empty node 2.1 skipped
    assert own["kk"][0] == [{"id": "0", "tokens": ["үйде", "мін", "."], "tags": ["NOUN", "AUX", "PUNCT"]}]
    assert own["tr"][0][0]["tags"] == ["PROPN", "VERB", "PUNCT"]


def test_masakhaner_layout(tmp_path):
    root = _files(tmp_path / "data", {"hau/train.txt": "x O\n", "hau/dev.txt": "x O\n", "hau/test.txt": NER_HAU,
                                      "yor/test.txt": NER_YOR})
    files = data_dir_files(root)
    assert dict(files) == {"ha": str(root / "hau" / "test.txt"), "yo": str(root / "yor" / "test.txt")}
    own = own_sets(get_task("masakhaner"), EvalConfig("masakhaner", data_files=files))
    assert [len(rows) for rows, _ in own.values()] == [2, 1]  # test.txt, not train/dev
    assert own["yo"][0][0]["tokens"][0] == "Ọ̀gá"
    sets, _ = eval_sets(get_task("masakhaner"), EvalConfig("masakhaner", data_files=files, languages=("hau", "yo")))
    assert set(sets) == {"ha", "yo"} and sets["ha"][1:] == ("file", str(root / "hau" / "test.txt"))


def test_xnli10_file_gives_every_language(tmp_path):
    root = _files(tmp_path / "XNLI-1.0", {"xnli.test.tsv": XNLI10})
    files = data_dir_files(root)
    assert files == ((ALL_LANGUAGES, str(root / "xnli.test.tsv")),)
    sets, _ = eval_sets(get_task("xnli"), EvalConfig("xnli", data_files=files, languages=("de", "sw", "fr")))
    assert [r["id"] for r in sets["de"][0]] == ["1", "2"] and sets["de"][1] == "file"
    assert [r["text_b"] for r in sets["sw"][0]] == ["Alimpigia mama yake simu.", "Hakusema neno."]
    assert sets["fr"][2] == "bundled"
    # under one language's name, the file gives that language only
    one = own_sets(get_task("xnli"), EvalConfig("xnli", data_files=(("swa", str(root / "xnli.test.tsv")),)))
    assert list(one) == ["sw"] and len(one["sw"][0]) == 2


def test_plain_names_and_the_rule(tmp_path):
    root = _files(tmp_path / "own", {"de.tsv": XNLI_DE, "swa.tsv": XNLI_SW})
    assert [lang for lang, _ in data_dir_files(root)] == ["de", "sw"]
    assert file_language("xquad.de.json") == "de" and file_language("tydiqa.goldp.sw.dev.json") == "sw"
    assert file_language("test-context-hi-question-hi.json") == "hi"
    assert file_language("test-context-hi-question-de.json") is None  # cross-lingual MLQA pairs are not a language
    assert file_language("test.qu.jsonl") == "qu" and file_language("dev.tsv") is None


def test_study_data_folders_use_the_rule(tmp_path):
    root = _files(tmp_path / "ud", {"kk_ktb-ud-test.conllu": CONLLU_KK})
    study = Study(name="s", targets=("udpos",), data=(("udpos", str(root)),))
    assert study.data_files_for("udpos") == (("kk", str(root / "kk_ktb-ud-test.conllu")),)


# ---------------------------------------------------------------- what is refused


def test_names_no_rule_understands_are_listed(tmp_path):
    root = _files(tmp_path / "mixed", {"test-de.tsv": XNLI_DE, "README.md": "", "de-en.tsv": "",
                                       "hau/notes.txt": "", "panx/test-fr.tsv": ""})
    with pytest.raises(AdaptertxError) as err:
        data_dir_files(root)
    msg = str(err.value)
    assert msg.startswith(f"{root}: cannot tell the language of README.md, de-en.tsv, hau/notes.txt, "
                          f"panx/test-fr.tsv; file names understood: XTREME: test-de.tsv, dev-de.tsv;")
    assert "UD: kk_ktb-ud-test.conllu" in msg and "MasakhaNER: hau/test.txt" in msg and "\n" not in msg


def test_two_files_for_one_language(tmp_path):
    a = _files(tmp_path / "a", {"sw.tsv": XNLI_SW})
    b = _files(tmp_path / "b", {"test-sw.tsv": XNLI_SW})
    with pytest.raises(AdaptertxError) as err:
        EvalConfig("xnli", data_files=(("sw", str(a / "sw.tsv")), ("swa", str(b / "test-sw.tsv"))))
    assert str(err.value) == (f"two files for language 'sw': {a / 'sw.tsv'} and {b / 'test-sw.tsv'}; give one "
                              f"file per language")
    both = _files(tmp_path / "xtreme", {"dev-de.tsv": XNLI_DE, "test-de.tsv": XNLI_DE})
    with pytest.raises(AdaptertxError, match="two files for language 'de': .*dev-de.tsv and .*test-de.tsv"):
        EvalConfig("xnli", data_files=data_dir_files(both))
    xnli10 = _files(tmp_path / "x10", {"xnli.test.tsv": XNLI10})
    cfg = EvalConfig("xnli", data_files=((ALL_LANGUAGES, str(xnli10 / "xnli.test.tsv")), ("de", str(a / "sw.tsv"))))
    with pytest.raises(AdaptertxError, match=r"two files for language 'de': .*xnli\.test\.tsv and .*sw\.tsv"):
        own_sets(get_task("xnli"), cfg)
    with pytest.raises(AdaptertxError, match=r"every language \(\*\) is XNLI-1.0's; for udpos name each file"):
        EvalConfig("udpos", data_files=((ALL_LANGUAGES, str(xnli10 / "xnli.test.tsv")),))


def test_unknown_language_codes_are_refused_unless_sized(tmp_path):
    # UD's Hindi-English code-switching treebank: "qhe" is a UD code, not ISO 639
    root = _files(tmp_path / "ud", {"qhe_hiencs-ud-test.conllu": CONLLU_TR})
    files = data_dir_files(root)
    with pytest.raises(AdaptertxError) as err:
        EvalConfig("udpos", data_files=files)
    assert str(err.value) == (f"{root / 'qhe_hiencs-ud-test.conllu'}: unknown language code 'qhe' (not ISO 639-1 or "
                              f"639-3): whether it is low-resource depends on its pretraining text; give its CC-100 "
                              f"size with --pretraining-gib qhe=GIB (0 if the model never saw it), or pass "
                              f"--unknown-lang-low-resource")
    sized = EvalConfig("udpos", data_files=files, pretraining_gib=(("qhe", 20.0),))
    assert not is_low("qhe", sized) and is_low("qhe", EvalConfig("udpos", pretraining_gib=(("qhe", 0.0),)))
    assert is_low("qhe", EvalConfig("udpos", data_files=files, unknown_lang_low_resource=True))
    sets, _ = eval_sets(get_task("udpos"), EvalConfig("udpos", data_files=files, languages=("qhe",),
                                                      pretraining_gib=(("qhe", 20.0),)))
    assert list(sets) == ["qhe"] and sets["qhe"][2] == str(root / "qhe_hiencs-ud-test.conllu")
    with pytest.raises(AdaptertxError, match="unknown language code 'qhe'"):
        is_low("qhe")
    with pytest.raises(AdaptertxError, match="'deu' is the ISO 639 code 'de', whose CC-100 size adaptertx knows"):
        EvalConfig("udpos", pretraining_gib=(("deu", 1.0),))


def test_cli_data_files(tmp_path):
    a = _files(tmp_path / "a", {"test-sw.tsv": XNLI_SW})
    b = _files(tmp_path / "b", {"sw.tsv": XNLI_SW})
    base = ["evaluate", "xnli", "--out", str(tmp_path / "run")]
    twice = CliRunner().invoke(main, base + ["--data-file", f"sw={a / 'test-sw.tsv'}", "--data-file",
                                             f"sw={b / 'sw.tsv'}"])
    assert twice.exit_code == 1
    assert f"two files for language 'sw': {a / 'test-sw.tsv'} and {b / 'sw.tsv'}" in twice.output
    # a PATH alone is named by the rule: test-sw.tsv is Swahili
    named = CliRunner().invoke(main, base + ["--data-file", str(a / "test-sw.tsv"), "--data-dir", str(b)])
    assert named.exit_code == 1 and "two files for language 'sw'" in named.output
    bad = CliRunner().invoke(main, base + ["--data-file", str(tmp_path / "notes.tsv")])
    assert bad.exit_code == 2 and "--data-file takes LANG=PATH, or a PATH whose name gives its language" in bad.output
    folder = _files(tmp_path / "c", {"test-de.tsv": XNLI_DE, "LICENSE": ""})
    refused = CliRunner().invoke(main, base + ["--data-dir", str(folder)])
    assert refused.exit_code == 1 and f"{folder}: cannot tell the language of LICENSE;" in refused.output
    qhe = _files(tmp_path / "d", {"qhe.tsv": XNLI_DE})
    unknown = CliRunner().invoke(main, base + ["--data-dir", str(qhe)])
    assert unknown.exit_code == 1 and "unknown language code 'qhe'" in unknown.output
    gib = CliRunner().invoke(main, base + ["--data-dir", str(qhe), "--pretraining-gib", "qhe=many"])
    assert gib.exit_code == 2 and "--pretraining-gib takes CODE=GIB (a number), got 'qhe=many'" in gib.output


def test_blank_tydiqa_answers_refused_through_evaluation(tmp_path):
    blank = {"version": "TyDiQA-GoldP-1.1-for-SQuAD-1.1", "data": [{"title": "Thiago Silva", "paragraphs": [{
        "context": "Thiago Emiliano da Silva ni mchezaji wa soka wa Brazil.",
        "qas": [{"id": "swahili--8211684794284159625-4", "question": "Thiago Silva ni raia wa nchi gani?",
                 "answers": [{"text": "", "answer_start": 0}]}]}]}]}
    root = _files(tmp_path / "tydiqa-goldp-v1.1-dev", {"tydiqa.goldp.sw.dev.json": json.dumps(blank)})
    cfg = EvalConfig("tydiqa", data_files=data_dir_files(root))
    with pytest.raises(AdaptertxError, match=r"tydiqa\.goldp\.sw\.dev\.json: 1 of 1 questions have only empty gold"):
        eval_sets(get_task("tydiqa"), cfg)
