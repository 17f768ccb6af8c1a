#!/usr/bin/env bash
# Full world eval of models/world-tiny-v3 with its preset (8 steps, context guidance 3 on the first
# 2), as docs/eval_world.json has it for v2 (held-out seeds 1000000-1000002, 10 s / 1 min / 5 min,
# hashed / window / full ≤ 60 s, merge memory 1024 × 32 read whole, bf16), two processes per GPU
# (a 64×64 model at batch 1 leaves the GPU half idle); then, in the same call, v3 at 1 min without
# guidance (same 8 steps: what guidance does), generation speed with CUDA graphs, and the GPU tests
# of the CUDA-graph path. Merge locally:
#   vidhash eval world --from-json p_*.json --json docs/eval_world.json --plot docs/eval_world.png
#   source scripts/gpu/setup.sh && bash scripts/gpu/eval_v3_x2.sh
set -u
[[ ":${PYTHONPATH:-}:" == *":/tmp/site:"* ]] || source scripts/gpu/setup.sh || exit 1
T0=$(date +%s)
M=${MODEL:-models/world-tiny-v3}
E="python3 -m vidhash.cli eval world $M --device cuda --dtype bfloat16 --fps 8 --quiet --seeds 1000000,1000001,1000002
   --full-max-seconds 60 --memory policy=merge,num_buckets=1024,slots=32,top_k=32768"
CUDA_VISIBLE_DEVICES=0 timeout 470 $E --horizons 300 --modes hashed --json "$OUT/p_long_hashed.json" > "$OUT/long_hashed.log" 2>&1 &
CUDA_VISIBLE_DEVICES=1 timeout 470 $E --horizons 300 --modes window --json "$OUT/p_long_window.json" > "$OUT/long_window.log" 2>&1 &
( CUDA_VISIBLE_DEVICES=0 timeout 300 $E --horizons 10,60 --modes hashed,full --json "$OUT/p_short_hf.json" > "$OUT/short_hf.log" 2>&1
  CUDA_VISIBLE_DEVICES=0 timeout 100 python3 -m vidhash.cli bench generation --model $M --seconds 10,60,600 --fps 8 \
    --modes hashed --dtype bfloat16 --cuda-graphs --json "$OUT/speed_v3.json" > "$OUT/speed.log" 2>&1 ) &
( CUDA_VISIBLE_DEVICES=1 timeout 200 $E --horizons 10,60 --modes window --json "$OUT/p_short_w.json" > "$OUT/short_w.log" 2>&1
  CUDA_VISIBLE_DEVICES=1 timeout 120 $E --horizons 60 --modes hashed --guidance-scale 1 --json "$OUT/noguide_60.json" \
    > "$OUT/noguide.log" 2>&1
  CUDA_VISIBLE_DEVICES=1 timeout 150 python3 -m pytest -q -m gpu tests/pipelines/test_cuda_graphs.py -p no:cacheprovider \
    > "$OUT/pytest.log" 2>&1 ) &
wait
for f in short_hf short_w long_hashed long_window noguide; do
  echo "== $f"; tr '\r' '\n' < "$OUT/$f.log" | grep -E "^[0-9]+ s |target|^time:|Error" | head -12; done
tail -8 "$OUT/speed.log"; tail -3 "$OUT/pytest.log"
echo "all done at $(( $(date +%s) - T0 )) s"
cd "$OUT" && tar czf /tmp/all.tgz . && find . -mindepth 1 -delete && mv /tmp/all.tgz .
