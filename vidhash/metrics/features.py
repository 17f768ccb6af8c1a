"""Optional learned-feature consistency (VBench's subject/background consistency), local weights only.

    vidhash coherence clip.mp4 --features-weights dinov2_vits14.ts.pt

Nothing is downloaded. ``--features-weights`` must name a local file holding a whole image
encoder — a ``torch.export`` program (``.pt2``) or a TorchScript file (other suffixes) — that
maps a ``(batch, 3, 224, 224)`` float tensor, normalised with ImageNet (DINO) or CLIP
statistics, to features ``(batch, dim)`` (or ``(batch, tokens, dim)``, whose first token is
used). Export one once, wherever the model is at hand::

    model = torch.hub.load("facebookresearch/dinov2", "dinov2_vits14").eval()
    x = torch.randn(1, 3, 224, 224)
    torch.export.save(torch.export.export(model, (x,)), "dinov2_vits14.pt2")   # or:
    torch.jit.trace(model, x).save("dinov2_vits14.ts.pt")

An exported program is run one frame at a time unless it was exported with a dynamic batch.

Score, as VBench defines it: for each frame t ≥ 1, the mean of max(0, cos(f_t, f_{t−1})) and
max(0, cos(f_t, f_0)), averaged over frames. ``first_frame_similarity`` is cos(f_t, f_0) per
keyframe (once a second), which shows slow drift over minutes.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import cv2
import numpy as np

__all__ = ["FeatureMeter", "load_feature_model"]

_NORM = {
    "dino": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
}


def load_feature_model(path: str):
    """Load a local image encoder (``.pt2`` torch.export program, else TorchScript); a clear
    ValueError for anything else. Returns ``(module, batch)``: the largest batch it accepts
    (None = any)."""
    if not path or not os.path.exists(path):
        raise ValueError(
            f"--features-weights {path}: no such file. Learned features are optional and never downloaded; "
            "point to a local exported image encoder (see vidhash.metrics.features)"
        )
    import torch

    if path.endswith(".safetensors"):
        raise ValueError(
            f"{path}: a .safetensors file holds weights without the network; export the whole encoder with "
            "torch.export (.pt2) or as TorchScript and pass that file (see vidhash.metrics.features)"
        )
    try:
        if path.endswith(".pt2"):
            return torch.export.load(path).module(), 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(path, map_location="cpu").eval(), None
    except Exception as err:  # torch raises RuntimeError / pickle / zip errors of many kinds
        raise ValueError(
            f"{path}: not a torch.export program or TorchScript image encoder ({str(err).splitlines()[0][:120]})"
        ) from None


@dataclass
class FeatureMeter:
    """Runs the encoder on analysed frames in batches and accumulates the VBench score."""

    model: object
    kind: str = "dino"
    weights: str = ""
    batch: int = 16
    sims: list[float] = field(default_factory=list)
    first_t_s: list[float] = field(default_factory=list)
    first_sim: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        import torch

        if isinstance(self.model, tuple):  # what load_feature_model returns
            self.model, max_batch = self.model
            self.batch = min(self.batch, max_batch or self.batch)

        if self.kind not in _NORM:
            raise ValueError(f"--features-kind must be one of {sorted(_NORM)}, got {self.kind!r}")
        self._torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = self.model.to(self.device)
        mean, std = _NORM[self.kind]
        self._mean = np.asarray(mean, np.float32)
        self._std = np.asarray(std, np.float32)
        self._pending: list[tuple[np.ndarray, float, bool]] = []
        self._first = None
        self._prev = None

    def update(self, rgb: np.ndarray, t: float, keyframe: bool) -> None:
        x = cv2.resize(rgb, (224, 224), interpolation=cv2.INTER_CUBIC).astype(np.float32) / 255.0
        self._pending.append(((x - self._mean) / self._std, t, keyframe))
        if len(self._pending) >= self.batch:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        torch = self._torch
        x = torch.from_numpy(np.stack([p[0] for p in self._pending])).permute(0, 3, 1, 2).to(self.device)
        with torch.no_grad():
            f = self.model(x)
        if isinstance(f, (tuple, list)):
            f = f[0]
        if f.ndim == 3:
            f = f[:, 0]
        f = torch.nn.functional.normalize(f.float().reshape(len(x), -1), dim=-1).cpu().numpy()
        for feat, (_, t, key) in zip(f, self._pending):
            if self._first is None:
                self._first = feat
            else:
                s_prev = max(0.0, float(feat @ self._prev))
                s_first = max(0.0, float(feat @ self._first))
                self.sims.append(0.5 * (s_prev + s_first))
            if key:
                self.first_t_s.append(t)
                self.first_sim.append(float(feat @ self._first))
            self._prev = feat
        self._pending.clear()

    def result(self) -> dict:
        self._flush()
        return {
            "weights": self.weights, "kind": self.kind,
            "consistency": float(np.mean(self.sims)) if self.sims else None,
            "first_frame_similarity": {"t_s": self.first_t_s, "cos": self.first_sim},
        }
