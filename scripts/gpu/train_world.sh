#!/usr/bin/env bash
# Train world_tiny on one GPU for MINUTES (default 8), warm-started from a pipeline folder in the
# tree (default models/world-tiny-v3, the shipped model; "none" = fresh), and bring back what fits
# the device limits (≤ 8 files, ≤ 16 MB each, 2 folders deep): loss.csv and model/ (EMA weights,
# float16). Two GPUs: scripts/gpu/train_world_x2.sh.
# A full checkpoint (~75 MB) does not fit, so runs continue by warm start (init_from), not by an
# exact resume; carry the returned model/ into models/ for the next call.
#   bash scripts/gpu/train_world.sh [INIT_FROM] [MINUTES] [key=value ...]
set -u
source scripts/gpu/setup.sh || exit 1
INIT=${1:-models/world-tiny-v3}
MIN=${2:-8}
shift $(( $# > 2 ? 2 : $# ))
WARM=(); [ "$INIT" != none ] && WARM=("init_from=$INIT")
python3 -m vidhash.cli train configs/train/world_tiny.yaml out_dir=/tmp/tw gradient_checkpointing=false \
  checkpoint.every=1000000 log_every=50 export_dtype=fp16 "${WARM[@]}" "$@" --max-minutes "$MIN" --no-progress \
  2>&1 | grep -v Warning | tail -6
cp /tmp/tw/loss.csv "$OUT/loss.csv" && cp -r /tmp/tw/export "$OUT/model"
