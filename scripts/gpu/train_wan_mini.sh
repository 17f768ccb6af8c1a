#!/usr/bin/env bash
# wan-mini (configs/train/wan_mini.yaml: diffusers' WanTransformer3DModel, 11.56M parameters,
# 33 frames of 256×256 = 33,792 tokens per clip) trained by `vidhash train` in chained ~9-minute
# calls on one H200; CFG=configs/train/wan_mini_sparse8.yaml (or _sparse16) trains the same model
# with hash attention in every self-attention from the start (issue 17, point 3).
#   [CFG=...] bash scripts/gpu/train_wan_mini.sh [MINUTES] [INIT] [key=value ...]     (run timeout_s=600)
# The run's NAME is the last part of the config's out_dir (wan-mini, wan-mini-sparse8,
# wan-mini-sparse16): checkpoints under /tmp/NAME, the export under $OUT/NAME — runs of different
# configs never resume or overwrite each other (and a checkpoint or train_state.json of another
# training attention is refused: the fingerprint holds the attention of a sparse run).
# Where a call starts:
#   * /tmp/NAME/checkpoints on a warm machine (the previous call of this config in this session):
#     exact resume (--resume auto);
#   * else INIT, a carried folder: an export of this run (train_state.json: warm start through
#     init_from= — EMA weights into model and EMA, new AdamW moments re-warmed over
#     optim.rewarm_steps, schedule, data position and loss log continued; models/wan-mini, the
#     stand-in loop's export at step 1396, included) or a full checkpoint folder (--resume INIT);
#   * else a fresh run; budget_minutes (110) then fixes the schedule length from the measured step
#     time after fit_after (40) steps, once, for all later calls (budget_minutes=N on the first call
#     changes it, and later calls keep the run's schedule — that fit, or a length set with
#     max_steps=N budget_minutes=0 — unless they name budget_minutes or max_steps themselves; before 2026-12-05 a
#     later call without it refitted to the config's 110).
# Extra arguments go to `vidhash train` (key=value overrides, or e.g. --profile-steps 100:103, whose
# profile.txt comes back under $OUT: where a step's milliseconds go, kernel by kernel).
# Back under $OUT (≤ 8 files, each ≤ 15 MiB): NAME/ (EMA weights in fp16, a WanMiniPipeline folder
# loadable with WanTransformer3DModel.from_pretrained(NAME/transformer), plus train_state.json with
# the loss log and, for a sparse run, "attention") and loss.csv — or profile.txt instead on a call
# given --profile-steps (8 files at most come back). The output tail holds the log rows
# (loss, lr, samples/s, peak GPU memory, val_loss at every 250 steps and each call's end) and the
# summary (one JSON line).
# Next call: copy $OUT/NAME into an ignored folder of the repo (.wan/NAME, with
# `echo /.wan/ >> .git/info/exclude`), carry [".whl", ".wan"] and pass INIT=.wan/NAME (~23 MB).
# Before the session ends, commit the newest export as models/NAME (a tracked folder: ignored
# files and anything outside the repo do not survive a session that is cut off — the sparse
# restart's export at step 3,568 of 2026-12-05 was lost so) and pass INIT=models/NAME next
# session; move models/wan-mini/transformer out of the tree for those calls (64 MiB cap) and
# `git checkout` it after.
#
# Sparse from the start against dense at equal GPU time (both fit their cosine schedule to the same
# budget_minutes, 110, from their own step time; elapsed_s counts every call's training seconds):
#   dense, continuing its run:     bash scripts/gpu/train_wan_mini.sh 8.5 models/wan-mini      (first call)
#                                  bash scripts/gpu/train_wan_mini.sh 8.5 .wan/wan-mini        (next calls)
#   sparse 1/8, from scratch:      CFG=configs/train/wan_mini_sparse8.yaml bash scripts/gpu/train_wan_mini.sh 8.5
#                                  CFG=configs/train/wan_mini_sparse8.yaml bash scripts/gpu/train_wan_mini.sh 8.5 .wan/wan-mini-sparse8
#   sparse 1/16: the same with wan_mini_sparse16.yaml and .wan/wan-mini-sparse16.
#   After any call (on this machine): vidhash bench train-compare .wan/wan-mini .wan/wan-mini-sparse8
#   (GPU-seconds each needed to reach the dense run's final validation loss, the ratio; target ≤ 0.6).
set -u
source scripts/gpu/setup.sh || exit 1
export PYTHONUNBUFFERED=1
MIN=${1:-8.5}
INIT=${2:-none}
shift $(( $# > 2 ? 2 : $# ))
CFG=${CFG:-configs/train/wan_mini.yaml}
NAME=$(python3 -c "import sys; from pathlib import Path; from vidhash.training import load_train_config; \
print(Path(load_train_config(sys.argv[1]).out_dir).name)" "$CFG") || { echo "cannot read $CFG"; exit 1; }
RUN=/tmp/$NAME
echo "config $CFG: run $NAME (checkpoints $RUN, export \$OUT/$NAME)"
START=(--resume auto); WARM=()
if [ -d "$RUN/checkpoints" ]; then
  echo "warm machine: resuming $RUN"
elif [ "$INIT" = none ]; then
  echo "cold machine: a fresh run"
elif [ -f "$INIT/model_index.json" ] || [ -f "$INIT/train_state.json" ]; then
  echo "cold machine: continuing the export $INIT"; WARM=("init_from=$INIT")
else
  echo "cold machine: resuming the checkpoint $INIT"; START=(--resume "$INIT")
fi
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
rm -f "$RUN/profile.txt"  # only this call's profile comes back
python3 -m vidhash.cli train "$CFG" "out_dir=$RUN" "export_dir=$OUT/$NAME" \
  "${WARM[@]}" "$@" "${START[@]}" --max-minutes "$MIN" --no-progress 2>&1 | grep --line-buffered -v -e Warning -e 'warnings.warn'
# ≤ 8 files come back: the export is 7 (its shard index included), so one more — profile.txt when
# this call was given --profile-steps (the loss log is in the export's train_state.json too), else
# loss.csv. (On 2026-12-05 both came back and the shard index was left out: rebuilt from the shards.)
rm -f "$OUT/loss.csv" "$OUT/profile.txt"
if [[ " $* " == *" --profile-steps"[=\ ]* ]] && [ -f "$RUN/profile.txt" ]; then
  cp "$RUN/profile.txt" "$OUT/profile.txt"
else
  cp "$RUN/loss.csv" "$OUT/loss.csv"
fi
ls -la "$OUT" "$OUT/$NAME/transformer"
echo "files under \$OUT: $(find "$OUT" -type f | wc -l) (≤ 8), largest $(find "$OUT" -type f -printf '%s\n' | sort -n | tail -1) bytes (≤ 15 MiB)"
nvidia-smi --query-gpu=memory.used,memory.total --format=csv,noheader
