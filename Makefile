# The two commands a newcomer needs: `make demo` and `make test`.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: env test test-all lint demo bench extension clean

env:
	@bash scripts/env.sh

lint: env
	$(VENV)/bin/ruff check .

# CI runs exactly this (see .ci/run): environment from nothing, ruff, then the fast tests.
test: env lint
	$(PY) -m pytest -q -m "not slow"

# Everything, slow tests included.
test-all: env lint
	$(PY) -m pytest -q

demo: env
	$(VENV)/bin/parallax demo --out out/demo

# The Blender extension: per-platform zips with pyzmq wheels (downloads the wheels once).
extension: env
	$(PY) scripts/build_extension.py --wheels --zip

bench: env
	$(VENV)/bin/parallax bench all

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache out
