#!/usr/bin/env bash
# GPU tests of every kernel (and the drop-in and model CUDA paths), then the memory-read benchmark
# at the shape and at a generation chunk's shape (256 queries × 3 heads × 16,384 entries).
#   source scripts/gpu/setup.sh && bash scripts/gpu/kernels_check.sh
set -u
timeout ${PYTEST_S:-300} python3 -m pytest -q -p no:cacheprovider -m gpu tests/kernels tests/integrations tests/models 2>&1 | tail -12
timeout ${MEM_S:-75} python3 -m vidhash.cli bench memory --json "$OUT/memory.json" 2>&1 | tail -25
timeout ${MEMGEN_S:-45} python3 -m vidhash.cli bench memory --queries 256 --heads 3 --buckets 1024 --slots 16 --top-k 32,64 \
  --json "$OUT/memory_generation.json" 2>&1 | tail -16
