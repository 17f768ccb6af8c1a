#!/usr/bin/env bash
# A ~2.5-minute call on one H200 (2026-11-30, evening 2): how much host time does a world_tiny training
# step take, and does the GPU wait for it? One 1-GPU run (the A run of scaling_x2.sh) with
# --profile-steps 200:215 (vidhash.training.profile). Back: $OUT/all.tgz (profile.txt, the log).
#   source scripts/gpu/setup.sh && bash scripts/gpu/host_h200.sh
set -u
[[ ":${PYTHONPATH:-}:" == *":/tmp/site:"* ]] || source scripts/gpu/setup.sh || exit 1
lscpu 2>/dev/null | grep -iE "^model name|thread|core|socket|mhz" ; nproc
python3 -m vidhash.cli train configs/train/world_tiny.yaml gradient_checkpointing=false compile=true checkpoint.every=1000000 \
  max_steps=100000 log_every=25 out_dir=/tmp/prof --max-minutes ${MIN:-1.5} --no-progress --no-export \
  --profile-steps ${PROFILE:-200:215} > "$OUT/prof.log" 2>&1
echo "rc $?"; grep "^timing\|profile:" "$OUT/prof.log"; cp /tmp/prof/profile.txt "$OUT/" && head -45 "$OUT/profile.txt"
cd "$OUT" && tar czf /tmp/all.tgz . && find . -mindepth 1 -delete && mv /tmp/all.tgz .
