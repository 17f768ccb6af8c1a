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

.PHONY: demo demo-free demo-hashhop test test-wheel test-floors install clean-venv bench-hashhop

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH)
	$(PY) -c "import triton" 2>/dev/null || $(PY) -m pip install -q --disable-pip-version-check $(TRITON)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# The main job: the shipped world model starts from 8 ground-truth frames of a held-out world,
# walks out 144 px (its own invented ground) and back; the hashed memory brings the place back on
# return. Then the clip's coherence report (revisit PSNR: the return against the start).
# The model's generation preset (`world`, saved in models/world-tiny-v3/model_index.json): a merge
# memory of 1,024 buckets × 32 slots (32,768 entries per layer and head, minutes of a world), each
# query reading its top 256 entries. On a CPU that read costs the entries filled, not the capacity
# (kernels/memory/cpu.py), so the demo runs the preset as it is. `make demo DEMO_MEMORY=...`
# adds generation settings (e.g. `DEMO_MEMORY=memory.mode=window` for the window only).
WORLD_MODEL ?= world-tiny-v3
DEMO_MEMORY ?=
demo: $(STAMP)
	$(VENV)/bin/vidhash generate --model $(WORLD_MODEL) --prompt-world 1000003 --actions configs/paths/out_and_back_10s.json \
		--seconds 10 --fps 8 --seed 0 --out demo.mp4 $(DEMO_MEMORY)
	$(VENV)/bin/vidhash coherence demo.mp4 --poses demo.poses.json --json demo.coherence.json

# Free generation with no prompt (the model's weak side: invented ground drifts to texture).
demo-free: $(STAMP)
	$(VENV)/bin/vidhash generate --model $(WORLD_MODEL) --seconds 10 --fps 8 --seed 0 --out demo-free.mp4
	$(VENV)/bin/vidhash coherence demo-free.mp4 --poses demo-free.poses.json --json demo-free.coherence.json

# Retrieval from a fixed-size hashed memory next to dense attention (the first demo).
demo-hashhop: $(STAMP)
	$(VENV)/bin/vidhash bench hashhop --sizes 1000,10000,100000 --queries 256

test: $(STAMP)
	$(PY) -m pytest -q -x --timeout=600 -m "not wheel" tests

# The wheel: built, installed non-editable in a scratch venv (the dependencies are .venv's), and
# `vidhash generate --model random-tiny`, `coherence` and `train cpu_test` run from outside the repo.
test-wheel: $(STAMP)
	$(PY) -m pytest -q -x --timeout=900 -m wheel tests/packaging

# The lower bounds of pyproject.toml: a separate venv with every dependency at its floor's series
# (tests/packaging/floors.py; torch stays at TORCH: PyPI has no CPU wheel of its floor, checked by a
# recorded run in docs/log/2026-12-03-torch-floor.md) and the
# quick tests that touch diffusers, accelerate and the file formats.
FLOOR_VENV  ?= .venv-floors
FLOOR_TESTS ?= tests/test_imports.py tests/pipelines/test_generation_config.py tests/integrations \
	tests/training/test_trackers.py tests/packaging/test_wheel.py::test_runs_without_triton
test-floors: $(STAMP)
	rm -rf $(FLOOR_VENV)
	$(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/pip install -q --disable-pip-version-check $(TORCH)
	$(PY) tests/packaging/floors.py --skip torch > $(FLOOR_VENV)/floors.txt
	$(FLOOR_VENV)/bin/pip install -q --disable-pip-version-check -c $(FLOOR_VENV)/floors.txt -e ".[test]"
	$(FLOOR_VENV)/bin/pip list --disable-pip-version-check 2>/dev/null | grep -iE "^(torch|diffusers|accelerate|numpy|huggingface.hub) "
	$(FLOOR_VENV)/bin/python -m pytest -q -x --timeout=600 $(FLOOR_TESTS)

clean-venv:
	rm -rf $(VENV)
