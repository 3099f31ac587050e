# Developer entry points.  `make run` starts the daemon on the embedded demo model;
# `make test` runs the test suite.  Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEV_DIR := $(CURDIR)/.run

.PHONY: run test bench deb clean

# The tests run on the versions the .deb ships (requirements/bundle.txt as constraints:
# numpy 1.26, x-transformers 1.44, ...).  jetson-stats comes from the host on a Jetson; the
# bundle's nvidia-ml-py pin makes this 4.3, and .ci/run repeats the telemetry tests on 7.x.
$(STAMP): pyproject.toml requirements/f5-tts.txt requirements/torch-dev.txt requirements/bundle.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c 'import torch, torchaudio' 2>/dev/null || $(PY) -m pip install -r requirements/torch-dev.txt
	$(PY) -m pip install --no-deps -r requirements/f5-tts.txt
	$(PY) -m pip install -c requirements/bundle.txt -e '.[test,bench]'
	touch $@

# The daemon in the foreground with the repo's default config; sockets, state and the
# generated demo checkpoint go under .run/ instead of /run, /var/lib and /var/cache.
run: $(STAMP)
	ISHOWTTS_EDGE_PATHS__RUNTIME_DIR=$(DEV_DIR)/runtime \
	ISHOWTTS_EDGE_PATHS__STATE_DIR=$(DEV_DIR)/state \
	ISHOWTTS_EDGE_PATHS__CACHE_DIR=$(DEV_DIR)/cache \
	$(VENV)/bin/ishowtts-edge --config etc/ishowtts-edge.toml serve

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(VENV)/bin/ishowtts-edge bench --work-dir .cache/bench $(BENCH_ARGS)

clean:
	rm -rf $(DEV_DIR) .pytest_cache
