# Two commands do all the set-up: `make demo` and `make test`.
# Both create .venv when it is missing and install what they need.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch is pinned here: this CPU build is tested, and an unpinned torch can pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow test-open-clip lint browser clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[serve,distributed,demo,dev]"
	touch $(STAMP)

# Headless Chromium for the browser test of the search page: installed where the
# machine allows it (root with apt-get); elsewhere that test is skipped with its reason.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "note: could not install chromium; the browser test will be skipped"; \
	  else echo "note: chromium absent and not installable here; the browser test will be skipped"; fi; }

demo: $(STAMP)
	$(VENV)/bin/retrieval demo

test: $(STAMP) browser
	$(PY) -m ruff check retrieval indexes tests examples benchmarks
	$(PY) -m pytest

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

# Round trips against the real open_clip package, in a venv of their own: open_clip_torch imports
# torchvision, which must match torch exactly, so this job pins its own pair (not part of `make test`).
OC_VENV  ?= .venv-open-clip
OC_PY    := $(OC_VENV)/bin/python
OC_TORCH ?= torch==2.14.1 torchvision==0.29.1
OC_STAMP := $(OC_VENV)/.installed

$(OC_STAMP): pyproject.toml
	test -x $(OC_PY) || $(PYTHON) -m venv $(OC_VENV)
	$(OC_PY) -m pip install --quiet --upgrade pip
	$(OC_PY) -m pip install --quiet $(OC_TORCH)
	$(OC_PY) -m pip install --quiet -e ".[open_clip,dev]"
	touch $(OC_STAMP)

test-open-clip: $(OC_STAMP)
	$(OC_PY) -m pytest -m open_clip tests/export

lint: $(STAMP)
	$(PY) -m ruff check retrieval indexes tests examples benchmarks
	$(PY) -m ruff format --check retrieval indexes tests examples benchmarks

clean-venv:
	rm -rf $(VENV) $(OC_VENV)
