"""The drop-in's hashers file: one hasher per self-attention module, in safetensors.

``vidhash_hashers.safetensors`` holds, per module name (``"blocks.0.attn1"``), the hasher's
tensors under ``"<module name>/<tensor name>"`` and, in the file's metadata (``"vidhash_hashers"``,
JSON), its class and constructor arguments. :class:`~vidhash.hashing.SimHash` and
:class:`~vidhash.hashing.LearnedHash` are stored; a hasher shared by several modules is written
once per module. Written by :func:`vidhash.integrations.diffusers.save_hashers` and
``vidhash calibrate``; read by ``enable_hash_attention(transformer, hashers=PATH)``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from ..hashing import LearnedHash, SimHash

FILE_NAME = "vidhash_hashers.safetensors"
_META_KEY = "vidhash_hashers"
_FORMAT = 1


def _resolve(path: str | os.PathLike) -> Path:
    """A ``.safetensors`` file as given; anything else is a folder holding :data:`FILE_NAME`."""
    path = Path(path)
    return path if path.suffix == ".safetensors" or path.is_file() else path / FILE_NAME


def _describe(name: str, hasher: nn.Module) -> dict:
    if type(hasher) is SimHash:
        return {"class": "SimHash", "head_dim": hasher.head_dim, "n_bits": hasher.n_bits, "heads": hasher.heads,
                "seed": hasher.seed}
    if type(hasher) is LearnedHash:
        return {"class": "LearnedHash", "head_dim": hasher.head_dim, "n_bits": hasher.n_bits, "heads": hasher.heads,
                "hidden": hasher.hidden, "seed": hasher.seed}
    raise ValueError(f"hasher of {name} is a {type(hasher).__name__}; only SimHash and LearnedHash can be saved")


def save_hashers(hashers: dict[str, nn.Module], path: str | os.PathLike) -> str:
    """Write ``hashers`` (module name → SimHash/LearnedHash) to ``path`` (a ``.safetensors``
    file, or a folder: ``FOLDER/vidhash_hashers.safetensors``), float32; returns the file."""
    from safetensors.torch import save_file

    out = _resolve(path)
    meta, tensors = {}, {}
    for name, hasher in hashers.items():
        meta[name] = _describe(name, hasher)
        for key, t in hasher.state_dict().items():
            tensors[f"{name}/{key}"] = t.detach().to("cpu", torch.float32).contiguous().clone()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file(tensors, str(tmp), metadata={_META_KEY: json.dumps({"format": _FORMAT, "hashers": meta})})
    os.replace(tmp, out)
    return str(out)


def _build(desc: dict) -> nn.Module:
    if desc["class"] == "SimHash":
        return SimHash(desc["head_dim"], desc["n_bits"], heads=desc["heads"], seed=desc["seed"])
    if desc["class"] == "LearnedHash":
        return LearnedHash(desc["head_dim"], desc["n_bits"], desc["heads"], desc["hidden"], seed=desc["seed"])
    raise ValueError(f"unknown hasher class {desc['class']!r}")


def load_hashers(path: str | os.PathLike, names: list[str] | None = None) -> dict[str, nn.Module]:
    """The hashers ``path`` holds (see :func:`save_hashers`), by module name, in eval mode on the
    CPU. With ``names``, the file must hold exactly those modules (ValueError naming the
    difference)."""
    from safetensors import safe_open

    file = _resolve(path)
    if not file.is_file():
        raise FileNotFoundError(f"hashers: no {file} (write one with vidhash calibrate or save_hashers)")
    with safe_open(str(file), framework="pt") as f:
        meta = (f.metadata() or {}).get(_META_KEY)
        if meta is None:
            raise ValueError(f"hashers: {file} is not a vidhash hashers file (no {_META_KEY!r} metadata)")
        meta = json.loads(meta)
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    described = meta["hashers"]
    if names is not None and set(names) != set(described):
        raise ValueError(f"hashers: {file} holds hashers for {sorted(described)}, the model's self-attention modules "
                         f"are {sorted(names)}")
    out = {}
    for name, desc in described.items():
        hasher = _build(desc)
        state = {key.split("/", 1)[1]: t for key, t in tensors.items() if key.split("/", 1)[0] == name}
        hasher.load_state_dict(state)
        out[name] = hasher.eval()
    return out
