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


def _embed(model, tokenizer, hf_pooled, sentences):
    """The tiny model's sentence embeddings from the padded Hugging Face forward: mean of the
    last hidden state (its default retrieval layer), no prefix, float32; (n, hidden)."""
    return hf_pooled(model, tokenizer(sentences)["input_ids"], model.config.num_hidden_layers,
                     tokenizer.pad_token_id)


def _nearest_is_own(sim):
    """Row i's largest entry is at column i; (n,) bool. Refuses near ties, whose winner a
    rounding difference could flip."""
    top = sim.topk(2, dim=1).values
    assert (top[:, 0] - top[:, 1] > 1e-4).all(), sim
    return sim.argmax(1) == torch.arange(len(sim))


def test_tatoeba_user_files(tiny_xlmr, tiny_xlmr_dir, tmp_path, hf_pooled):
    # fr is a known value: identical sentences on both sides, the English side permuted so
    # that only the last one stays in place, so 1 of 4 is found, both ways.
    same = ["Bonjour.", "Merci beaucoup.", "Le chat dort sur le canapé.", "Il pleut depuis ce matin."]
    pairs = {"de": (["Ich habe Hunger.", "Das ist ein Buch.", "Guten Morgen."],
                    ["I am hungry.", "This is a book.", "Good morning."]),
             "fr": (same, [same[1], same[2], same[0], same[3]]),
             "kab": (["Azul.", "Tanemmirt."], ["Hello.", "Thanks."])}
    for lang, stem in (("de", "deu"), ("fr", "fra"), ("kab", "kab")):
        _write(tmp_path / f"tatoeba.{stem}-eng.{stem}", pairs[lang][0])
        _write(tmp_path / f"tatoeba.{stem}-eng.eng", pairs[lang][1])
    assert sorted(tatoeba_files(tmp_path)) == ["de", "fr", "kab"]
    scores = evaluate_tatoeba(tiny_xlmr_dir, data_dir=tmp_path, dtype=torch.float32, progress=False)
    assert [(s.lang, s.pairs, s.low_resource) for s in scores] == [("de", 3, False), ("fr", 4, False),
                                                                   ("kab", 2, True)]
    # English row i holds source sentence p[i]: each direction finds the identical sentence.
    p = [1, 2, 0, 3]
    assert scores[1].nearest == tuple((p[i], p.index(i)) for i in range(4))
    assert (scores[1].en_to_x, scores[1].x_to_en, scores[1].x_to_en_f1) == (25.0, 25.0, 25.0)
    # Each direction's accuracy is the share of sentences whose most similar sentence on the
    # other side (cosine of the Hugging Face forward's pooled states) is their translation;
    # en→x (the English sentences search the source ones) is XTREME's, x→en MTEB's.
    model, tokenizer = tiny_xlmr
    for s in scores:
        assert s.prefix == ""  # not an e5 model
        src, tgt = (_embed(model, tokenizer, hf_pooled, side) for side in pairs[s.lang])
        hits, back = _nearest_is_own(src @ tgt.T), _nearest_is_own(tgt @ src.T)
        assert [x_en == i for i, (_, x_en) in enumerate(s.nearest)] == hits.tolist(), s.lang
        assert [en_x == i for i, (en_x, _) in enumerate(s.nearest)] == back.tolist(), s.lang
        assert s.x_to_en == pytest.approx(100 * hits.float().mean().item()), s.lang
        assert s.en_to_x == pytest.approx(100 * back.float().mean().item()), s.lang
        assert s.x_to_en_f1 <= s.x_to_en
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


def _bucc_brute_force(src, tgt, gold, k=4):
    """Precision, recall and F1 (percent) and the number extracted at the best threshold, from
    every pair's ratio margin. src: (n, dim), tgt: (m, dim) with n, m <= k (every row is in
    every neighbourhood); gold: set of (source row, target row)."""
    sim = (src @ tgt.T).double()
    fwd_mean = sim.topk(min(k, sim.shape[1]), dim=1).values.mean(1)
    bwd_mean = sim.topk(min(k, sim.shape[0]), dim=0).values.mean(0)
    margin = sim / ((fwd_mean[:, None] + bwd_mean[None, :]) / 2)
    best = [(margin[i].max().item(), i, margin[i].argmax().item()) for i in range(sim.shape[0])]
    best += [(margin[:, j].max().item(), margin[:, j].argmax().item(), j) for j in range(sim.shape[1])]
    used_s, used_t, kept = set(), set(), []
    for _score, i, j in sorted(best, key=lambda c: -c[0]):
        if i not in used_s and j not in used_t:
            used_s.add(i), used_t.add(j)
            kept.append((i, j) in gold)
    f1s = [(2 * sum(kept[:n]) / (n + len(gold)), n) for n in range(1, len(kept) + 1)]
    f1, n = max(f1s, key=lambda t: (t[0], -t[1]))
    if f1 == 0:
        return 0.0, 0.0, 0.0, 0, len(kept)
    return 100 * sum(kept[:n]) / n, 100 * sum(kept[:n]) / len(gold), 100 * f1, n, len(kept)


def test_bucc_user_files(tiny_xlmr, tiny_xlmr_dir, tmp_path, hf_pooled):
    _bucc(tmp_path, ["zh-1\ten-2", "zh-2\ten-3", "zh-3\ten-1"])
    # Two English sentences replaced by copies of their gold source sentence: those two pairs
    # are mined first and right, so F1 is at least 2 * 2 / (2 + 3) = 80%.
    zh = ["我饿了。", "这是一本书。", "早上好。"]
    en = ["Good morning.", zh[0], zh[1], "The weather is nice."]
    _write(tmp_path / "zh-en.dev.en", [f"en-{i}\t{s}" for i, s in enumerate(en, 1)])
    score = evaluate_bucc(tiny_xlmr_dir, "zh", data_dir=tmp_path, dtype=torch.float32, progress=False)
    assert (score.source_sentences, score.target_sentences, score.gold) == (3, 4, 3)
    model, tokenizer = tiny_xlmr
    src, tgt = _embed(model, tokenizer, hf_pooled, zh), _embed(model, tokenizer, hf_pooled, en)
    want = _bucc_brute_force(src, tgt, {(0, 1), (1, 2), (2, 0)})
    assert (score.precision, score.recall, score.f1, score.extracted, score.candidates) == pytest.approx(want)
    assert score.f1 >= 80 - 1e-9 and score.recall >= 200 / 3 - 1e-9
    # Chance: three sources each paired with one of four targets at random, 3/4 hits expected.
    assert score.chance == pytest.approx(100 * 2 * (3 / 4) / (3 + 3))
    _bucc(tmp_path, ["zh-1\ten-2", "zh-9\ten-3"])
    with pytest.raises(AdaptertxError, match="names 'zh-9', which is not in zh-en.dev.zh"):
        evaluate_bucc(tiny_xlmr_dir, "zh", data_dir=tmp_path, progress=False)
    with pytest.raises(AdaptertxError, match="missing de-en.dev.de"):
        evaluate_bucc(tiny_xlmr_dir, "de", data_dir=tmp_path, progress=False)
    _bucc(tmp_path, [])
    with pytest.raises(AdaptertxError, match="zh-en.dev.gold: file is empty"):
        evaluate_bucc(tiny_xlmr_dir, "zh", data_dir=tmp_path, progress=False)
