#!/usr/bin/env bash
# First call of the next session (nvidia-h200-x2, ~9.5 minutes), for what 2026-11-30 (late) left:
#   1. scripts/gpu/scaling_x2.sh with the new data path (shared world cache, noise drawn on the GPU):
#      1 GPU vs 2 GPUs (DDP defaults), 64 clips per GPU, 1.5 minutes each (issue 5: >= 1.8x; 1.42-1.77x
#      before the data fix; one H200 alone gave 770 samples/s with no data stall after it);
#   2. the 5-minute horizon on two more held-out worlds, one per GPU (hashed, window; CUDA graphs), to merge
#      into docs/eval_world.json (vidhash eval world --from-json docs/eval_world.json eval_300_*.json).
# One archive comes back: $OUT/all.tgz.
#   source scripts/gpu/setup.sh && bash scripts/gpu/next_x2.sh
set -u
[[ ":${PYTHONPATH:-}:" == *":/tmp/site:"* ]] || source scripts/gpu/setup.sh || exit 1
SKIP_C=1 A_MIN=${A_MIN:-1.5} B_MIN=${B_MIN:-1.5} timeout ${T_SCALING:-260} bash scripts/gpu/scaling_x2.sh 2>&1 \
  | grep -v "^vidhash train\|^ddp:" | tail -14
E="python3 -m vidhash.cli eval world models/world-tiny-v1 --device cuda --dtype bfloat16 --fps 8 --quiet --horizons 300
   --modes hashed,window --memory policy=merge,num_buckets=1024,slots=32,top_k=32768"
( CUDA_VISIBLE_DEVICES=1 timeout ${T_EVAL:-270} $E --seeds 1000002 --json "$OUT/eval_300_1000002.json" > "$OUT/gpu1.log" 2>&1 ) &
CUDA_VISIBLE_DEVICES=0 timeout ${T_EVAL:-270} $E --seeds 1000001 --json "$OUT/eval_300_1000001.json" > "$OUT/gpu0.log" 2>&1
wait
tail -14 "$OUT/gpu0.log"; echo ======== GPU1; tail -14 "$OUT/gpu1.log"
cd "$OUT" && tar czf /tmp/all.tgz . && find . -mindepth 1 -delete && mv /tmp/all.tgz .
