"""Every flag and key=value override of ``vidhash generate`` is checked in one pass before any model
loads or file is created — including a memory budget against what the device has — and a malformed
model folder ends in one line naming the file and the key (issue 20 defects 7 and 8)."""
from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch

from vidhash.cli import main
from vidhash.config import GenerationConfig, model_config_for
from vidhash.generate import check_budget, run_bytes

BAD = {
    "seconds-inf": (["--seconds", "inf"], "--seconds must be a finite number"),
    "seconds-nan": (["--seconds", "nan"], "--seconds must be a finite number"),
    "seconds-huge": (["--seconds", "1e15"], "^--seconds: this run needs about"),
    "device-bogus": (["--device", "bogus"], "--device 'bogus' is not a device"),
    "device-cuda": (["--device", "cuda"], "--device cuda: CUDA is not available"),
    "device-index": (["--device", "cuda:-1"], "--device 'cuda:-1'"),
    "prompt-frames-huge": (["--prompt-world", "1", "--prompt-frames", "100000000"], "^--prompt-frames: this run needs"),
    "num-buckets-huge": (["memory.num_buckets=100000000"], "^memory.num_buckets × memory.slots: this run needs"),
    "window-huge": (["window_frames=10000000"], "^window_frames/chunk_frames: this run needs"),
    "size-8192": (["height=8192", "width=8192"], "^height/width: this run needs"),
    "policy-bogus": (["memory.policy=bogus"], "memory.policy=bogus: policy must be one of"),
    "seed-negative": (["--seed", "-5"], r"--seed must be in \[0, 2\*\*63 - 1\], got -5"),
    "seed-huge": (["--seed", str(2**64)], "--seed must be in"),
    "prompt-world-negative": (["--prompt-world", "-1"], "--prompt-world must be in"),
    "fps-huge": (["--fps", "100000"], "--fps must be positive"),
    "flag-and-override": (["--seconds", "0.5", "seconds=3"], "seconds=3: seconds is set by --seconds.*conflicts with --seconds 0.5"),
    "out-override": (["out=../../x.mp4"], "out=../../x.mp4: out is set by --out"),
    "seed-override": (["seed=4"], "seed=4: seed is set by --seed"),
    "dtype-bogus": (["--dtype", "int8"], "--dtype: invalid choice"),
    "image-missing": (["--image", "/no/such.png"], "--image /no/such.png: no such file"),
    "image-directory": (["--image", "/"], "--image / is a directory, not an image file"),
    "video-directory": (["--video", "/"], "--video / is a directory, not a video file"),
    "video-missing": (["--video", "/no/such.mp4"], "--video /no/such.mp4: no such file"),
    "two-prompts": (["--image", "/no/such.png", "--prompt-world", "1"], "--prompt-world and --image: give one frame prompt"),
    "image-and-resume": (["--image", "/no/such.png", "--resume", "/no/s.pt"], "--image starts a new clip"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_flag_or_override_is_one_line_before_any_file(tmp_path, capsys, monkeypatch, case):
    """Exit status 2, one line naming the flag or key, no traceback, no file created (not even the
    partial mp4 that claims --out), and no model loaded."""
    import vidhash.generate as gen

    monkeypatch.setattr(gen, "load_pipeline", lambda *a, **k: pytest.fail("the model loaded before the refusal"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args, match = BAD[case]
    work = tmp_path / "work"
    work.mkdir()
    try:
        rc = main(["generate", "--model", "random-tiny", "--out", str(work / "clip.mp4"), "--quiet", *args])
    except SystemExit as exit:  # argparse's own refusals (a choice): usage, then the line
        rc = exit.code
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err, err
    line = err[-1].removeprefix("vidhash generate: error: ")
    assert re.search(match, line) and "Traceback" not in "\n".join(err), err
    assert list(work.iterdir()) == []
    assert not (tmp_path.parent / "x.mp4").exists()


def test_the_budget_counts_what_grows(tmp_path):
    """run_bytes grows with each setting it names (so the refusal names the right one), and a
    run of the default size fits in a budget of the machine's order while a doubled window does not."""
    model = model_config_for("random-tiny")
    gen = GenerationConfig()
    base = run_bytes(model, gen, 80, 0, torch.float32)
    bigger = {
        "window cache": run_bytes(model, dataclasses.replace(gen, window_frames=2 * gen.window_frames), 80, 0, torch.float32),
        "memories": run_bytes(model, dataclasses.replace(gen, memory=gen.memory.replace({"num_buckets": 2 * gen.memory.num_buckets})), 80, 0,
                              torch.float32),
        "prompt frames": run_bytes(model, gen, 80, 8, torch.float32),
        "poses": run_bytes(model, gen, 160, 0, torch.float32),
    }
    for part, parts in bigger.items():
        assert parts[part][0] > base[part][0], part
    half = run_bytes(model, gen, 80, 0, torch.bfloat16)
    assert half["weights"][0] * 2 == base["weights"][0]
    total = sum(b for b, _ in base.values())
    check_budget(model, gen, 80, 0, torch.float32, torch.device("cpu"), available=total)
    with pytest.raises(ValueError, match="this run needs about"):
        check_budget(model, gen, 80, 0, torch.float32, torch.device("cpu"), available=total - 1)


MALFORMED = {
    "num_layers-text": ("transformer/config.json", {"num_layers": "six"}, "num_layers"),
    "hidden_dim-float": ("transformer/config.json", {"hidden_dim": 3e6}, "hidden_dim"),
    "hidden_dim-huge": ("transformer/config.json", {"hidden_dim": 3000000, "num_heads": 3}, "hidden_dim"),
    "num_heads-zero": ("transformer/config.json", {"num_heads": 0}, "num_heads"),
    "patch_size-negative": ("transformer/config.json", {"patch_size": -8}, "patch_size"),
    "prediction": ("transformer/config.json", {"prediction": "noise"}, "prediction"),
    "timesteps-zero": ("scheduler/scheduler_config.json", {"num_train_timesteps": 0}, "num_train_timesteps"),
    "timesteps-text": ("scheduler/scheduler_config.json", {"num_train_timesteps": "many"}, "num_train_timesteps"),
    "config-not-json": ("transformer/config.json", "{not json", "not valid JSON"),
    "config-list": ("transformer/config.json", "[1, 2]", "expected a JSON object"),
}


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    from vidhash.pipelines import VidHashPipeline

    folder = tmp_path_factory.mktemp("model") / "tiny"
    VidHashPipeline.random("tiny").save_pretrained(folder)
    return folder


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_model_folder_is_one_line_naming_file_and_key(saved_model, tmp_path, capsys, case):
    import shutil

    name, change, key = MALFORMED[case]
    folder = tmp_path / "model"
    shutil.copytree(saved_model, folder)
    path = folder / name
    if isinstance(change, dict):
        path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    else:
        path.write_text(change)
    work = tmp_path / "work"
    work.mkdir()
    rc = main(["generate", "--model", str(folder), "--out", str(work / "clip.mp4"), "--quiet", "--seconds", "0.5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and str(path) in err[0] and key in err[0], err
    assert list(work.iterdir()) == []


def test_the_intact_folder_passes_the_same_checks(saved_model):
    assert model_config_for(str(saved_model))["num_layers"] >= 1


@pytest.mark.parametrize("argv", [
    ["generate", "--quiet", "--seconds", "0.5", "--model"],
    ["eval", "world", "--quiet", "--device", "cpu"],
    ["bench", "generation", "--seconds", "1", "--modes", "hashed", "--device", "cpu", "--model"],
], ids=lambda argv: " ".join(argv[:2]))
def test_a_wan_mini_folder_is_named_as_one(tmp_path, capsys, argv):
    """A WanMiniPipeline export given where a VidHashPipeline model goes: eval world ended in an
    AttributeError ('tokens_per_frame'), generate in "bad key 'patch_size'"; now one line saying what
    the folder is (the model_index.json of models/wan-mini is all it takes)."""
    import shutil
    from pathlib import Path

    folder = tmp_path / "wan-mini"
    folder.mkdir()
    shutil.copy(Path(__file__).resolve().parents[2] / "models" / "wan-mini" / "model_index.json", folder)
    rc = main([*argv, str(folder)] + (["--out", str(tmp_path / "clip.mp4")] if argv[0] == "generate" else []))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert f"{folder}: a wan-mini (WanMiniPipeline) export, not a VidHashPipeline model" in err[0], err
