"""Checkpoints are data, never code: metadata is JSON + safetensors; an old ``meta.pt`` is read
with ``weights_only=True`` (plus numpy's RNG array types), and a crafted one is refused unrun."""
from __future__ import annotations

import json
import pickle
import random

import numpy as np
import pytest
import torch

from vidhash.training.checkpoint import (FORMAT, OLD_FORMAT, OLD_META, decode_meta, encode_meta, find_checkpoint,
                                         load_checkpoint, save_checkpoint)

TENSORS = {"model": {"w": torch.arange(6.0)}, "ema": {"w": torch.ones(6)}}


class _Payload:
    """Creates ``marker`` when unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _meta():
    """A meta dict shaped like the trainer's (TrainState.save), every kind of value it holds."""
    return {
        "fingerprint": "ab12", "model": {"hidden_dim": 16, "mlp_ratio": 2.0, "qk_norm": True, "prediction": "velocity"},
        "config": "seed: 0\n", "data_position": 8, "rows": [{"step": 1, "loss": 1.25, "lr": 1e-3}],
        "optim": {"param_groups": [{"lr": 1e-4, "betas": (0.9, 0.99), "foreach": None, "params": [0, 1]}],
                  "scalars": {0: {}, 1: {"step": 3}}},
        "scheduler": {"base_lrs": [1e-3], "last_epoch": 2, "lr_lambdas": [None], "_last_lr": [float("inf")]},
        "rng": [{"torch": torch.random.get_rng_state(), "cuda": [], "numpy": np.random.get_state(),
                 "python": random.getstate()}],
        "num_processes": 1, "elapsed_s": 4.25, "reason": "done", "scaler": None, "$odd": {"$tensor": "not a tag"},
    }


def _equal(a, b) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if torch.is_tensor(a):
        return a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b)
    return a == b


def test_metadata_is_json_and_round_trips_exactly(tmp_path):
    meta = _meta()
    folder = save_checkpoint(tmp_path, 3, TENSORS, meta)
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "meta.safetensors", "tensors-000.safetensors"]
    json.loads((folder / "meta.json").read_text())  # plain JSON
    tensors, back = load_checkpoint(find_checkpoint(tmp_path))
    assert back.pop("format") == FORMAT and back.pop("step") == 3 and back.pop("files") == ["tensors-000.safetensors"]
    assert _equal(back, meta)  # tuples, int keys, numpy and torch RNG states: the same types and values
    np.random.set_state(back["rng"][0]["numpy"])
    random.setstate(back["rng"][0]["python"])
    torch.random.set_rng_state(back["rng"][0]["torch"])


def test_metadata_refuses_objects(tmp_path):
    with pytest.raises(TypeError, match=r"meta.extra: cannot store a _Payload"):
        save_checkpoint(tmp_path, 1, TENSORS, {"extra": _Payload(tmp_path / "x")})
    assert find_checkpoint(tmp_path) is None
    with pytest.raises(TypeError, match="cannot store"):
        encode_meta({"a": np.array(["x"], dtype=object)}, {})
    with pytest.raises(ValueError, match="not numeric"):
        decode_meta({"$ndarray": "meta/0", "dtype": "|O", "shape": [1]}, {"meta/0": torch.zeros(8, dtype=torch.uint8)})


def _old_checkpoint(folder, meta):
    """A checkpoint as main wrote it before (meta.pt by torch.save, the pickle format)."""
    folder.mkdir(parents=True)
    from safetensors.torch import save_file

    save_file({f"{g}/{k}": v for g, d in TENSORS.items() for k, v in d.items()}, str(folder / "tensors-000.safetensors"))
    torch.save({**meta, "format": OLD_FORMAT, "step": 2, "files": ["tensors-000.safetensors"]}, folder / OLD_META)
    return folder


def test_old_checkpoints_still_load(tmp_path):
    meta = _meta()
    del meta["$odd"]
    folder = _old_checkpoint(tmp_path / "step-00000002", meta)
    assert find_checkpoint(tmp_path) == folder
    tensors, back = load_checkpoint(folder)
    assert torch.equal(tensors["model"]["w"], TENSORS["model"]["w"])
    assert back.pop("format") == OLD_FORMAT and back.pop("step") == 2 and back.pop("files")
    assert _equal(back, meta)


def test_crafted_old_meta_never_runs(tmp_path):
    """The old loader unpickled meta.pt (weights_only=False): the payload ran before the
    "not a vidhash training checkpoint" message. Now it is refused, unrun, in one line."""
    marker = tmp_path / "ran"
    folder = _old_checkpoint(tmp_path / "step-00000002", {"fingerprint": "x", "rows": [_Payload(marker)]})
    with pytest.raises(ValueError) as err:
        load_checkpoint(find_checkpoint(tmp_path))
    assert not marker.exists()
    msg = str(err.value)
    assert len(msg.splitlines()) == 1 and str(folder / OLD_META) in msg and "not a vidhash training checkpoint" in msg
    (folder / OLD_META).write_bytes(pickle.dumps(_Payload(marker)))  # a bare pickle, not torch.save's zip
    with pytest.raises(ValueError) as err:
        load_checkpoint(folder)
    assert not marker.exists() and len(str(err.value).splitlines()) == 1


@pytest.mark.parametrize("edit", ["truncated", "foreign", "files"])
def test_damaged_metadata_is_one_line(tmp_path, edit):
    folder = save_checkpoint(tmp_path, 1, TENSORS, {"fingerprint": "x"})
    meta = folder / "meta.json"
    if edit == "truncated":
        meta.write_text(meta.read_text()[:20])
    elif edit == "foreign":
        meta.write_text(json.dumps({"format": "something/else"}))
    else:
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "files": ["../../etc/passwd"]}))
    with pytest.raises(ValueError) as err:
        load_checkpoint(folder)
    assert len(str(err.value).splitlines()) == 1 and str(folder) in str(err.value)


def test_planted_temporary_names_are_not_written_through(tmp_path):
    """The save used fixed names (``.step-N.tmp-<pid>/``, ``.latest.tmp-<pid>``): a symlink planted
    there was removed through or written through. Now they are random and new."""
    import os

    root = tmp_path / "ckpts"
    root.mkdir()
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    (tmp_path / "file").write_text("precious")
    (root / f".step-00000001.tmp-{os.getpid()}").symlink_to(victim)
    (root / f".latest.tmp-{os.getpid()}").symlink_to(tmp_path / "file")
    folder = save_checkpoint(root, 1, TENSORS, {"fingerprint": "x"})
    assert (victim / "keep.txt").read_text() == "precious" and (tmp_path / "file").read_text() == "precious"
    assert find_checkpoint(root) == folder and (root / "latest").read_text() == "step-00000001\n"
    assert folder.stat().st_mode & 0o777 == 0o777 & ~_umask()
    save_checkpoint(root, 1, TENSORS, {"fingerprint": "y"})  # the same step again: the old folder moves aside
    assert load_checkpoint(folder)[1]["fingerprint"] == "y"


def _umask():
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask
