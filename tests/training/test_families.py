"""The model-family seam: the trainer builds, trains and exports through ``model_family``'s
ModelFamily only — a family registered under a new name is used for all of it, also one with its
own samples, batch format, model and export."""
import csv
import hashlib

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vidhash.training import load_train_config
from vidhash.training.checkpoint import find_checkpoint, load_checkpoint
from vidhash.training.data import IndexedSamples
from vidhash.training.families import FAMILIES, ModelFamily, build_model, get_family
from vidhash.training.families.vidhash import VidHashFamily
from vidhash.training.trainer import train

MICRO = ["model.hidden_dim=16", "model.num_heads=2", "model.num_layers=1", "data.num_frames=4",
         "noise.chunk_frames=2", "batch_size=2", "grad_accum=2", "log_every=1", "optim.warmup_steps=1"]
CALLS = {"build": 0, "samples": 0, "loss_count": 0, "loss": 0, "save": 0}


class CountingFamily(VidHashFamily):
    """vidhash's family, counting the trainer's calls; its loss is scaled by 0, so nothing trains."""

    name = "counting"

    def build(self, cfg):
        CALLS["build"] += 1
        return super().build(cfg)

    def samples(self, cfg):
        CALLS["samples"] += 1
        return super().samples(cfg)

    def loss_count(self, items, device):
        CALLS["loss_count"] += 1
        return super().loss_count(items, device)

    def loss(self, model, batch, cfg):
        CALLS["loss"] += 1
        assert batch.x0.shape == batch.noise.shape and batch.sigmas.shape == batch.x0.shape[:2]
        return super().loss(model, batch, cfg) * 0.0

    def save(self, model, folder, cfg):
        CALLS["save"] += 1
        super().save(model, folder, cfg)


def test_the_trainer_goes_through_the_family(tmp_path, monkeypatch):
    monkeypatch.setitem(FAMILIES, "counting", f"{__name__}:CountingFamily")
    cfg = load_train_config("cpu_test", [f"out_dir={tmp_path}", "max_steps=3", "model_family=counting", *MICRO])
    CALLS.update({k: 0 for k in CALLS})
    start = build_model(cfg).state_dict()
    summary = train(cfg, progress=False, log=lambda *a, **k: None)
    # one model built here, one to train, one to export into; a count per step, a loss per micro-batch
    assert CALLS == {"build": 3, "samples": 1, "loss_count": 3, "loss": 3 * 2, "save": 1}, CALLS
    assert summary["step"] == 3 and (tmp_path / "export" / "transformer").is_dir()
    # the family's zero loss is what trained: weights without weight decay (embeddings) are exported
    # as they were built, those with it have decayed
    from vidhash.pipelines import VidHashPipeline

    out = VidHashPipeline.from_pretrained(str(tmp_path / "export")).transformer.state_dict()
    assert torch.equal(out["action_embed.weight"], start["action_embed.weight"])
    assert not torch.equal(out["blocks.0.mlp.0.weight"], start["blocks.0.mlp.0.weight"])


def test_family_names_are_checked(tmp_path):
    with pytest.raises(ValueError, match="model_family must be one of .*vidhash"):
        get_family("nope")
    with pytest.raises(ValueError, match="model_family"):  # before any work: nothing written
        train(load_train_config("cpu_test", [f"out_dir={tmp_path / 'run'}", "model_family=nope"]))
    assert not (tmp_path / "run").exists()
    assert isinstance(get_family("vidhash"), ModelFamily)


def test_build_model_is_seeded_and_leaves_the_global_rng():
    cfg = load_train_config("cpu_test")
    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    a, b = build_model(cfg), build_model(cfg)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    other = build_model(load_train_config("cpu_test", ["seed=1"]))
    assert not torch.equal(other.state_dict()["blocks.0.mlp.0.weight"], a.state_dict()["blocks.0.mlp.0.weight"])


class ToySamples(IndexedSamples):
    """x (3, 5) and y = x·W + 0.1·noise, from a generator seeded with the index."""

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(int(i))
        x = torch.randn(3, 5, generator=g)
        return {"x": x, "y": x @ torch.linspace(-1, 1, 25).view(5, 5) + 0.1 * torch.randn(3, 5, generator=g)}


class ToyFamily(ModelFamily):
    """A family that shares nothing with vidhash's model: a linear map on its own samples."""

    name = "toy"

    def build(self, cfg):
        return nn.Sequential(nn.Linear(5, 5))

    def fingerprint(self, cfg):
        return hashlib.sha256(b"toy").hexdigest()[:16]

    def model_config(self, cfg):
        return {"kind": "toy"}

    def samples(self, cfg):
        return ToySamples()

    def loss_count(self, items, device):
        return torch.tensor(float(sum(b["y"].numel() for b in items)), device=device)

    def to_device(self, item, device):
        return {k: v.to(device) for k, v in item.items()}

    def loss(self, model, batch, cfg):
        return ((model(batch["x"]) - batch["y"]) ** 2).sum()

    def save(self, model, folder, cfg):
        folder.mkdir(parents=True)
        save_file(model.state_dict(), str(folder / "toy.safetensors"))


def test_a_new_family_trains_resumes_exactly_and_exports(tmp_path, monkeypatch):
    monkeypatch.setitem(FAMILIES, "toy", f"{__name__}:ToyFamily")

    def run(name, **kw):
        cfg = load_train_config("cpu_test", [f"out_dir={tmp_path / name}", "max_steps=6", "model_family=toy",
                                             "optim.lr=0.3", "batch_size=4", "grad_accum=2", "log_every=1"])
        return train(cfg, progress=False, log=lambda *a, **k: None, **kw)

    run("straight")
    run("halves", stop_at_step=3, export=False)
    torch.manual_seed(99)  # the checkpoint restores the global RNGs
    run("halves", resume="auto")

    def losses(name):
        return [(r["step"], r["loss"]) for r in csv.DictReader(open(tmp_path / name / "loss.csv"))]

    straight = losses("straight")
    assert straight == losses("halves") and len(straight) == 6
    assert float(straight[-1][1]) < 0.5 * float(straight[0][1])  # it learns
    a, _ = load_checkpoint(find_checkpoint(tmp_path / "straight" / "checkpoints"))
    b, _ = load_checkpoint(find_checkpoint(tmp_path / "halves" / "checkpoints"))
    assert all(torch.equal(a[g][k], b[g][k]) for g in a for k in a[g])
    exported = load_file(str(tmp_path / "straight" / "export" / "toy.safetensors"))
    assert torch.equal(exported["0.weight"], a["ema"]["0.weight"])  # the EMA weights, fp32 (they fit)


def test_a_family_missing_a_method_cannot_be_built():
    """ModelFamily is abstract: a subclass that leaves out part of the interface fails at
    construction, naming what is missing, not later inside the training loop."""
    import pytest

    from vidhash.training.families import ModelFamily, get_family

    class Partial(ModelFamily):
        def build(self, cfg):
            return None

    with pytest.raises(TypeError, match="abstract"):
        Partial()
    assert isinstance(get_family("vidhash"), ModelFamily) and isinstance(get_family("wan"), ModelFamily)
