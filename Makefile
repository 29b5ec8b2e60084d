# The two commands a new machine needs (see README.md):
#   make demo   install, then run the main job on the embedded offline default model
#   make test   install, then run the test suite
VENV ?= .venv
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all bench clean

install: $(STAMP)

# torch goes in first, pinned, so that the CPU build is used where no torch is present
# (an unpinned torch would pull a multi-GB CUDA build); then the package and its extras.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: install
	$(BIN)/adaptertx retrieve tatoeba --langs de,ru,zh,ar,hi,eu,mr,te,sw,am,kab,br --max-pairs 500

test: install
	$(BIN)/python -m pytest -q

test-all: install
	$(BIN)/python -m pytest -q -m "slow or not slow"

clean:
	rm -rf $(VENV) build *.egg-info
