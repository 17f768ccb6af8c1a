#!/usr/bin/env bash
# wan-mini (configs/train/wan_mini.yaml: diffusers' WanTransformer3DModel, 11.56M parameters,
# 33 frames of 256×256 = 33,792 tokens per clip) trained by `vidhash train` in chained ~9-minute
# calls on one H200.
#   bash scripts/gpu/train_wan_mini.sh [MINUTES] [INIT] [key=value ...]     (run timeout_s=600)
# Where a call starts:
#   * /tmp/wan/checkpoints on a warm machine (the previous call of this session): exact resume
#     (--resume auto);
#   * else INIT, a carried folder: a wan-mini export (train_state.json: warm start through
#     init_from= — EMA weights into model and EMA, new AdamW moments re-warmed over
#     optim.rewarm_steps, schedule and data position continued; exports of the old stand-in loop,
#     e.g. .wan/wan-mini at step 705, included) or a full checkpoint folder (exact: --resume INIT);
#   * else a fresh run; budget_minutes (110) then fixes the schedule length from the measured step
#     time after fit_after (40) steps, once, for all later calls (budget_minutes=N on the first call
#     changes it; max_steps=N with budget_minutes=0 sets the length on any call).
# CFG=... trains another config (default configs/train/wan_mini.yaml); key=value overrides follow INIT.
# Back under $OUT (≤ 8 files, each ≤ 15 MiB): wan-mini/ (EMA weights in fp16, a WanMiniPipeline folder
# loadable with WanTransformer3DModel.from_pretrained(wan-mini/transformer), plus train_state.json)
# and loss.csv. The output tail holds the log rows (loss, lr, samples/s, peak GPU memory) and the
# summary (one JSON line).
# Next session: copy $OUT/wan-mini into an ignored folder of the repo (e.g. .wan/wan-mini, with
# `echo /.wan/ >> .git/info/exclude`), carry [".wan"] and pass INIT=.wan/wan-mini (~23 MB).
set -u
source scripts/gpu/setup.sh || exit 1
export PYTHONUNBUFFERED=1
MIN=${1:-8.5}
INIT=${2:-none}
shift $(( $# > 2 ? 2 : $# ))
START=(--resume auto); WARM=()
if [ -d /tmp/wan/checkpoints ]; then
  echo "warm machine: resuming /tmp/wan"
elif [ "$INIT" = none ]; then
  echo "cold machine: a fresh run"
elif [ -f "$INIT/model_index.json" ] || [ -f "$INIT/train_state.json" ]; then
  echo "cold machine: continuing the export $INIT"; WARM=("init_from=$INIT")
else
  echo "cold machine: resuming the checkpoint $INIT"; START=(--resume "$INIT")
fi
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
python3 -m vidhash.cli train "${CFG:-configs/train/wan_mini.yaml}" out_dir=/tmp/wan "export_dir=$OUT/wan-mini" \
  "${WARM[@]}" "$@" "${START[@]}" --max-minutes "$MIN" --no-progress 2>&1 | grep --line-buffered -v -e Warning -e 'warnings.warn'
cp /tmp/wan/loss.csv "$OUT/loss.csv"
ls -la "$OUT" "$OUT/wan-mini/transformer"
echo "files under \$OUT: $(find "$OUT" -type f | wc -l) (≤ 8), largest $(find "$OUT" -type f -printf '%s\n' | sort -n | tail -1) bytes (≤ 15 MiB)"
nvidia-smi --query-gpu=memory.used,memory.total --format=csv,noheader
