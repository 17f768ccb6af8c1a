#!/usr/bin/env bash
# A ~9.5-minute call on nvidia-h200-x2 that follows scripts/gpu/train_rope_pair.sh on the same
# (warm) machine: continue its rope run, measure 2-GPU against 1-GPU throughput, time generation.
#   A. both GPUs, accelerate DDP (global batch 128 = 2 × 64), A_MIN minutes: the 2-GPU samples/s;
#   B. GPU 0 resumes alone (batch 64), fit_schedule to the end of the call: the 1-GPU samples/s in
#      the same call; then calibrate (learned memory signatures), fp16 ship, probe;
#   meanwhile GPU 1: vidhash bench generation for the small preset (issue 3) and for the
#      world-tiny architecture (the call-1 export: speed does not depend on the weights).
# If the machine is cold (no /tmp/rope), A starts from INIT (a carried pipeline folder) instead.
# Back under $OUT: model/ (calibrated, fp16) and results.tar.gz. The ship stays in /tmp/ship.
#   bash scripts/gpu/train_world_x2.sh [A_MIN] [B_MIN] [INIT]
set -u
source scripts/gpu/setup.sh || exit 1
A_MIN=${1:-2.0}; B_MIN=${2:-6.0}; INIT=${3:-models/world-tiny-v1}
T0=$(date +%s); R=/tmp/results2; mkdir -p $R
( sleep 575; tar -czf "$OUT/results.tar.gz" -C $R . ) &
WATCH=$!
CFG=${CFG:-configs/train/world_tiny.yaml}
common=($CFG gradient_checkpointing=false compile=true checkpoint.every=1000000 log_every=25 model.rope=true out_dir=/tmp/rope)
if [ -d /tmp/rope/checkpoints ]; then START=(--resume auto); echo "warm: resuming /tmp/rope"
else START=("init_from=$INIT"); rm -rf /tmp/rope; echo "cold: warm start from $INIT"; fi
[ -d /tmp/rope/export ] && cp -r /tmp/rope/export /tmp/m1 || cp -r "$INIT" /tmp/m1
# one schedule over A and B: its end estimated from the 1-GPU rate (B refits it exactly)
read STEP0 RATE1 < <(python3 - <<'PY'
import csv, statistics
try:
    rows = list(csv.DictReader(open("/tmp/rope/loss.csv")))
    print(int(rows[-1]["step"]), statistics.median(float(r["samples_per_s"]) for r in rows[-20:]) / 64)
except Exception:
    print(0, 5.0)
PY
)
END=$(python3 -c "print(int($STEP0 + max(100, $RATE1 * (1.8 * ($A_MIN * 60 - 40) + $B_MIN * 60 - 40))))")
echo "step $STEP0, 1-GPU ${RATE1} steps/s: schedule to step $END"
N0=$(wc -l < /tmp/rope/loss.csv 2>/dev/null || echo 1)
${LAUNCH2:-python3 -m accelerate.commands.launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision bf16 --dynamo_backend no} \
  -m vidhash.cli train "${common[@]}" batch_size=128 max_steps=$END "${START[@]}" --max-minutes "$A_MIN" --no-progress \
  > $R/train_2gpu.log 2>&1
tail -n 3 $R/train_2gpu.log; echo "A done at $(( $(date +%s) - T0 )) s"
N1=$(wc -l < /tmp/rope/loss.csv)
# GPU 1: generation benchmarks
( export CUDA_VISIBLE_DEVICES=1
  [ "${BENCH:-1}" = 1 ] || exit 0
  timeout 190 python3 -m vidhash.cli bench generation --preset small --seconds ${BENCH_SECONDS:-10,60,600} --fps 8 --steps 2 --dtype bfloat16 \
    --json $R/generation_small.json > $R/generation_small.log 2>&1
  timeout 150 python3 -m vidhash.cli bench generation --model /tmp/m1 --seconds ${BENCH_SECONDS:-10,60,600} --fps 8 --modes hashed,window \
    --dtype bfloat16 --set memory.policy=merge --set memory.num_buckets=1024 --set memory.slots=32 --set memory.top_k=64 \
    --json $R/generation_world.json > $R/generation_world.log 2>&1
  echo "gpu1 done at $(( $(date +%s) - T0 )) s" ) &
G1=$!
CUDA_VISIBLE_DEVICES=0 python3 -m vidhash.cli train "${common[@]}" batch_size=64 max_steps=$END fit_schedule=true --resume auto \
  --max-minutes "$B_MIN" --no-progress > $R/train_1gpu.log 2>&1
tail -n 3 $R/train_1gpu.log; echo "B done at $(( $(date +%s) - T0 )) s"
cp /tmp/rope/loss.csv $R/rope.csv
python3 - /tmp/rope/loss.csv $N0 $N1 <<'PY' | tee $R/scale.txt
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
n0, n1 = int(sys.argv[2]) - 1, int(sys.argv[3]) - 1   # data rows before A, before B
two = [float(r["samples_per_s"]) for r in rows[n0:n1]][2:]   # skip the rows with compilation
one = [float(r["samples_per_s"]) for r in rows[n1:]][2:]
if two and one:
    a, b = statistics.median(two), statistics.median(one)
    print(f"world_tiny rope, bf16, compiled blocks, 64 clips x 48 frames per GPU: 1 GPU {b:.0f} samples/s, "
          f"2 GPUs (DDP) {a:.0f} samples/s: {a / b:.2f}x (target >= 1.8x); rows {len(two)} and {len(one)}")
else:
    print("scale: too few rows", len(two), len(one))
PY
CUDA_VISIBLE_DEVICES=0 timeout 60 python3 -m vidhash.cli calibrate /tmp/rope/export --out /tmp/cal --clips 6 --steps 300 \
  --device ${DEV:-cuda} --json $R/calibrate.json --quiet > $R/calibrate.log 2>&1; tail -n 3 $R/calibrate.log
M=/tmp/cal; [ -f /tmp/cal/model_index.json ] || M=/tmp/rope/export
rm -rf /tmp/ship; python3 scripts/gpu/ship_half.py "$M" /tmp/ship 2>&1 | tail -1; cp -r /tmp/ship "$OUT/model"
CUDA_VISIBLE_DEVICES=0 timeout 40 python3 scripts/world_probe.py /tmp/ship /tmp/m1 2>&1 | grep '^{' | tee $R/probe.jsonl
wait $G1
kill $WATCH 2>/dev/null
tail -n 14 $R/generation_small.log $R/generation_world.log
echo "all done at $(( $(date +%s) - T0 )) s"
tar -czf "$OUT/results.tar.gz" -C $R .
