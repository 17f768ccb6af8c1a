#!/usr/bin/env bash
# One ~9.5-minute call on nvidia-h200-x2:
#   GPU 0: the full GPU test suite (per-test limit, durations), then the memory-read benchmark at the
#          issue's shape (k=64 and 256, with the candidates kernel timed alone) and at a generation
#          chunk's shape;
#   GPU 1: vidhash bench generation for the base preset (issue 3): hashed 10 s and 10 min, then
#          window only (10 s, 10 min) and full context (10 s, 1 min), each length its own process.
#   source scripts/gpu/setup.sh && bash scripts/gpu/kernels_base_x2.sh
set -u
( export CUDA_VISIBLE_DEVICES=1
  B="python3 -m vidhash.cli bench generation --preset base --fps 8 --steps 2 --dtype bfloat16"
  timeout ${BASE_H10_S:-100} $B --seconds 10 --modes hashed --json "$OUT/gen_base_hashed_10.json"
  timeout ${BASE_H600_S:-330} $B --seconds 600 --modes hashed --json "$OUT/gen_base_hashed_600.json"
  timeout ${BASE_W_S:-100} $B --seconds 10,600 --modes window --json "$OUT/gen_base_window.json"
  timeout ${BASE_F_S:-60} $B --seconds 10,60 --modes full --json "$OUT/gen_base_full.json"
) > "$OUT/gpu1.log" 2>&1 &
G1=$!
( export CUDA_VISIBLE_DEVICES=0
  timeout ${PYTEST_S:-330} python3 -m pytest -q -p no:cacheprovider -m gpu --timeout=200 --durations=15 \
    tests 2>&1 | tail -40
  timeout ${MEM_S:-130} python3 -m vidhash.cli bench memory --no-reference --json "$OUT/memory.json" 2>&1 | tail -30
  timeout ${MEMGEN_S:-45} python3 -m vidhash.cli bench memory --queries 256 --heads 3 --buckets 1024 --slots 16 \
    --top-k 32,64 --json "$OUT/memory_generation.json" 2>&1 | tail -20
) > "$OUT/gpu0.log" 2>&1
wait $G1
cat "$OUT/gpu0.log"; echo ======== GPU1; grep -v "it/s\]" "$OUT/gpu1.log" | tail -60
