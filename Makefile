# Two entry points that work on a fresh machine: `make demo` and `make test`.
# Both create .venv and install the project into it. The first install compiles llama-cpp-python
# from source (5-20 minutes on 2 cores; pip caches the wheel afterwards); it says so before it
# starts, and pip shows its progress. `make test PIP_FLAGS=-v` shows the compiler's output too.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP_FLAGS ?=

.PHONY: demo report test docs bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(PIP_FLAGS) --upgrade pip
	@echo ""
	@echo ">>> Installing pytest-quantcheck and its development tools into $(VENV)."
	@echo ">>> llama-cpp-python compiles llama.cpp from source on a machine's first install: this"
	@echo ">>> may take 5-20 minutes on 2 cores, with pip's 'Building wheel for llama-cpp-python'"
	@echo ">>> line as the only sign of life (make ... PIP_FLAGS=-v shows the compiler). pip caches"
	@echo ">>> the wheel, so later installs take seconds."
	@echo ""
	$(BIN)/python -m pip install $(PIP_FLAGS) -e '.[dev]'
	touch $@

demo: $(STAMP)
	cd examples/demo && ../../$(BIN)/python -m pytest --quant-baseline

report: $(STAMP)
	$(BIN)/python examples/demo_report.py

test: $(STAMP)
	$(BIN)/ruff check src tests examples benchmarks scripts fuzz
	$(BIN)/mypy
	$(MAKE) --no-print-directory docs
	$(BIN)/python -m pytest

# The documentation site, into build/site; --strict turns every warning (a broken link or
# anchor, a missing page, an unresolved API reference) into a failure. NO_MKDOCS_2_WARNING:
# Material's banner about MkDocs 2.0 and its own end of life (2027-05), not about these docs.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_perplexity.py

clean:
	rm -rf $(VENV)
