# Two entry points that work on a fresh machine: `make demo` and `make test`.
# Both create .venv and install the project into it (llama-cpp-python builds from source once,
# about 5 minutes on 2 cores; pip caches the wheel afterwards).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo report test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(STAMP)
	cd examples/demo && ../../$(BIN)/python -m pytest --quant-baseline

report: $(STAMP)
	$(BIN)/python examples/demo_report.py

test: $(STAMP)
	$(BIN)/ruff check src tests examples benchmarks scripts fuzz
	$(BIN)/mypy
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_perplexity.py

clean:
	rm -rf $(VENV)
