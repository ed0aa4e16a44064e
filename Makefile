# The whole set-up on a fresh machine is `make demo` or `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo lint typecheck unit bench clean os-deps

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	# PYTHONDONTWRITEBYTECODE may be set: precompile so runners start without compiling.
	$(PY) -m compileall -q src >/dev/null
	touch $(STAMP)

test: $(STAMP) os-deps lint typecheck unit

# OS packages the tests need: bubblewrap for the sandbox (installed when missing and we
# are root with apt-get, as in CI; otherwise its tests skip and say why).
os-deps:
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing bubblewrap (apt-get)"; \
	    apt-get install -y -q bubblewrap >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q bubblewrap >/dev/null 2>&1; } || \
	      echo "could not install bubblewrap: the sandbox tests will be skipped"; \
	  else \
	    echo "bubblewrap is not installed (apt-get install bubblewrap): the sandbox tests will be skipped"; \
	  fi; \
	}

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
