"""vidhash calibrate: recording, fitting, report, written pipeline, errors (tiny random model, CPU)."""
import json

import pytest
import torch

from vidhash.calibrate import CalibrateConfig, record
from vidhash.cli import main
from vidhash.pipelines import VidHashPipeline

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models and fits: one intra-op thread is many times faster than two on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TINY = ["--clips", "1", "--val-clips", "1", "--frames", "12", "--chunk-frames", "4", "--window-frames", "4",
        "--inference-steps", "2", "--steps", "40", "--hidden", "16", "--bits", "16", "--top-k", "8",
        "--batch-queries", "256", "--quiet"]


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cal")
    # one fitting clip of a random model: its validation recall may fall below SimHash's; written anyway
    rc = main(["calibrate", "random-tiny", "--out", str(tmp / "pipe"), "--json", str(tmp / "report.json"), *TINY,
               "--keep-worse"])
    assert rc == 0
    return tmp


def test_record_shapes():
    pipe = VidHashPipeline.random("tiny", seed=0)
    cfg = CalibrateConfig(clips=2, frames=12, chunk_frames=4, window_frames=4, inference_steps=2)
    rec = record(pipe, cfg, 2, seed=0, progress=False)
    assert len(rec) == 3
    q, k = rec[0]
    assert q.shape == (2, 4, 2 * 4 * 64, 32)  # clips, heads, steps × chunk × tokens, head_dim
    assert k.shape == (2, 4, 4 * 64, 32)  # keys older than the window: 12 − 4 − 4 frames


def test_report_and_written_pipeline(calibrated):
    report = json.loads((calibrated / "report.json").read_text())
    assert len(report["layers"]) == 3
    for row in report["layers"]:
        for key in ("recall_simhash", "recall_learned", "val_recall_simhash", "val_recall_learned", "mass_simhash",
                    "mass_learned"):
            assert 0.0 <= row[key] <= 1.0
    assert report["mean"]["recall_learned"] > report["mean"]["recall_simhash"]  # fitted on these queries
    assert report["config"]["bits"] == 16 and report["out"] == str(calibrated / "pipe")
    pipe = VidHashPipeline.from_pretrained(calibrated / "pipe")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.transformer.config.memory_hash_bits == 16 and len(pipe.transformer.memory_hashers()) == 3
    out = pipe(num_frames=12, generator=torch.Generator().manual_seed(0), num_inference_steps=1, chunk_frames=4,
               window_frames=4)
    assert all(m.hasher is h for m, h in zip(out.state.memories, pipe.transformer.memory_hashers()))
    assert int(out.state.memories[0].num_entries().min()) > 0


def test_recalibrating_a_calibrated_model_reports_its_current_hash(calibrated, tmp_path):
    rc = main(["calibrate", str(calibrated / "pipe"), "--out", str(tmp_path / "again"), "--json",
               str(tmp_path / "r.json"), *TINY, "--steps", "1", "--val-clips", "0", "--keep-worse"])
    assert rc == 0
    row = json.loads((tmp_path / "r.json").read_text())["layers"][0]
    assert "recall_current" in row and "val_recall_learned" not in row


@pytest.mark.parametrize("argv,match", [
    (["random-tiny", *TINY], "--out is required"),
    (["random-tiny", "--out", "X", *TINY, "--frames", "8"], "must exceed chunk-frames"),
    (["random-tiny", "--out", "X", *TINY, "--bits", "0"], "bits must be positive"),
    (["no/such/dir", *TINY], "not a saved pipeline folder"),
    # 12 − 4 − 4 frames older than the window × 64 tokens: 256 keys a clip; a top-k of all of them (or more)
    # was fitted and reported as recall 1.000 → 1.000
    (["random-tiny", "--out", "X", *TINY, "--top-k", "256"], "--top-k (256) must be less than the 256 keys a clip gives"),
    (["random-tiny", "--out", "X", *TINY, "--top-k", "5000"], "--top-k (5000) must be less than the 256 keys a clip gives"),
], ids=["random-without-out", "clip-too-short", "zero-bits", "missing-model", "top-k-all-keys", "top-k-above-keys"])
def test_errors(argv, match, capsys, monkeypatch):
    import vidhash.calibrate as cal

    monkeypatch.setattr(cal, "record", lambda *a, **k: pytest.fail("a clip was recorded"))
    assert main(["calibrate", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err


def test_refuses_non_empty_out(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    assert main(["calibrate", "random-tiny", "--out", str(tmp_path / "out"), *TINY]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert (tmp_path / "out" / "keep.txt").read_text() == "x"


def test_signatures_worse_than_simhash_on_validation_are_not_written(tmp_path, monkeypatch, capsys):
    """Learned signatures that recall less than SimHash on the validation clips overfit the fitting
    clips (seen with a rope world model: 0.31 → 0.64 fitted, 0.27 → 0.18 validation): not written
    unless --keep-worse, exit status 1."""
    import vidhash.calibrate as cal

    real = cal.calibrate

    def overfit(pipe, cfg, progress=True):
        hashers, report = real(pipe, cfg, progress=progress)
        report["mean"].update(val_recall_simhash=0.27, val_recall_learned=0.18)
        return hashers, report

    monkeypatch.setattr(cal, "calibrate", overfit)
    out = tmp_path / "pipe"
    assert main(["calibrate", "random-tiny", "--out", str(out), "--json", str(tmp_path / "r.json"), *TINY]) == 1
    assert not out.exists() and json.loads((tmp_path / "r.json").read_text())["out"] is None
    assert "not written" in capsys.readouterr().out
    assert main(["calibrate", "random-tiny", "--out", str(out), *TINY, "--keep-worse"]) == 0
    assert (out / "model_index.json").is_file() and "warning" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# the diffusers drop-in: calibrate on a tiny diffusers Wan's own q/k → save → load → same outputs
# --------------------------------------------------------------------------------------------
def _tiny_wan():
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2, rope_max_seq_len=32,
    ).eval()
    latents, text = torch.randn(1, 4, 3, 8, 8), torch.randn(1, 6, 16)
    return model, latents, text


def _denoise(model, latents, text, steps=4):
    """The user's own few denoising steps (flow matching, Euler), as a pipeline runs them."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler()
    scheduler.set_timesteps(steps)
    x = latents
    with torch.no_grad():
        for t in scheduler.timesteps:
            v = model(hidden_states=x, timestep=t.expand(1), encoder_hidden_states=text).sample
            x = scheduler.step(v, t, x).prev_sample
    return x


DROPIN_FIT = dict(bits=16, hidden=16, top_k=8, steps=60, lr=1e-2, batch_queries=64)


def test_dropin_calibrate_save_load_same_outputs(tmp_path):
    import vidhash
    from vidhash.integrations.calibrate import calibrate_hash_attention
    from vidhash.integrations.diffusers import is_hash_attention_enabled, self_attention_modules
    from vidhash.integrations.hashers import save_hashers

    model, latents, text = _tiny_wan()
    stock = _denoise(model, latents, text)
    hashers, report = calibrate_hash_attention(model, lambda: _denoise(model, latents, text), **DROPIN_FIT)
    # the model is left as it was
    assert not is_hash_attention_enabled(model) and torch.equal(_denoise(model, latents, text), stock)
    assert list(hashers) == list(self_attention_modules(model)) == [r["module"] for r in report["modules"]]
    rows = report["modules"]
    assert all(r["samples"] == 4 and r["queries"] == r["keys"] == 48 for r in rows)  # 4 steps × batch 1, 48 tokens
    for r in rows:
        assert all(0.0 <= r[k] <= 1.0 for k in ("recall_simhash", "recall_learned", "val_recall_simhash", "val_recall_learned"))
    assert report["mean"]["recall_learned"] > report["mean"]["recall_simhash"]  # fitted on these steps
    # calibrate → save → load → same outputs
    vidhash.enable_hash_attention(model, density=0.25, block_size=4, query_block_size=4, hasher=hashers)
    calibrated = _denoise(model, latents, text)
    save_hashers(hashers, tmp_path)
    vidhash.disable_hash_attention(model)
    vidhash.enable_hash_attention(model, density=0.25, block_size=4, query_block_size=4, hashers=tmp_path)
    assert torch.equal(_denoise(model, latents, text), calibrated)
    assert not torch.equal(calibrated, stock)


def test_dropin_records_an_enabled_model_under_its_own_config():
    import vidhash
    from vidhash.integrations.calibrate import record_self_attention

    model, latents, text = _tiny_wan()
    vidhash.enable_hash_attention(model, density=0.25, block_size=4, query_block_size=4)
    calls = [dict(hidden_states=latents, timestep=torch.tensor([t]), encoder_hidden_states=text) for t in (800, 200)]
    samples = record_self_attention(model, calls, max_queries=10, max_keys=20)
    assert model._vidhash_config.density == 0.25 and model.blocks[0].attn1.processor.recorder is None
    assert {name: len(s) for name, s in samples.items()} == {"blocks.0.attn1": 2, "blocks.1.attn1": 2}
    q, k = samples["blocks.0.attn1"][0]
    assert q.shape == (2, 10, 12) and k.shape == (2, 20, 12) and q.dtype == torch.float32
    with pytest.raises(ValueError, match="nothing was recorded"):
        record_self_attention(model, lambda: None)


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wan")
    model, latents, text = _tiny_wan()
    model.save_pretrained(tmp / "transformer")
    calls = [dict(hidden_states=latents, timestep=torch.tensor([t]), encoder_hidden_states=text) for t in (900, 600, 300, 100)]
    torch.save(calls, tmp / "inputs.pt")
    return tmp


DROPIN_ARGS = ["--bits", "16", "--hidden", "16", "--top-k", "8", "--steps", "60", "--lr", "1e-2", "--batch-queries", "64"]


def test_dropin_cli_writes_hashers_beside_the_weights(wan_folder, tmp_path):
    from diffusers import WanTransformer3DModel

    import vidhash
    from vidhash.integrations.diffusers import hashers_of

    folder = wan_folder / "transformer"
    rc = main(["calibrate", str(wan_folder), "--inputs", str(wan_folder / "inputs.pt"), "--json", str(tmp_path / "r.json"),
               "--out", str(tmp_path / "h.safetensors"), *DROPIN_ARGS])
    assert rc == 0  # a pipeline folder: its transformer/ is calibrated
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["model"] == "WanTransformer3DModel" and report["out"] == str(tmp_path / "h.safetensors")
    assert len(report["modules"]) == 2 and report["mean"]["recall_learned"] > report["mean"]["recall_simhash"]
    assert main(["calibrate", str(folder), "--inputs", str(wan_folder / "inputs.pt"), *DROPIN_ARGS]) == 0
    assert (folder / "vidhash_hashers.safetensors").is_file()
    model = WanTransformer3DModel.from_pretrained(folder).eval()
    vidhash.enable_hash_attention(model, density=0.25, block_size=4, query_block_size=4, hashers=folder)
    assert all(type(h).__name__ == "LearnedHash" and h.n_bits == 16 for h in hashers_of(model).values())


@pytest.mark.parametrize("argv, match", [
    (["{folder}/transformer"], "--inputs (its transformer's recorded inputs) is required"),
    (["random-tiny", "--inputs", "{folder}/inputs.pt"], "--inputs needs a diffusers video transformer folder"),
    (["{folder}", "--inputs", "{folder}/missing.pt"], "does not exist"),
    (["{folder}", "--inputs", "{folder}/inputs.pt", "--top-k", "0"], "top_k must be a positive int"),
    # --top-k at or above the keys kept per sample: every key in the top-k, recall 1 before and after
    (["{folder}", "--inputs", "{folder}/inputs.pt", "--top-k", "64", "--max-keys", "64"],
     "top_k (64) must be less than max_keys (64)"),
    (["{folder}", "--inputs", "{folder}/inputs.pt", "--top-k", "48"],  # 3 × 4 × 4 tokens (patches of 1 × 2 × 2)
     "top_k (48) must be less than the keys recorded per sample: blocks.0.attn1 has 48"),
], ids=["no-inputs", "inputs-for-vidhash", "missing-inputs", "zero-top-k", "top-k-max-keys", "top-k-sequence"])
def test_dropin_cli_errors(wan_folder, argv, match, capsys):
    argv = [a.format(folder=wan_folder) for a in argv]
    assert main(["calibrate", *argv, "--out", str(wan_folder / "x.safetensors")]) == 2
    assert match in capsys.readouterr().err


def test_dropin_cli_refuses_existing_out_and_worse_hashers(wan_folder, tmp_path, monkeypatch, capsys):
    import vidhash.integrations.calibrate as cal

    out = tmp_path / "h.safetensors"
    out.write_bytes(b"keep")
    base = ["calibrate", str(wan_folder), "--inputs", str(wan_folder / "inputs.pt"), "--out", str(out), *DROPIN_ARGS]
    assert main(base) == 2 and "exists" in capsys.readouterr().err and out.read_bytes() == b"keep"
    real = cal.calibrate_hash_attention

    def worse(*args, **kwargs):
        hashers, report = real(*args, **kwargs)
        report["mean"].update(val_recall_simhash=0.5, val_recall_learned=0.4)
        return hashers, report

    monkeypatch.setattr(cal, "calibrate_hash_attention", worse)
    assert main([*base, "--overwrite"]) == 1 and "not written" in capsys.readouterr().out
    assert out.read_bytes() == b"keep"
