#!/usr/bin/env bash
# One ~9.5-minute call on nvidia-h200-x2 (source scripts/gpu/setup.sh first):
#   GPU 0: vidhash eval world, world-tiny-v1, bf16, two held-out worlds: the 5-minute horizon
#          (hashed = merge 1024×32 read whole, and window only), then 10 s / 1 min with full context;
#   GPU 1: GPU tests of the fused read and the compiled generation path; generation speed of the
#          shipped model, eager and compiled; base preset with the memory read whole, 10 s and 10 min.
set -u
( export CUDA_VISIBLE_DEVICES=1
  timeout ${T_TESTS:-120} python3 -m pytest -q -p no:cacheprovider -m gpu --timeout=110 tests/test_attention.py \
    tests/pipelines/test_speed_paths.py 2>&1 | tail -8
  G="python3 -m vidhash.cli bench generation --model models/world-tiny-v1 --fps 8 --steps 4 --dtype bfloat16"
  timeout ${T_EAGER:-80} $G --seconds 10,60 --modes hashed,window --json "$OUT/gen_world_eager.json" 2>&1 | grep -v "it/s\]"
  timeout ${T_COMPILE:-130} $G --seconds 10,60 --modes hashed,window --compile --json "$OUT/gen_world_compiled.json" 2>&1 | grep -v "it/s\]"
  timeout ${T_BASE:-220} python3 -m vidhash.cli bench generation --preset base --fps 8 --steps 2 --dtype bfloat16 \
    --set memory.top_k=65536 --seconds 10,600 --modes hashed --json "$OUT/gen_base_dense.json" 2>&1 | grep -v "it/s\]"
) > "$OUT/gpu1.log" 2>&1 &
G1=$!
( export CUDA_VISIBLE_DEVICES=0
  E="python3 -m vidhash.cli eval world models/world-tiny-v1 --device cuda --dtype bfloat16 --seeds 1000000,1000001 --fps 8 --quiet"
  timeout ${T_EVAL300:-370} $E --horizons 300 --modes hashed,window \
    --memory policy=merge,num_buckets=1024,slots=32,top_k=32768 --json "$OUT/eval_300.json" 2>&1 | tail -25
  timeout ${T_EVALSHORT:-180} $E --horizons 10,60 --modes hashed,window,full --full-max-seconds 60 \
    --memory policy=merge,num_buckets=1024,slots=32,top_k=32768 --json "$OUT/eval_short.json" 2>&1 | tail -25
) > "$OUT/gpu0.log" 2>&1
wait $G1
cat "$OUT/gpu0.log"; echo ======== GPU1; tail -80 "$OUT/gpu1.log"
