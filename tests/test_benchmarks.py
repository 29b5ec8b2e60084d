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
