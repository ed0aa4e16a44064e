# The whole set-up on a fresh machine is `make demo` or `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo lint typecheck unit bench bench-quick clean os-deps

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

# The benchmarks have a venv of their own: the peers (jupyter, execnet, trio-parallel) and
# matplotlib are installed only there, through the `bench` extra. `make bench` writes
# bench/RESULTS.md (the block at the top), bench/results/*.json, docs/img/*.png and
# docs/performance.md (under 10 minutes on 2 cores); `make bench-quick` is the ~1 minute
# subset. The single scripts (bench/bench_*.py) run with $(BENCH_PY) too.
BENCH_VENV := .venv-bench
BENCH_PY := $(BENCH_VENV)/bin/python
BENCH_STAMP := $(BENCH_VENV)/.installed

$(BENCH_STAMP): pyproject.toml
	test -x $(BENCH_PY) || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_PY) -m pip install --quiet --upgrade pip
	$(BENCH_PY) -m pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BENCH_PY) -m compileall -q src >/dev/null
	$(BENCH_PY) bench/suite.py

bench-quick: $(BENCH_STAMP)
	$(BENCH_PY) -m compileall -q src >/dev/null
	$(BENCH_PY) bench/suite.py --quick

clean:
	rm -rf $(VENV) .venv-bench build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
