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

# the schemas the Discord simulator's answers are checked against (tests/test_sim_spec.py)
SPEC := tests/spec/node_modules/.installed
$(SPEC): tests/spec/package-lock.json
	npm ci --prefix tests/spec --no-audit --no-fund --loglevel=error
	touch $@

# parallel: the tests mostly wait on I/O (stacks starting, timeouts); 2 workers on 2 cores (4 ran in
# about 7.5 min but made load-sensitive waits flaky: a different test failed in 3 of 4 runs)
TEST_WORKERS ?= 2
test: $(VENV)/.installed $(SPEC)
	bash .ci/services
	@rc=0; $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=15 || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: that is a failure" >&2; exit 1; fi; \
	exit $$rc

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy

bench-ring: $(VENV)/.installed
	$(PY) benchmarks/ring_bench.py
