# Two commands a user needs: `make demo` and `make test`. Both create the venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kormedqa-installed
DEMO_FLAGS ?= --resume

.PHONY: demo test test-fast bench install clean

install: $(STAMP)

# torch first, from the local CPU wheel where there is one, so nothing pulls CUDA wheels here;
# a venv that already has torch (a GPU user's own build) keeps it.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

demo: $(STAMP)
	$(VENV)/bin/kormedqa demo $(DEMO_FLAGS)

# Every test (CI runs this); test-fast leaves out the end-to-end runs marked slow (subprocesses,
# whole loops, the demo): a few minutes on two cores, for the edit-test cycle.
test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) bench/run_all.py

clean:
	rm -rf runs .cache .pytest_cache
