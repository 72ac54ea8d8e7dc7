# Two entry points for a fresh machine (Python >= 3.10, no venv yet):
#   make demo   the main job end to end on the embedded default corpus
#   make test   lint + the suite on the pinned set + the long tests + the compatibility matrix + the
#               interop suite (what CI runs)
# Day to day: make test-pinned (lint + the suite on the pinned set, no matrix, no long tests), or make
# test-fast (the same without the tests marked slow: subprocesses, kills, whole trainings).
# make test-long: the tests of minutes (the README run as written, the tour notebook top to bottom).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo demo-quick test test-pinned test-fast test-long browser compat compat-lowest compat-newest interop interop-ci interop-vllm mutation lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: install
	$(BIN)/scratchformer demo

demo-quick: install
	$(BIN)/scratchformer demo --quick

lint: install
	$(BIN)/ruff check .

test: browser test-pinned test-long compat interop-ci

test-pinned: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not long"

test-fast: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not slow and not long"

test-long: install
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m long

# The page tests open the HTML pages in Debian's headless Chromium; installed here where it is
# missing and apt-get can (as root, non-interactive). Elsewhere, or where apt-get fails (no network
# beyond the package registries), those tests skip, saying why; the target never fails the build.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	      { DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	      echo "apt-get could not install chromium here: the page tests will skip"; \
	    else echo "chromium is not installed (apt-get install chromium): the page tests will skip"; fi; }

# The compat suite in fresh environments at both ends of the supported range (.ci/compat-leg).
compat: compat-lowest compat-newest

compat-lowest:
	PYTHON=$(PYTHON) .ci/compat-leg lowest

compat-newest:
	PYTHON=$(PYTHON) .ci/compat-leg newest

# Real external tools on real checkpoints (tests/interop, their own environment .venv-interop).
interop-ci:
	PYTHON=$(PYTHON) .ci/interop ci

interop:
	PYTHON=$(PYTHON) .ci/interop full

# vLLM for CPU pins its own torch and transformers: a separate environment (.venv-vllm).
interop-vllm:
	PYTHON=$(PYTHON) .ci/interop-vllm

# Which small bugs in the model code and the training library no test would notice (hours; not part
# of CI). PART=model|library, FILES=packing.py,... and WORKERS=N run it in pieces (.ci/mutation).
mutation:
	PYTHON=$(PYTHON) .ci/mutation

clean:
	rm -rf $(VENV) .venv-compat-* .venv-interop .venv-vllm .venv-mutation coverage build *.egg-info .pytest_cache .ruff_cache
