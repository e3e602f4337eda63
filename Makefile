# Everything on a fresh machine: `make fit` (the main job) and `make test` (the whole suite).
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3
# Real MNIST beside the checkout (../shared/data/mnist) when present; else vaekit's own default.
SHARED_MNIST := $(abspath ../shared/data/mnist)
ifneq ($(wildcard $(SHARED_MNIST)/MNIST/raw),)
export VAEKIT_DATA ?= $(SHARED_MNIST)
endif
FIT_ARGS ?=

.PHONY: install fit test lint docs docs-serve clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,docs,tracking,quality,metrics,notebook]'
	touch $@

install: $(BIN)/.installed

fit: install  ## train the default Bernoulli VAE on MNIST (10 epochs) into runs/<timestamp>
	$(BIN)/vaekit fit --likelihood bernoulli $(FIT_ARGS)

test: install  ## lint, then the whole test suite
	$(BIN)/ruff check vaekit tests examples benchmarks
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check vaekit tests examples benchmarks

docs: install
	$(BIN)/mkdocs build --strict

docs-serve: install
	$(BIN)/mkdocs serve

clean:
	rm -rf $(VENV) site build *.egg-info
