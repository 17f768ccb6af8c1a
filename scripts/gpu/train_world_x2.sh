#!/usr/bin/env bash
# Train world_tiny on two GPUs of one host (accelerate DDP, 128 clips per GPU: at 64 the launching
# host is the limit) for MINUTES (default 8), warm-started from a pipeline folder in the tree (default
# models/world-tiny-v3, the shipped model; "none" = fresh), fit_schedule ending the cosine schedule at
# the time limit. Brings back what fits the device limits: loss.csv and model/ (EMA weights, float16).
# As with scripts/gpu/train_world.sh, calls chain by warm start (a full checkpoint does not come back).
#   bash scripts/gpu/train_world_x2.sh [INIT_FROM] [MINUTES] [key=value ...]      (on nvidia-h200-x2)
set -u
source scripts/gpu/setup.sh || exit 1
INIT=${1:-models/world-tiny-v3}
MIN=${2:-8}
shift $(( $# > 2 ? 2 : $# ))
WARM=(); [ "$INIT" != none ] && WARM=("init_from=$INIT")
python3 -m accelerate.commands.launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision bf16 \
  --dynamo_backend no -m vidhash.cli train configs/train/world_tiny.yaml out_dir=/tmp/tw2 batch_size=256 \
  gradient_checkpointing=false compile=true fit_schedule=true checkpoint.every=1000000 log_every=50 \
  export_dtype=fp16 "${WARM[@]}" "$@" --max-minutes "$MIN" --no-progress 2>&1 | grep -v Warning | tail -6
cp /tmp/tw2/loss.csv "$OUT/loss.csv" && cp -r /tmp/tw2/export "$OUT/model"
