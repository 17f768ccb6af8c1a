# Two commands for a new user:  `make demo` (the main job) and `make test` (the test suite).
# Both create .venv if it is missing and install vidhash into it (editable).
#
# TORCH pins the PyTorch wheel. On a CPU-only machine whose pip can see a CPU wheel, that is
# the one installed; elsewhere pip's default (CUDA on Linux) is taken. Override if needed:
#   make test TORCH="torch==2.11.0 --index-url https://download.pytorch.org/whl/cpu"

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
TRITON ?= triton==3.6.0
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.vidhash-installed

.PHONY: demo demo-world test install clean-venv bench-hashhop

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH)
	$(PY) -c "import triton" 2>/dev/null || $(PY) -m pip install -q --disable-pip-version-check $(TRITON)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vidhash bench hashhop --sizes 1000,10000,100000 --queries 256

# The world-model demo: a 10-second clip from a trained pipeline folder, then its coherence
# report. It becomes `make demo` once a usable model ships (models/README.md says which).
WORLD_MODEL ?= models/world-tiny-v1
demo-world: $(STAMP)
	$(VENV)/bin/vidhash generate --model $(WORLD_MODEL) --seconds 10 --fps 8 --seed 0 --out demo.mp4
	$(VENV)/bin/vidhash coherence demo.mp4 --poses demo.poses.json --json demo.coherence.json

test: $(STAMP)
	$(PY) -m pytest -q -x --timeout=600 tests

clean-venv:
	rm -rf $(VENV)
