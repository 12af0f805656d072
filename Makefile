# Two commands do all set-up on a fresh machine (Python >= 3.10 with pip):
#   make demo   create .venv, install, run the main job (the demo pipeline, CPU, minutes)
#   make test   create .venv if missing, install, run the tests
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# test processes (pytest-xdist): one per core, at most 4 (the multi-process tests start their own ranks);
# one torch thread each, so the processes share the cores instead of oversubscribing them
WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)

.PHONY: demo test test-browser venv clean-venv bench

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m nbcore.demo

test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(WORKERS) --dist worksteal --durations=15 tests

# JupyterLab driven by headless Chromium (Debian's `chromium` package); also part of `make test`
test-browser: $(STAMP)
	NBCORE_REQUIRE_BROWSER=1 $(PY) -m pytest -q tests/test_browser.py

bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m nbcore.bench tokenizer

clean-venv:
	rm -rf $(VENV)
