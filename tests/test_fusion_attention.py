"""AdapterFusion's attention, recorded: the fused path and the library path record the same
weights, equal to a reference computed from the ``adapters`` library's own attention output."""

import logging

import numpy as np
import pytest
import torch

from adaptertx.errors import AdaptertxError
from adaptertx.fused_fusion import enable_fused_fusion, library_fusion_forward
from adaptertx.fusion_attention import FusionAttention, record_fusion_attention

NAMES = ("a", "b", "c")


def fusion_model(seed=0, leave_out_b=False):
    """A tiny BERT with three bottleneck adapters under a Fusion; random, non-uniform weights."""
    from adapters import AutoAdapterModel, SeqBnConfig
    from adapters.composition import Fuse
    from transformers import BertConfig

    logging.getLogger("adapters").setLevel(logging.ERROR)
    cfg = BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                     intermediate_size=64)
    torch.manual_seed(seed)
    model = AutoAdapterModel.from_config(cfg)
    for n in NAMES:
        model.add_adapter(n, config=SeqBnConfig(leave_out=[1] if (leave_out_b and n == "b") else []))
    fuse = Fuse(*NAMES)
    model.add_adapter_fusion(fuse)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adapter_fusion_layer" in name or ".adapters." in name:
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / p.shape[-1] ** 0.5))
    model.set_active_adapters(fuse)
    model.eval()
    return model.base_model, fuse


def batches():
    """Two batches with padding (different lengths per row, one row of a single token)."""
    g = torch.Generator().manual_seed(3)
    out = []
    for lengths in ((7, 3, 5), (1, 6)):
        width = max(lengths)
        ids = torch.randint(5, 200, (len(lengths), width), generator=g)
        mask = torch.zeros(len(lengths), width, dtype=torch.long)
        for i, n in enumerate(lengths):
            mask[i, :n] = 1
            ids[i, n:] = 0
        out.append((ids, mask))
    return out


LABELS = ["x", "y", "x", "y", "y"]  # one per row, in order


def reference(model, fuse):
    """Per layer: the masked token means of the library's own attention output
    (``output_adapter_fusion_attentions``), over all rows and per label."""
    sums, tokens = {}, {}
    for ids, mask in batches():
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, output_adapter_fusion_attentions=True)
        per_layer = out.adapter_fusion_attentions[fuse.name]
        start = sum(tokens.get(("rows",), [0]))
        for layer, where in per_layer.items():
            probs = np.asarray(where["output_adapter"], dtype=np.float64)  # (B, T, n)
            if probs.shape[-1] < len(NAMES):  # adapter b left out of this layer: weight 0
                probs = np.stack([probs[..., 0], np.zeros(probs.shape[:-1]), probs[..., 1]], axis=-1)
            for row in range(ids.shape[0]):
                m = mask[row].numpy().astype(bool)
                label = LABELS[start + row]
                for key in ("all", label):
                    sums[(layer, key)] = sums.get((layer, key), 0) + probs[row][m].sum(0)
        for row in range(ids.shape[0]):
            label = LABELS[start + row]
            n = int(mask[row].sum())
            for key in ("all", label):
                tokens[key] = tokens.get(key, 0) + n
        tokens[("rows",)] = [start + ids.shape[0]]
    layers = sorted({layer for layer, _ in sums})
    mean = lambda key: [list(sums[(layer, key)] / tokens[key]) for layer in layers]  # noqa: E731
    return {"tokens": tokens["all"], "mean": mean("all"),
            "labels": {lab: {"tokens": tokens[lab], "mean": mean(lab)} for lab in ("x", "y")}}


def recorded(model, fuse, library: bool):
    with FusionAttention(model, fuse) as recorder:
        assert recorder.layers == ["0", "1", "2"] and recorder.adapters == list(NAMES)
        with recorder.collect(LABELS):
            for ids, mask in batches():
                with torch.inference_mode():
                    if library:
                        with library_fusion_forward(model):
                            model(input_ids=ids, attention_mask=mask)
                    else:
                        model(input_ids=ids, attention_mask=mask)
        return recorder.take()


def assert_same(got, want, tol=2e-4):
    assert got["tokens"] == want["tokens"]
    np.testing.assert_allclose(np.array(got["mean"]), np.array(want["mean"]), atol=tol)
    for label, entry in want["labels"].items():
        assert got["labels"][label]["tokens"] == entry["tokens"]
        np.testing.assert_allclose(np.array(got["labels"][label]["mean"]), np.array(entry["mean"]), atol=tol)


@pytest.mark.parametrize("leave_out_b", [False, True])
def test_fused_and_library_paths_record_the_reference_weights(leave_out_b):
    ref_model, fuse = fusion_model(leave_out_b=leave_out_b)
    want = reference(ref_model, fuse)  # the library's forward, unchanged by adaptertx
    model, fuse = fusion_model(leave_out_b=leave_out_b)
    served = enable_fused_fusion(model, fuse)
    assert served.layers == 3
    fused = recorded(model, fuse, library=False)
    library = recorded(model, fuse, library=True)
    assert_same(fused, want)
    assert_same(library, want)
    assert want["tokens"] == 7 + 3 + 5 + 1 + 6  # real tokens only
    means = np.array(fused["mean"])
    np.testing.assert_allclose(means.sum(-1), 1.0, atol=1e-3)
    assert means.std(-1).max() > 0.01  # the weights are not uniform: the test can tell paths apart
    if leave_out_b:
        assert means[1, 1] == 0  # a layer without adapter b gives it no attention


def test_recording_changes_no_output_and_padding_never_counts():
    model, fuse = fusion_model()
    enable_fused_fusion(model, fuse)
    ids, mask = batches()[0]
    with torch.inference_mode():
        plain = model(input_ids=ids, attention_mask=mask).last_hidden_state
    with FusionAttention(model, fuse) as recorder:
        with recorder.collect():
            with torch.inference_mode():
                out = model(input_ids=ids, attention_mask=mask).last_hidden_state
        padded = recorder.take()
        with recorder.collect():  # the same rows, each alone and unpadded
            for row in range(ids.shape[0]):
                n = int(mask[row].sum())
                with torch.inference_mode():
                    model(input_ids=ids[row:row + 1, :n], attention_mask=mask[row:row + 1, :n])
        alone = recorder.take()
    torch.testing.assert_close(out, plain, rtol=0, atol=0)
    assert padded["tokens"] == alone["tokens"] == 15 and "labels" not in padded
    np.testing.assert_allclose(np.array(padded["mean"]), np.array(alone["mean"]), atol=2e-4)
    # Closed: no sink, no hook; forwards record nothing and run as before.
    assert all("_adaptertx_attention_sink" not in m.__dict__ for m in model.modules())
    assert not model._forward_pre_hooks


def test_recorder_checks_rows_against_groups_and_finds_the_fuse():
    model, fuse = fusion_model()
    ids, mask = batches()[0]
    with FusionAttention(model, fuse) as recorder, pytest.raises(AdaptertxError, match="2 groups given"):
        with recorder.collect(["x", "y"]), torch.inference_mode():
            model(input_ids=ids, attention_mask=mask)
    with FusionAttention(model, fuse) as recorder:
        assert recorder.take() == {"tokens": 0, "mean": None}
    assert isinstance(record_fusion_attention(model), FusionAttention)
    model.set_active_adapters("a")
    assert record_fusion_attention(model) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fusion_products_on_either_path_equal_the_librarys(dtype):
    """The per-token products of the Fusion attention: the CPU's broadcast path and the batched
    path other devices take (forced here on the CPU), against the library's matmul formula in fp32."""
    from adaptertx.fused_fusion import fusion_context, fusion_scores

    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(2, 5, 16, generator=g), torch.randn(2, 5, 3, 16, generator=g), torch.randn(2, 5, 3, 16,
                                                                                                      generator=g)
    ref_scores = torch.squeeze(torch.matmul(q.unsqueeze(2), k.transpose(-2, -1)), dim=2)
    probs = torch.softmax(ref_scores, dim=-1)
    ref_context = torch.squeeze(torch.matmul(probs.unsqueeze(2), v), dim=2)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=3e-2, atol=3e-2)
    for broadcast in (True, False):
        s = fusion_scores(q.to(dtype), k.to(dtype), broadcast=broadcast)
        c = fusion_context(probs, v.to(dtype), broadcast=broadcast)
        assert s.dtype == torch.float32 and c.dtype == dtype
        torch.testing.assert_close(s, ref_scores, **tol)
        torch.testing.assert_close(c.float(), ref_context, **tol)
