"""Save a pipeline folder with the transformer in float16 (learned memory hashes stay float32):
   python scripts/gpu/ship_half.py SRC DST   — halves the shipped weights; from_pretrained loads float32 again."""
import sys

import torch

from vidhash.pipelines import VidHashPipeline

src, dst = sys.argv[1], sys.argv[2]
pipe = VidHashPipeline.from_pretrained(src)
pipe.transformer.to(torch.float16)
for name, module in pipe.transformer.named_modules():
    if name.endswith("memory_hash"):
        module.float()
pipe.save_pretrained(dst)
print("saved", dst)
