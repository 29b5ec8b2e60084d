"""All kernel benchmarks in one run and one table (``--tiny`` for CI)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_add_layernorm  # noqa: E402
import bench_bias_gelu  # noqa: E402
import bench_bottleneck_adapter  # noqa: E402
import bench_dropout  # noqa: E402
import bench_segment_mean_pool_normalize  # noqa: E402
import bench_varlen_attention  # noqa: E402
from _harness import main  # noqa: E402

MODULES = (bench_bias_gelu, bench_add_layernorm, bench_bottleneck_adapter, bench_segment_mean_pool_normalize,
           bench_varlen_attention, bench_dropout)


def make_cases(tiny: bool):
    return [case for module in MODULES for case in module.make_cases(tiny)]


if __name__ == "__main__":
    raise SystemExit(main("bench_kernels", make_cases))
