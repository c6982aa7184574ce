# make test: ruff + pytest;  make demo: the end-to-end demo;  make bench: benchmarks (JSON in bench/results/);
# make docs: docs/cli.md from the commands.
# Each target creates or reuses .venv and installs the project into it.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-fast demo bench lint docs clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check simclr tests bench

test: lint
	$(BIN)/python -m pytest -q

# The quick tier, for the edit-test loop: no slow test, no Triton, browser, ../shared data or several processes.
test-fast: lint
	$(BIN)/python -m pytest -q -m "not slow and not triton and not browser and not shared_data and not cluster"

# The demo's photos come from scikit-image (the demo extra). With ../shared/data (the CIFAR-10 copy of this
# project's machines) it also runs the linear probe.
DEMO_STAMP := $(VENV)/.installed-demo
SHARED_CIFAR := ../shared/data/cifar10.py

$(DEMO_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[demo]'
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	@if [ -f $(SHARED_CIFAR) ]; then \
		$(BIN)/python $(SHARED_CIFAR) batches .cache/data > /dev/null && \
		$(BIN)/simclr demo --out demo_output --data-root .cache/data; \
	else \
		$(BIN)/simclr demo --out demo_output; \
	fi

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	cd bench && ../$(BIN)/python train_throughput.py --out results/train_throughput.json
	cd bench && ../$(BIN)/python serve_throughput.py --out results/serve_throughput.json
	cd bench && ../$(BIN)/python embed_throughput.py --out results/embed_throughput.json
	cd bench && ../$(BIN)/python search.py --out results/search.json
	cd bench && ../$(BIN)/python probe.py --out results/probe.json

# docs/cli.md, the command-line reference, from the Typer app (tests/test_docs.py checks it is current).
docs: $(STAMP)
	$(BIN)/python -m simclr.cli.reference docs/cli.md

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
