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
