# The two commands the README promises: `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test lint bench-ring

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

run: $(VENV)/.installed
	$(VENV)/bin/modbot-ring dev up

test: $(VENV)/.installed
	bash .ci/services
	@rc=0; $(PY) -m pytest -q || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: that is a failure" >&2; exit 1; fi; \
	exit $$rc

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy

bench-ring: $(VENV)/.installed
	$(PY) benchmarks/ring_bench.py
