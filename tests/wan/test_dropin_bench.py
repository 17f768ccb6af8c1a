"""`vidhash bench dropin` on a tiny randomly initialised wan-mini: the structure of its rows, the
dense repeat and density 1 against dense, recall per layer, FlexAttention on the same blocks (eager
on the CPU), the JSON, the Markdown table and the frame strip; the fitted scorers (learned, calibrated)
on the fit seeds' recording."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from vidhash.bench import dropin
from vidhash.cli import main


README_COLUMNS = ("density", "block_size", "scorer", "psnr", "ssim", "recall", "oracle", "transformer_ms",
                  "transformer_ms_flex", "clip_s", "clip_s_flex", "clip_s_dense", "speedup", "speedup_flex", "flex_psnr")


def small_run(model, tmp_path, *flags) -> dict:
    """``vidhash bench dropin`` on a tiny clip (one seed, 8 frames of 32², key blocks of 16, no coherence,
    no Flex) with ``flags``; its JSON rows by setting name."""
    out = tmp_path / "dropin.json"
    assert main(["bench", "dropin", "--model", str(model), "--block-sizes", "16", "--seeds", "0", "--frames", "8",
                 "--size", "32", "--no-coherence", "--no-flex", *flags, "--json", str(out)]) == 0
    return {r["setting"]: r for r in json.loads(out.read_text())["rows"]}


def test_dropin_rows_json_and_strip(tiny_model, tmp_path, capsys):
    # 8 frames of 32² with 8² patches = 128 tokens: key blocks of 16 → 8 blocks (1/4 and 1/8: the 5 forced ones
    # of a query block of 64 kept, the same rows: forced_fill_warnings names them)
    out, strip = tmp_path / "dropin.json", tmp_path / "strip.png"
    assert main(["bench", "dropin", "--model", str(tiny_model), "--densities", "1,1/4,1/8", "--block-sizes", "16",
                 "--seeds", "0,3", "--frames", "8", "--size", "32", "--steps", "3", "--recall-step", "1",
                 "--json", str(out), "--strip", str(strip)]) == 0
    report = json.loads(out.read_text())
    rows = {r["setting"]: r for r in report["rows"]}
    assert list(rows) == ["dense", "dense (repeat)", "1 b16", "1/4 b16", "1/8 b16"]
    assert report["seeds"] == [0, 3] and report["device"] == "cpu" and report["complete"] and report["flex"]
    assert report["coherence_source"] == "frames"
    assert all(set(README_COLUMNS) <= set(r) for r in rows.values())
    # the same seeds and inputs: the dense model twice gives the same frames
    assert rows["dense"]["psnr"] is rows["dense (repeat)"]["psnr"] is None  # identical clips (inf: null in JSON)
    assert rows["dense"]["ssim"] == pytest.approx(1.0)
    # density 1 keeps every block: the dense model's frames up to float rounding; sparser ones differ
    one, quarter = rows["1 b16"]["psnr"], rows["1/4 b16"]["psnr"]  # (null: identical)
    assert quarter is not None and (one is None or one > quarter)
    for r in rows.values():
        assert r["transformer_ms"] > 0 and r["clip_s"] > 0
    # FlexAttention on the same blocks: its clips are ours up to rounding (a dense Flex would not be)
    for name in ("1 b16", "1/4 b16", "1/8 b16"):
        r = rows[name]
        assert (r["flex_psnr"] is None or r["flex_psnr"] > 45) and "flex_error" not in r, r  # (null: identical)
        assert r["transformer_ms_flex"] > 0 and r["speedup_flex"] == pytest.approx(r["clip_s_dense"] / r["clip_s_flex"])
        assert r["clip_s_dense"] == rows["dense"]["clip_s"] and r["speedup"] == pytest.approx(r["clip_s_dense"] / r["clip_s"])
        assert r["scorer"] == "pooled" and (r["block_size"], r["query_block_size"]) == (16, 64)  # the drop-in's defaults (query blocks >= 64)
    assert rows["1/4 b16"]["flex_psnr"] is None or rows["1/4 b16"]["psnr"] < rows["1/4 b16"]["flex_psnr"]
    for r in (rows["dense"], rows["dense (repeat)"]):
        assert r["transformer_ms_flex"] is r["clip_s_flex"] is r["flex_psnr"] is r["recall"] is None and r["scorer"] is None
    assert rows["dense"]["speedup"] == 1.0
    layers = rows["1/4 b16"]["layers"]
    assert [x["layer"] for x in layers] == ["blocks.0.attn1", "blocks.1.attn1"]
    assert all(0 < x["recall"] <= 1 for x in layers)
    assert rows["1/4 b16"]["recall"] == pytest.approx(np.mean([x["recall"] for x in layers]))
    assert all(x["recall"] == pytest.approx(1.0) for x in rows["1 b16"]["layers"])
    assert all(x["oracle"] >= x["recall"] - 1e-6 for x in layers if "oracle" in x)
    assert "layers" not in rows["dense"]
    assert set(rows["dense"]["coherence"]) == set(dropin.COHERENCE_KEYS) and "coherence" not in rows["dense (repeat)"]
    assert rows["1/8 b16"]["coherence"]["flicker"] != rows["dense"]["coherence"]["flicker"]
    # the strip: dense and 1/8 (no 1/32 run), 8 frames each
    assert np.asarray(Image.open(strip)).shape == (2 * 32, 8 * 32, 3) and report["strip"] == ["dense", "1/8 b16"]
    printed = capsys.readouterr().out
    assert "1/8 b16" in printed and "ms/step" in printed
    table = [line for line in printed.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| setting | PSNR dB") and "Flex ms/step" in table[0] and len(table) == 1 + len(rows)
    assert table[4].startswith("| 1/4 b16 | ") and "—" not in table[4]


def test_no_flex_leaves_its_columns_empty(tiny_model, tmp_path):
    out = tmp_path / "dropin.json"
    assert main(["bench", "dropin", "--model", str(tiny_model), "--densities", "1/4", "--block-sizes", "16", "--seeds", "0",
                 "--frames", "8", "--size", "32", "--steps", "2", "--recall-step", "0", "--no-recall", "--no-coherence",
                 "--no-flex", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    row = report["rows"][-1]
    assert row["setting"] == "1/4 b16" and row["transformer_ms"] > 0 and not report["flex"]
    assert report["coherence_source"] is None and "coherence" not in row  # --no-coherence
    assert row["transformer_ms_flex"] is row["flex_psnr"] is row["recall"] is None and "flex_error" not in row
    assert not list(tmp_path.glob("*.tmp"))


def test_compile_traces_every_setting_and_keeps_its_frames(tiny_model, tmp_path, monkeypatch):
    """--compile: the repeated blocks compiled (fullgraph) for every setting, dense included, dynamo
    reset before each; the frames are the eager run's (the 'eager' backend traces without codegen)."""
    resets = []
    real_reset = torch._dynamo.reset
    monkeypatch.setattr(torch._dynamo, "reset", lambda: resets.append(1) or real_reset())
    argv = ["bench", "dropin", "--model", str(tiny_model), "--densities", "1/4", "--block-sizes", "16", "--seeds", "0",
            "--frames", "8", "--size", "32", "--steps", "2", "--recall-step", "0", "--no-recall", "--no-coherence", "--no-flex"]
    rows = {}
    for name, extra in (("eager", []), ("compiled", ["--compile", "--compile-backend", "eager"])):
        out = tmp_path / f"{name}.json"
        assert main([*argv, "--json", str(out), *extra]) == 0
        rows[name] = json.loads(out.read_text())
    compiled = rows["compiled"]
    assert compiled["compiled_blocks"] == 2 and "compiled_blocks" not in rows["eager"]  # tiny_cfg: 2 layers
    assert compiled["options"]["compile"] and compiled["options"]["compile_backend"] == "eager"
    assert len(resets) == 3  # dense, dense (repeat), 1/4 b16
    for a, b in zip(rows["eager"]["rows"], compiled["rows"]):
        assert a["setting"] == b["setting"] and a["psnr"] == b["psnr"]  # the same clips against the dense one


def test_json_is_standard_and_old_reports_still_read(tmp_path):
    """The dense rows' psnr (inf: identical clips) was written as ``Infinity``, which is not JSON: now
    null (non-finite numbers anywhere in the report). The progress line and the table take a row as
    read back from either file, null or Infinity (a report written before)."""
    def strict(text: str) -> dict:
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))

    row = {"setting": "dense", "psnr": math.inf, "ssim": 1.0, "transformer_ms": 1.0, "clip_s": 0.5, "speedup": 1.0,
           "coherence": {"flicker": {"mean": math.nan}}, "layers": [{"error": math.inf}, {"error": 0.5}]}
    out = tmp_path / "dropin.json"
    dropin.write_json(str(out), {"rows": [row], "recall_step": 1})
    saved = strict(out.read_text())["rows"][0]
    assert saved["psnr"] is None and saved["coherence"]["flicker"]["mean"] is None
    assert saved["layers"] == [{"error": None}, {"error": 0.5}] and saved["ssim"] == 1.0
    old = json.loads(json.dumps({"rows": [row]}))["rows"][0]  # Python's json writes (and reads) Infinity
    assert old["psnr"] == math.inf
    for r in (saved, old):
        assert "PSNR" in dropin.format_row(r) and "| dense |" in dropin.markdown_table([r])


def test_compile_needs_repeated_blocks():
    with pytest.raises(ValueError, match="no repeated blocks"):
        dropin.compile_blocks(torch.nn.Linear(2, 2))


def test_a_flex_failure_is_reported_in_its_row(monkeypatch):
    def fail(*args, backend=None, **kwargs):
        raise ValueError("FlexAttention's kernels need block_size to be a multiple of 16, got 8")

    monkeypatch.setattr(dropin, "run_setting", fail)
    cols = dropin.flex_columns(None, dropin.Setting("1/4 b8", dropin.Fraction(1, 4), 8), [0], None, [], 1.0)
    assert cols == {"flex_error": "ValueError: FlexAttention's kernels need block_size to be a multiple of 16, got 8"}
    row = {"setting": "1/4 b8", "psnr": 30.0, "ssim": 0.9, "transformer_ms": 1.0, "clip_s": 0.5, "speedup": 2.0, **cols}
    assert "Flex failed: ValueError" in dropin.format_row(row)
    assert dropin.markdown_table([row]).splitlines()[-1] == f"1/4 b8: Flex failed: {cols['flex_error']}"


def test_clips_saved_and_coherence_without_pyav(tiny_model, tmp_path, monkeypatch):
    """--clips keeps the strip's clips whole; without PyAV (the GPU image) the coherence column is still
    filled: it is measured on the frames in memory, the clips' own (the JSON's coherence_source)."""
    import sys

    from vidhash.metrics import CoherenceOptions, measure_coherence_frames

    monkeypatch.setitem(sys.modules, "av", None)  # as if PyAV were not installed (import -> ImportError)
    out, clips = tmp_path / "d.json", tmp_path / "clips.npz"
    assert main(["bench", "dropin", "--model", str(tiny_model), "--densities", "1/8", "--block-sizes", "16", "--seeds", "0",
                 "--frames", "8", "--size", "32", "--steps", "2", "--recall-step", "1", "--no-flex", "--no-recall",
                 "--json", str(out), "--clips", str(clips)]) == 0
    saved = np.load(clips)
    assert sorted(saved.files) == ["1_8 b16", "dense"] and saved["dense"].shape == (8, 32, 32, 3)
    assert saved["dense"].dtype == np.uint8 and not np.array_equal(saved["dense"], saved["1_8 b16"])
    report = json.loads(out.read_text())
    assert report["coherence_source"] == "frames"
    rows = {r["setting"]: r for r in report["rows"]}
    assert "coherence" not in rows["dense (repeat)"]
    for name, key in (("dense", "dense"), ("1/8 b16", "1_8 b16")):
        coherence = rows[name]["coherence"]
        assert "coherence_error" not in rows[name] and set(coherence) == set(dropin.COHERENCE_KEYS)
        assert all(v is not None for v in coherence.values()) and coherence["flicker"]["mean"] > 0, coherence
        # the saved clip's own frames, at the clip's size and rate (8 fps, the flag's default): the same numbers
        again = measure_coherence_frames(saved[key], 8.0, CoherenceOptions(analysis_fps=8.0, size=32, progress=False))
        assert coherence["flicker"] == again["flicker"] and coherence["start_end"] == again["start_end"]
    assert rows["1/8 b16"]["coherence"]["flicker"] != rows["dense"]["coherence"]["flicker"]


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


def test_coherence_of_a_clip_below_the_least_working_size():
    """--size 8 is a clip the bench makes (one patch of the CPU model); its coherence is measured at 16²,
    the least working size (as a file of it would be), not refused as "--size must be at least 16"
    after every clip was sampled."""
    from vidhash.metrics import CoherenceOptions, measure_coherence_frames

    clip = (np.random.default_rng(0).random((8, 8, 8, 3)) * 255).astype(np.uint8)
    report = dropin.coherence_of(clip, 8.0)
    again = measure_coherence_frames(clip, 8.0, CoherenceOptions(analysis_fps=8.0, size=16, progress=False))
    assert report["flicker"] == again["flicker"] and report["flicker"]["mean"] > 0


@pytest.mark.parametrize("argv, match", [
    (["--densities", "1/0"], "--densities"),
    (["--densities", "2"], "--densities"),
    (["--block-sizes", "0"], "--block-sizes"),
    (["--recall-step", "9"], "--recall-step"),
    (["--scorers", "nearest"], "--scorers"),
    (["--profile", "--profile-reps", "0"], "--profile-reps"),
])
def test_flag_errors_name_the_flag(tiny_model, argv, match, capsys):
    try:
        status = main(["bench", "dropin", "--model", str(tiny_model), "--frames", "8", "--size", "32", "--steps", "3",
                       "--recall-step", "1", "--seeds", "0", "--no-coherence", *argv])
    except SystemExit as exit_:  # a value the flag's type refuses: argparse's usage error
        status = exit_.code
    assert status == 2
    err = capsys.readouterr().err
    assert f"error: {match}" in err or f"error: argument {match}" in err


def test_missing_model_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="--model"):
        dropin.load_pipeline(str(tmp_path / "nothing"), "cpu", "fp32")


def test_model_that_is_a_file(tmp_path):
    """--model FILE said "no such folder": it is a file."""
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="--model .*model.safetensors is a file; give a folder"):
        dropin.load_pipeline(str(tmp_path / "model.safetensors"), "cpu", "fp32")


def test_dense_steps_and_layers_rows(tiny_model, tmp_path, capsys):
    """--dense-steps 0,2 --dense-layers 0,1 over 2 steps: one row per setting × dense steps × dense
    layers; every step dense gives the dense model's frames; recall only where sparse ran."""
    out = tmp_path / "dropin.json"
    assert main(["bench", "dropin", "--model", str(tiny_model), "--densities", "1/4", "--block-sizes", "16",
                 "--seeds", "0", "--frames", "8", "--size", "32", "--steps", "2", "--recall-step", "1",
                 "--dense-steps", "0,2", "--dense-layers", "0,1", "--no-coherence", "--no-flex",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = {r["setting"]: r for r in report["rows"]}
    assert list(rows) == ["dense", "dense (repeat)", "1/4 b16", "1/4 b16 dl1", "1/4 b16 ds2", "1/4 b16 ds2 dl1"]
    assert [(r["dense_steps"], r["dense_layers"]) for r in rows.values()] == [(None, None), (None, None), (0, 0), (0, 1),
                                                                               (2, 0), (2, 1)]
    assert rows["1/4 b16"]["dense_timestep"] is None and rows["1/4 b16 ds2"]["dense_timestep"] > 0
    # every step dense: the dense model's frames exactly; one dense layer of 2: between sparse and dense
    assert rows["1/4 b16 ds2"]["psnr"] is rows["1/4 b16 ds2 dl1"]["psnr"] is None  # identical to dense
    assert rows["1/4 b16"]["psnr"] < rows["1/4 b16 dl1"]["psnr"] < math.inf
    # recall: blocks.0 is dense with dl1 (left out of the mean), every layer dense at a dense step
    sparse_layers = {x["layer"]: x for x in rows["1/4 b16"]["layers"]}
    assert rows["1/4 b16 dl1"]["layers"][0] == {"layer": "blocks.0.attn1", "dense": "layer"}
    assert rows["1/4 b16 dl1"]["recall"] == pytest.approx(sparse_layers["blocks.1.attn1"]["recall"])
    assert all(x.get("dense") == "step" and "recall" not in x for x in rows["1/4 b16 ds2"]["layers"])
    assert rows["1/4 b16 ds2"]["recall"] is None and rows["1/4 b16 ds2"]["oracle"] is None
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| setting | dense steps | dense layers | PSNR dB")
    assert table[1].startswith("| dense | — | — | ") and table[-1].startswith("| 1/4 b16 ds2 dl1 | 2 | 1 | inf |")


def test_dense_steps_split_the_schedule(tiny_model):
    pipe = dropin.load_pipeline(str(tiny_model), "cpu", "fp32")
    pipe.scheduler.set_timesteps(5)
    timesteps = pipe.scheduler.timesteps
    for k in range(6):
        threshold = dropin.dense_timestep_of(pipe, 5, k)
        assert (threshold is None) == (k == 0) and (k == 0 or int((timesteps >= threshold).sum()) == k)
    assert dropin.dense_options(pipe, dropin.Setting("1/4 b16", dropin.Fraction(1, 4), 16), 5) == {}


def test_default_table_has_no_dense_columns():
    row = {"setting": "1/4 b16", "psnr": 30.0, "ssim": 0.9, "transformer_ms": 1.0, "clip_s": 0.5, "speedup": 2.0,
           "dense_steps": 0, "dense_layers": 0}
    assert dropin.markdown_table([row]).splitlines()[0].startswith("| setting | PSNR dB")


@pytest.mark.parametrize("argv, match", [
    (["--dense-steps", "4"], "--dense-steps"),
    (["--dense-steps", "-1"], "--dense-steps"),
    (["--dense-steps", "x"], "--dense-steps"),
    (["--dense-layers", "3"], "--dense-layers"),
])
def test_dense_flag_errors_name_the_flag(tiny_model, argv, match, capsys):
    assert main(["bench", "dropin", "--model", str(tiny_model), "--frames", "8", "--size", "32", "--steps", "3",
                 "--recall-step", "1", "--seeds", "0", "--no-coherence", *argv]) == 2
    assert f"error: {match}" in capsys.readouterr().err


def test_compile_with_dense_warmup_keeps_the_eager_frames(tiny_model, tmp_path):
    """--compile with a dense first step and a dense first layer: the compiled blocks recompile on the
    gate (a Python bool) rather than break their graph, and give the eager run's frames."""
    argv = ["bench", "dropin", "--model", str(tiny_model), "--densities", "1/4", "--block-sizes", "16", "--seeds", "0",
            "--frames", "8", "--size", "32", "--steps", "2", "--recall-step", "0", "--no-recall", "--no-coherence",
            "--no-flex", "--dense-steps", "1", "--dense-layers", "0,1"]
    reports = {}
    for name, extra in (("eager", []), ("compiled", ["--compile", "--compile-backend", "eager"])):
        out = tmp_path / f"{name}.json"
        assert main([*argv, "--json", str(out), *extra]) == 0
        reports[name] = json.loads(out.read_text())["rows"]
    assert [r["setting"] for r in reports["compiled"]] == ["dense", "dense (repeat)", "1/4 b16 ds1", "1/4 b16 ds1 dl1"]
    for a, b in zip(reports["eager"], reports["compiled"]):
        assert a["setting"] == b["setting"] and a["psnr"] == b["psnr"]
    assert math.inf > reports["compiled"][2]["psnr"]


def test_profile_replays_one_call_per_setting(tiny_model, tmp_path, capsys):
    out = tmp_path / "dropin.json"
    assert main(["bench", "dropin", "--model", str(tiny_model), "--densities", "1/4", "--block-sizes", "16",
                 "--seeds", "0", "--frames", "8", "--size", "32", "--steps", "3", "--recall-step", "1", "--no-flex",
                 "--no-recall", "--no-coherence", "--profile", "--profile-reps", "2", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["setting"] for r in rows] == ["dense", "dense (repeat)", "1/4 b16"]
    for r in rows:
        p = r["profile"]
        assert p["wall_ms"] > 0 and p["reps"] == 2 and p["kernel_ms"] is None  # a CPU: operators, no kernels
        assert p["top"] and all(t["ms"] >= 0 and t["calls"] > 0 for t in p["top"])
    # the sparse setting's replayed call ran hash attention's selection (it is in the profiled operators)
    printed = capsys.readouterr().out
    assert printed.count("profile:") == 3


def test_profile_records_the_requested_call(tiny_model):
    pipe = dropin.load_pipeline(str(tiny_model), "cpu", "fp32")
    rec = dropin.CallRecorder(pipe.transformer, 2)
    seen = []
    hook = pipe.transformer.register_forward_pre_hook(lambda m, a, k: seen.append(k["timestep"].clone()), with_kwargs=True)
    try:
        pipe(actions=dropin.camera_path(0, 8), num_frames=8, height=32, width=32, num_inference_steps=4,
             generator=torch.Generator().manual_seed(0))
    finally:
        rec.close(), hook.remove()
    assert len(seen) == 4 and torch.equal(rec.inputs[1]["timestep"], seen[2])
    assert rec.inputs[1]["timestep"].data_ptr() != seen[2].data_ptr()  # a copy, not the pipeline's tensor
    prof = dropin.profile_call(pipe.transformer, rec.inputs, reps=1)
    assert prof["wall_ms"] > 0 and prof["top"]
    assert dropin.profile_call(pipe.transformer, None) is None


@pytest.mark.parametrize("name,category", [
    ("sparse_attn_fwd_kernel", "vidhash"), ("block_score_kernel", "vidhash"),
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4>>", "dense attention"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "gemm"), ("nvjet_hsh_128x256_64x4", "gemm"),
    ("triton_per_fused_add_mul_native_layer_norm_0", "inductor (fused)"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>", "other"),
])
def test_kernel_categories(name, category):
    assert dropin.kernel_category(name) == category


def test_compile_scope_model_keeps_the_eager_frames(tiny_model, tmp_path):
    """--compile-scope model: the whole forward compiled (fullgraph; the 'eager' backend traces
    without codegen), hooks outside it: the frames and the profile's replay are the eager run's."""
    argv = ["bench", "dropin", "--model", str(tiny_model), "--densities", "1/4", "--block-sizes", "16", "--seeds", "0",
            "--frames", "8", "--size", "32", "--steps", "2", "--recall-step", "0", "--no-recall", "--no-coherence",
            "--no-flex", "--dense-steps", "0,1"]
    rows = {}
    for name, extra in (("eager", []), ("model", ["--compile", "--compile-scope", "model", "--compile-backend", "eager"])):
        out = tmp_path / f"{name}.json"
        assert main([*argv, "--json", str(out), *extra]) == 0
        rows[name] = json.loads(out.read_text())
    assert rows["model"]["compiled_model"] and "compiled_blocks" not in rows["model"]
    assert [r["psnr"] for r in rows["model"]["rows"]] == [r["psnr"] for r in rows["eager"]["rows"]]


def test_compile_model_starts_a_graph_step_per_call_and_copies_outputs(tiny_model, monkeypatch):
    pipe = dropin.load_pipeline(str(tiny_model), "cpu", "fp32")
    tf = pipe.transformer
    x = torch.randn(1, tf.config.in_channels, 2, 32, 32)
    kw = dict(timestep=torch.tensor([500.0]), encoder_hidden_states=torch.randn(1, 3, tf.config.text_dim), return_dict=False)
    with torch.no_grad():
        ref = tf(x, **kw)[0]
    steps = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: steps.append(1))
    torch._dynamo.reset()
    dropin.compile_model(tf, mode="reduce-overhead", backend="eager")
    with torch.no_grad():
        a, b = tf(x, **kw)[0], tf(x, **kw)[0]
    assert len(steps) == 2 and torch.equal(a, ref) and torch.equal(b, ref) and a.data_ptr() != b.data_ptr()
    torch._dynamo.reset()


def test_remainders_rows(tiny_model, tmp_path):
    """--remainders none,mean: a '+mean' row beside each setting; the same selection (recall equal),
    frames closer to dense (the unkept blocks' mean tokens bring back mass the plain row drops)."""
    rows = small_run(tiny_model, tmp_path, "--densities", "1/8", "--steps", "3", "--recall-step", "1",
                     "--remainders", "none,mean")
    assert list(rows) == ["dense", "dense (repeat)", "1/8 b16", "1/8 b16 +mean"]
    assert rows["1/8 b16"]["remainder"] == "none" and rows["1/8 b16 +mean"]["remainder"] == "mean"
    assert rows["dense"]["remainder"] is None
    assert rows["1/8 b16 +mean"]["recall"] == rows["1/8 b16"]["recall"]
    # per layer, the attention output's error against dense on the captured q/k/v: smaller with the remainder
    for plain, rest in zip(rows["1/8 b16"]["layers"], rows["1/8 b16 +mean"]["layers"]):
        assert 0 < rest["error"] < plain["error"] < 2
    assert rows["1/8 b16 +mean"]["error"] < rows["1/8 b16"]["error"] and rows["dense"]["error"] is None
    assert rows["1/8 b16"]["psnr"] < rows["1/8 b16 +mean"]["psnr"] < math.inf


def test_remainders_flag_error_names_the_flag(tiny_model, capsys):
    assert main(["bench", "dropin", "--model", str(tiny_model), "--frames", "8", "--size", "32", "--steps", "3",
                 "--recall-step", "1", "--seeds", "0", "--no-coherence", "--remainders", "none,max"]) == 2
    assert "error: --remainders" in capsys.readouterr().err


def test_the_report_names_its_outputs_by_file_name(tiny_model, tmp_path):
    out = tmp_path / "sub" / "dropin.json"
    out.parent.mkdir()  # (a missing folder is refused before the run, as generate refuses it)
    assert main(["bench", "dropin", "--model", str(tiny_model), "--densities", "1/4", "--block-sizes", "16",
                 "--seeds", "0", "--frames", "8", "--size", "32", "--steps", "2", "--recall-step", "1", "--no-recall",
                 "--no-coherence", "--no-flex", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["options"]["json"] == "dropin.json"


def test_layer_densities_flag(tiny_model, tmp_path):
    """--layer-densities blocks.0.attn1=1: that module runs dense in every sparse setting (its recall
    row says so), the others keep the setting's density, and the frames move towards dense."""
    rows = {}
    for flag in ("", "blocks.0.attn1=1"):
        out = tmp_path / f"dropin{len(flag)}.json"
        assert main(["bench", "dropin", "--model", str(tiny_model), "--densities", "1/8", "--block-sizes", "16",
                     "--seeds", "0", "--frames", "8", "--size", "32", "--steps", "3", "--recall-step", "1",
                     "--layer-densities", flag, "--no-coherence", "--no-flex", "--json", str(out)]) == 0
        report = json.loads(out.read_text())
        name = "1/8 b16" + (f" [{flag}]" if flag else "")  # the row names its per-module densities
        rows[flag] = {r["setting"]: r for r in report["rows"]}[name]
        assert report["options"]["layer_densities"] == flag
        assert rows[flag]["layer_densities"] == ({"blocks.0.attn1": 1.0} if flag else {})
    plain, denser = rows[""], rows["blocks.0.attn1=1"]
    assert plain["layers"][0]["layer"] == "blocks.0.attn1" and "recall" in plain["layers"][0]
    assert denser["layers"][0] == {"layer": "blocks.0.attn1", "dense": "layer"}
    assert denser["layers"][1]["recall"] == plain["layers"][1]["recall"]  # the same selection elsewhere
    assert plain["psnr"] < denser["psnr"]


@pytest.mark.parametrize("flag, match", [("blocks.0.attn1", "MODULE=DENSITY"), ("blocks.0.attn1=2", "MODULE=DENSITY"),
                                         ("blocks.0.attn1=x", "MODULE=DENSITY"), ("blocks.7.attn1=1/2", "not a self-attention")])
def test_layer_densities_flag_errors_name_the_flag(tiny_model, flag, match, capsys):
    assert main(["bench", "dropin", "--model", str(tiny_model), "--frames", "8", "--size", "32", "--steps", "3",
                 "--recall-step", "1", "--seeds", "0", "--no-coherence", "--layer-densities", flag]) == 2
    err = capsys.readouterr().err
    assert "--layer-densities" in err and match in err


def test_layer_tag_names_densities_as_fractions():
    assert dropin.layer_tag({}) == ""
    assert dropin.layer_tag({"blocks.3.attn1": 0.25, "blocks.2.attn1": 0.125}) == " [blocks.2.attn1=1/8,blocks.3.attn1=1/4]"
    rows = dropin.make_settings([dropin.Fraction(1, 32)], [64], [None], layer_densities={"blocks.2.attn1": 0.125})
    assert [r.name for r in rows] == ["dense", "dense (repeat)", "1/32 b64 [blocks.2.attn1=1/8]"]
    assert rows[2].layer_densities == (("blocks.2.attn1", 0.125),) and rows[0].layer_densities == ()


def test_reuse_mass_rows(tiny_model, tmp_path):
    """--reuse-mass 0,1 with --dense-steps 0,1: a 'reuse/1' row only beside the dense-step setting
    (no dense step, no mass to reuse), and one with --mass-refresh 1 ('r1': the mass measured again
    at every sparse step), recording its stride and refresh, without the scorer's recall (not its
    selection), its frames from the drop-in's reuse_mass (not the scorer row's)."""
    rows = small_run(tiny_model, tmp_path, "--densities", "1/8", "--steps", "3", "--recall-step", "2",
                     "--dense-steps", "0,1", "--reuse-mass", "0,1", "--mass-refresh", "0,1")
    assert list(rows) == ["dense", "dense (repeat)", "1/8 b16", "1/8 b16 ds1", "1/8 b16 ds1 reuse/1", "1/8 b16 ds1 reuse/1 r1"]
    assert rows["1/8 b16 ds1 reuse/1 r1"]["mass_refresh"] == 1 and rows["1/8 b16 ds1 reuse/1"]["mass_refresh"] == 0
    assert rows["1/8 b16 ds1 reuse/1 r1"]["psnr"] != rows["1/8 b16 ds1 reuse/1"]["psnr"]
    reused, scored = rows["1/8 b16 ds1 reuse/1"], rows["1/8 b16 ds1"]
    assert reused["reuse_mass"] == 1 and scored["reuse_mass"] == 0 and rows["dense"]["reuse_mass"] is None
    assert reused["recall"] is None and "layers" not in reused and scored["recall"] is not None
    assert reused["psnr"] != scored["psnr"] and math.isfinite(reused["psnr"])


@pytest.mark.parametrize("argv, match", [(["--reuse-mass", "1"], "--dense-steps above 0"),
                                         (["--reuse-mass", "x"], "--reuse-mass")])
def test_reuse_mass_flag_errors_name_the_flag(tiny_model, argv, match, capsys):
    assert main(["bench", "dropin", "--model", str(tiny_model), "--frames", "8", "--size", "32", "--steps", "3",
                 "--recall-step", "1", "--seeds", "0", "--no-coherence", *argv]) == 2
    assert match in capsys.readouterr().err


def test_reuse_mass_compiled_model_keeps_the_eager_frames(tiny_model, tmp_path):
    """--reuse-mass under --compile-scope model and blocks (both fullgraph since the mass pass moved
    to the gate's pre-hook): the same frames as eager."""
    argv = ["bench", "dropin", "--model", str(tiny_model), "--densities", "1/4", "--block-sizes", "16", "--seeds", "0",
            "--frames", "8", "--size", "32", "--steps", "3", "--recall-step", "0", "--no-recall", "--no-coherence",
            "--no-flex", "--dense-steps", "1", "--reuse-mass", "0,2"]
    rows = {}
    for name, extra in (("eager", []), ("model", ["--compile", "--compile-scope", "model", "--compile-backend", "eager"]),
                        ("blocks", ["--compile", "--compile-scope", "blocks", "--compile-backend", "eager"])):
        out = tmp_path / f"{name}.json"
        assert main([*argv, "--json", str(out), *extra]) == 0
        rows[name] = {r["setting"]: r["psnr"] for r in json.loads(out.read_text())["rows"]}
    assert rows["model"] == rows["eager"] == rows["blocks"] and "1/4 b16 ds1 reuse/2" in rows["eager"]
    assert rows["eager"]["1/4 b16 ds1 reuse/2"] != rows["eager"]["1/4 b16 ds1"]


def test_one_seed_is_sampled_twice_and_the_warm_clip_timed(monkeypatch):
    """With one seed the first clip (compiling, autotuning) is not timed: its clip is sampled twice and
    the second one kept — before, a one-seed row's clip seconds included the compilation (19 s for a
    0.6 s clip on the H200, 2026-12-05)."""
    from types import SimpleNamespace

    calls = []

    def fake(pipe, seeds, args):
        calls.append(list(seeds))
        clips = [np.full((1, 2, 2, 3), i, np.uint8) for i in range(len(seeds))]
        return (clips, [10.0] + [0.5] * (len(seeds) - 1), [100.0] * args.steps + [2.0] * (args.steps * (len(seeds) - 1)),
                [0.5] + [0.06] * (len(seeds) - 1))

    monkeypatch.setattr(dropin, "sample_clips", fake)
    args = SimpleNamespace(steps=3, profile=False, recall_step=1)
    clips, timing = dropin.run_setting(SimpleNamespace(transformer=None), dropin.Setting("dense"), [7], args)
    assert calls == [[7, 7]] and len(clips) == 1 and clips[0][0, 0, 0, 0] == 1  # the second clip kept
    assert timing == {"transformer_ms": 2.0, "clip_s": 0.5, "noise_ms": pytest.approx(60.0)}
    clips, timing = dropin.run_setting(SimpleNamespace(transformer=None), dropin.Setting("dense"), [1, 2, 3], args)
    assert calls[-1] == [1, 2, 3] and len(clips) == 3
    assert timing == {"transformer_ms": 2.0, "clip_s": 0.5, "noise_ms": pytest.approx(60.0)}


def test_query_block_sizes_rows(tiny_model, tmp_path):
    """--query-block-sizes: each key-block size with each query-block size (rows ' q<size>'), the
    drop-in and the recall run with it (a query block of 32 over key blocks of 16 keeps other blocks
    than query blocks of 16), and the row records it (the default rows record the key block's size)."""
    rows = small_run(tiny_model, tmp_path, "--densities", "1/4", "--query-block-sizes", "16,32", "--steps", "2",
                     "--recall-step", "1")
    assert list(rows) == ["dense", "dense (repeat)", "1/4 b16 q16", "1/4 b16 q32"]
    q16, q32 = rows["1/4 b16 q16"], rows["1/4 b16 q32"]
    assert (q16["query_block_size"], q32["query_block_size"], rows["dense"]["query_block_size"]) == (16, 32, None)
    assert q16["psnr"] != q32["psnr"] and q16["layers"] != q32["layers"]
    rows = dropin.make_settings([dropin.Fraction(1, 8)], [64, 16], [None])
    assert [r.query_block_size for r in rows] == [None] * 4 and rows[3].name == "1/8 b16"
    # a value given twice makes one row (rows are keyed by name)
    rows = dropin.make_settings([dropin.Fraction(1, 8), dropin.Fraction(2, 16)], [16, 16], [None], query_blocks=[32, 32])
    assert [r.name for r in rows] == ["dense", "dense (repeat)", "1/8 b16 q32"]
    assert main(["bench", "dropin", "--model", str(tiny_model), "--query-block-sizes", "0", "--seeds", "0"]) == 2


@pytest.mark.parametrize("flags, match", [(["--scorers", "subgrid", "--query-block-sizes", "18"], "multiple of 4"),
                                          (["--query-block-sizes", "256"], "query_block_size must be an int"),
                                          (["--query-block-sizes", "16", "--dense-steps", "1", "--reuse-mass", "32"],
                                           "mass_query_stride must be a positive int dividing the query block size 16")])
def test_bad_block_settings_fail_before_any_clip(tiny_model, flags, match, monkeypatch, capsys):
    """A block size or reuse stride the drop-in refuses is named before the dense clips are sampled, not
    after them."""
    monkeypatch.setattr(dropin, "sample_clips", lambda *a, **k: pytest.fail("a clip was sampled"))
    monkeypatch.setattr(dropin, "capture_qk", lambda *a, **k: pytest.fail("the recall clip was sampled"))
    assert main(["bench", "dropin", "--model", str(tiny_model), "--densities", "1/4", "--block-sizes", "16", "--seeds", "0",
                 "--frames", "8", "--size", "32", "--steps", "2", "--recall-step", "1", *flags]) == 2
    err = capsys.readouterr().err
    assert "--query-block-sizes" in err and match in err


def test_densities_the_forced_blocks_fill_are_named_before_any_clip(tiny_model, monkeypatch, capsys):
    """128 tokens, key blocks of 16 (8 of them), query blocks of 64 (the default): a query block's sink
    and local blocks take up to 5, so 1/2, 1/4 and 1/8 (4, 2 and 1 kept) all keep those 5 — rows that
    came out identical under three names without a word. Named on stderr before any clip; 1 and 3/4
    (8 and 6 kept) are not, and a run with none of them prints no warning."""
    def stop(*a, **k):
        raise ValueError("stopped before the first clip")

    monkeypatch.setattr(dropin, "sample_clips", stop)
    argv = ["bench", "dropin", "--model", str(tiny_model), "--block-sizes", "16", "--seeds", "0", "--frames", "8",
            "--size", "32", "--steps", "2", "--no-recall"]
    assert main([*argv, "--densities", "1,3/4,1/2,1/4,1/8"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith(("warning", "vidhash"))]
    assert len(err) == 2 and err[1].endswith("stopped before the first clip"), err  # (the loading bar aside)
    assert err[0].startswith("warning: --densities 1/2, 1/4, 1/8 with key blocks of 16 (query blocks of 64): a 128-token "
                             "clip has 8 key blocks"), err
    assert "take up to 5" in err[0] and "each keeps those 5 (density 5/8)" in err[0], err
    assert main([*argv, "--densities", "1,3/4"]) == 2
    assert "warning" not in capsys.readouterr().err


def test_no_repeat_and_no_warmup(tiny_model, tmp_path, monkeypatch):
    """--no-repeat drops the 'dense (repeat)' row; --no-warmup samples a lone seed's clip once."""
    calls = []
    real = dropin.sample_clips
    monkeypatch.setattr(dropin, "sample_clips", lambda pipe, seeds, args: calls.append(list(seeds)) or real(pipe, seeds, args))
    rows = small_run(tiny_model, tmp_path, "--densities", "1/4", "--steps", "2", "--no-recall", "--no-repeat", "--no-warmup")
    assert list(rows) == ["dense", "1/4 b16"] and calls == [[0], [0]]
    calls.clear()
    rows = small_run(tiny_model, tmp_path, "--densities", "1/4", "--steps", "2", "--no-recall")
    assert list(rows) == ["dense", "dense (repeat)", "1/4 b16"] and calls == [[0, 0]] * 3


def test_reuse_delta_rows_only_on_unrefreshed_reuse_rows(tiny_model, tmp_path):
    """--reuse-delta 0,4,inf: ' delta/h' rows only beside reuse rows without refresh; their frames are
    the drop-in's reuse_delta (not the plain reuse row's), the half-life recorded ("inf": no decay)."""
    rows = dropin.make_settings([dropin.Fraction(1, 8)], [16], [None], dense_steps=[0, 1], remainders=["mean"],
                                reuse=[0, 1], refresh=[0, 2], deltas=[0.0, 4.0, float("inf")])
    assert [r.name for r in rows] == ["dense", "dense (repeat)", "1/8 b16 +mean", "1/8 b16 ds1 +mean",
                                      "1/8 b16 ds1 +mean reuse/1", "1/8 b16 ds1 +mean reuse/1 delta/4",
                                      "1/8 b16 ds1 +mean reuse/1 delta/inf", "1/8 b16 ds1 +mean reuse/1 r2"]
    out = small_run(tiny_model, tmp_path, "--densities", "1/8", "--steps", "3", "--recall-step", "2", "--dense-steps", "1",
                    "--reuse-mass", "1", "--remainders", "mean", "--reuse-delta", "0,inf", "--no-repeat")
    assert list(out) == ["dense", "1/8 b16 ds1 +mean reuse/1", "1/8 b16 ds1 +mean reuse/1 delta/inf"]
    delta, plain = out["1/8 b16 ds1 +mean reuse/1 delta/inf"], out["1/8 b16 ds1 +mean reuse/1"]
    assert delta["reuse_delta"] == "inf" and plain["reuse_delta"] == 0 and out["dense"]["reuse_delta"] is None
    assert math.isfinite(delta["psnr"]) and delta["psnr"] != plain["psnr"]


@pytest.mark.parametrize("value", ["x", "-1", "nan"])
def test_reuse_delta_flag_errors_name_the_flag(tiny_model, value, capsys):
    assert main(["bench", "dropin", "--model", str(tiny_model), "--frames", "8", "--size", "32", "--steps", "3",
                 "--recall-step", "1", "--seeds", "0", "--no-coherence", "--reuse-delta", value]) == 2
    assert "--reuse-delta" in capsys.readouterr().err


def test_initial_noise_is_the_pipelines_own_draw(tiny_model):
    """The bench draws each seed's noise before the timed call and passes it as latents=: the same
    values, so the same frames, as the pipeline's own draw from the seed's CPU generator."""
    pipe = dropin.load_pipeline(str(tiny_model), "cpu", "fp32")
    kw = dict(actions=dropin.camera_path(3, 8), num_frames=8, height=32, width=32, num_inference_steps=2)
    own = pipe(**kw, generator=torch.Generator().manual_seed(3)).frames
    given = pipe(**kw, latents=dropin.initial_noise(pipe, 3, 8, 32)).frames
    assert np.array_equal(own, given)
    assert not np.array_equal(own, pipe(**kw, latents=dropin.initial_noise(pipe, 4, 8, 32)).frames)


@pytest.mark.parametrize("argv, match", [
    (["--reuse-delta", "4"], "--reuse-delta applies to the reuse rows: give --reuse-mass above 0 too"),
    (["--mass-refresh", "2"], "--mass-refresh applies to the reuse rows: give --reuse-mass above 0 too"),
    (["--dense-steps", "1", "--reuse-mass", "1", "--mass-refresh", "2", "--reuse-delta", "4"],
     "--reuse-delta applies to the reuse rows without --mass-refresh"),
    (["--json", "SAME.png", "--strip", "SAME.png"], "--strip .*SAME.png is --json .*SAME.png"),
    (["--densities", "1/4,,1/8"], "--densities has a blank item in '1/4,,1/8'"),
    (["--scorers", ","], "--scorers has a blank item in ','"),
    (["--scorers", ""], "--scorers is empty"),
    (["--reuse-mass", ""], "--reuse-mass is empty"),
    (["--seeds", "0,0"], "--seeds has repeats: 0,0"),
    (["--seeds", "18446744073709551616"], r"--seeds must be seeds in \[0, 2\*\*64 - 1\] \(torch.Generator's range\)"),
    (["--scorers", "learned", "--fit-seeds", "99999999999999999999"], r"--fit-seeds must be seeds in \[0, 2\*\*64 - 1\]"),
    (["--scorers", "learned", "--seeds", "18446744073709551615"], r"--fit-seeds defaults to max\(--seeds\) \+ 1, beyond"),
    (["--scorers", "learned", "--fit-seeds", "0"], "--fit-seeds 0 has 0, also in --seeds 0: the scorers must be fitted"),
    (["--scorers", "calibrated", "--fit-seeds", ""], "--fit-seeds is empty"),
    (["--scorers", "learned", "--fit-seeds", "one"], "--fit-seeds must be comma-separated integers, got 'one'"),
    (["--scorers", "learned", "--fit-denoising-steps", "30"], r"--fit-denoising-steps must be distinct denoising steps in \[0, --steps\)"),
    (["--fit-seeds", "1"], "--fit-seeds applies to the fitted scorers: add learned or calibrated to --scorers"),
    (["--scorers", "learned,bogus"], "--scorers takes default, simhash, .*, learned, calibrated; got bogus"),
    (["--compile-mode", "default"], "--compile-mode sets how --compile compiles"),
    (["--compile-backend", "eager"], "--compile-backend sets how --compile compiles"),
    (["--compile-scope", "model"], "--compile-scope sets how --compile compiles"),
], ids=lambda x: " ".join(x) if isinstance(x, list) else None)
def test_ignored_or_blank_flags_are_refused_before_the_model_loads(tmp_path, monkeypatch, capsys, argv, match):
    """Flags that would be silently ignored (a delta or refresh without reuse rows, a compile setting
    without --compile), two outputs at one path, blank list items and a seed given twice: one line,
    exit status 2, before the model loads."""
    import re

    monkeypatch.setattr(dropin, "load_pipeline", lambda *a, **k: pytest.fail("the model loaded"))
    argv = [str(tmp_path / x) if x == "SAME.png" else x for x in argv]
    assert main(["bench", "dropin", "--model", str(tmp_path), "--seeds", "0", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(match, err[0]), err


@pytest.mark.parametrize("flag, value", [("--compile-mode", "bogus"), ("--compile-backend", "bogus")])
def test_compile_mode_and_backend_are_checked_by_the_parser(flag, value, monkeypatch, capsys):
    """A mode or backend torch.compile does not know ended in its traceback at the first compiled call."""
    monkeypatch.setattr(dropin, "load_pipeline", lambda *a, **k: pytest.fail("the model loaded"))
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "dropin", "--model", "models/wan-mini", "--compile", flag, value])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and f"argument {flag}: expected " in err[-1] and "'bogus'" in err[-1], err


def test_compile_mode_and_backend_take_torchs_names():
    from vidhash.cli.bench import compile_backend, compile_mode

    for mode in ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"):
        assert compile_mode(mode) == mode
    for backend in ("inductor", "eager", "aot_eager"):
        assert compile_backend(backend) == backend


@pytest.mark.parametrize("flag, value", [("--frames", "65"), ("--size", "520")])
def test_clip_beyond_the_rotary_embedding_is_refused(tiny_model, monkeypatch, capsys, flag, value):
    """--frames 1025 on models/wan-mini (rope_max_seq_len 1024) ended in a RuntimeError inside diffusers'
    rotary embedding; the tiny model's limit is 64 patches a side: 64 frames, 512 px."""
    monkeypatch.setattr(dropin, "sample_clips", lambda *a, **k: pytest.fail("a clip was sampled"))
    monkeypatch.setattr(dropin, "capture_qk", lambda *a, **k: pytest.fail("the recall clip was sampled"))
    argv = {"--frames": ["--size", "32"], "--size": ["--frames", "8"]}[flag]
    assert main(["bench", "dropin", "--model", str(tiny_model), "--seeds", "0", "--steps", "2", *argv, flag, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    limit = {"--frames": 64, "--size": 512}[flag]
    assert f"{flag} {value}: this model takes at most {limit} " in err[-1] and "rope_max_seq_len 64" in err[-1], err


# 8 frames of 32² = 128 tokens, key and query blocks of 16 (8 of each): at 1/2 a query block keeps 4 key blocks, 2 of
# them forced (its own and the sink), so 2 by score — room for the scorers to differ
FITTED_ARGV = ["--densities", "1/2", "--block-sizes", "16", "--query-block-sizes", "16", "--frames", "8", "--size", "32",
               "--steps", "2", "--recall-step", "1", "--no-repeat", "--no-warmup", "--no-coherence"]


def test_fitted_scorers_rows_use_the_fitted_modules_everywhere(tiny_model, tmp_path, monkeypatch, capsys):
    """--scorers learned,calibrated end to end: a row each, the fit reports in the JSON's ``fitted``, and
    the modules the fit made are what the drop-in, its Flex run and the recall measurement all use (the
    row's recall recomputed with them from the captured queries and keys)."""
    from vidhash import attention
    from vidhash.integrations import diffusers

    enabled, captured = [], {}
    real_enable, real_capture = diffusers.enable_hash_attention, dropin.capture_qk
    monkeypatch.setattr(diffusers, "enable_hash_attention",
                        lambda tf, **config: enabled.append(config) or real_enable(tf, **config))
    monkeypatch.setattr(dropin, "capture_qk", lambda *a: captured.update(real_capture(*a)) or captured)
    out = tmp_path / "dropin.json"
    assert main(["bench", "dropin", "--model", str(tiny_model), *FITTED_ARGV, "--seeds", "0",
                 "--scorers", "learned,calibrated", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = {r["setting"]: r for r in report["rows"]}
    assert list(rows) == ["dense", "1/2 b16 q16 learned", "1/2 b16 q16 calibrated"]
    names = ["blocks.0.attn1", "blocks.1.attn1"]
    # the fit: one recording of seed 1 (max(--seeds) + 1) at steps 0 (the first sparse one) and 1 (recall and last)
    fitted = report["fitted"]
    assert fitted["seeds"] == [1] and fitted["steps"] == [0, 1] and fitted["record_s"] > 0
    assert [f["module"] for f in fitted["learned"]] == names  # one fit per module: one block-size pair and kept count
    for f in fitted["learned"]:
        assert (f["block_size"], f["query_block_size"], f["kept"]) == (16, 16, 2) and f["seconds"] > 0
        assert 0 < f["held_out_before"] <= f["held_out_after"] <= 1  # early stopping keeps the initial weights at worst
    calibrated = fitted["calibrated"]
    assert [m["module"] for m in calibrated["modules"]] == names and calibrated["config"]["bits"] == 32
    assert all(m["samples"] == 2 and 0 <= m["val_recall_learned"] <= 1 for m in calibrated["modules"])
    assert calibrated["mean"]["recall_learned"] == pytest.approx(np.mean([m["recall_learned"] for m in calibrated["modules"]]))
    printed = capsys.readouterr().out
    assert "fit recording: seeds [1] at steps [0, 1] of 2" in printed
    assert "fitted learned scorers of 1/2 b16 q16 learned" in printed
    assert "fitted calibrated hashers (2 modules)" in printed
    # the drop-in, then Flex on the same selection, with the same modules per layer
    learned, flex_learned, calibrated_on, flex_calibrated = enabled
    assert flex_learned["backend"] == flex_calibrated["backend"] == "flex" and "backend" not in learned
    assert all(learned["scorer"][n] is flex_learned["scorer"][n] for n in names)
    assert type(learned["scorer"][names[0]]).__name__ == "LearnedBlockScorer" and "hasher" not in learned
    assert calibrated_on["scorer"] == flex_calibrated["scorer"] == "simhash"
    assert all(calibrated_on["hasher"][n] is flex_calibrated["hasher"][n] for n in names)
    assert type(calibrated_on["hasher"][names[0]]).__name__ == "LearnedHash"
    for name, options in (("1/2 b16 q16 learned", {"scorer": learned["scorer"]}),
                          ("1/2 b16 q16 calibrated", {"scorer": "simhash", "hasher": calibrated_on["hasher"]})):
        row = rows[name]
        assert row["scorer"] == name.split()[-1] and math.isfinite(row["psnr"]) and 0 < row["ssim"] < 1
        assert row["flex_psnr"] is None or row["flex_psnr"] > 45 and "flex_error" not in row  # (null: identical clips)
        recall = []
        for layer, (q, k, _) in zip(row["layers"], captured.values()):
            assert layer["recall"] <= layer["oracle"] + 1e-6 and layer["error"] > 0
            per_layer = {key: value if isinstance(value, str) else value[layer["layer"]] for key, value in options.items()}
            sel = attention.select_blocks(q, k, density=0.5, block_size=16, query_block_size=16, **per_layer)
            recall.append(attention.selection_recall(q, k, sel, max_query_blocks=64))
        assert row["recall"] == pytest.approx(np.mean(recall), rel=1e-9) and row["recall"] <= row["oracle"]


def test_the_fit_records_only_the_fit_seeds(tiny_model, tmp_path, monkeypatch):
    """The clips recorded are the recall clip (first measured seed) and the --fit-seeds' (at --fit-denoising-steps):
    the learned scorers fit on exactly that recording, never on a measured seed's queries."""
    from vidhash.bench import learned_fit

    calls, recorded, fits = [], {}, []
    real_capture, real_record, real_fit = dropin.capture_steps, dropin.record_steps, learned_fit.fit_learned
    monkeypatch.setattr(dropin, "capture_steps", lambda pipe, seed, steps, *a: calls.append((seed, tuple(steps)))
                        or real_capture(pipe, seed, steps, *a))
    monkeypatch.setattr(dropin, "record_steps", lambda *a, **k: recorded.update(real_record(*a, **k)) or recorded)
    monkeypatch.setattr(learned_fit, "fit_learned", lambda fq, fk, *a: fits.append((fq, fk)) or real_fit(fq, fk, *a))
    out = tmp_path / "dropin.json"
    assert main(["bench", "dropin", "--model", str(tiny_model), *FITTED_ARGV, "--no-flex", "--seeds", "0,2",
                 "--fit-seeds", "7,5", "--fit-denoising-steps", "1,0", "--scorers", "learned", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert calls == [(0, (1,)), (7, (0, 1)), (5, (0, 1))]  # the recall clip, then the fit seeds' clips
    assert report["fitted"]["seeds"] == [7, 5] and report["fitted"]["steps"] == [0, 1] and report["seeds"] == [0, 2]
    assert len(fits) == 2 and all(fq.shape[0] == 4 for fq, _ in fits)  # 2 seeds × 2 steps
    for (fq, fk), (q, k, _) in zip(fits, recorded.values()):
        assert torch.equal(fq, q.float()) and torch.equal(fk, k.float())


def test_rows_without_fitted_scorers_never_record_or_fit(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(dropin, "record_steps", lambda *a, **k: pytest.fail("the fit seeds were recorded"))
    monkeypatch.setattr(dropin.FittedScorers, "learned", lambda *a: pytest.fail("a learned scorer was fitted"))
    monkeypatch.setattr(dropin.FittedScorers, "calibrated", lambda *a: pytest.fail("hashers were calibrated"))
    out = tmp_path / "dropin.json"
    assert main(["bench", "dropin", "--model", str(tiny_model), *FITTED_ARGV, "--no-flex", "--seeds", "0",
                 "--scorers", "default,simhash", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert "fitted" not in report and [r["scorer"] for r in report["rows"][1:]] == ["pooled", "simhash"]


def test_fit_inputs_defaults_and_errors_name_the_flag():
    from types import SimpleNamespace

    args = SimpleNamespace(fit_seeds=None, fit_denoising_steps=None, seeds="0,3", steps=10, recall_step=5)
    assert dropin.parse_fit_inputs(args, [0, 3], [0, 2, 10], True) == ([4], [0, 2, 5, 9])  # 10: no sparse step
    assert dropin.parse_fit_inputs(args, [0, 3], [0], False) == ([], [])
    for seeds_text, steps_text, fitting, match in (
        ("3", None, True, r"--fit-seeds 3 has 3, also in --seeds 0,3"),
        ("4,0", None, True, r"--fit-seeds 4,0 has 0, also in --seeds"),
        ("", None, True, r"--fit-seeds is empty"),
        ("a", None, True, r"--fit-seeds must be comma-separated integers, got 'a'"),
        ("-1", None, True, r"--fit-seeds must be integers >= 0"),
        ("4,4", None, True, r"--fit-seeds has repeats"),
        (None, "10", True, r"--fit-denoising-steps must be distinct denoising steps in \[0, --steps\)"),
        (None, "1,1", True, r"--fit-denoising-steps must be distinct"),
        ("4", None, False, r"--fit-seeds applies to the fitted scorers"),
        (None, "1", False, r"--fit-denoising-steps applies to the fitted scorers"),
    ):
        with pytest.raises(ValueError, match=match):
            dropin.parse_fit_inputs(SimpleNamespace(**{**vars(args), "fit_seeds": seeds_text, "fit_denoising_steps": steps_text}),
                                    [0, 3], [0], fitting)
