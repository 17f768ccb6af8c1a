#!/usr/bin/env bash
# nvidia-h200-x2, ~8.5 minutes: CUDA graphs of steady chunks (issue 5: >= 80 frames/s), then 2-GPU scaling
# again with the per-process spread.
#   1. both GPUs at once (<= 220 s):
#      GPU 0: GPU tests of enable_cuda_graphs (bitwise vs eager; with compiled blocks); the world model's
#             hashed rows with CUDA graphs at 10 s / 60 s / 600 s (flatness);
#      GPU 1: the same model, one process after another: eager hashed 10 s (baseline of this run), CUDA graphs
#             window 10 s, CUDA graphs + compiled blocks hashed 10 s / 60 s;
#   2. scripts/gpu/scaling_x2.sh (1 GPU, 2 GPUs defaults, 2 GPUs C_OPTS), now printing the fastest process too.
#   source scripts/gpu/setup.sh && bash scripts/gpu/graphs_x2.sh
set -u
[[ ":${PYTHONPATH:-}:" == *":/tmp/site:"* ]] || source scripts/gpu/setup.sh || exit 1
G="python3 -m vidhash.cli bench generation --model models/world-tiny-v1 --fps 8 --steps 4 --dtype bfloat16"
( export CUDA_VISIBLE_DEVICES=1
  timeout 50 $G --seconds 10 --modes hashed --json "$OUT/gen_eager.json"
  timeout 50 $G --seconds 10 --modes window --cuda-graphs --json "$OUT/gen_window_graphs.json"
  timeout 100 $G --seconds 10,60 --modes hashed --cuda-graphs --compile --json "$OUT/gen_graphs_compiled.json"
) > "$OUT/gpu1.log" 2>&1 &
G1=$!
( export CUDA_VISIBLE_DEVICES=0
  timeout 110 python3 -m pytest -q -p no:cacheprovider -m gpu --timeout=100 tests/pipelines/test_cuda_graphs.py 2>&1 | tail -8
  timeout 100 $G --seconds 10,60,600 --modes hashed --cuda-graphs --json "$OUT/gen_graphs.json"
) > "$OUT/gpu0.log" 2>&1
wait $G1
grep -v "it/s\]" "$OUT/gpu0.log" | tail -25; echo ======== GPU1; grep -v "it/s\]" "$OUT/gpu1.log" | grep -E "^ *(hashed|window)|^#|verdict|in-process|cross" | head -20
A_MIN=${A_MIN:-1.2} B_MIN=${B_MIN:-1.1} C_MIN=${C_MIN:-1.1} C_OPTS=${C_OPTS:-"data.num_workers=6 ddp_bucket_cap_mb=100"} \
  timeout 300 bash scripts/gpu/scaling_x2.sh 2>&1 | grep -v "^vidhash train\|^ddp:" | tail -16
grep -h "fastest process" $OUT/scaling/*.log
# one archive comes back (the file-count limit): logs, JSON, scaling logs and table
cd "$OUT" && tar czf /tmp/all.tgz . && find . -mindepth 1 -delete && mv /tmp/all.tgz .
