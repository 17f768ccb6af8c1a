#!/usr/bin/env bash
# After the memory-read study (scripts/gpu/mass_cap.sh), one H200: generation speed of the shipped
# model with its new preset (top_k 256 of 2,048 entries: the Triton selective read) alone on the
# GPU; then in parallel the 5-min rows of top_k 256 (docs eval memory, merge 1024 × 32) on the two
# worlds the study did not run, the 1-min eval with the preset's own memory at top_k 256 against
# 2048 (read whole), and the GPU tests of the changed read (CUDA graphs, memory kernels against
# the reference selective read).
#   source scripts/gpu/setup.sh && bash scripts/gpu/read_final.sh
set -u
[[ ":${PYTHONPATH:-}:" == *":/tmp/site:"* ]] || source scripts/gpu/setup.sh || exit 1
T0=$(date +%s)
M=${MODEL:-models/world-tiny-v3}
timeout 150 python3 -m vidhash.cli bench generation --model $M --seconds 10,60,600 --fps 8 --modes hashed \
  --dtype bfloat16 --cuda-graphs --json "$OUT/speed.json" > "$OUT/speed.log" 2>&1
tail -8 "$OUT/speed.log"; echo "speed done at $(( $(date +%s) - T0 )) s"
E="python3 -m vidhash.cli eval world $M --device cuda --dtype bfloat16 --fps 8 --quiet --modes hashed"
LEFT=$(( ${BUDGET:-450} - ($(date +%s) - T0) ))
for s in 1000001 1000002; do
  timeout $LEFT $E --seeds $s --horizons 300 --memory policy=merge,num_buckets=1024,slots=32,top_k=256 \
    --json "$OUT/v_top256_300_$s.json" > "$OUT/v_top256_300_$s.log" 2>&1 &
done
for k in 256 2048; do
  timeout $LEFT $E --seeds 1000000,1000001,1000002 --horizons 60 --memory top_k=$k \
    --json "$OUT/v_preset_top${k}_60.json" > "$OUT/v_preset_top${k}_60.log" 2>&1 &
done
timeout $LEFT python3 -m pytest -q -m gpu tests/pipelines/test_cuda_graphs.py tests/pipelines/test_speed_paths.py \
  tests/kernels/test_memory_kernels.py tests/test_memory.py -p no:cacheprovider > "$OUT/pytest.log" 2>&1 &
wait
tail -3 "$OUT/pytest.log"
python3 - "$OUT" <<'PY'
import glob, json, os, sys
for path in sorted(glob.glob(os.path.join(sys.argv[1], "v_*.json"))):
    d = json.load(open(path))
    for r in d["rows"]:
        f = lambda k: "-" if r.get(k) is None else f"{r[k]:.3f}"
        print(os.path.basename(path), r["seed"], r["horizon_s"], r["setting"], "return", f("return_psnr"), "self", f("self_psnr"),
              "realism", f("away_realism"), f("away_real_share"))
    for h, c in d["summary"]["hashed"].items():
        print("  mean", h, c["n_seeds"], "self", round(c["self_psnr"] or 0, 3), "return", round(c["return_psnr"] or 0, 3),
              "realism given/self", round(c["away_realism"], 3), round(c["self_away_realism"], 3))
PY
echo "all done at $(( $(date +%s) - T0 )) s"
cd "$OUT" && tar czf /tmp/all.tgz . && find . -mindepth 1 -delete && mv /tmp/all.tgz .
