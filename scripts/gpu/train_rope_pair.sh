#!/usr/bin/env bash
# One ~9.5-minute call on nvidia-h200-x2: does the rotary world-position embedding (model.rope)
# learn the world faster? Then keep training the better candidate, and run the kernel GPU tests.
#   GPU 0: world_tiny rope=true from scratch, P1 minutes; GPU 1: the same with rope=false (same
#   recipe, same schedule, compiled blocks). Both exported and probed (vidhash.eval.probe).
#   Then GPU 0 resumes the rope run exactly with fit_schedule for the rest of the call (its
#   samples/s is the 1-GPU throughput), GPU 1 runs scripts/gpu/kernels_check.sh.
# Back under $OUT: model/ (the rope run, fp16), results.tar.gz (loss CSVs, probes, logs, memory
# benchmark JSON). The run stays in /tmp/rope on the machine for a warm follow-up call.
#   bash scripts/gpu/train_rope_pair.sh [P1_MINUTES] [P2_MINUTES]
set -u
source scripts/gpu/setup.sh || exit 1
P1=${1:-2.6}; P2=${2:-5.6}
T0=$(date +%s); R=/tmp/results; mkdir -p $R
( sleep 575; tar -czf "$OUT/results.tar.gz" -C $R . ) &  # whatever is there if the call's limit comes first
WATCH=$!
common=(${CFG:-configs/train/world_tiny.yaml} gradient_checkpointing=false compile=true checkpoint.every=1000000 log_every=25)
phase1=(max_steps=20000 --max-minutes "$P1" --no-progress)
CUDA_VISIBLE_DEVICES=0 python3 -m vidhash.cli train "${common[@]}" out_dir=/tmp/rope model.rope=true "${phase1[@]}" > $R/rope_p1.log 2>&1 &
A=$!
CUDA_VISIBLE_DEVICES=1 python3 -m vidhash.cli train "${common[@]}" out_dir=/tmp/abs model.rope=false "${phase1[@]}" > $R/abs.log 2>&1 &
B=$!
wait $A $B
echo "phase 1 done at $(( $(date +%s) - T0 )) s"; tail -n 3 $R/rope_p1.log $R/abs.log
cp /tmp/rope/loss.csv $R/rope_p1.csv 2>/dev/null; cp /tmp/abs/loss.csv $R/abs.csv 2>/dev/null
cp -r /tmp/rope/export /tmp/rope_p1_export 2>/dev/null
# GPU 1: probe both phase-1 models, then the kernel tests and memory benchmarks
( export CUDA_VISIBLE_DEVICES=1
  timeout 60 python3 scripts/world_probe.py /tmp/rope_p1_export /tmp/abs/export 2>&1 | grep '^{' | tee $R/probe_p1.jsonl
  [ "${KERNELS:-1}" = 1 ] && OUT=$R PYTEST_S=240 MEM_S=60 MEMGEN_S=35 timeout 340 bash scripts/gpu/kernels_check.sh > $R/kernels.log 2>&1
  echo "gpu1 done at $(( $(date +%s) - T0 )) s" ) &
G1=$!
# GPU 0: continue the rope run (exact resume; the schedule refitted to the time left)
if grep -q "stopped at step" $R/rope_p1.log; then RES=(--resume auto); C=true; else RES=(); C=false; rm -rf /tmp/rope; fi
CUDA_VISIBLE_DEVICES=0 python3 -m vidhash.cli train "${common[@]}" out_dir=/tmp/rope model.rope=true compile=$C max_steps=20000 \
  fit_schedule=true "${RES[@]}" --max-minutes "$P2" --no-progress > $R/rope_p2.log 2>&1
tail -4 $R/rope_p2.log; cp /tmp/rope/loss.csv $R/rope.csv
CUDA_VISIBLE_DEVICES=0 timeout 40 python3 scripts/world_probe.py /tmp/rope/export 2>&1 | grep '^{' | tee $R/probe_p2.jsonl
python3 scripts/gpu/ship_half.py /tmp/rope/export "$OUT/model" 2>&1 | tail -1
wait $G1
kill $WATCH 2>/dev/null
echo "all done at $(( $(date +%s) - T0 )) s"
tail -30 $R/kernels.log
tar -czf "$OUT/results.tar.gz" -C $R .
