#!/usr/bin/env bash
# `make gpu-check`: on a machine with one NVIDIA GPU, install what adaptertx's GPU path needs into
# the Python that holds the CUDA torch, run the GPU tests, `bench_encode.py --device cuda` and
# `bench_train.py --device cuda` (bf16, our int8 and bitsandbytes int8 bases side by side), and
# write gpu-check/gpu-check.md (the tests' summary and the benchmark's tables). About 5 minutes on
# an H100/H200.
#
# Needs nothing outside the project tree. Where pip can reach a package index it installs the
# package (`pip install -e .[test]`, keeping the installed torch and its triton). A machine without
# one installs from .gpu/wheels instead, which `make gpu-bundle` fills on a machine with an index
# (with the tokenizer of the default model in .gpu/tokenizer.json.gz, which the benchmark uses).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${GPU_PYTHON:-python3}
OUT_DIR=${GPU_CHECK_OUT:-gpu-check}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
"$PY" -c "import torch" 2>/dev/null || { echo "gpu-check: $PY has no torch; set GPU_PYTHON to the Python holding the CUDA torch" >&2; exit 2; }
"$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else
  f'gpu-check needs an NVIDIA GPU: torch {torch.__version__} sees none (torch.cuda.is_available() is False)')"

bench_args=()
if [ -d .gpu/wheels ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/adaptertx-gpu-site .gpu/wheels/*.whl
  export PYTHONPATH="/tmp/adaptertx-gpu-site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  "$PY" -m pip install -q -e ".[test]"
fi
if [ -f .gpu/tokenizer.json.gz ]; then
  mkdir -p /tmp/adaptertx-gpu-tokenizer
  gunzip -c .gpu/tokenizer.json.gz > /tmp/adaptertx-gpu-tokenizer/tokenizer.json
  cp .gpu/tokenizer_config.json .gpu/special_tokens_map.json /tmp/adaptertx-gpu-tokenizer/
  bench_args+=(--tokenizer /tmp/adaptertx-gpu-tokenizer)
fi
"$PY" -m adaptertx.cli env > "$OUT_DIR/env.txt" 2>&1 || true

set +e
timeout 240 "$PY" -m pytest -q -p no:cacheprovider tests/kernels/test_triton.py tests/kernels/test_cuda.py \
  tests/kernels/test_library.py 2>&1 | tee "$OUT_DIR/tests.log"
tests_rc=${PIPESTATUS[0]}
timeout 300 "$PY" benchmarks/bench_encode.py --device cuda "${bench_args[@]}" \
  --json "$OUT_DIR/bench_encode_cuda.json" 2>&1 | tee "$OUT_DIR/bench_encode.log"
bench_rc=${PIPESTATUS[0]}
timeout 150 "$PY" benchmarks/bench_train.py --device cuda --models xlmr-base-shape \
  --json "$OUT_DIR/bench_train_cuda.json" 2>&1 | tee "$OUT_DIR/bench_train.log"
train_rc=${PIPESTATUS[0]}
set -e

{
  echo "# gpu-check"
  echo
  echo "$("$PY" -c "import torch; print(torch.cuda.get_device_name(0), '· torch', torch.__version__, '· CUDA', torch.version.cuda)")"
  echo
  echo "## Tests (exit $tests_rc)"
  echo
  echo '```'
  tail -n 15 "$OUT_DIR/tests.log"
  echo '```'
  echo
  echo "## bench_encode.py --device cuda (exit $bench_rc)"
  echo
  grep -E '^(\||device:|[0-9]+ real)' "$OUT_DIR/bench_encode.log" || true
  echo
  echo "## bench_train.py --device cuda (exit $train_rc)"
  echo
  echo '```'
  grep -vE '^(wrote|There are adapters)' "$OUT_DIR/bench_train.log" | tail -n 14
  echo '```'
  echo
  echo "## Kernel backends"
  echo
  echo '```'
  cat "$OUT_DIR/env.txt"
  echo '```'
} > "$OUT_DIR/gpu-check.md"
echo "wrote $OUT_DIR/gpu-check.md"
exit $(( tests_rc != 0 || bench_rc != 0 || train_rc != 0 ))
