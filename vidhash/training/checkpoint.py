"""Checkpoints: a folder ``checkpoints/step-XXXXXXXX/`` of safetensors shards (model, EMA,
optimizer moments; each file ≤ ``shard_mb``) plus ``meta.json`` (step, data position, LR schedule,
optimizer hyper-parameters, per-process RNG states, loss log rows, config, model fingerprint)
whose tensors and arrays (RNG states: uint8) are in ``meta.safetensors``.

Nothing in a checkpoint is code: the metadata is JSON with a few tags (``{"$tuple": [...]}``,
``{"$tensor": key}``, ``{"$ndarray": key, "dtype", "shape"}``, ``{"$items": [[k, v], ...]}`` for a
dict whose keys are not all strings), tensors are safetensors; :func:`encode_meta` refuses
anything else. Checkpoints of the earlier format (``meta.pt``, a pickle) are read with
``torch.load(weights_only=True)`` allowing exactly the numpy types their RNG states hold; a
``meta.pt`` holding anything else is refused, unrun.

Saving is crash-safe: everything is written into a new ``.step-XXXXXXXX.tmp-<random>/`` (files fsynced),
the folder is renamed into place, then the ``latest`` pointer is replaced atomically; only then
are older checkpoints removed. An interrupted save leaves at most a ``.tmp`` folder behind and
the previous checkpoint (and ``latest``) untouched.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from vidhash.files import umask

LATEST = "latest"
META = "meta.json"  # written last: a folder with it is complete
META_TENSORS = "meta.safetensors"
OLD_META = "meta.pt"  # the earlier format (a pickle), still read, without running code
FORMAT = "vidhash-train-ckpt/2"
OLD_FORMAT = "vidhash-train-ckpt/1"


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


def _fresh_dir(root: Path, prefix: str) -> Path:
    """A new folder under ``root`` with a random name (``mkdtemp``), given the usual permissions."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    os.chmod(path, 0o777 & ~umask())
    return path


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
    tmp = _fresh_dir(root, f".{name}.tmp-")  # a random new name: nothing planted is written through
    try:
        max_bytes = int(shard_mb * 2**20) - 64 * 1024  # room for the safetensors header
        parts = shard(flatten(tensors), max_bytes)
        files = []
        for i, part in enumerate(parts):
            fname = f"tensors-{i:03d}.safetensors"
            _write_file(tmp / fname, lambda p, part=part: save_file(part, p))
            files.append(fname)
        meta_tensors: dict[str, torch.Tensor] = {}
        doc = encode_meta({**meta, "format": FORMAT, "step": int(step), "files": files}, meta_tensors)
        _write_file(tmp / META_TENSORS, lambda p: save_file(meta_tensors, p))
        _write_file(tmp / META, lambda p: Path(p).write_text(json.dumps(doc)))  # last: a folder with it is complete
        _fsync_dir(tmp)
        final = root / name
        if final.exists():  # re-saving the same step (a resumed run stopped at once): move the old one aside
            old = _fresh_dir(root, f".{name}.old-")
            os.replace(final, old)  # onto the empty new folder
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
        fd, pointer = tempfile.mkstemp(prefix=f".{LATEST}.tmp-", dir=root)
        with os.fdopen(fd, "w") as f:
            f.write(name + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(pointer, 0o666 & ~umask())
        os.replace(pointer, root / LATEST)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # prune: keep the newest `keep` complete checkpoints and nothing half-written from earlier saves
    done = sorted(p for p in root.glob("step-*") if is_complete(p))
    for old in done[:-keep]:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".step-*.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return root / name


def is_complete(folder: Path) -> bool:
    """A checkpoint folder whose save finished (its metadata, written last, is there)."""
    return (folder / META).is_file() or (folder / OLD_META).is_file()


def find_checkpoint(path: str | os.PathLike) -> Path | None:
    """A checkpoint folder from ``path``: the folder itself (has its metadata), or a checkpoints
    root (its ``latest``, else its newest complete ``step-*``). None if the root holds none."""
    path = Path(path)
    if is_complete(path):
        return path
    if (path / "checkpoints").is_dir() and not (path / LATEST).exists():
        path = path / "checkpoints"
    if not path.is_dir():
        return None
    pointer = path / LATEST
    if pointer.is_file():
        cand = path / pointer.read_text().strip()
        if is_complete(cand):
            return cand
    done = sorted(p for p in path.glob("step-*") if is_complete(p))
    return done[-1] if done else None


def load_checkpoint(folder: str | os.PathLike) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """(tensors by group, meta) of a checkpoint folder; ValueError (one line) if it is not a
    complete vidhash checkpoint. No file is unpickled beyond plain data (module docstring)."""
    folder = Path(folder)
    meta = _read_meta(folder)
    if not isinstance(meta, dict) or meta.get("format") not in (FORMAT, OLD_FORMAT):
        raise ValueError(f"{folder} is not a vidhash training checkpoint")
    files = meta.get("files")
    if not isinstance(files, list) or not all(isinstance(f, str) and f == Path(f).name and f.endswith(".safetensors")
                                              for f in files):
        raise ValueError(f"{folder} is not a vidhash training checkpoint (its file list is malformed)")
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    for fname in files:
        try:
            flat = load_file(str(folder / fname))
        except Exception as err:
            raise ValueError(f"checkpoint file {folder / fname} is missing or damaged: {_line(err)}") from None
        for key, v in flat.items():
            group, name = key.split("/", 1)
            tensors.setdefault(group, {})[name] = v
    return tensors, meta


def _read_meta(folder: Path) -> Any:
    """The metadata of ``folder``: ``meta.json`` + ``meta.safetensors``, else an old ``meta.pt``."""
    if (folder / META).is_file():
        try:
            doc = json.loads((folder / META).read_text(encoding="utf-8"))
            arrays = load_file(str(folder / META_TENSORS)) if (folder / META_TENSORS).exists() else {}
            return decode_meta(doc, arrays)
        except Exception as err:  # truncated / foreign / edited file
            raise ValueError(f"{folder / META} is not a readable checkpoint: {_line(err)}") from None
    if not (folder / OLD_META).is_file():
        raise ValueError(f"{folder} is not a checkpoint (no {META})")
    import pickle

    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    # exactly the types an old meta.pt holds besides tensors and plain data: numpy's RNG state array
    allowed = [np.dtype, np.ndarray, type(np.dtype(np.uint32)), _reconstruct,
               (_reconstruct, "numpy.core.multiarray._reconstruct")]
    try:
        with torch.serialization.safe_globals(allowed), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols: the error below says it
            return torch.load(folder / OLD_META, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+) was not an allowed global", str(err))
        what = f"a reference to {found.group(1)}" if found else "objects other than tensors and plain data"
        raise ValueError(f"{folder / OLD_META} is not a vidhash training checkpoint: it holds {what} "
                         "(refused unrun: vidhash reads checkpoints as data only)") from None
    except Exception as err:  # truncated / foreign file
        raise ValueError(f"{folder / OLD_META} is not a readable checkpoint: {_line(err)}") from None


def _line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return (lines[0] if lines else type(err).__name__)[:200]


def encode_meta(obj: Any, tensors: dict[str, torch.Tensor], where: str = "meta") -> Any:
    """``obj`` as JSON-able data (module docstring's tags); tensors and arrays go to ``tensors``
    (as safetensors keys ``meta/<n>``; arrays as raw uint8). TypeError naming anything else."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, np.generic) and obj.dtype.kind in "biuf":
        return obj.item()
    if isinstance(obj, (list, tuple)):
        items = [encode_meta(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]
        return {"$tuple": items} if isinstance(obj, tuple) else items
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in obj):
            return {k: encode_meta(v, tensors, f"{where}.{k}") for k, v in obj.items()}
        return {"$items": [[encode_meta(k, tensors, where), encode_meta(v, tensors, f"{where}[{k!r}]")]
                           for k, v in obj.items()]}
    key = f"meta/{len(tensors)}"
    if torch.is_tensor(obj):
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"$tensor": key}
    if isinstance(obj, np.ndarray) and obj.dtype.kind in "biuf":
        tensors[key] = torch.frombuffer(bytearray(np.ascontiguousarray(obj).tobytes()), dtype=torch.uint8)
        return {"$ndarray": key, "dtype": obj.dtype.str, "shape": list(obj.shape)}
    raise TypeError(f"checkpoint metadata {where}: cannot store a {type(obj).__name__} (plain data, tensors and "
                    "numeric arrays only)")


def decode_meta(doc: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of :func:`encode_meta`."""
    if isinstance(doc, list):
        return [decode_meta(v, tensors) for v in doc]
    if not isinstance(doc, dict):
        return doc
    if "$tuple" in doc:
        return tuple(decode_meta(v, tensors) for v in doc["$tuple"])
    if "$items" in doc:
        return {decode_meta(k, tensors): decode_meta(v, tensors) for k, v in doc["$items"]}
    if "$tensor" in doc:
        return tensors[doc["$tensor"]]
    if "$ndarray" in doc:
        dtype = np.dtype(doc["dtype"])
        if dtype.kind not in "biuf":
            raise ValueError(f"array dtype {dtype} is not numeric")
        raw = tensors[doc["$ndarray"]].numpy().tobytes()
        return np.frombuffer(raw, dtype=dtype).reshape([int(n) for n in doc["shape"]]).copy()
    return {k: decode_meta(v, tensors) for k, v in doc.items()}


def checkpoint_size(folder: str | os.PathLike) -> tuple[int, int]:
    """(total bytes, largest file bytes)."""
    sizes = [p.stat().st_size for p in Path(folder).iterdir() if p.is_file()]
    return sum(sizes), max(sizes)
