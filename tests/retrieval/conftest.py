"""Shared reference for the packed-encoder tests: the Hugging Face padded forward, pooled."""

import pytest
import torch
import torch.nn.functional as F


def _hf_pooled(model, sentences, layer, pad_id):
    """Masked mean pool of hidden state ``layer`` over a right-padded batch, L2-normalised.

    sentences: token-id lists; returns (n, hidden).
    """
    longest = max(len(s) for s in sentences)
    ids = torch.full((len(sentences), longest), pad_id)
    mask = torch.zeros(len(sentences), longest, dtype=torch.long)
    for i, s in enumerate(sentences):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    with torch.no_grad():
        hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[layer]
    m = mask.unsqueeze(-1).float()
    return F.normalize((hs * m).sum(1) / m.sum(1), dim=1)


@pytest.fixture
def hf_pooled():
    """The padded Hugging Face forward the packed encoder must reproduce."""
    return _hf_pooled
