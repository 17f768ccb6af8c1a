#!/usr/bin/env bash
# Train the shipped world model on one GPU for ~8 minutes, resuming from a carried checkpoint.
#   bash scripts/gpu/train_world.sh [CKPT] [MINUTES] [key=value ...]
# CKPT: a checkpoint carried in the tree — a step folder (ckpt/world_tiny/step-00001234) or a
#   checkpoints root holding one; "" or "none" = fresh start. MINUTES: --max-minutes (default 8).
# Writes $OUT/world_tiny/{loss.csv,config.yaml,checkpoints/step-N/*,export/}: every file ≤ 15 MB
# (checkpoint shards), so all of it comes back. For the next call, carry
# <files_at>/world_tiny/checkpoints/step-N as e.g. ckpt/world_tiny/step-N and pass that path.
set -u
source scripts/gpu/setup.sh || exit 1
CKPT=${1:-}
MIN=${2:-8}
shift $(( $# > 2 ? 2 : $# ))
RESUME=()
if [ -n "$CKPT" ] && [ "$CKPT" != none ]; then
  [ -e "$CKPT" ] || { echo "checkpoint $CKPT not found in the tree" >&2; exit 2; }
  RESUME=(--resume "$CKPT")
fi
nproc; python3 -c "import torch, accelerate; print('torch', torch.__version__, 'accelerate', accelerate.__version__)"
python3 -m vidhash.cli train configs/train/world_tiny.yaml out_dir="$OUT/world_tiny" "$@" \
  "${RESUME[@]}" --max-minutes "$MIN" --no-progress
rc=$?
ls -la "$OUT/world_tiny" "$OUT"/world_tiny/checkpoints/* 2>/dev/null | tail -20
tail -3 "$OUT/world_tiny/loss.csv" 2>/dev/null
exit $rc
