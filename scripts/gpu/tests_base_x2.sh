#!/usr/bin/env bash
# GPU 0: the full GPU test suite (modules that need PyAV are skipped: it is not carried).
# GPU 1: base-preset generation rows: hashed 10 s, window 10 s + 10 min, full 10 s + 1 min.
set -u
( export CUDA_VISIBLE_DEVICES=1
  B="python3 -m vidhash.cli bench generation --preset base --fps 8 --steps 2 --dtype bfloat16"
  timeout ${BASE_H10_S:-200} $B --seconds 10 --modes hashed --json "$OUT/gen_base_hashed_10.json"
  timeout ${BASE_W_S:-170} $B --seconds 10,600 --modes window --json "$OUT/gen_base_window.json"
  timeout ${BASE_F_S:-120} $B --seconds 10,60 --modes full --json "$OUT/gen_base_full.json"
) > "$OUT/gpu1.log" 2>&1 &
G1=$!
( export CUDA_VISIBLE_DEVICES=0
  timeout ${PYTEST_S:-480} python3 -m pytest -q -p no:cacheprovider -m gpu --timeout=240 --durations=20 \
    --continue-on-collection-errors tests 2>&1 | tail -45
) > "$OUT/gpu0.log" 2>&1
wait $G1
cat "$OUT/gpu0.log"; echo ======== GPU1; grep -v "it/s\]" "$OUT/gpu1.log" | tail -40
