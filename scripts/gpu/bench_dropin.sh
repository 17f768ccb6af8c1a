#!/usr/bin/env bash
# The hash-attention drop-in on the trained wan-mini (issue 17 point 2): `vidhash bench dropin` at
# densities 1/4, 1/8, 1/16, 1/32 and key blocks 64 and 16 against the dense model (dense SDPA), same
# seeds and inputs, and every setting again with FlexAttention on the same selected blocks; PSNR/SSIM
# vs dense, coherence, per-layer recall and oracle, transformer ms/step and clip seconds (ours, Flex,
# dense), speed-ups, Flex's clips against ours (bf16).
#   bash scripts/gpu/bench_dropin.sh [MODEL] [flag ...]   (default MODEL models/wan-mini, in the tree)
#   e.g. bash scripts/gpu/bench_dropin.sh models/wan-mini --block-sizes 64 --scorers default,pooled
# The default set: about 4-6 min after set-up (estimate; vidhash/bench/dropin.py's docstring) -> run it
# with a limit of 480 s. Subsets: --densities, --block-sizes, --scorers, --seeds, --steps, --no-flex.
# Dense warmup: --dense-steps 0,3,6 --dense-layers 0,1; where the time goes: --profile; launch
# overhead: --compile --compile-scope model --compile-mode reduce-overhead (CUDA graphs); the unkept
# key blocks as one mean token each: --remainders none,mean (check the kernel first:
# python3 -m pytest -m gpu tests/kernels/test_remainder_triton.py).
# What travels to the GPU machine is capped at 64 MiB: the tracked tree (~63 MB with both wan-mini
# exports) and .whl are over it, so move models/wan-mini-sparse8 out of the tree for the call and
# `git checkout` it after.
# Back under $OUT: dropin.json (one row per setting, per-layer recall; rewritten after every row,
# "complete": true at the end) and dropin.png (frames: dense, 1/8, 1/32), both kept if the call is cut.
set -u
source scripts/gpu/setup.sh || exit 1
MODEL=${1:-models/wan-mini}
shift $(( $# > 1 ? 1 : $# ))
python3 -m vidhash.cli bench dropin --model "$MODEL" --json "$OUT/dropin.json" --strip "$OUT/dropin.png" "$@" \
  2>&1 | grep --line-buffered -v -e Warning -e 'warnings.warn'
