#!/usr/bin/env bash
# GPU tests of every kernel (and the drop-in and model CUDA paths), then the memory-read benchmark
# at the shape and at a generation chunk's shape (256 queries × 3 heads × 16,384 entries).
# tests/kernels runs whole: most kernel tests take the device they find (DEV = cuda there) and carry
# no `gpu` marker — `-m gpu` selects only the CUDA-only ones (it missed test_block_score.py and
# test_block_mass.py entirely on 2026-12-05).
#   source scripts/gpu/setup.sh && bash scripts/gpu/kernels_check.sh
set -u
timeout ${PYTEST_S:-300} python3 -m pytest -q -p no:cacheprovider tests/kernels 2>&1 | tail -12
timeout ${PYTEST_GPU_S:-200} python3 -m pytest -q -p no:cacheprovider -m gpu tests/integrations tests/models tests/pipelines \
  tests/test_attention.py tests/metrics 2>&1 | tail -8
timeout ${MEM_S:-75} python3 -m vidhash.cli bench memory --json "$OUT/memory.json" 2>&1 | tail -25
timeout ${MEMGEN_S:-45} python3 -m vidhash.cli bench memory --queries 256 --heads 3 --buckets 1024 --slots 16 --top-k 32,64 \
  --json "$OUT/memory_generation.json" 2>&1 | tail -16
