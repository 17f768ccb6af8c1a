#!/usr/bin/env bash
# First call of the next session (nvidia-h200-x2, ~9 minutes): everything landed on 2026-11-30
# evening without a GPU, checked and timed.
#   1. scripts/gpu/scaling_x2.sh: 1 GPU vs 2 GPUs (defaults) vs 2 GPUs (tuned DDP/loader), with the
#      trainer's step-time breakdown (issue 5: 2-GPU throughput >= 1.8x; 1.70x measured before);
#   2. GPU 0: GPU tests of the merge-write kernel, the sync-free merge write, the fused reads, the
#      compiled generation path and the trainer; then the merge write rows of `vidhash bench memory`
#      at the world model's shape;
#   3. GPU 1 (at the same time): generation speed of models/world-tiny-v1 (bf16, 4 steps): window only,
#      the world preset (merge 128x16 read whole: now the merge kernel), FIFO 128x16 read whole
#      (issue 5: >= 80 frames/s; 53 FIFO / 18 merge measured before).
#   source scripts/gpu/setup.sh && bash scripts/gpu/next_x2.sh
set -u
[[ ":${PYTHONPATH:-}:" == *":/tmp/site:"* ]] || source scripts/gpu/setup.sh || exit 1
timeout ${T_SCALING:-270} bash scripts/gpu/scaling_x2.sh 2>&1 | tail -30
( export CUDA_VISIBLE_DEVICES=1
  G="python3 -m vidhash.cli bench generation --model models/world-tiny-v1 --fps 8 --steps 4 --dtype bfloat16"
  timeout 60 $G --seconds 10,60 --modes window --json "$OUT/gen_window.json"
  timeout 60 $G --seconds 10,60 --modes hashed --json "$OUT/gen_merge.json"
  timeout 60 $G --seconds 10,60 --modes hashed --set memory.policy=fifo --json "$OUT/gen_fifo.json"
  timeout 90 $G --seconds 10,60 --modes hashed --compile --json "$OUT/gen_merge_compiled.json"
) > "$OUT/gpu1.log" 2>&1 &
G1=$!
( export CUDA_VISIBLE_DEVICES=0
  timeout ${T_TESTS:-180} python3 -m pytest -q -p no:cacheprovider -m gpu --timeout=170 tests/kernels/test_memory_merge_kernel.py \
    tests/test_memory_merge_write.py tests/test_attention.py tests/pipelines/test_speed_paths.py tests/training 2>&1 | tail -15
  timeout 60 python3 -m vidhash.cli bench memory --queries 256 --heads 3 --buckets 128 --slots 16 --frame-tokens 256 \
    --top-k 64 --json "$OUT/memory_world.json" 2>&1 | tail -20
) > "$OUT/gpu0.log" 2>&1
wait $G1
cat "$OUT/gpu0.log"; echo ======== GPU1; grep -v "it/s\]" "$OUT/gpu1.log" | grep -E "^(hashed|window|  full)|compiled|verdict|in-process" | head -30
