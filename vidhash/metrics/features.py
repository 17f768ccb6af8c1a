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

The file is a program, so pass only encoders you made or trust; loading it runs no Python from
it all the same. A ``.pt2`` is read once into memory; one holding compiled native code
(AOTInductor) or pickled Python objects (opaque or custom-class constants) is refused, and every
tensor inside it is read with ``torch.load(weights_only=True)`` (``torch.export.load`` alone
unpickles weights and sample inputs with ``weights_only=False``). TorchScript files are read by
TorchScript's own loader, which builds no Python objects.

Score, as VBench defines it: for each frame t ≥ 1, the mean of max(0, cos(f_t, f_{t−1})) and
max(0, cos(f_t, f_0)), averaged over frames. ``first_frame_similarity`` is cos(f_t, f_0) per
keyframe (once a second), which shows slow drift over minutes.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import pickle
import re
import warnings
import zipfile
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
    if path.endswith(".pt2"):
        return _load_exported(path), 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(path, map_location="cpu").eval(), None
    except Exception as err:  # torch raises RuntimeError / pickle / zip errors of many kinds
        raise ValueError(
            f"{path}: not a torch.export program or TorchScript image encoder ({_first_line(err)})"
        ) from None


# archive members torch.export.load would run as code: AOTInductor's shared libraries, pickled
# Python objects (pickle.loads) and TorchScript custom classes
_UNSAFE_MEMBERS = ("/aotinductor/", "/opaque_obj_", "/custom_obj_")


def _load_exported(path: str):
    """A ``.pt2`` encoder's module, with no pickle run (module docstring); ValueError in one line."""
    import torch

    with open(path, "rb") as f:
        data = f.read()  # one read: what is checked is what is loaded
    try:
        names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    except (zipfile.BadZipFile, ValueError) as err:
        raise ValueError(f"{path}: not a torch.export program or TorchScript image encoder ({_first_line(err)})") from None
    unsafe = [n for n in names if any(m in "/" + n for m in _UNSAFE_MEMBERS)]
    if unsafe:
        raise ValueError(f"{path}: holds compiled code or pickled Python objects ({unsafe[0]}); refused unrun. "
                         "Export the encoder with torch.export.save(torch.export.export(model, (x,)), path)")
    try:
        with _tensors_only(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.load(io.BytesIO(data)).module()
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+) was not an allowed global", str(err))
        what = f"a reference to {found.group(1)}" if found else "pickled objects other than tensors"
        raise ValueError(f"{path}: holds {what}; refused unrun (an exported encoder's tensors are plain data)") from None
    except Exception as err:  # noqa: BLE001 - zip / schema errors of many kinds
        reason = _first_line(err)
        if reason.startswith("We ran into an error"):  # its advice points at the logs silenced above
            reason = "the archive holds no exported program"
        raise ValueError(f"{path}: not a torch.export program or TorchScript image encoder ({reason})") from None


@contextlib.contextmanager
def _tensors_only():
    """Every ``torch.load`` inside (whatever its ``weights_only`` argument) reads tensors and plain
    data only (``TORCH_FORCE_WEIGHTS_ONLY_LOAD``); torch.export's own error logs (tracebacks) stay quiet."""
    loggers = [logging.getLogger(n) for n in ("torch.export", "torch._export")]
    saved_env, saved_levels = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD"), [lg.level for lg in loggers]
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        if saved_env is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = saved_env
        for lg, level in zip(loggers, saved_levels):
            lg.setLevel(level)


def _first_line(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return (lines[0] if lines else type(err).__name__)[:120]


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
