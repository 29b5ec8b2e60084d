# The two commands a new machine needs (see README.md):
#   make demo   install, then run the main job on the embedded offline default model
#   make test   install, then run the test suite
VENV ?= .venv
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo retrieval-demo test test-all lint bench clean intermediate gpu-check gpu-bundle

install: $(STAMP)

# torch goes in first, pinned, so that the CPU build is used where no torch is present
# (an unpinned torch would pull a multi-GB CUDA build); then the package with the extras the
# main job (bnb, plots: `all`) and the tests need.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -e ".[all,test]"
	touch $(STAMP)

# The main job: the offline default study (36 cells, about 13 minutes on 2 cores; README says how it was measured; finished cells
# are kept, so running it again only fills in what is missing).
demo: install
	$(BIN)/adaptertx experiment configs/offline-default.toml

# Tatoeba retrieval of the default model for twelve languages (about 15 seconds).
retrieval-demo: install
	$(BIN)/adaptertx retrieve tatoeba --langs de,ru,zh,ar,hi,eu,mr,te,sw,am,kab,br --max-pairs 500

test: install
	$(BIN)/python -m pytest -q

test-all: install
	$(BIN)/python -m pytest -q -m "slow or not slow"

lint: install
	$(BIN)/ruff check adaptertx tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info

# One adapter per bundled English intermediate task on the default int8 base, then a table
# of scores beside the majority baseline with 95% intervals (CPU: about 25 minutes in all).
# Finished runs are kept and skipped; an interrupted one resumes. HellaSwag's four endings
# need more than 1200 examples to learn from (2400 also test on its whole held-out tenth),
# and CommonsenseQA's 977 training questions get six epochs.
INTERMEDIATE ?= mrpc anli siqa commonsenseqa cosmosqa hellaswag copa
TRAIN_ARGS ?= --epochs 3 --max-examples 1200 --batch-size 16 --lr 1e-3
ARGS_hellaswag ?= --max-examples 2400
ARGS_commonsenseqa ?= --max-examples 2000 --epochs 6
intermediate: install
	for t in $(INTERMEDIATE); do \
	  run=runs/intermediate/$$t; \
	  if grep -qs '"status": "finished"' $$run/run.json; then echo "$$t: finished, kept"; continue; fi; \
	  resume=; [ -f $$run/run.json ] && resume=--resume; \
	  case $$t in hellaswag) extra="$(ARGS_hellaswag)";; commonsenseqa) extra="$(ARGS_commonsenseqa)";; *) extra=;; esac; \
	  $(BIN)/adaptertx train $$t --out $$run $(TRAIN_ARGS) $$extra $$resume || exit 1; \
	done
	$(BIN)/adaptertx runs runs/intermediate

# The three comparisons with the tools users would pick instead (ONNX Runtime / OpenVINO
# encoding, faiss / usearch search, the adapters library's Trainer), each printing its table;
# the peers come from the `bench` extra, installed here only. BENCH_ARGS reaches every script
# (e.g. BENCH_ARGS=--threads=1). The 200k x 200k search: $(BIN)/python benchmarks/bench_mine.py --sizes 200000
bench: install
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python benchmarks/bench_encode.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/bench_mine.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/bench_train.py $(BENCH_ARGS)

# On a machine with one NVIDIA GPU: the GPU tests and bench_encode --device cuda, written to
# gpu-check/gpu-check.md (scripts/gpu_check.sh says what it installs). GPU_PYTHON: the Python
# holding the CUDA torch (default python3).
gpu-check:
	bash scripts/gpu_check.sh

# For a GPU machine without a package index: the wheels gpu-check installs there (CPython 3.12,
# x86-64) and the default model's tokenizer, in .gpu/ (ignored by git; about 28 MB).
GPU_WHEELS ?= transformers==4.57.6 adapters==1.3.0 huggingface_hub==0.36.2 tokenizers==0.22.2 pycountry==26.2.16 \
	tabulate==0.10.0
gpu-bundle: install
	mkdir -p .gpu/wheels
	$(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  -d .gpu/wheels $(GPU_WHEELS)
	$(BIN)/python -c "from adaptertx.models import resolve, DEFAULT_MODEL; import gzip, shutil; from pathlib import Path; p = Path(resolve(DEFAULT_MODEL)); \
	  shutil.copyfileobj(open(p / 'tokenizer.json', 'rb'), gzip.open('.gpu/tokenizer.json.gz', 'wb')); \
	  [shutil.copy(p / f, '.gpu/') for f in ('tokenizer_config.json', 'special_tokens_map.json')]"
