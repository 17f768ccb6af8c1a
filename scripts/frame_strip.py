"""A labelled PNG frame strip of one or more clips (same frame indices in each row):
    python scripts/frame_strip.py OUT.png --frames 0,7,24,44,60,76,82,87 --label "hashed memory" a.mp4 --label "window only" b.mp4"""
import argparse

import av
import numpy as np
from PIL import Image, ImageDraw

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("out")
p.add_argument("--frames", required=True, help="comma-separated frame indices")
p.add_argument("--scale", type=int, default=2)
p.add_argument("--label", action="append", default=[], help="one per clip, in order")
p.add_argument("clips", nargs="+")
args = p.parse_intermixed_args()
idx = [int(i) for i in args.frames.split(",")]
rows = []
for clip in args.clips:
    with av.open(clip) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    h, w = frames[0].shape[:2]
    gap = np.full((h, 2, 3), 255, np.uint8)
    rows.append(np.concatenate(sum(([frames[i], gap] for i in idx), [])[:-1], 1))
strip = Image.fromarray(np.concatenate(rows, 0)).resize((rows[0].shape[1] * args.scale, len(rows) * h * args.scale), Image.NEAREST)
pad = 110 if args.label else 0
canvas = Image.new("RGB", (strip.width + pad, strip.height + 14), "white")
canvas.paste(strip, (pad, 14))
draw = ImageDraw.Draw(canvas)
for r, label in enumerate(args.label):
    draw.text((4, 14 + r * h * args.scale + h * args.scale // 2 - 6), label, fill="black")
for k, i in enumerate(idx):
    draw.text((pad + k * (w + 2) * args.scale + 4, 1), f"frame {i}", fill="black")
canvas.save(args.out, optimize=True)
print("wrote", args.out, canvas.size)
