"""Checkpoints: a folder ``checkpoints/step-XXXXXXXX/`` of safetensors shards (model, EMA,
optimizer moments; each file ≤ ``shard_mb``) plus ``meta.pt`` (step, data position, LR schedule,
optimizer hyper-parameters, per-process RNG states, loss log rows, config, model fingerprint).

Saving is crash-safe: everything is written into ``.step-XXXXXXXX.tmp-PID/`` (files fsynced),
the folder is renamed into place, then the ``latest`` pointer is replaced atomically; only then
are older checkpoints removed. An interrupted save leaves at most a ``.tmp`` folder behind and
the previous checkpoint (and ``latest``) untouched.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

LATEST = "latest"
META = "meta.pt"
FORMAT = "vidhash-train-ckpt/1"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_file(path: Path, write) -> None:
    write(str(path))
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def flatten(tensors: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {f"{group}/{k}": v.detach().contiguous().cpu() for group, d in tensors.items() for k, v in d.items()}


def shard(flat: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    shards, cur, size = [], {}, 0
    for k, v in flat.items():
        n = v.numel() * v.element_size()
        if n > max_bytes:
            raise ValueError(f"tensor {k} ({n / 2**20:.1f} MB) is larger than checkpoint.shard_mb")
        if cur and size + n > max_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[k] = v
        size += n
    if cur:
        shards.append(cur)
    return shards


def save_checkpoint(root: str | os.PathLike, step: int, tensors: dict[str, dict[str, torch.Tensor]],
                    meta: dict[str, Any], shard_mb: float = 15.0, keep: int = 1) -> Path:
    """Write checkpoint ``step`` under ``root`` (see module docstring); returns its folder."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    tmp = root / f".{name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        max_bytes = int(shard_mb * 2**20) - 64 * 1024  # room for the safetensors header
        parts = shard(flatten(tensors), max_bytes)
        files = []
        for i, part in enumerate(parts):
            fname = f"tensors-{i:03d}.safetensors"
            _write_file(tmp / fname, lambda p, part=part: save_file(part, p))
            files.append(fname)
        meta = {**meta, "format": FORMAT, "step": int(step), "files": files}
        _write_file(tmp / META, lambda p: torch.save(meta, p))  # written last: a folder with meta.pt is complete
        _fsync_dir(tmp)
        final = root / name
        if final.exists():  # re-saving the same step (a resumed run stopped at once): move the old one aside
            old = root / f".{name}.old-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
        pointer = root / f".{LATEST}.tmp-{os.getpid()}"
        _write_file(pointer, lambda p: Path(p).write_text(name + "\n"))
        os.replace(pointer, root / LATEST)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # prune: keep the newest `keep` complete checkpoints and nothing half-written from earlier saves
    done = sorted(p for p in root.glob("step-*") if (p / META).is_file())
    for old in done[:-keep]:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".step-*.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return root / name


def find_checkpoint(path: str | os.PathLike) -> Path | None:
    """A checkpoint folder from ``path``: the folder itself (has meta.pt), or a checkpoints root
    (its ``latest``, else its newest complete ``step-*``). None if the root holds none."""
    path = Path(path)
    if (path / META).is_file():
        return path
    if (path / "checkpoints").is_dir() and not (path / LATEST).exists():
        path = path / "checkpoints"
    if not path.is_dir():
        return None
    pointer = path / LATEST
    if pointer.is_file():
        cand = path / pointer.read_text().strip()
        if (cand / META).is_file():
            return cand
    done = sorted(p for p in path.glob("step-*") if (p / META).is_file())
    return done[-1] if done else None


def load_checkpoint(folder: str | os.PathLike) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """(tensors by group, meta) of a checkpoint folder; ValueError if it is not a complete checkpoint."""
    folder = Path(folder)
    try:
        meta = torch.load(folder / META, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise ValueError(f"{folder} is not a checkpoint (no {META})") from None
    except Exception as err:  # truncated / foreign file
        raise ValueError(f"{folder / META} is not a readable checkpoint: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{folder} is not a vidhash training checkpoint")
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    for fname in meta["files"]:
        try:
            flat = load_file(str(folder / fname))
        except Exception as err:
            raise ValueError(f"checkpoint file {folder / fname} is missing or damaged: {err}") from None
        for key, v in flat.items():
            group, name = key.split("/", 1)
            tensors.setdefault(group, {})[name] = v
    return tensors, meta


def checkpoint_size(folder: str | os.PathLike) -> tuple[int, int]:
    """(total bytes, largest file bytes)."""
    sizes = [p.stat().st_size for p in Path(folder).iterdir() if p.is_file()]
    return sum(sizes), max(sizes)
