"""Every benchmark runs at its tiny size, checks agreement and exits 0 — so none rots."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted(Path(__file__).resolve().parent.parent.joinpath("benchmarks").glob("bench_*.py"))


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.stem)
def test_benchmark_runs_tiny_and_agrees(script, tmp_path, me5_dir):
    result = subprocess.run([sys.executable, str(script), "--tiny", "--json", str(tmp_path / "out.json")],
                            capture_output=True, text=True, timeout=600, cwd=script.parent.parent)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "agreement" in result.stdout and "FAIL" not in result.stdout
    assert (tmp_path / "out.json").exists()


def test_the_gpu_protocol_of_bench_encode_runs_on_the_cpu_at_its_tiny_size(tmp_path, me5_dir):
    """``bench_encode.py --device cuda``'s table (XTREME, tuned HF, our reference kernels, ours),
    run here on the CPU so it does not rot where no GPU is."""
    script = BENCHMARKS[0].parent / "bench_encode.py"
    out = tmp_path / "gpu.json"
    result = subprocess.run([sys.executable, str(script), "--tiny", "--protocol", "gpu", "--json", str(out)],
                            capture_output=True, text=True, timeout=600, cwd=script.parent.parent)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "FAIL" not in result.stdout and "vs bf16 FLOP bound" in result.stdout
    import json

    report = json.loads(out.read_text())
    assert {p["path"] for p in report["paths"]} == {"hf fp32", "xtreme", "hf-tuned", "ours ref kernels", "ours bf16",
                                                    "ours int8"}
    assert all(p["min_cos"] >= 0.999 for p in report["paths"])
