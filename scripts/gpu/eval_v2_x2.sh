#!/usr/bin/env bash
# Full world eval of models/world-tiny-v2 (x0 prediction) as docs/eval_world.json has it for v1
# (held-out seeds 1000000-1000002, horizons 10 s / 1 min / 5 min, hashed / window / full ≤ 60 s,
# merge memory 1024 × 32 read whole, bf16), split over two GPUs, then generation speed of v1 and v2
# in the same call (CUDA graphs, 10 s / 60 s / 600 s). Merge locally:
#   vidhash eval world --from-json short.json long.json --json docs/eval_world.json --plot docs/eval_world.png
#   source scripts/gpu/setup.sh && bash scripts/gpu/eval_v2_x2.sh
set -u
[[ ":${PYTHONPATH:-}:" == *":/tmp/site:"* ]] || source scripts/gpu/setup.sh || exit 1
T0=$(date +%s)
M=${MODEL:-models/world-tiny-v2}
E="python3 -m vidhash.cli eval world $M --device cuda --dtype bfloat16 --fps 8 --seeds 1000000,1000001,1000002
   --full-max-seconds 60 --memory policy=merge,num_buckets=1024,slots=32,top_k=32768"
CUDA_VISIBLE_DEVICES=1 timeout 540 $E --horizons 300 --modes hashed,window --json "$OUT/long.json" > "$OUT/long.log" 2>&1 &
CUDA_VISIBLE_DEVICES=0 timeout 400 $E --horizons 10,60 --modes hashed,window,full --json "$OUT/short.json" > "$OUT/short.log" 2>&1
echo "short eval done at $(( $(date +%s) - T0 )) s"
for m in models/world-tiny-v1 $M; do
  CUDA_VISIBLE_DEVICES=0 timeout 80 python3 -m vidhash.cli bench generation --model $m --seconds 10,60,600 --fps 8 \
    --modes hashed --dtype bfloat16 --cuda-graphs --json "$OUT/speed_$(basename $m).json" 2>&1 | tail -6
done
wait
for f in short long; do echo "== $f"; tr '\r' '\n' < "$OUT/$f.log" | grep -E "^[0-9]+ s |target|^time:" | head -20; done
echo "all done at $(( $(date +%s) - T0 )) s"
cd "$OUT" && tar czf /tmp/all.tgz . && find . -mindepth 1 -delete && mv /tmp/all.tgz .
