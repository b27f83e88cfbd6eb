# moai-forge entry points. Every target installs what it needs first (through `setup`).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATASET ?= sample
PROFILE ?=
IMAGES ?=
CONFIG ?= configs/train-tiny.yaml
PYTEST_ARGS ?=

# The install stamp changes whenever the declared or locked dependencies change, so a second
# `make setup` with nothing changed does no work at all.
DEPS_HASH := $(shell cat pyproject.toml requirements.lock 2>/dev/null | sha1sum | cut -c1-12)
STAMP := $(VENV)/.installed-$(DEPS_HASH)

.PHONY: setup test annotate train sql bench lint eval clean-venv

setup: $(STAMP)

# torch/torchvision come from the registry's standard builds (pinned in pyproject + lock), never the
# local CPU-only torch 2.13 wheel, whose torchvision partner cannot load its ops.
$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	set -o pipefail; $(BIN)/python -m pip install --quiet --upgrade "pip>=24" 2>&1 \
	  | { grep -v "is ignored: it is neither a file nor a directory" || true; }
	set -o pipefail; $(BIN)/python -m pip install --quiet --constraint requirements.lock --editable ".[dev]" 2>&1 \
	  | { grep -v "is ignored: it is neither a file nor a directory" || true; }
	$(BIN)/python -c "import torch, torchvision.ops, ultralytics, ray, duckdb, onnxruntime, rapidocr_onnxruntime, segment_anything, lightning, transformers, pycocotools"
	@rm -f $(VENV)/.installed-*
	@touch $@
	@echo "moai-forge installed in $(VENV)"

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

annotate: setup
	$(BIN)/moai annotate --dataset "$(DATASET)" $(if $(IMAGES),--images "$(IMAGES)") $(if $(PROFILE),--profile "$(PROFILE)")

TRAIN_DATASET ?= sample

train: setup
	$(BIN)/moai annotate --dataset "$(TRAIN_DATASET)"
	$(BIN)/moai train --config "$(CONFIG)"

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
