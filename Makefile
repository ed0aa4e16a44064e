# The whole set-up on a fresh machine is `make demo` or `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo lint typecheck unit bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	# PYTHONDONTWRITEBYTECODE may be set: precompile so runners start without compiling.
	$(PY) -m compileall -q src >/dev/null
	touch $(STAMP)

test: $(STAMP) lint typecheck unit

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/ruff format --check src tests bench examples

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(PY) -m compileall -q src >/dev/null
	$(PY) -m pytest

demo: $(STAMP)
	$(PY) -m compileall -q src >/dev/null
	$(VENV)/bin/execpy run examples/demo.py

bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	$(PY) -m compileall -q src >/dev/null
	$(PY) bench/bench_protocol.py
	$(PY) bench/bench_runner.py
	$(PY) bench/bench_client.py
	$(PY) bench/bench_memory.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
