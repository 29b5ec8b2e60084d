import socket

import pytest
import torch

from adaptertx.errors import AdaptertxError
from adaptertx.models import MODELS, ModelSpec, fingerprint, load_model, register_model, resolve


def test_default_model_is_a_real_bert(me5):
    model, tokenizer = me5
    assert model.config.model_type == "bert"
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (12, 384)
    assert len(tokenizer) == 250002
    ids = tokenizer("passage: Habari ya asubuhi")["input_ids"]
    assert ids[0] == tokenizer.cls_token_id == 0 and ids[-1] == tokenizer.sep_token_id == 2


def test_tiny_xlmr_uses_the_real_vocabulary(tiny_xlmr):
    model, tokenizer = tiny_xlmr
    assert model.config.model_type == "xlm-roberta"
    assert model.config.vocab_size == len(tokenizer) == 250002
    batch = tokenizer(["Bonjour le monde", "Ни один язык не забыт."], padding=True, return_tensors="pt")
    out = model(**batch).last_hidden_state
    assert out.shape[:2] == batch["input_ids"].shape and torch.isfinite(out).all()


def test_local_folder_round_trip(tiny_xlmr, tmp_path):
    model, tokenizer = tiny_xlmr
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tok = load_model(str(tmp_path))
    batch = tokenizer(["Kila siku ni siku mpya."], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).last_hidden_state, model(**batch).last_hidden_state)
    assert loaded_tok("ሰላም")["input_ids"] == tokenizer("ሰላም")["input_ids"]
    assert fingerprint(loaded) == fingerprint(model)


def test_fingerprint_survives_dtype_and_tells_bases_apart(me5, tiny_xlmr):
    model, _ = me5
    assert fingerprint(model) == fingerprint(load_model("me5-small", dtype=torch.bfloat16)[0])
    assert fingerprint(model) != fingerprint(tiny_xlmr[0])
    from adaptertx.models import tiny_xlmr as build

    assert fingerprint(build(seed=1)[0]) != fingerprint(tiny_xlmr[0])


def test_folder_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(AdaptertxError, match=f"model folder {tmp_path} has no config.json"):
        load_model(str(tmp_path))


def test_unreachable_hub_fails_fast_and_clearly(monkeypatch):
    import adaptertx.models as models

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    # Fast means little work: one connect to the endpoint, with a short timeout, and the model
    # then looked up in the local cache only (asking the Hub would retry): nothing is loaded.
    connects, config_loads = [], []
    connect, from_pretrained = socket.socket.connect, models.AutoConfig.from_pretrained

    def counting_connect(sock, address):
        connects.append((address, sock.gettimeout()))
        return connect(sock, address)

    def counting_from_pretrained(*args, **kwargs):
        config_loads.append(kwargs.get("local_files_only"))
        return from_pretrained(*args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", counting_connect)
    monkeypatch.setattr(models.AutoConfig, "from_pretrained", counting_from_pretrained)
    with pytest.raises(AdaptertxError, match="could not load model 'someone/not-cached-model'.*Hub is not "
                                             "reachable.*'me5-small'"):
        load_model("someone/not-cached-model")
    assert [address for address, _ in connects] == [("127.0.0.1", 9)]
    assert 0 < connects[0][1] <= 5
    assert config_loads == []


def test_unknown_names():
    with pytest.raises(AdaptertxError, match="unknown model"):
        resolve("./no/such/folder")
    with pytest.raises(ValueError, match="already registered"):
        register_model(ModelSpec("me5-small", "bundled", None, 1, 1, 1, 1))
    assert MODELS["xlm-roberta-large"].retrieval_layer == 13
