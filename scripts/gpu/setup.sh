# Source this at the start of a GPU command (the device tree is a copy, not pip-installed):
#   source scripts/gpu/setup.sh
# Installs the carried wheels (.whl/: diffusers, omegaconf, pytest, ...; see ../shared/tools/gpu-wheels.sh)
# into /tmp/site; vidhash/__init__.py finds kernels/, pipelines/, configs/ (pyproject.toml, "Layout").
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
export PYTHONPATH=/tmp/site:$PWD
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi 2>/dev/null --query-gpu=name,memory.total --format=csv,noheader || true
