"""The packed encoder's forward stays on its weights' device: checked without a GPU.

The encoder is built from a real tiny model with its weights on the ``meta`` device (a device
that is not the CPU, whose tensors have shapes but no data), and ``encode_many`` runs on
batches from :func:`pack` (on the CPU, as the encoder takes them) under :class:`DeviceGuard`,
a dispatch mode that sees every aten op. It records a violation for an op whose tensor
arguments sit on two devices (0-dim CPU scalars aside: torch moves those itself), for an op
that copies device data to another device (a read back to the host), and for a host read of a
device value (``.item()``, ``int(t)``). Host-side preparation (offsets, positions) runs on the
CPU and is fine as long as it never meets a weight.

The kernels run as their pure-torch references (``ADAPTERTX_KERNELS=ref``). Meta tensors
cannot be read, so a kernel wrapper that reads its offsets back to check them cannot run on
meta: where a kernel the encoder calls does not run on meta (probed before the forward), a
stand-in that does takes its place: :func:`varlen_attention_on_device` and
:func:`segment_mean_pool_on_device` (the same results, checked against the kernels' references
below, from device-side index arithmetic only, given the host-counted ``max_seqlen``), and the
fusion kernel's reference. The test is about the encoder's own handling of devices; the
kernels' is tested with the kernels.
"""

from __future__ import annotations

import os
import traceback

import adapters
import pytest
import torch
import torch.nn.functional as F
from adapters import SeqBnConfig
from adapters.composition import Fuse
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import BertConfig, BertModel, XLMRobertaConfig, XLMRobertaModel

from adaptertx.kernels import segment_mean_pool_normalize_ref, varlen_attention_ref
from adaptertx.kernels.adapter_fusion import adapter_fusion_ref
from adaptertx.retrieval import packed
from adaptertx.retrieval.packed import PackedEncoder, pack

META = torch.device("meta")
_HOST_READS = (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default)
_TORCH_DIR = os.path.dirname(torch.__file__)


class DeviceViolation(AssertionError):
    """An op of the forward touched a tensor on another device than the model's."""


class DeviceGuard(TorchDispatchMode):
    """Records every aten op that mixes devices or leaves ``device`` (see the module doc)."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = torch.device(device)
        self.violations: list[str] = []
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops += 1
        leaves = pytree.tree_leaves((args, kwargs))
        tensors = [t for t in leaves if isinstance(t, torch.Tensor)]
        devices = {t.device for t in tensors if not (t.dim() == 0 and t.device.type == "cpu")}
        targets = {d for d in leaves if isinstance(d, torch.device)} - {self.device}  # .to(device), _to_copy
        if len(devices) > 1:
            self._flag(func, f"mixes tensors on {', '.join(sorted(map(str, devices)))}")
        elif func in _HOST_READS and devices == {self.device}:
            self._flag(func, f"reads a {self.device} value back to the host")
        elif targets and devices == {self.device}:
            self._flag(func, f"copies {self.device} data to {', '.join(sorted(map(str, targets)))}")
        try:
            out = func(*args, **kwargs)
        except Exception as e:
            if self.violations:
                raise DeviceViolation("; ".join(self.violations)) from e
            raise
        if devices == {self.device}:
            left = {t.device for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)} - {self.device}
            if left:
                self._flag(func, f"copies {self.device} data to {', '.join(sorted(map(str, left)))}")
        return out

    def _flag(self, func, what: str) -> None:
        """Record ``func`` with the innermost two lines of Python (outside torch) that called it."""
        frames = [f for f in traceback.extract_stack()[:-2] if not f.filename.startswith(_TORCH_DIR)]
        where = " <- ".join(f"{os.path.basename(f.filename)}:{f.lineno} {f.name}: {f.line}" for f in frames[::-1][:2])
        self.violations.append(f"{func} {what} (at {where})")


# ------------------------------------------------------------------------------ device-side stand-ins


def varlen_attention_on_device(qkv, cu_seqlens, heads, scale=None, max_seqlen=None):
    """:func:`adaptertx.kernels.varlen_attention` from device-side index arithmetic only: each
    sequence gathered into a (n, max_seqlen) block, masked attention, scattered back."""
    tokens, dim = qkv.shape[0], qkv.shape[1] // 3
    cu = cu_seqlens.to(torch.int64)
    n, length = cu.numel() - 1, int(max_seqlen)
    pos = torch.arange(length, device=qkv.device)
    valid = pos[None, :] < (cu[1:] - cu[:-1])[:, None]                               # (n, L)
    index = (cu[:-1, None] + pos[None, :]).clamp(max=max(tokens - 1, 0)).reshape(-1)
    q, k, v = qkv.index_select(0, index).view(n, length, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=valid[:, None, None, :], scale=scale)
    out = torch.where(valid.reshape(-1, 1), out.transpose(1, 2).reshape(n * length, dim), 0)
    return qkv.new_zeros(tokens, dim).index_add(0, index, out)


def segment_mean_pool_on_device(hidden, cu_seqlens, out_dtype=None):
    """:func:`adaptertx.kernels.segment_mean_pool_normalize` from device-side index arithmetic only."""
    cu = cu_seqlens.to(torch.int64)
    segment = torch.searchsorted(cu[1:], torch.arange(hidden.shape[0], device=hidden.device), right=True)
    sums = torch.zeros(cu.numel() - 1, hidden.shape[1], device=hidden.device).index_add(0, segment, hidden.float())
    means = sums / (cu[1:] - cu[:-1]).clamp(min=1).to(torch.float32)[:, None]
    return F.normalize(means, dim=1, eps=1e-12).to(out_dtype or hidden.dtype)


def _runs_on_meta(probe, fn) -> bool:
    try:
        probe(fn)
    except Exception:
        return False
    return True


@pytest.fixture
def on_meta(monkeypatch):
    """The pure-torch kernel references, and stand-ins for the kernels that cannot run on meta."""
    monkeypatch.setenv("ADAPTERTX_KERNELS", "ref")
    cu = torch.tensor([0, 2, 5], dtype=torch.int32, device=META)
    x = torch.empty(5, COMMON["hidden_size"], device=META)
    fusion = PackedEncoder(_model("bert", "fusion"), device=META).layers[0]["fusion"]

    def attention(fn):
        fn(torch.empty(5, 12, device=META), cu, 2, max_seqlen=3)

    probes = {"varlen_attention": (attention, varlen_attention_on_device),
              "segment_mean_pool_normalize": (lambda fn: fn(x, cu), segment_mean_pool_on_device),
              "adapter_fusion": (lambda fn: fn(x, x, x, fusion, 1.0), adapter_fusion_ref)}
    for name, (probe, stand_in) in probes.items():
        if not _runs_on_meta(probe, getattr(packed, name)) and _runs_on_meta(probe, stand_in):
            monkeypatch.setattr(packed, name, stand_in)


def test_stand_ins_equal_the_kernel_references():
    g = torch.Generator().manual_seed(0)
    _, cu = pack([[1] * n for n in (3, 1, 7, 4, 7)])
    qkv = torch.randn(int(cu[-1]), 3 * 16, generator=g)
    expected = varlen_attention_ref(qkv, cu, 4)
    assert torch.allclose(varlen_attention_on_device(qkv, cu.to(torch.int32), 4, max_seqlen=7), expected, atol=1e-5)
    hidden = torch.randn(int(cu[-1]), 8, generator=g)
    assert torch.allclose(segment_mean_pool_on_device(hidden, cu), segment_mean_pool_normalize_ref(hidden, cu),
                          atol=1e-6)


# ------------------------------------------------------------------------------ the guard itself


def test_the_guard_catches_mixed_devices_and_host_reads():
    weight = torch.empty(4, 3, device=META)
    with DeviceGuard(META) as guard:  # meta itself lets this pass: only the guard sees it
        weight.index_select(0, torch.tensor([0, 2]))
    assert guard.violations and "mixes tensors on cpu, meta" in guard.violations[0]
    with DeviceGuard(META) as guard, pytest.raises(DeviceViolation):
        int(weight.sum())
    assert any("reads a meta value back to the host" in v for v in guard.violations)
    for inference in (False, True):  # inference mode dispatches aten.to itself, not aten._to_copy
        with torch.inference_mode(inference), DeviceGuard(META) as guard, pytest.raises(DeviceViolation):
            weight.to(torch.float64).cpu()
        assert any("copies meta data to cpu" in v for v in guard.violations)
    with DeviceGuard(META) as guard:
        (torch.arange(3) + 1).to(META) * weight[:3, 0]  # host work, then one move: fine
    assert guard.violations == [] and guard.ops > 0


# ------------------------------------------------------------------------------ the encoder

COMMON = dict(vocab_size=120, hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96,
              max_position_embeddings=64)


def _model(kind: str, setup: str):
    torch.manual_seed(0)
    if kind == "bert":
        model = BertModel(BertConfig(**COMMON, layer_norm_eps=1e-12), add_pooling_layer=False)
    else:
        model = XLMRobertaModel(XLMRobertaConfig(**COMMON, pad_token_id=1, bos_token_id=0, eos_token_id=2),
                                add_pooling_layer=False)
    if setup in ("adapter", "fusion"):
        adapters.init(model)
        names = ["a"] if setup == "adapter" else ["a", "b"]
        for name in names:
            model.add_adapter(name, config=SeqBnConfig(reduction_factor=4))
        if setup == "fusion":
            model.add_adapter_fusion(Fuse(*names))
        model.set_active_adapters(names[0] if setup == "adapter" else Fuse(*names))
    return model.eval()


def _batches():
    g = torch.Generator().manual_seed(3)
    lengths = [[1, 5, 13, 2], [30, 7, 5]]
    return [pack([torch.randint(3, 120, (n,), generator=g).tolist() for n in group]) for group in lengths]


def _check_forward(enc: PackedEncoder, batches) -> None:
    assert enc.word.device == META and enc.pos.device == META
    with DeviceGuard(META) as guard:
        embs = enc.encode_many(batches, enc.num_layers)
    assert guard.violations == [], "\n".join(guard.violations)
    assert guard.ops > 20 * enc.num_layers  # the forward really ran under the guard
    for emb, (_, cu) in zip(embs, batches, strict=True):
        assert emb.device == META and emb.shape == (cu.numel() - 1, COMMON["hidden_size"])
        assert emb.dtype == torch.float32


@pytest.mark.parametrize("kind", ["bert", "xlmr"])
@pytest.mark.parametrize("setup", ["plain", "adapter", "fusion"])
@pytest.mark.parametrize("dtype, int8", [(torch.float32, False), (torch.bfloat16, True)], ids=["fp32", "bf16-int8"])
def test_forward_stays_on_the_weights_device(on_meta, kind, setup, dtype, int8):
    """Weights read from a CPU model and kept on another device (meta): no op meets the CPU."""
    enc = PackedEncoder(_model(kind, setup), dtype=dtype, int8=int8, device=META)
    _check_forward(enc, _batches())


@pytest.mark.parametrize("setup", ["plain", "adapter"])
def test_forward_of_a_model_moved_to_the_device(on_meta, setup):
    """The usual way in: the model moved to its device first, the encoder reading it there."""
    enc = PackedEncoder(_model("xlmr", setup).to(META), int8=setup == "plain")
    _check_forward(enc, _batches())


def test_attention_gets_the_longest_sequence_counted_on_the_host(on_meta, monkeypatch):
    seen = []

    def recording(qkv, cu_seqlens, heads, scale=None, max_seqlen=None):
        seen.append((cu_seqlens.device, cu_seqlens.dtype, max_seqlen))
        return varlen_attention_on_device(qkv, cu_seqlens, heads, scale, max_seqlen)

    monkeypatch.setattr(packed, "varlen_attention", recording)
    enc = PackedEncoder(_model("bert", "plain"), device=META)
    _check_forward(enc, _batches())
    assert seen == [(META, torch.int32, 13), (META, torch.int32, 30)] * COMMON["num_hidden_layers"]
