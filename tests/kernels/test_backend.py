import pytest
import torch

from adaptertx import kernels
from adaptertx.errors import AdaptertxError
from adaptertx.kernels import _build


def test_env_ref_forces_reference(monkeypatch):
    monkeypatch.setenv(_build.ENV, "ref")
    status = kernels.backend_status(build=False)
    chosen = "reference: ADAPTERTX_KERNELS chose it"
    assert status == {op: {"cpu": chosen, "cuda": chosen} for op in kernels.OPS}


def test_bad_env_value_raises(monkeypatch):
    monkeypatch.setenv(_build.ENV, "fast")
    with pytest.raises(AdaptertxError):
        kernels.bias_gelu(torch.zeros(1, 1), torch.zeros(1))


def test_status_names_each_op_and_source(monkeypatch):
    monkeypatch.delenv(_build.ENV, raising=False)
    status = kernels.backend_status(build=False)
    assert set(status) == set(kernels.OPS)
    for op, lines in status.items():
        line = lines["cpu"]
        assert line.startswith(("native (", "reference: ", "not built yet (")), line
        if not line.startswith("reference: "):
            assert f"adaptertx/csrc/{op}.cpp" in line


def test_failed_build_falls_back_once_with_reason(monkeypatch, caplog):
    monkeypatch.delenv(_build.ENV, raising=False)
    monkeypatch.setattr(_build, "_loaded", {})
    monkeypatch.setattr(_build, "_failed", {})

    def broken(op):
        raise RuntimeError("Error building extension 'x'\ncsrc/bias_gelu.cpp:1:1: error: boom\nmore")

    monkeypatch.setattr(_build, "_build", broken)
    x, b = torch.randn(2, 3), torch.randn(3)
    with caplog.at_level("WARNING", logger="adaptertx.kernels"):
        out1 = kernels.bias_gelu(x, b)
        out2 = kernels.bias_gelu(x, b)
    torch.testing.assert_close(out1, kernels.bias_gelu_ref(x, b))
    torch.testing.assert_close(out2, out1)
    assert len([r for r in caplog.records if "bias_gelu" in r.getMessage()]) == 1
    assert kernels.backend_status(build=False)["bias_gelu"]["cpu"] == (
        "reference: build failed: csrc/bias_gelu.cpp:1:1: error: boom"
    )
    monkeypatch.setenv(_build.ENV, "native")
    with pytest.raises(AdaptertxError, match="unavailable"):
        kernels.bias_gelu(x, b)


def test_build_name_changes_with_source(monkeypatch, tmp_path):
    src = tmp_path / "csrc"
    src.mkdir()
    (src / "common.h").write_text("// a\n")
    (src / "bias_gelu.cpp").write_text("// one\n")
    (src / "add_layernorm.cpp").write_text("// one\n")
    monkeypatch.setattr(_build, "CSRC", src)
    first = _build._build_name("bias_gelu")
    assert first.startswith("adaptertx_bias_gelu_") and _build._build_name("bias_gelu") == first
    # Another op's source is not part of this op's build.
    other = _build._build_name("add_layernorm")
    assert other.startswith("adaptertx_add_layernorm_")
    (src / "add_layernorm.cpp").write_text("// two\n")
    assert _build._build_name("bias_gelu") == first and _build._build_name("add_layernorm") != other
    # The op's own source and the shared header each change the name; their old bytes bring it back.
    (src / "bias_gelu.cpp").write_text("// two\n")
    second = _build._build_name("bias_gelu")
    assert second != first and _build._build_name("bias_gelu") == second
    (src / "common.h").write_text("// b\n")
    third = _build._build_name("bias_gelu")
    assert third not in (first, second)
    (src / "common.h").write_text("// a\n")
    (src / "bias_gelu.cpp").write_text("// one\n")
    assert _build._build_name("bias_gelu") == first
    # So do the compiler flags and the torch version.
    monkeypatch.setattr(_build, "_CFLAGS", ("-O2", "-fopenmp"))
    assert _build._build_name("bias_gelu") != first
    monkeypatch.setattr(_build, "_CFLAGS", ("-O3", "-fopenmp"))
    monkeypatch.setattr(_build.torch, "__version__", torch.__version__ + "+other")
    assert _build._build_name("bias_gelu") != first


def test_auto_prefers_reference_without_avx512(monkeypatch):
    monkeypatch.delenv(_build.ENV, raising=False)
    monkeypatch.setattr(_build, "cpu_has_avx512", lambda: False)
    assert not _build.use_native("bias_gelu")
    assert kernels.backend_status(build=False)["bias_gelu"]["cpu"].startswith("reference: CPU lacks AVX-512")


def test_a_build_lock_left_by_a_killed_process_does_not_hang_the_next_load():
    """torch's plain ``lock`` file, as a process killed while loading a kernel leaves it: a new
    process removes it and loads (without the fix it waits for ever; here, past the timeout)."""
    import subprocess
    import sys

    from adaptertx.io import cache_dir

    build_dir = cache_dir() / "torch_extensions" / _build._build_name("bias_gelu")
    build_dir.mkdir(parents=True, exist_ok=True)
    (build_dir / "lock").touch()
    code = "from adaptertx.kernels import _build; assert _build.native_available('bias_gelu'), _build._failed"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert not (build_dir / "lock").exists()
    assert "left by a process that died while loading" in done.stderr
