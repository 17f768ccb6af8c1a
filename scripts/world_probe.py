"""Next-chunk probe of trained world models (vidhash.eval.probe), one JSON line per model:
    python scripts/world_probe.py models/world-tiny-v3 [MORE_DIRS ...] [--device cuda] [--steps 4]"""
import argparse
import json

import torch

from vidhash.eval.probe import next_chunk_probe
from vidhash.pipelines import VidHashPipeline

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("models", nargs="+")
p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
p.add_argument("--steps", type=int, default=4)
p.add_argument("--seeds", default="1000000,1000001,1000002")
args = p.parse_args()
for path in args.models:
    pipe = VidHashPipeline.load(path)
    m = pipe.transformer.to(args.device, torch.float32).eval()
    r = next_chunk_probe(m, seeds=[int(s) for s in args.seeds.split(",")], steps=args.steps, device=args.device)
    print(json.dumps({"model": path, **{k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()}}), flush=True)
