#!/usr/bin/env bash
# World-memory evaluation of a trained model on the GPU: held-out seeds 1000000,1000001, horizons
# 10 s / 1 min / 5 min at 8 fps, modes hashed, window, full (≤ 60 s), random-sig, with the model's
# generation preset (other memory settings: --memory key=value,...); JSON, PNG, table and log under
# $OUT. The plan and a time estimate print first; the JSON is rewritten after every seed × horizon
# ("complete": false until the end), so a run cut by the time limit keeps its results.
#   bash scripts/gpu/eval_world.sh MODEL_DIR [extra vidhash eval world flags, e.g. --seeds 1000000 --dtype bfloat16]
#   bash scripts/gpu/eval_world.sh models/world-tiny-v3 --dtype bfloat16
set -u
MODEL=${1:?usage: bash scripts/gpu/eval_world.sh MODEL_DIR [flags]}
shift
source scripts/gpu/setup.sh || exit 1  # carried wheels, package-data links, $OUT
PLOT=(--plot "$OUT/eval_world.png")
python3 -c "import matplotlib" 2>/dev/null || { PLOT=(); echo "no matplotlib here: redraw later with vidhash eval world --from-json eval_world.json --plot eval_world.png"; }
timeout ${EVAL_S:-570} python3 -m vidhash.cli eval world "$MODEL" --device cuda --seeds 1000000,1000001 --horizons 10,60,300 \
    --fps 8 --modes hashed,window,full,random-sig --full-max-seconds 60 --json "$OUT/eval_world.json" "${PLOT[@]}" "$@" \
    2>&1 | tr '\r' '\n' | tee "$OUT/eval_world.log" | tail -60
echo "exit status ${PIPESTATUS[0]}"
[ -f "$OUT/eval_world.json" ] && python3 -c "import json, sys; r = json.load(open(sys.argv[1])); print('complete:', r['complete'], r['timing'])" "$OUT/eval_world.json"
