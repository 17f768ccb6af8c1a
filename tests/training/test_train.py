"""vidhash train on CPU with a micro config (each run a few steps of a ~10k-parameter model)."""
from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from vidhash.training import load_train_config
from vidhash.training.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from vidhash.training.data import TrainSamples, revisit_share

REPO = Path(__file__).resolve().parents[2]
MICRO = ["model.hidden_dim=16", "model.num_heads=2", "model.num_layers=1", "data.num_frames=4",
         "noise.chunk_frames=2", "batch_size=2", "log_every=1", "checkpoint.every=1000", "optim.warmup_steps=1"]


def micro(tmp_path, *extra, name="run"):
    return load_train_config("cpu_test", [f"out_dir={tmp_path / name}", *MICRO, *extra])


def run_train(cfg, **kw):
    from vidhash.training.trainer import train

    kw.setdefault("progress", False)
    kw.setdefault("export", False)
    return train(cfg, log=lambda *a, **k: None, **kw)


def csv_rows(path):
    with open(path) as f:
        return [{k: r[k] for k in ("step", "loss", "lr", "grad_norm")} for r in csv.DictReader(f)]


# ---------------------------------------------------------------------------------- exact resume


@pytest.mark.parametrize("fused", ["off", "on"])  # on: the AdamW kernel CUDA runs by default (optim.fused=auto)
def test_resume_is_exact(tmp_path, fused):
    """4 steps straight == 2 steps, checkpoint, a new process resuming, 2 more: bitwise."""
    straight = micro(tmp_path, "max_steps=4", f"optim.fused={fused}", name="straight")
    run_train(straight)
    half = micro(tmp_path, "max_steps=4", f"optim.fused={fused}", name="halves")
    run_train(half, stop_at_step=2)
    # a process-like restart: fresh objects, scrambled global RNGs (the checkpoint restores them)
    torch.manual_seed(1234)
    np.random.seed(99)
    random.seed(7)
    summary = run_train(micro(tmp_path, "max_steps=4", f"optim.fused={fused}", name="halves"), resume="auto")
    assert summary["step"] == 4
    a_t, a_m = load_checkpoint(find_checkpoint(tmp_path / "straight" / "checkpoints"))
    b_t, b_m = load_checkpoint(find_checkpoint(tmp_path / "halves" / "checkpoints"))
    assert a_m["step"] == b_m["step"] == 4 and a_m["data_position"] == b_m["data_position"] == 8
    for group in ("model", "ema", "optim"):
        assert a_t[group].keys() == b_t[group].keys()
        for k in a_t[group]:
            assert torch.equal(a_t[group][k], b_t[group][k]), f"{group}/{k} differs"
    assert a_m["scheduler"] == b_m["scheduler"]
    assert a_m["optim"] == b_m["optim"]
    assert csv_rows(tmp_path / "straight" / "loss.csv") == csv_rows(tmp_path / "halves" / "loss.csv")
    assert len(csv_rows(tmp_path / "halves" / "loss.csv")) == 4


def test_grad_accum_matches_full_batch(tmp_path):
    full = micro(tmp_path, "max_steps=1", "batch_size=4", "grad_accum=1", name="full")
    acc = micro(tmp_path, "max_steps=1", "batch_size=4", "grad_accum=2", name="acc")
    run_train(full)
    run_train(acc)
    a, _ = load_checkpoint(find_checkpoint(tmp_path / "full" / "checkpoints"))
    b, _ = load_checkpoint(find_checkpoint(tmp_path / "acc" / "checkpoints"))
    for group in ("model", "optim"):
        for k in a[group]:
            torch.testing.assert_close(a[group][k], b[group][k], rtol=1e-4, atol=1e-6, msg=f"{group}/{k}")
    la, lb = csv_rows(tmp_path / "full" / "loss.csv"), csv_rows(tmp_path / "acc" / "loss.csv")
    assert float(la[0]["loss"]) == pytest.approx(float(lb[0]["loss"]), rel=1e-5)
    assert float(la[0]["grad_norm"]) == pytest.approx(float(lb[0]["grad_norm"]), rel=1e-4)


@pytest.mark.parametrize("prediction", ["velocity", "sample"])
def test_loss_decreases_on_tiny_overfit(tmp_path, monkeypatch, prediction):
    """One fixed sample (clip, noise levels, noise) over and over: the loss must fall well below its start."""
    cfg = micro(tmp_path, "max_steps=25", "optim.lr=1e-2", "noise.clean_prob=0.0", "noise.first_clean_prob=0.0",
                f"model.prediction={prediction}")
    fixed = TrainSamples(cfg)[0]
    monkeypatch.setattr(TrainSamples, "__getitem__", lambda self, i: {k: v.clone() for k, v in fixed.items()})
    run_train(cfg)
    losses = [float(r["loss"]) for r in csv_rows(tmp_path / "run" / "loss.csv")]
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:3]), losses


# ----------------------------------------------------------------------------------- data


def test_samples_deterministic_and_objective_layout(tmp_path):
    cfg = load_train_config("cpu_test", ["data.num_frames=8"])
    a, b = TrainSamples(cfg), TrainSamples(cfg)
    for i in (0, 5, 9):  # 9: another world-pool block
        x, y = a[i], b[i]
        for k in x:
            assert torch.equal(x[k], y[k]), k
    s = a[3]["sigmas"]
    assert s.shape == (8,) and torch.all(s.view(-1, 2)[:, 0] == s.view(-1, 2)[:, 1])  # one sigma per chunk
    assert torch.all((s >= 0) & (s <= 1))
    assert revisit_share(cfg, 32) > 0.2


def test_noise_is_drawn_from_the_sample_seed():
    """Noise comes from each sample's seed (not from the batch it is in); on the CPU it is what the
    data workers used to draw: torch.randn of a CPU generator seeded with it."""
    from vidhash.training.data import sample_noise

    cfg = load_train_config("cpu_test", ["data.num_frames=8"])
    ds = TrainSamples(cfg)
    items = [ds[i] for i in (2, 7, 11)]
    shape = items[0]["frames"].shape
    seeds = torch.stack([it["noise_seed"] for it in items])
    batch = sample_noise(seeds, shape)
    assert batch.shape == (3, *shape) and batch.dtype == torch.float32
    for k, it in enumerate(items):
        want = torch.randn(shape, generator=torch.Generator().manual_seed(int(it["noise_seed"])))
        assert torch.equal(batch[k], want)
    assert torch.equal(sample_noise(seeds[1:2], shape)[0], batch[1])  # independent of the batch around it
    assert not torch.equal(batch[0], batch[1])


def test_world_frames_travel_as_uint8_and_scale_like_to_model_frames():
    from vidhash.data.clips import to_model_frames
    from vidhash.training.data import model_frames, trajectory, world_pool_seeds

    cfg = load_train_config("cpu_test", ["data.num_frames=8"])
    ds = TrainSamples(cfg)
    item = ds[5]
    assert item["frames"].dtype == torch.uint8 and item["frames"].shape == (8, 3, cfg.data.view, cfg.data.view)
    rng = np.random.default_rng([cfg.data.seed, 1, 5])
    pick = int(rng.integers(1 << 30))
    seeds = world_pool_seeds(cfg, 5 // ds.block_len)
    _, poses = trajectory(cfg, 5, rng)
    want = to_model_frames(ds.world(int(seeds[pick % len(seeds)])).render_many(poses))
    assert torch.equal(model_frames(item["frames"]), want)
    assert model_frames(want) is want  # float frames (video clips) pass through


def test_world_seeds_exclude_held_out():
    with pytest.raises(ValueError, match="held out"):
        load_train_config("cpu_test", ["data.world_seed_start=999999", "data.num_worlds=2"])


# ------------------------------------------------------------------------------ bad inputs


def test_unknown_key_and_wrong_type_name_the_key():
    with pytest.raises(ValueError, match="bogus"):
        load_train_config("cpu_test", ["bogus=1"])
    with pytest.raises(ValueError, match="max_steps"):
        load_train_config("cpu_test", ["max_steps=many"])
    with pytest.raises(ValueError, match="optim.lrr|lrr"):
        load_train_config("cpu_test", ["optim.lrr=1"])


def test_unknown_key_in_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_steps: 3\nmodel: {hidden_dimm: 8}\n")
    with pytest.raises(ValueError, match="hidden_dimm"):
        load_train_config(str(bad))


def test_cli_errors(tmp_path, capsys):
    from vidhash.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0 and "--resume" in capsys.readouterr().out

    assert main(["train", "cpu_test", "nope=1"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_video_folder_without_readable_video(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "broken.mp4").write_bytes(b"not a video at all" * 10)
    cfg = micro(tmp_path, "data.source=video", f"data.video_root={folder}", "model.pos_period=1024")
    with pytest.raises(ValueError, match="video"):
        run_train(cfg)
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = micro(tmp_path, "data.source=video", f"data.video_root={empty}")
    with pytest.raises(ValueError, match="no videos"):
        run_train(cfg)


def test_checkpoint_from_another_config(tmp_path):
    run_train(micro(tmp_path, "max_steps=1"))
    other = micro(tmp_path, "max_steps=2", "model.hidden_dim=32")
    with pytest.raises(ValueError, match="another model config.*hidden_dim"):
        run_train(other, resume="auto")
    with pytest.raises(ValueError, match="already holds checkpoints"):
        run_train(micro(tmp_path, "max_steps=2"))  # no --resume: refuses to overwrite


def test_prediction_key_fingerprint_and_errors(tmp_path):
    """model.prediction / sigma_min: at their defaults a checkpoint's fingerprint is what it was
    before the keys existed (old checkpoints resume); otherwise it changes (a velocity checkpoint
    does not resume as an x0 model). Bad values name the key."""
    import hashlib
    import json
    from dataclasses import asdict

    from vidhash.training.config import model_fingerprint

    cfg = micro(tmp_path)
    old = {k: v for k, v in asdict(cfg.model).items() if k not in ("prediction", "sigma_min")}
    assert model_fingerprint(cfg) == hashlib.sha256(json.dumps({"model": old}, sort_keys=True).encode()).hexdigest()[:16]
    assert model_fingerprint(micro(tmp_path, "model.prediction=sample")) != model_fingerprint(cfg)
    assert model_fingerprint(micro(tmp_path, "model.sigma_min=0.1")) != model_fingerprint(cfg)
    with pytest.raises(ValueError, match="model.prediction must be one of velocity, sample"):
        micro(tmp_path, "model.prediction=x0")
    with pytest.raises(ValueError, match="model.sigma_min must be in"):
        micro(tmp_path, "model.sigma_min=1.5")


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    import vidhash.training.checkpoint as ck

    root = tmp_path / "ckpts"
    good = {"model": {"w": torch.arange(6.0)}, "ema": {"w": torch.ones(6)}}
    save_checkpoint(root, 1, good, {"fingerprint": "x"})
    calls = {"n": 0}
    real = ck.save_file

    def failing(tensors, path):
        calls["n"] += 1
        real(tensors, path)
        raise OSError(28, "No space left on device")  # disk full half-way through the save

    monkeypatch.setattr(ck, "save_file", failing)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(root, 2, {"model": {"w": torch.zeros(6)}, "ema": {"w": torch.zeros(6)}}, {"fingerprint": "x"})
    assert calls["n"] == 1
    folder = find_checkpoint(root)
    assert folder.name == "step-00000001"
    tensors, meta = load_checkpoint(folder)
    assert torch.equal(tensors["model"]["w"], torch.arange(6.0)) and meta["step"] == 1
    assert not any(p.name.startswith(".") for p in root.iterdir() if p.is_dir())  # no half-written folder left


def test_checkpoint_shards_stay_under_limit(tmp_path):
    tensors = {"model": {f"w{i}": torch.zeros(100_000) for i in range(10)}}  # 10 × 0.4 MB
    folder = save_checkpoint(tmp_path / "c", 3, tensors, {}, shard_mb=1.0)
    sizes = [p.stat().st_size for p in folder.glob("*.safetensors")]
    assert len(sizes) >= 4 and max(sizes) <= 2**20
    back, _ = load_checkpoint(folder)
    assert set(back["model"]) == set(tensors["model"])


def test_selected_mode_key():
    from vidhash.training.config import model_supports_selection

    if model_supports_selection() is None:
        with pytest.raises(ValueError, match="selection"):
            load_train_config("cpu_test", ["temporal_mode=selected"])
    else:
        assert load_train_config("cpu_test", ["temporal_mode=selected"]).temporal_mode == "selected"
    with pytest.raises(ValueError, match="temporal_mode"):
        load_train_config("cpu_test", ["temporal_mode=sparse"])


# ---------------------------------------------------------------------------------- export


def test_export_loads_and_generates(tmp_path):
    from vidhash.pipelines import VidHashPipeline

    summary = run_train(micro(tmp_path, "max_steps=1"), export=True)
    pipe = VidHashPipeline.from_pretrained(summary["export"])
    pipe.set_progress_bar_config(disable=True)
    out = pipe(num_frames=4, height=16, width=16, chunk_frames=2, window_frames=2, num_inference_steps=1,
               generator=torch.Generator().manual_seed(0))
    assert out.frames.shape == (1, 4, 16, 16, 3) and np.isfinite(out.frames).all()
    assert pipe.transformer.config.hidden_dim == 16


def test_sample_prediction_exports_its_parameterisation(tmp_path):
    from vidhash.pipelines import VidHashPipeline

    summary = run_train(micro(tmp_path, "max_steps=1", "model.prediction=sample"), export=True)
    pipe = VidHashPipeline.from_pretrained(summary["export"])
    assert pipe.transformer.config.prediction == "sample"
