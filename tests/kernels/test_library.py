"""The ops as torch.library operators: schemas, fakes, kernels per device, and the choice of backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from adaptertx import kernels
from adaptertx.errors import AdaptertxError
from adaptertx.kernels import _build, _library
from adaptertx.kernels.adapter_fusion import FusionWeights, pack_fusion


def op_samples(dtype: torch.dtype = torch.float32) -> dict[str, tuple]:
    """Arguments in each op's schema form (small, awkward sizes), on the CPU."""
    device = "cpu"
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g).to(device=device, dtype=dtype)  # noqa: E731
    d, t = 12, 7
    fw = FusionWeights([torch.randn(3, d, generator=g), torch.randn(5, d, generator=g)], [None, None],
                       [torch.randn(d, 3, generator=g), torch.randn(d, 5, generator=g)], [None, None], [1.0, 0.5],
                       torch.relu, None, None, None, None, None)
    pf = pack_fusion(fw).to(dtype=dtype, device=device)
    x = r(t, d)
    cu = torch.tensor([0, 3, 3, 7], dtype=torch.int64, device=device)
    scores = r(t, 20).float()
    return {
        "bias_gelu": (x, r(d)),
        "add_layernorm": (x, r(t, d), r(d), None, 1e-5),
        "bottleneck_adapter": (x, r(t, d), r(4, d), r(4), r(d, 4), None, 1, 0.5),
        "adapter_fusion": (x, x, r(t, d), pf.w_in, pf.b_in, pf.w_out, None, pf.n, pf.r, 0, 2.0),
        "segment_mean_pool_normalize": (x, cu),
        "varlen_attention": (r(t, 3 * d), cu, 3, 0.5, 4),
        "dropout": (x, 0.25, 2**40 + 7),
        "dequantize_rows": (torch.randint(-127, 128, (5, d), generator=g, dtype=torch.int8).to(device),
                            torch.rand(5, generator=g).to(device), dtype),
        "topk_merge": (scores, 3, torch.full((t, 4), float("-inf"), device=device),
                       torch.full((t, 4), -1, dtype=torch.int64, device=device)),
    }


def test_every_op_is_a_library_operator_with_a_reference_and_a_cpu_kernel():
    assert set(op_samples()) == set(kernels.OPS)
    for name in kernels.OPS:
        assert _library.has_kernel(name, "CompositeExplicitAutograd"), name
        assert _library.has_kernel(name, "Meta"), name   # the fake, registered for the meta device
        if name != "topk_merge":
            assert _library.has_kernel(name, "CUDA"), name


@pytest.mark.parametrize("name", sorted(op_samples()))
def test_opcheck_with_the_cpu_kernel(name, monkeypatch):
    monkeypatch.delenv(_build.ENV, raising=False)
    if not _build.native_available(name):
        pytest.skip(f"native {name} unavailable: {_build.failure(name)}")
    assert _library.has_kernel(name, "CPU")
    torch.library.opcheck(_library.op(name).default, op_samples()[name])


_REF_OPCHECK = """
import json, torch
from adaptertx.kernels import _library
from tests.kernels.test_library import op_samples
done = {}
for name, args in op_samples().items():
    assert not _library.has_kernel(name, "CPU"), name   # nothing built: the default kernel serves the CPU
    torch.library.opcheck(_library.op(name).default, args)
    done[name] = "ok"
print(json.dumps(done))
"""


def test_opcheck_with_the_reference_as_the_default_kernel():
    """In a process that never loads a C++ kernel, each operator's CPU calls take the reference
    registered as its default kernel; opcheck passes on it too."""
    env = {**os.environ, _build.ENV: "ref"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run([sys.executable, "-c", _REF_OPCHECK], capture_output=True, text=True, env=env, cwd=root,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == dict.fromkeys(op_samples(), "ok")


def test_the_op_on_the_cpu_equals_the_reference():
    """The operator called directly (whatever kernel serves it) against the Python reference."""
    s = op_samples()
    torch.testing.assert_close(kernels.bias_gelu(*s["bias_gelu"]), kernels.bias_gelu_ref(*s["bias_gelu"]))
    qkv, cu, heads, scale, _ = s["varlen_attention"]
    torch.testing.assert_close(_library.op("varlen_attention")(qkv, cu, heads, scale, 4),
                               kernels.varlen_attention_ref(qkv, cu, heads, scale), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_on_a_fake_cuda_device_each_op_goes_to_its_cuda_kernel_and_keeps_the_device(dtype, monkeypatch):
    """Without a GPU: FakeTensorMode tensors on cuda:0. Every wrapper routes a CUDA call to the
    operator (whose CUDA kernel would run; here its fake), and every result is on cuda:0."""
    monkeypatch.delenv(_build.ENV, raising=False)
    pytest.importorskip("triton")
    calls = []
    cpu = op_samples(dtype)
    with FakeTensorMode(allow_non_fake_inputs=False):
        s = {name: tuple(torch.empty(a.shape, dtype=a.dtype, device="cuda") if isinstance(a, torch.Tensor) else a
                         for a in args) for name, args in cpu.items()}
        real = _library.op

        def spy(name):
            calls.append(name)
            return real(name)

        monkeypatch.setattr(_library, "op", spy)
        for mod in ("bias_gelu", "add_layernorm", "varlen_attention", "segment_mean_pool_normalize"):
            monkeypatch.setattr(sys.modules[f"adaptertx.kernels.{mod}"], "op", spy)
        outs = [kernels.bias_gelu(*s["bias_gelu"]), kernels.add_layernorm(*s["add_layernorm"]),
                kernels.varlen_attention(*s["varlen_attention"][:3], max_seqlen=4),
                kernels.segment_mean_pool_normalize(*s["segment_mean_pool_normalize"])]
    assert calls == ["bias_gelu", "add_layernorm", "varlen_attention", "segment_mean_pool_normalize"]
    assert all(o.device == torch.device("cuda:0") for o in outs)
    assert outs[2].shape == (7, 12) and outs[3].shape == (3, 12)


def test_per_device_choice(monkeypatch):
    monkeypatch.setenv(_build.ENV, "cpu=ref,cuda=native")
    assert _build.modes() == {"cpu": "ref", "cuda": "native"}
    monkeypatch.setenv(_build.ENV, "cuda=ref")
    assert _build.modes() == {"cpu": "auto", "cuda": "ref"}
    status = kernels.backend_status(build=False)
    assert all(v["cuda"] == "reference: ADAPTERTX_KERNELS chose it" for v in status.values())
    assert status["topk_merge"]["cpu"] != "reference: ADAPTERTX_KERNELS chose it"
    for bad in ("gpu=ref", "cpu=fast", "fast"):
        monkeypatch.setenv(_build.ENV, bad)
        with pytest.raises(AdaptertxError, match="ADAPTERTX_KERNELS"):
            _build.modes()
        assert "error: " in kernels.backend_status(build=False)["bias_gelu"]["cpu"]


def test_cuda_status_says_what_serves_each_op_and_why(monkeypatch):
    monkeypatch.delenv(_build.ENV, raising=False)
    status = kernels.backend_status(build=False)
    assert status["topk_merge"]["cuda"] == "reference: no CUDA kernel (the reference runs on the GPU)"
    assert status["varlen_attention"]["cuda"].startswith("torch varlen_attn (flash)")
    monkeypatch.setattr(_library, "cuda_unavailable",
                        lambda name: "triton is not installed (pip install 'adaptertx[gpu]')")
    status = kernels.backend_status(build=False)
    assert status["bias_gelu"]["cuda"] == "reference: triton is not installed (pip install 'adaptertx[gpu]')"


def test_native_on_cuda_without_its_kernel_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(_build.ENV, "cuda=native")
    monkeypatch.setattr(_library, "cuda_unavailable", lambda name: "triton is not installed")
    with FakeTensorMode():
        x, b = torch.empty(3, 4, device="cuda"), torch.empty(4, device="cuda")
        with pytest.raises(AdaptertxError, match="CUDA kernel of bias_gelu, which is unavailable: triton"):
            kernels.bias_gelu(x, b)
    monkeypatch.setenv(_build.ENV, "cuda=auto")
    with FakeTensorMode():
        x, b = torch.empty(3, 4, device="cuda"), torch.empty(4, device="cuda")
        assert kernels.bias_gelu(x, b).device.type == "cuda"   # the reference, on the device


def test_a_cuda_kernel_that_fails_its_first_call_falls_back_once_with_a_reason(monkeypatch, caplog):
    """A Triton kernel that does not compile for the GPU at hand: one log line, the reference's
    result for that call and every later one, and the status says why; a kernel that has already
    run keeps its errors."""
    monkeypatch.setattr(_library, "_CUDA_FAILED", {})
    monkeypatch.setattr(_library, "_CUDA_RAN", set())
    calls = []

    def broken(x, bias):
        calls.append(1)
        raise RuntimeError("triton.compiler.errors.CompilationError: at 12:4: unsupported\nmore")

    kernel = _library.guarded("bias_gelu", broken, kernels.bias_gelu_ref)
    x, b = torch.randn(3, 5), torch.randn(5)
    with caplog.at_level("WARNING", logger="adaptertx.kernels"):
        out1, out2 = kernel(x, b), kernel(x, b)
    torch.testing.assert_close(out1, kernels.bias_gelu_ref(x, b))
    torch.testing.assert_close(out2, out1)
    assert len(calls) == 1 and len([r for r in caplog.records if "bias_gelu" in r.getMessage()]) == 1
    assert kernels.backend_status(build=False)["bias_gelu"]["cuda"] == (
        "reference: its CUDA kernel failed: RuntimeError: "
        "triton.compiler.errors.CompilationError: at 12:4: unsupported")
    monkeypatch.setenv(_build.ENV, "cuda=native")
    with FakeTensorMode():
        xs, bs = torch.empty(3, 5, device="cuda"), torch.empty(5, device="cuda")
        with pytest.raises(AdaptertxError, match="CUDA kernel of bias_gelu, which is unavailable: its CUDA kernel"):
            kernels.bias_gelu(xs, bs)
    ok = _library.guarded("add_layernorm", lambda *a: (_ for _ in ()).throw(ValueError("late")), None)
    _library._CUDA_RAN.add("add_layernorm")
    with pytest.raises(ValueError, match="late"):
        ok(x, x, None, None, 1e-5)
