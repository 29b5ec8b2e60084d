import pytest
import torch
from transformers import BertConfig, BertModel, XLMRobertaConfig, XLMRobertaModel

from adaptertx.errors import AdaptertxError
from adaptertx.retrieval.packed import PackedEncoder, pack

COMMON = dict(vocab_size=120, hidden_size=48, num_hidden_layers=3, num_attention_heads=4,
              intermediate_size=96, max_position_embeddings=64)


def _bert():
    torch.manual_seed(0)
    return BertModel(BertConfig(**COMMON, layer_norm_eps=1e-12), add_pooling_layer=False).eval()


def _xlmr():
    torch.manual_seed(1)
    return XLMRobertaModel(
        XLMRobertaConfig(**COMMON, pad_token_id=1, bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5),
        add_pooling_layer=False,
    ).eval()


def _sentences(pad_id):
    g = torch.Generator().manual_seed(3)
    lengths = [1, 5, 13, 2, 30, 7]
    return [[int(t) for t in torch.randint(3, 120, (n,), generator=g) if int(t) != pad_id] or [5] for n in lengths]


@pytest.mark.parametrize("make, pad_id", [(_bert, 0), (_xlmr, 1)])
@pytest.mark.parametrize("layer", [0, 2, 3])
def test_fp32_matches_hf_masked_mean_pool(make, pad_id, layer, hf_pooled):
    model = make()
    sentences = _sentences(pad_id)
    ids, cu = pack(sentences)
    ours = PackedEncoder(model).encode(ids, cu, layer)
    ref = hf_pooled(model, sentences, layer, pad_id)
    cos = (ours * ref).sum(1)
    assert cos.min().item() >= 0.9999, cos


def test_bf16_close_and_batch_independent(hf_pooled):
    model = _xlmr()
    sentences = _sentences(1)
    enc = PackedEncoder(model, dtype=torch.bfloat16)
    ids, cu = pack(sentences)
    batch = enc.encode(ids, cu, 3)
    single = torch.cat([enc.encode(*pack([s]), 3) for s in sentences])
    assert (batch * single).sum(1).min().item() >= 0.999
    ref = hf_pooled(model, sentences, 3, 1)
    assert (batch * ref).sum(1).min().item() >= 0.99


@pytest.mark.parametrize("dtype, int8", [(torch.float32, False), (torch.bfloat16, False), (torch.bfloat16, True)])
def test_layer_by_layer_over_batches_equals_each_batch_alone(dtype, int8):
    """encode_many runs batches layer-major (one dequantisation per layer); each result is
    bit-identical to encoding that batch on its own."""
    enc = PackedEncoder(_xlmr(), dtype=dtype, int8=int8)
    sentences = _sentences(1)
    batches = [pack(sentences[:2]), pack(sentences[2:3]), pack(sentences[3:])]
    together = enc.encode_many(batches, 3)
    for (ids, cu), got in zip(batches, together, strict=True):
        assert torch.equal(got, enc.encode(ids, cu, 3))
    assert enc.encode_many([], 3) == []


def test_bad_inputs_raise():
    enc = PackedEncoder(_bert())
    ids, cu = pack([[5, 6, 7]])
    with pytest.raises(AdaptertxError):
        enc.encode(ids, cu, 4)
    with pytest.raises(AdaptertxError):
        enc.encode(ids, torch.tensor([0, 2]), 1)
    with pytest.raises(AdaptertxError):
        pack([[1], []])
    with pytest.raises(AdaptertxError):
        PackedEncoder(torch.nn.Linear(2, 2))


def test_equal_lengths_out_of_order_match_hf(hf_pooled):
    """Equal-length sequences that are not adjacent are gathered into one attention batch."""
    model = _bert()
    g = torch.Generator().manual_seed(5)
    sentences = [torch.randint(3, 120, (n,), generator=g).tolist() for n in [3, 5, 3, 5, 5, 1, 3]]
    ids, cu = pack(sentences)
    ours = PackedEncoder(model).encode(ids, cu, 3)
    ref = hf_pooled(model, sentences, 3, 0)
    assert (ours * ref).sum(1).min().item() >= 0.9999
