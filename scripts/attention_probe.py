"""Where does temporal attention look from invented frames? A clean causal pass (t = 0) over a
generated clip with its poses, the model's temporal q/k recorded; per layer and query frame: the
attention mass on the prompt frames, on the last 8 frames, and within 8 px of the query's world
position.

    vidhash generate --prompt-world 1000003 --actions configs/paths/out_and_back_10s.json --seconds 10 \
        --out full.mp4 memory.mode=full
    python scripts/attention_probe.py full.mp4 [MODEL] [FRAMES...]
"""
import json
import sys

import numpy as np
import torch

from vidhash.data.video import read_frames
from vidhash.data.world import action_ids
from vidhash.pipelines import VidHashPipeline

clip = sys.argv[1]
pipe = VidHashPipeline.load(sys.argv[2] if len(sys.argv) > 2 else "models/world-tiny-v3")
m = pipe.transformer.float().eval()
fr = read_frames(clip)  # (T, H, W, 3) uint8
with open(clip[:-4] + ".poses.json") as fh:
    meta = json.load(fh)
T = len(meta["poses"]) // 4 * 4
query_frames = [int(a) for a in sys.argv[3:]] or [24, 40, 56]
x = torch.from_numpy(np.asarray(fr[:T])).float().div(255).mul(2).sub(1).permute(0, 3, 1, 2).unsqueeze(0)  # (1, T, 3, H, W)
poses = torch.tensor(meta["poses"][:T]).float().unsqueeze(0)
acts = torch.tensor(action_ids(meta["actions"][:T])).unsqueeze(0) if meta.get("actions") and len(meta["actions"]) >= T else None
print("x", x.shape, "poses", poses.shape, "acts", None if acts is None else acts.shape, meta.keys())
t = torch.zeros(1, T)
with torch.no_grad(), m.record_temporal_qk() as rec:
    m(x, t, acts, poses, causal_frames=4)
n = 64
xy = m.token_positions(poses, 64, 64)[0].reshape(-1, 2)  # (T*n, 2)
for layer in range(len(rec)):
    q, k = rec[layer][0]
    q, k = q[0].float(), k[0].float()  # (h, T*n, d)
    for f in query_frames:
        qs = q[:, f * n:(f + 1) * n]; ks = k[:, : (f // 4 + 1) * 4 * n]
        s = qs @ ks.transpose(-1, -2) / 8.0
        p = s.softmax(-1)  # (h, n, keys)
        kf = torch.arange(ks.shape[1]) // n
        prompt = p[..., kf < 8].sum(-1).mean().item()
        recent = p[..., kf >= f - 8].sum(-1).mean().item()
        # screen-locked share: mass on keys at the same token index (screen position) in frames < 8
        tok = torch.arange(ks.shape[1]) % n
        same_screen = (p * ((tok.view(1, 1, -1) == torch.arange(n).view(1, -1, 1)) & (kf < 8).view(1, 1, -1))).sum(-1).mean().item()
        dq = xy[f * n:(f + 1) * n]; dk = xy[: ks.shape[1]]
        dist = ((dq.unsqueeze(1) - dk.unsqueeze(0)) % 512); dist = torch.minimum(dist, 512 - dist).norm(dim=-1)  # (n, keys)
        near = (p * (dist < 8).unsqueeze(0)).sum(-1).mean().item()
        print(f"layer {layer} frame {f}: prompt mass {prompt:.2f} (same screen pos {same_screen:.2f}), recent-8 {recent:.2f}, world-near(<8px) {near:.2f}")
