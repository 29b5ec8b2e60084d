"""On a CUDA GPU: every op's CUDA kernel, reached through its public function, against its reference,
and the packed encoder on the GPU against the fp32 CPU encoder. Skipped where no GPU is (then
tests/kernels/test_triton.py runs the Triton kernels under the interpreter instead)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from adaptertx import kernels
from adaptertx.kernels import _build, _library
from adaptertx.kernels.adapter_fusion import FusionWeights, pack_fusion

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

DEV = "cuda"


def _err(a, b) -> float:
    return (a.float() - b.float()).abs().max().item() if a.numel() else 0.0


def _rule(ours, ref32, torch_same):
    """The kernel's error against fp32 is at most twice torch's own in the same dtype."""
    assert ours.shape == ref32.shape and ours.device.type == "cuda"
    assert _err(ours, ref32) <= 2 * _err(torch_same, ref32) + 1e-5


@pytest.fixture(autouse=True)
def _kernels_on(monkeypatch):
    monkeypatch.setenv(_build.ENV, "cpu=auto,cuda=native")


@pytest.mark.parametrize("tokens", [0, 1, 37, 1000])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_elementwise_ops(tokens, dtype):
    g = torch.Generator(device=DEV).manual_seed(0)
    x = torch.randn(tokens, 300, device=DEV, generator=g)
    res, b, w = (torch.randn_like(x), torch.randn(300, device=DEV, generator=g),
                 torch.randn(300, device=DEV, generator=g))
    xd, rd = x.to(dtype), res.to(dtype)
    _rule(kernels.bias_gelu(xd, b), kernels.bias_gelu_ref(xd.float(), b), kernels.bias_gelu_ref(xd, b))
    _rule(kernels.add_layernorm(xd, rd, w, b, 1e-5), kernels.add_layernorm_ref(xd.float(), rd.float(), w, b, 1e-5),
          kernels.add_layernorm_ref(xd, rd, w, b, 1e-5))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_varlen_attention_is_one_flash_call_per_batch(dtype):
    lengths = [1, 5, 64, 130, 7, 512]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device=DEV, dtype=torch.int32)
    qkv = torch.randn(sum(lengths), 3 * 768, device=DEV).to(dtype)
    ours = kernels.varlen_attention(qkv, cu, 12, max_seqlen=max(lengths))
    _rule(ours, kernels.varlen_attention_ref(qkv.float(), cu, 12), kernels.varlen_attention_ref(qkv, cu, 12))


def test_segment_pool_bottleneck_dequantize_and_dropout():
    g = torch.Generator(device=DEV).manual_seed(1)
    h = torch.randn(50, 96, device=DEV, generator=g).bfloat16()
    cu = torch.tensor([0, 0, 1, 20, 50], device=DEV)
    _rule(kernels.segment_mean_pool_normalize(h, cu), kernels.segment_mean_pool_normalize_ref(h.float(), cu),
          kernels.segment_mean_pool_normalize_ref(h, cu))
    dw, uw = torch.randn(24, 96, device=DEV) / 10, torch.randn(96, 24, device=DEV) / 5
    res = torch.randn_like(h)
    for act in ("relu", "gelu", "silu", "leakyrelu"):
        args = (dw.bfloat16(), None, uw.bfloat16(), None, act, 0.7)
        _rule(kernels.bottleneck_adapter(h, res, *args),
              kernels.bottleneck_adapter_ref(h.float(), res.float(), dw, None, uw, None, act, 0.7),
              kernels.bottleneck_adapter_ref(h, res, *args))
    q = torch.randint(-127, 128, (96, 40), device=DEV, dtype=torch.int8)
    s = torch.rand(96, device=DEV)
    assert torch.equal(kernels.dequantize_rows(q, s, torch.bfloat16), kernels.dequantize_rows_ref(q, s, torch.bfloat16))
    x = torch.randn(3, 1001, device=DEV)
    assert torch.equal(kernels.dropout(x, 0.3, 2**40 + 3), kernels.dropout_ref(x, 0.3, 2**40 + 3))
    assert torch.equal(kernels.dropout(x, 0.3, 9).cpu(), kernels.dropout_ref(x.cpu(), 0.3, 9))  # the CPU's bits


def test_adapter_fusion():
    g = torch.Generator().manual_seed(2)
    d = 64
    w = FusionWeights([torch.randn(8, d, generator=g) / 8 for _ in range(4)], [None] * 4,
                      [torch.randn(d, 8, generator=g) / 3 for _ in range(4)], [None] * 4, [1.0] * 4, F.relu,
                      torch.randn(d, d, generator=g) / 8, None, torch.randn(d, d, generator=g) / 8, None, None)
    packed = pack_fusion(w)
    x = torch.randn(33, d, generator=g).to(DEV)
    res = torch.randn(33, d, generator=g).to(DEV)
    p32 = packed.to(device=DEV)
    pb = packed.to(dtype=torch.bfloat16, device=DEV)
    xb, rb = x.bfloat16(), res.bfloat16()
    _rule(kernels.adapter_fusion(xb, xb, rb, pb), kernels.adapter_fusion_ref(x, x, res, p32),
          kernels.adapter_fusion_ref(xb, xb, rb, pb))


def test_cuda_backends_are_the_kernels_not_the_reference():
    status = kernels.backend_status(build=False)
    for name in kernels.OPS:
        if name != "topk_merge":
            assert not status[name]["cuda"].startswith("reference"), (name, status[name]["cuda"])
            assert _library.has_kernel(name, "CUDA")


def test_packed_encoder_on_the_gpu_matches_the_fp32_cpu_encoder():
    from adaptertx.models import tiny_xlmr
    from adaptertx.retrieval import SentenceEncoder

    model, tok = tiny_xlmr(num_layers=4, hidden=256, heads=4, intermediate=512)
    sentences = ["a", "Hello world.", "Das ist ein etwas längerer Satz, mit Komma.", "x " * 200]
    ref = SentenceEncoder(model, tok, layer=3, dtype=torch.float32)(sentences)
    gpu = SentenceEncoder(model.to(DEV), tok, layer=3, dtype=torch.bfloat16)(sentences)
    assert ((gpu.float().cpu() * ref).sum(1) >= 0.999).all()
