import pytest
import torch

from adaptertx.errors import AdaptertxError
from adaptertx.retrieval import encode, retrieval_accuracy

SENTENCES = ["Ich habe Hunger.", "Mimi ni mwalimu.", "这是一本书。", "A", "Tanemmirt ɣef wawal-nni.",
             "Le chat dort sur le canapé depuis ce matin, sans bouger une seule fois.", "Да."]


def _manual(model, tokenizer, sentence, layer):
    batch = tokenizer(sentence, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch, output_hidden_states=True).hidden_states[layer][0]
    return torch.nn.functional.normalize(hidden.mean(0), dim=0)


@pytest.mark.parametrize("layer", [1, 2])
def test_encode_matches_unbatched_forward_in_input_order(tiny_xlmr, layer):
    model, tokenizer = tiny_xlmr
    out = encode(model, tokenizer, SENTENCES, layer=layer, batch_size=3)
    assert out.shape == (len(SENTENCES), model.config.hidden_size)
    for i, s in enumerate(SENTENCES):
        torch.testing.assert_close(out[i], _manual(model, tokenizer, s, layer), atol=1e-5, rtol=1e-5)
    # batch size does not change the result; the model keeps all its layers afterwards
    torch.testing.assert_close(out, encode(model, tokenizer, SENTENCES, layer=layer, batch_size=1),
                               atol=1e-5, rtol=1e-5)
    assert len(model.encoder.layer) == model.config.num_hidden_layers


def test_encode_bf16_close_to_fp32(tiny_xlmr):
    model, tokenizer = tiny_xlmr
    fp32 = encode(model, tokenizer, SENTENCES)
    bf16 = encode(model, tokenizer, SENTENCES, dtype=torch.bfloat16)
    assert (fp32 * bf16).sum(-1).min() > 0.99


def test_encode_edge_cases(tiny_xlmr):
    model, tokenizer = tiny_xlmr
    assert encode(model, tokenizer, []).shape == (0, model.config.hidden_size)
    with pytest.raises(AdaptertxError, match="layer 3 is outside the model: it has hidden states 0..2"):
        encode(model, tokenizer, SENTENCES, layer=3)


def test_retrieval_accuracy_against_brute_force():
    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(50, 8), dim=-1)
    c = torch.nn.functional.normalize(q + 0.6 * torch.randn(50, 8), dim=-1)
    brute = sum(max(range(50), key=lambda j: float(q[i] @ c[j])) == i for i in range(50))
    assert retrieval_accuracy(q, c) == pytest.approx(100.0 * brute / 50)
    assert retrieval_accuracy(q, q) == 100.0
    with pytest.raises(AdaptertxError, match="aligned pairs: got 50 queries and 49 candidates"):
        retrieval_accuracy(q, c[:49])


def test_e5_prefixes_follow_the_task_kind(tiny_xlmr):
    # intfloat/multilingual-e5's model card: "query: " on both sides of symmetric tasks such as
    # bitext mining; "query: " and "passage: " for asymmetric retrieval. Other models: none.
    from types import SimpleNamespace

    from adaptertx.retrieval import TASK_KINDS, resolve_layer_prefix, retrieval_prefixes

    me5 = SimpleNamespace(config=SimpleNamespace(_name_or_path="/cache/adaptertx/models/me5-small",
                                                 num_hidden_layers=12))
    assert TASK_KINDS == ("symmetric", "asymmetric")
    assert retrieval_prefixes(me5, "symmetric") == ("query: ", "query: ")
    assert retrieval_prefixes(me5, "asymmetric") == ("query: ", "passage: ")
    assert resolve_layer_prefix(me5, None, None) == (12, "query: ")
    assert resolve_layer_prefix(me5, 7, "passage: ") == (7, "passage: ")  # given values win
    model, _ = tiny_xlmr
    assert retrieval_prefixes(model, "symmetric") == retrieval_prefixes(model, "asymmetric") == ("", "")
    with pytest.raises(AdaptertxError, match="unknown retrieval task kind 'mining'"):
        retrieval_prefixes(model, "mining")
