"""The model-family seam: the trainer builds, trains and exports through ``model_family``'s
ModelFamily only (a family registered under a new name is used for all three)."""
import pytest
import torch

from vidhash.training import load_train_config
from vidhash.training.families import FAMILIES, ModelFamily, build_model, get_family
from vidhash.training.families.vidhash import VidHashFamily
from vidhash.training.trainer import train

MICRO = ["model.hidden_dim=16", "model.num_heads=2", "model.num_layers=1", "data.num_frames=4",
         "noise.chunk_frames=2", "batch_size=2", "grad_accum=2", "log_every=1", "optim.warmup_steps=1"]
CALLS = {"build": 0, "loss": 0, "save": 0}


class CountingFamily(VidHashFamily):
    """vidhash's family, counting the trainer's calls; its loss is scaled by 0, so nothing trains."""

    name = "counting"

    def build(self, cfg):
        CALLS["build"] += 1
        return super().build(cfg)

    def loss(self, model, batch, cfg):
        CALLS["loss"] += 1
        assert batch.x0.shape == batch.noise.shape and batch.sigmas.shape == batch.x0.shape[:2]
        return super().loss(model, batch, cfg) * 0.0

    def save(self, model, folder):
        CALLS["save"] += 1
        super().save(model, folder)


def test_the_trainer_goes_through_the_family(tmp_path, monkeypatch):
    monkeypatch.setitem(FAMILIES, "counting", f"{__name__}:CountingFamily")
    cfg = load_train_config("cpu_test", [f"out_dir={tmp_path}", "max_steps=3", "model_family=counting", *MICRO])
    CALLS.update(build=0, loss=0, save=0)
    start = build_model(cfg).state_dict()
    summary = train(cfg, progress=False, log=lambda *a, **k: None)
    # one model to train, one to export into; a loss per micro-batch; one export
    assert CALLS == {"build": 3, "loss": 3 * 2, "save": 1}, CALLS
    assert summary["step"] == 3 and (tmp_path / "export" / "transformer").is_dir()
    # the family's zero loss is what trained: weights without weight decay (embeddings) are exported
    # as they were built, those with it have decayed
    from vidhash.pipelines import VidHashPipeline

    out = VidHashPipeline.from_pretrained(str(tmp_path / "export")).transformer.state_dict()
    assert torch.equal(out["action_embed.weight"], start["action_embed.weight"])
    assert not torch.equal(out["blocks.0.mlp.0.weight"], start["blocks.0.mlp.0.weight"])


def test_family_names_are_checked():
    with pytest.raises(ValueError, match="model_family must be one of .*vidhash"):
        load_train_config("cpu_test", ["model_family=nope"])
    with pytest.raises(ValueError, match="model_family"):
        get_family("nope")
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
