#!/usr/bin/env bash
# nvidia-h200-x2, ~9 minutes:
#   1. vidhash eval world with CUDA graphs, both GPUs at once (<= 210 s): the held-out worlds the earlier
#      eval cut at 1 and 5 minutes (issue 5), with the memory of docs/eval_world.json (merge 1024 x 32 read
#      whole) so the runs merge into it: GPU 0 world 1000001 at 60 s / 300 s, GPU 1 world 1000002 at
#      10 / 60 / 300 s; modes hashed, window, full (full capped at 60 s);
#   2. scripts/gpu/scaling_x2.sh at 128 clips per GPU (A: 1 GPU, B: 2 GPUs defaults, C: 2 GPUs static graph +
#      gradients as bucket views): is the 2-GPU step host-bound at 64 per GPU?
# Everything comes back as one archive, $OUT/all.tgz.
#   source scripts/gpu/setup.sh && bash scripts/gpu/eval_scaling_x2.sh
set -u
[[ ":${PYTHONPATH:-}:" == *":/tmp/site:"* ]] || source scripts/gpu/setup.sh || exit 1
E="python3 -m vidhash.cli eval world models/world-tiny-v1 --device cuda --dtype bfloat16 --fps 8 --quiet --cuda-graphs
   --modes hashed,window,full --full-max-seconds 60 --memory policy=merge,num_buckets=1024,slots=32,top_k=32768"
( export CUDA_VISIBLE_DEVICES=1
  timeout ${T_EVAL:-205} $E --seeds 1000002 --horizons 10,60,300 --json "$OUT/eval_1000002.json" 2>&1 | tail -22
) > "$OUT/gpu1.log" 2>&1 &
G1=$!
( export CUDA_VISIBLE_DEVICES=0
  timeout ${T_EVAL:-205} $E --seeds 1000001 --horizons 60,300 --json "$OUT/eval_1000001.json" 2>&1 | tail -22
) > "$OUT/gpu0.log" 2>&1
wait $G1
cat "$OUT/gpu0.log"; echo ======== GPU1; cat "$OUT/gpu1.log"
BATCH=128 A_MIN=${A_MIN:-1.2} B_MIN=${B_MIN:-1.1} C_MIN=${C_MIN:-1.0} \
  C_OPTS=${C_OPTS:-"ddp_static_graph=true ddp_gradient_as_bucket_view=true"} \
  timeout ${T_SCALING:-320} bash scripts/gpu/scaling_x2.sh 2>&1 | grep -v "^vidhash train\|^ddp:" | tail -16
cd "$OUT" && tar czf /tmp/all.tgz . && find . -mindepth 1 -delete && mv /tmp/all.tgz .
