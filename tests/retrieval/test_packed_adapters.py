"""The packed encoder with an ``adapters`` bottleneck adapter equals the adapters library forward."""

import adapters
import pytest
import torch
from adapters import SeqBnConfig
from transformers import BertConfig, BertModel, XLMRobertaConfig, XLMRobertaModel

from adaptertx.errors import AdaptertxError
from adaptertx.quantize import quantize_linears
from adaptertx.retrieval.packed import PackedEncoder, pack

COMMON = dict(vocab_size=120, hidden_size=48, num_hidden_layers=3, num_attention_heads=4,
              intermediate_size=96, max_position_embeddings=64)


def _model(kind):
    torch.manual_seed(0)
    if kind == "bert":
        model = BertModel(BertConfig(**COMMON, layer_norm_eps=1e-12), add_pooling_layer=False)
    else:
        model = XLMRobertaModel(XLMRobertaConfig(**COMMON, pad_token_id=1, bos_token_id=0, eos_token_id=2),
                                add_pooling_layer=False)
    adapters.init(model)
    return model.eval()


def _randomise(model, name):
    """adapters initialises the up-projection near zero; give every adapter weight a real value."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if f"adapters.{name}." in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def _sentences():
    g = torch.Generator().manual_seed(3)
    return [torch.randint(3, 120, (n,), generator=g).tolist() for n in [1, 5, 13, 2, 30, 7, 5]]


@pytest.mark.parametrize("kind, pad_id", [("bert", 0), ("xlmr", 1)])
@pytest.mark.parametrize("config", [SeqBnConfig(reduction_factor=4),
                                    SeqBnConfig(reduction_factor=8, non_linearity="gelu", scaling=0.5,
                                                leave_out=[1])])
def test_seq_bn_adapter_matches_adapters_forward(kind, pad_id, config, hf_pooled):
    model = _model(kind)
    model.add_adapter("task", config=config)
    _randomise(model, "task")
    model.set_active_adapters("task")
    sentences = _sentences()
    ids, cu = pack(sentences)
    enc = PackedEncoder(model)
    assert enc.adapter == "task"
    for layer in (1, 3):
        ours = enc.encode(ids, cu, layer)
        ref = hf_pooled(model, sentences, layer, pad_id)
        assert (ours * ref).sum(1).min().item() >= 0.9999
    # the adapter really changes the result (the test would pass trivially otherwise)
    plain = PackedEncoder(model, adapter="").encode(ids, cu, 3)
    assert (plain * hf_pooled(model, sentences, 3, pad_id)).sum(1).min().item() < 0.999


def test_adapter_loaded_from_adapterhub_folder(tmp_path, hf_pooled):
    model = _model("xlmr")
    model.add_adapter("task", config="seq_bn")
    _randomise(model, "task")
    model.save_adapter(str(tmp_path / "adapter"), "task", use_safetensors=True)
    fresh = _model("xlmr")
    name = fresh.load_adapter(str(tmp_path / "adapter"), use_safetensors=True)
    fresh.set_active_adapters(name)
    sentences = _sentences()
    ids, cu = pack(sentences)
    ours = PackedEncoder(fresh).encode(ids, cu, 3)
    assert (ours * hf_pooled(fresh, sentences, 3, 1)).sum(1).min().item() >= 0.9999


def test_adapter_bf16_and_int8_close(hf_pooled):
    model = _model("bert")
    model.add_adapter("task", config="seq_bn")
    _randomise(model, "task")
    model.set_active_adapters("task")
    sentences = _sentences()
    ids, cu = pack(sentences)
    ref = hf_pooled(model, sentences, 3, 0)
    for kw in ({"dtype": torch.bfloat16}, {"dtype": torch.bfloat16, "int8": True}, {"int8": True}):
        ours = PackedEncoder(model, **kw).encode(ids, cu, 3)
        assert (ours * ref).sum(1).min().item() >= 0.99, kw


def test_int8_storage_model_is_read_as_int8(hf_pooled):
    model = _model("bert")
    quantize_linears(model, compute_dtype=torch.float32)
    enc = PackedEncoder(model, dtype=torch.float32)
    assert enc.int8 and enc.layers[0]["qkv"].qweight.dtype == torch.int8
    sentences = _sentences()
    ids, cu = pack(sentences)
    ours = enc.encode(ids, cu, 3)
    assert (ours * hf_pooled(model, sentences, 3, 0)).sum(1).min().item() >= 0.9999


def test_unsupported_adapter_setups_refused():
    model = _model("bert")
    model.add_adapter("a", config="double_seq_bn")
    model.set_active_adapters("a")
    with pytest.raises(AdaptertxError, match="not in the seq_bn placement"):
        PackedEncoder(model)
    model.add_adapter("b", config="seq_bn")
    model.add_adapter("c", config="seq_bn")
    model.add_adapter_fusion(["b", "c"])
    model.set_active_adapters(adapters.composition.Stack("b", "c"))
    with pytest.raises(AdaptertxError, match="stacked, parallel and nested setups are not supported"):
        PackedEncoder(model)
    model.add_adapter("d", config="double_seq_bn")
    model.add_adapter_fusion(["a", "d"])
    model.set_active_adapters(adapters.composition.Fuse("a", "d"))
    with pytest.raises(AdaptertxError, match="adapter 'a' is not in the seq_bn placement"):
        PackedEncoder(model)
    with pytest.raises(AdaptertxError, match="has no adapter 'zz'"):
        PackedEncoder(model, adapter="zz")
    model.add_adapter("l", config="lora")
    with pytest.raises(AdaptertxError, match="not a bottleneck adapter"):
        PackedEncoder(model, adapter="l")


FUSION_CONFIGS = [
    "dynamic",
    "static",
    {"key": True, "query": True, "value": True, "query_before_ln": True, "regularization": False,
     "residual_before": True, "temperature": False, "value_before_softmax": True, "value_initialized": False,
     "dropout_prob": 0.0},
]


def _fusion_model(kind, config):
    model = _model(kind)
    names = ["a", "b", "c"]
    for n in names:
        model.add_adapter(n, config=SeqBnConfig(reduction_factor=4, leave_out=[1] if n == "a" else []))
    model.add_adapter_fusion(adapters.composition.Fuse(*names), config=config)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "adapter" in n:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
    model.set_active_adapters(adapters.composition.Fuse(*names))
    return model.eval()


@pytest.mark.parametrize("kind, pad_id", [("bert", 0), ("xlmr", 1)])
@pytest.mark.parametrize("config", FUSION_CONFIGS, ids=["dynamic", "static", "query-before-ln"])
def test_fusion_matches_adapters_forward(kind, pad_id, config, hf_pooled):
    model = _fusion_model(kind, config)
    sentences = _sentences()
    ids, cu = pack(sentences)
    enc = PackedEncoder(model)
    assert enc.adapter == adapters.composition.Fuse("a", "b", "c")
    for layer in (1, 3):
        ours = enc.encode(ids, cu, layer)
        ref = hf_pooled(model, sentences, layer, pad_id)
        assert (ours * ref).sum(1).min().item() >= 0.9999
    # Each adapter alone gives another result: the Fusion really mixes them.
    for alone in ("a", "b"):
        other = PackedEncoder(model, adapter=alone).encode(ids, cu, 3)
        assert (other * enc.encode(ids, cu, 3)).sum(1).min().item() < 0.9999
    bf16 = PackedEncoder(model, dtype=torch.bfloat16, int8=True).encode(ids, cu, 3)
    assert (bf16 * hf_pooled(model, sentences, 3, pad_id)).sum(1).min().item() >= 0.99


def test_fusion_setup_folder_encodes_like_the_model(tmp_path, tiny_xlmr_dir):
    """A `merge --method fusion` setup folder (adapters + Fusion + head) loads for encoding,
    with the packed and the Hugging Face backends agreeing."""
    from adapters import AutoAdapterModel

    from adaptertx.retrieval import SentenceEncoder, load_encoder

    model = AutoAdapterModel.from_pretrained(tiny_xlmr_dir)
    for n in ("a", "b"):
        model.add_adapter(n, config="seq_bn")
    fuse = adapters.composition.Fuse("a", "b")
    model.add_adapter_fusion(fuse)
    model.add_classification_head("fusion_head", num_labels=2)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "adapter" in n:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
    model.save_adapter_setup(str(tmp_path / "merged" / "adapter"), fuse, head_setup="fusion_head",
                             use_safetensors=True)
    loaded, tokenizer, name = load_encoder(tiny_xlmr_dir, tmp_path / "merged")
    assert name == "a,b" and loaded.adapters_config.active_setup == fuse
    params = dict(loaded.named_parameters())
    for k, v in model.base_model.named_parameters():
        if "adapter_fusion_layer" in k:
            assert torch.equal(params[k], v)
    texts = ["Hello world.", "A longer sentence about the weather today.", "Kurz."]
    packed = SentenceEncoder(loaded, tokenizer, dtype=torch.float32)(texts)
    hf = SentenceEncoder(loaded, tokenizer, dtype=torch.float32, backend="hf")(texts)
    assert (packed * hf).sum(1).min().item() >= 0.9999
    with pytest.raises(AdaptertxError, match="is not an adapter folder"):
        load_encoder(tiny_xlmr_dir, tmp_path)
