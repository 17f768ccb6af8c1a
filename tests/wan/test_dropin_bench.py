"""`vidhash bench dropin` on a tiny randomly initialised wan-mini: the structure of its rows, the
dense repeat and density 1 against dense, recall per layer, the JSON and the frame strip."""
import json
import math
from dataclasses import asdict

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from PIL import Image

from vidhash.bench import dropin
from vidhash.cli import main
from vidhash.pipelines.pipeline_wan_mini import WanMiniPipeline
from vidhash.training.families import build_model


@pytest.fixture
def tiny_model(tiny_cfg, tmp_path):
    cfg = tiny_cfg()
    model = build_model(cfg)
    torch.nn.init.normal_(model.proj_out.weight, std=0.2, generator=torch.Generator().manual_seed(1))
    pipe = WanMiniPipeline(model, FlowMatchEulerDiscreteScheduler(shift=3.0), channels=3, **asdict(cfg.condition))
    pipe.save_pretrained(str(tmp_path / "wan-mini"))
    return tmp_path / "wan-mini"


def test_dropin_rows_json_and_strip(tiny_model, tmp_path, capsys):
    # 8 frames of 32² with 8² patches = 128 tokens: key blocks of 16 → 8 blocks (1/4: 2 kept)
    out, strip = tmp_path / "dropin.json", tmp_path / "strip.png"
    assert main(["bench", "dropin", "--model", str(tiny_model), "--densities", "1,1/4,1/8", "--block-sizes", "16",
                 "--seeds", "0,3", "--frames", "8", "--size", "32", "--steps", "3", "--recall-step", "1",
                 "--json", str(out), "--strip", str(strip)]) == 0
    report = json.loads(out.read_text())
    rows = {r["setting"]: r for r in report["rows"]}
    assert list(rows) == ["dense", "dense (repeat)", "1 b16", "1/4 b16", "1/8 b16"]
    assert report["seeds"] == [0, 3] and report["device"] == "cpu"
    # the same seeds and inputs: the dense model twice gives the same frames
    assert rows["dense"]["psnr"] == rows["dense (repeat)"]["psnr"] == math.inf
    assert rows["dense"]["ssim"] == pytest.approx(1.0)
    # density 1 keeps every block: the dense model's frames up to float rounding; sparser ones differ
    assert rows["1 b16"]["psnr"] > rows["1/4 b16"]["psnr"] and rows["1/4 b16"]["psnr"] < math.inf
    for r in rows.values():
        assert r["transformer_ms"] > 0 and r["clip_s"] > 0
    layers = rows["1/4 b16"]["layers"]
    assert [x["layer"] for x in layers] == ["blocks.0.attn1", "blocks.1.attn1"]
    assert all(0 < x["recall"] <= 1 for x in layers)
    assert all(x["recall"] == pytest.approx(1.0) for x in rows["1 b16"]["layers"])
    assert all(x["oracle"] >= x["recall"] - 1e-6 for x in layers if "oracle" in x)
    assert "layers" not in rows["dense"]
    assert set(rows["dense"]["coherence"]) == set(dropin.COHERENCE_KEYS) and "coherence" not in rows["dense (repeat)"]
    assert rows["1/8 b16"]["coherence"]["flicker"] != rows["dense"]["coherence"]["flicker"]
    # the strip: dense and 1/8 (no 1/32 run), 8 frames each
    assert np.asarray(Image.open(strip)).shape == (2 * 32, 8 * 32, 3)
    printed = capsys.readouterr().out
    assert "1/8 b16" in printed and "ms/step" in printed


def test_density_one_equals_dense_bitwise_on_uint8_frames(tiny_model):
    class Args:
        frames, size, steps = 8, 32, 3

    pipe = dropin.load_pipeline(str(tiny_model), "cpu", "fp32")
    dense, _ = dropin.run_setting(pipe, dropin.Setting("dense"), [0], Args)
    one, _ = dropin.run_setting(pipe, dropin.Setting("1 b16", dropin.Fraction(1), 16), [0], Args)
    quarter, _ = dropin.run_setting(pipe, dropin.Setting("1/4 b16", dropin.Fraction(1, 4), 16), [0], Args)
    assert dropin.clip_psnr(one[0], dense[0]) > 40 and not np.array_equal(quarter[0], dense[0])
    assert dropin.clip_psnr(dense[0], dense[0]) == math.inf


def test_coherence_of_a_clip(tiny_model):
    clip = (np.random.default_rng(0).random((8, 32, 32, 3)) * 255).astype(np.uint8)
    report = dropin.coherence_of(clip, 8.0)
    assert set(report) == set(dropin.COHERENCE_KEYS) and all(v is not None for v in report.values()), report


@pytest.mark.parametrize("argv, match", [
    (["--densities", "1/0"], "--densities"),
    (["--densities", "2"], "--densities"),
    (["--block-sizes", "0"], "--block-sizes"),
    (["--recall-step", "9"], "--recall-step"),
    (["--scorers", "pooled"], "--scorers"),
])
def test_flag_errors_name_the_flag(tiny_model, argv, match, capsys):
    import inspect

    from vidhash.integrations.diffusers import CONFIG_KEYS, enable_hash_attention

    if argv[0] == "--scorers" and ("scorer" in CONFIG_KEYS or "scorer" in inspect.signature(enable_hash_attention).parameters):
        pytest.skip("this drop-in takes a scorer")
    assert main(["bench", "dropin", "--model", str(tiny_model), "--frames", "8", "--size", "32", "--steps", "3",
                 "--recall-step", "1", "--seeds", "0", "--no-coherence", *argv]) == 2
    assert f"error: {match}" in capsys.readouterr().err


def test_missing_model_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="--model"):
        dropin.load_pipeline(str(tmp_path / "nothing"), "cpu", "fp32")
