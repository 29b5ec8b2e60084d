"""encode's fast path against the reference, and the Tatoeba/BUCC evaluations on user files."""

import logging

import pytest
import torch

from adaptertx.errors import AdaptertxError
from adaptertx.evaluation import evaluate_bucc, evaluate_tatoeba, tatoeba_files
from adaptertx.retrieval import SentenceEncoder, encode

SENTENCES = ["Ich habe Hunger.", "Mimi ni mwalimu.", "这是一本书。", "A", "Tanemmirt ɣef wawal-nni.",
             "Le chat dort sur le canapé depuis ce matin, sans bouger une seule fois.", "Да.", "Ich habe Hunger."]


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_packed_equals_hf_reference_in_input_order(tiny_xlmr, layer):
    model, tokenizer = tiny_xlmr
    ref = encode(model, tokenizer, SENTENCES, layer=layer, backend="hf", batch_size=3)
    fast = encode(model, tokenizer, SENTENCES, layer=layer, tokens_per_batch=20)
    assert ((ref * fast).sum(1) >= 0.9999).all()
    one = encode(model, tokenizer, SENTENCES, layer=layer, tokens_per_batch=1)  # every sentence alone
    torch.testing.assert_close(fast, one, atol=1e-5, rtol=1e-5)
    # rows follow the input order: encoding a reversed list gives reversed rows
    torch.testing.assert_close(encode(model, tokenizer, SENTENCES[::-1], layer=layer), fast.flip(0),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast[0], fast[-1])


def test_bf16_and_int8_close(tiny_xlmr):
    model, tokenizer = tiny_xlmr
    ref = encode(model, tokenizer, SENTENCES)
    for kw in ({"dtype": torch.bfloat16}, {"dtype": torch.bfloat16, "int8": True}):
        assert (ref * encode(model, tokenizer, SENTENCES, **kw)).sum(1).min() > 0.99


def test_truncation_is_counted(tiny_xlmr, caplog):
    model, tokenizer = tiny_xlmr
    enc = SentenceEncoder(model, tokenizer, max_length=6, dtype=torch.float32)
    with caplog.at_level(logging.WARNING, logger="adaptertx.retrieval"):
        out = enc(SENTENCES)
    long = sum(len(tokenizer(s)["input_ids"]) > 6 for s in SENTENCES)
    assert enc.truncated == long > 0
    assert f"{long} of {len(SENTENCES)} sentences were longer than 6 tokens" in caplog.text
    ids, _ = enc.tokenize(SENTENCES)
    expected = tokenizer(SENTENCES, truncation=True, max_length=6)["input_ids"]
    assert ids == expected
    hf = SentenceEncoder(model, tokenizer, max_length=6, dtype=torch.float32, backend="hf")(SENTENCES)
    assert ((hf * out).sum(1) >= 0.9999).all()


def test_encode_bad_arguments(tiny_xlmr):
    model, tokenizer = tiny_xlmr
    with pytest.raises(AdaptertxError, match="layer 3 is outside the model: it has hidden states 0..2"):
        encode(model, tokenizer, SENTENCES, layer=3)
    with pytest.raises(AdaptertxError, match="layer -1 is outside"):
        encode(model, tokenizer, SENTENCES, layer=-1)
    with pytest.raises(AdaptertxError, match="unknown encoder backend"):
        encode(model, tokenizer, SENTENCES, backend="onnx")
    with pytest.raises(AdaptertxError, match="list of sentences"):
        encode(model, tokenizer, "one sentence")
    assert encode(model, tokenizer, []).shape == (0, model.config.hidden_size)


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def test_tatoeba_user_files(tiny_xlmr_dir, tmp_path):
    _write(tmp_path / "tatoeba.deu-eng.deu", ["Ich habe Hunger.", "Das ist ein Buch.", "Guten Morgen."])
    _write(tmp_path / "tatoeba.deu-eng.eng", ["I am hungry.", "This is a book.", "Good morning."])
    _write(tmp_path / "tatoeba.kab-eng.kab", ["Azul.", "Tanemmirt."])
    _write(tmp_path / "tatoeba.kab-eng.eng", ["Hello.", "Thanks."])
    assert sorted(tatoeba_files(tmp_path)) == ["de", "kab"]
    scores = evaluate_tatoeba(tiny_xlmr_dir, data_dir=tmp_path, progress=False)
    assert [(s.lang, s.pairs, s.low_resource) for s in scores] == [("de", 3, False), ("kab", 2, True)]
    assert all(0 <= s.x_to_en <= 100 for s in scores)
    with pytest.raises(AdaptertxError, match="layer 9 is outside the model"):
        evaluate_tatoeba(tiny_xlmr_dir, data_dir=tmp_path, layer=9, progress=False)
    with pytest.raises(AdaptertxError, match="no pairs for sw"):
        evaluate_tatoeba(tiny_xlmr_dir, ["sw"], data_dir=tmp_path, progress=False)
    _write(tmp_path / "tatoeba.kab-eng.eng", ["Hello."])
    with pytest.raises(AdaptertxError, match="has 2 lines but .* has 1"):
        evaluate_tatoeba(tiny_xlmr_dir, ["kab"], data_dir=tmp_path, progress=False)
    _write(tmp_path / "tatoeba.kab-eng.kab", [])
    _write(tmp_path / "tatoeba.kab-eng.eng", [])
    with pytest.raises(AdaptertxError, match="empty"):
        evaluate_tatoeba(tiny_xlmr_dir, ["kab"], data_dir=tmp_path, progress=False)
    with pytest.raises(AdaptertxError, match="is not a folder"):
        tatoeba_files(tmp_path / "tatoeba.kab-eng.kab")
    (tmp_path / "other").mkdir()
    with pytest.raises(AdaptertxError, match="no Tatoeba-style pairs"):
        tatoeba_files(tmp_path / "other")


def _bucc(tmp_path, gold):
    _write(tmp_path / "zh-en.dev.zh", ["zh-1\t我饿了。", "zh-2\t这是一本书。", "zh-3\t早上好。"])
    _write(tmp_path / "zh-en.dev.en", ["en-1\tGood morning.", "en-2\tI am hungry.", "en-3\tThis is a book.",
                                       "en-4\tThe weather is nice."])
    _write(tmp_path / "zh-en.dev.gold", gold)


def test_bucc_user_files(tiny_xlmr_dir, tmp_path):
    _bucc(tmp_path, ["zh-1\ten-2", "zh-2\ten-3", "zh-3\ten-1"])
    score = evaluate_bucc(tiny_xlmr_dir, "zh", data_dir=tmp_path, progress=False)
    assert (score.source_sentences, score.target_sentences, score.gold) == (3, 4, 3)
    assert 0 <= score.f1 <= 100 and score.extracted <= score.candidates
    _bucc(tmp_path, ["zh-1\ten-2", "zh-9\ten-3"])
    with pytest.raises(AdaptertxError, match="names 'zh-9', which is not in zh-en.dev.zh"):
        evaluate_bucc(tiny_xlmr_dir, "zh", data_dir=tmp_path, progress=False)
    with pytest.raises(AdaptertxError, match="missing de-en.dev.de"):
        evaluate_bucc(tiny_xlmr_dir, "de", data_dir=tmp_path, progress=False)
    _bucc(tmp_path, [])
    with pytest.raises(AdaptertxError, match="zh-en.dev.gold: file is empty"):
        evaluate_bucc(tiny_xlmr_dir, "zh", data_dir=tmp_path, progress=False)
