#!/usr/bin/env bash
# The hash-attention drop-in on the trained wan-mini (issue 17 point 2): `vidhash bench dropin` at
# densities 1/4, 1/8, 1/16, 1/32 and key blocks 64 and 16 against the dense model, same seeds and
# inputs; PSNR/SSIM vs dense, coherence, per-layer recall, transformer ms/step, clip seconds (bf16).
#   bash scripts/gpu/bench_dropin.sh [MODEL] [flag ...]   (default MODEL .wan/wan-mini; carry [".wan"])
# Back under $OUT: dropin.json (all rows, per-layer recall) and dropin.png (frames: dense, 1/8, 1/32).
set -u
source scripts/gpu/setup.sh || exit 1
MODEL=${1:-.wan/wan-mini}
shift $(( $# > 1 ? 1 : $# ))
python3 -m vidhash.cli bench dropin --model "$MODEL" --json "$OUT/dropin.json" --strip "$OUT/dropin.png" "$@" \
  2>&1 | grep --line-buffered -v -e Warning -e 'warnings.warn'
