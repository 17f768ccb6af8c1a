#!/usr/bin/env bash
# wan-mini (configs/train/wan_mini.yaml: diffusers' WanTransformer3DModel, 11.56M parameters,
# 33 frames of 256×256 = 33,792 tokens per clip) trained in chained ~9-minute calls on one H200.
#   bash scripts/gpu/train_wan_mini.sh [MINUTES] [INIT] [key=value ...]     (run timeout_s=600)
# Where a call starts:
#   * /tmp/wan/checkpoints on a warm machine (the previous call of this session): exact resume;
#   * else INIT, a carried folder: a wan-mini export (train_state.json: warm start — EMA weights,
#     new AdamW moments re-warmed over optim.rewarm_steps, schedule and data position continued)
#     or a full checkpoint folder (exact);
#   * else a fresh run; budget_minutes (110) then fixes the schedule length from the measured step
#     time after 40 steps, once, for all later calls (budget_minutes=N on the first call changes it;
#     WAN_ARGS="--max-steps N" sets the schedule's length on any call).
# CFG=... trains another config (default configs/train/wan_mini.yaml); key=value overrides follow INIT.
# Back under $OUT (8 files, each ≤ 15 MiB): wan-mini/ (EMA weights in fp16, a WanMiniPipeline folder
# loadable with WanTransformer3DModel.from_pretrained(wan-mini/transformer), plus train_state.json)
# and loss.csv. The output tail holds the log rows (loss, lr, clips/s, peak GPU memory) and a summary.
# Next session: copy $OUT/wan-mini into an ignored folder of the repo (e.g. .wan/wan-mini, with
# `echo /.wan/ >> .git/info/exclude`), carry [".wan"] and pass INIT=.wan/wan-mini (~23 MB).
set -u
source scripts/gpu/setup.sh || exit 1
export PYTHONUNBUFFERED=1
MIN=${1:-8.5}
INIT=${2:-none}
shift $(( $# > 2 ? 2 : $# ))
START=(--resume)
if [ ! -d /tmp/wan/checkpoints ] && [ "$INIT" != none ]; then START+=(--init-from "$INIT"); fi
[ -d /tmp/wan/checkpoints ] && echo "warm machine: resuming /tmp/wan" || echo "cold machine: start from ${INIT}"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
python3 -m vidhash.training.wan_standalone "${CFG:-configs/train/wan_mini.yaml}" "$@" --out /tmp/wan --minutes "$MIN" \
  "${START[@]}" --export-to "$OUT" ${WAN_ARGS:-} 2>&1 | grep --line-buffered -v -e Warning -e 'warnings.warn'
ls -la "$OUT" "$OUT/wan-mini/transformer"
nvidia-smi --query-gpu=memory.used,memory.total --format=csv,noheader
