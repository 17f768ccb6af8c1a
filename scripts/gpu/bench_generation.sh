#!/usr/bin/env bash
# Generation time per frame and peak device/host memory against clip length, on the GPU, for the
# small and base presets (issue 3 item 7): hashed memory, full context (≤ 60 s), window only.
#   bash scripts/gpu/bench_generation.sh [STEPS]    (default 2 denoising steps per chunk: the
# per-frame cost scales with steps; flatness against clip length is what the rows show)
set -u
source scripts/gpu/setup.sh || exit 1
STEPS=${1:-2}
for preset in small base; do
  timeout 280 python3 -m vidhash.cli bench generation --preset $preset --seconds 10,60,600 --fps 8 --steps "$STEPS" \
    --dtype bfloat16 --full-max-seconds 60 --json "$OUT/generation_$preset.json" 2>&1 | tail -16
done
