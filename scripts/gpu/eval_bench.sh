#!/usr/bin/env bash
# A ~7.5-minute call on nvidia-h200-x2 after scripts/gpu/train_world_x2.sh (warm machine: the
# calibrated ship in /tmp/ship; cold: MODEL, a carried pipeline folder):
#   GPU 0: vidhash eval world (scripts/gpu/eval_world.sh), one held-out seed, horizons 10 s / 1 min / 5 min;
#   GPU 1: vidhash bench generation for the base preset (issue 3), 10 s / 1 min / 10 min.
#   bash scripts/gpu/eval_bench.sh [MODEL] [EVAL_SECONDS]
set -u
source scripts/gpu/setup.sh || exit 1
M=/tmp/ship; [ -f /tmp/ship/model_index.json ] || M=${1:-models/world-tiny-v1}
EVAL_S=${2:-420}
echo "model $M"
( export CUDA_VISIBLE_DEVICES=1
  timeout $(( EVAL_S - 10 )) python3 -m vidhash.cli bench generation --preset base --seconds 10,60,600 --fps 8 --steps 2 \
    --dtype bfloat16 --json "$OUT/generation_base.json" > "$OUT/generation_base.log" 2>&1 ) &
G1=$!
CUDA_VISIBLE_DEVICES=0 EVAL_S=$EVAL_S bash scripts/gpu/eval_world.sh "$M" --seeds 1000000 2>&1 | tail -40
wait $G1
tail -n 16 "$OUT/generation_base.log"
