# Two entry points: `make demo` and `make test`. Both create .venv when missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test clean-venv

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch and torchvision are pinned to the builds this machine's pip serves from disk (see README);
# the package itself is installed editable with its plot and dev extras.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e ".[plot,dev]"
	$(BIN)/tailprompt list > /dev/null  # writes the registries' catalogue, so the first `tailprompt list` is quick
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/tailprompt demo

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest tests

clean-venv:
	rm -rf $(VENV)
