"""``vidhash eval world`` on the random tiny model (CPU, tiny horizons)."""
import json

import numpy as np
import pytest
import torch

from vidhash.cli import main as cli_main
from vidhash.data.world import ProceduralWorld
from vidhash.eval import world as ew
from vidhash.eval.trajectory import plan_loop

TOP_KEYS = {"schema", "complete", "created", "model", "learned_signatures", "learned_hashers", "device", "dtype", "cuda_graphs", "fps", "seeds",
            "horizons_s", "modes", "full_max_seconds", "generation", "trajectory", "rows", "summary", "timing", "host",
            "targets"}
ROW_KEYS = {"seed", "horizon_s", "mode", "setting", "status", "note", "same_as", "gap_frames", "frames",
            "context_frames", "seconds", *ew.METRIC_KEYS}
CELL_KEYS = {"return_psnr", "return_ssim", "away_psnr", "away_ssim", "self_psnr", "self_ssim", "self_return_psnr",
             "away_realism", "away_real_share", "self_away_realism", "self_away_real_share",
             "n_seeds", "note", "self_psnr_vs_window", "memory_topk_recall", "memory_ratio"}


def test_json_keys_and_files(tiny_result):
    result, out = tiny_result
    assert set(result) == TOP_KEYS and result["schema"] == "vidhash-eval-world/1" and result["cuda_graphs"] is False
    assert json.loads((out / "world.json").read_text()) == json.loads(json.dumps(result))
    assert (out / "world.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert all(set(r) == ROW_KEYS for r in result["rows"])
    assert set(result["summary"]) == set(ew.MODES)
    for mode in ew.MODES:
        assert set(result["summary"][mode]) == {"1"}
        assert all(set(c) == CELL_KEYS for c in result["summary"][mode].values())
    g = result["generation"]
    assert (g["height"], g["num_inference_steps"], g["chunk_frames"], g["window_frames"]) == (16, 1, 4, 8)
    assert "select" not in g["memory"]  # the default read kernel: the merge key of results saved before it existed
    assert result["trajectory"] == {"visit_frames": 4, "leave_frames": 4, "step": 4, "view": 16, "world_size": 1024,
                                    "random_sig_bits": 32}


def test_every_mode_runs_both_settings(tiny_result):
    result, _ = tiny_result
    rows = result["rows"]
    assert len(rows) == 4 * 2  # modes × settings
    for r in rows:
        assert r["status"] == "ok" and r["gap_frames"] == 8
        assert r["return_psnr"] is not None and r["return_ssim"] is not None and r["away_psnr"] is not None
        if r["setting"] == "self":
            assert r["self_psnr"] is not None and r["visit_psnr"] is not None
            assert r["frames"] == r["gap_frames"] + 8 and r["context_frames"] == 0
        else:
            assert r["self_psnr"] is None and r["frames"] == r["gap_frames"] + 4 and r["context_frames"] == 4
        if r["mode"] == "random-sig":  # no learned signatures in the random model: hashed is SimHash already
            assert r["same_as"] == "hashed" and r["seconds"] is None
            twin = next(x for x in rows if x["mode"] == "hashed" and x["setting"] == r["setting"])
            assert all(r[k] == twin[k] for k in ew.METRIC_KEYS)
        else:
            assert r["seconds"] > 0
    assert result["summary"]["window"]["1"]["self_psnr_vs_window"] == 0.0
    assert result["summary"]["hashed"]["1"]["n_seeds"] == 1


def test_memory_read_recall_per_run(tiny_result):
    """Runs that read the hashed memory report its top-k recall against exact scores; the others none."""
    result, _ = tiny_result
    for r in result["rows"]:
        if r["mode"] in ("hashed", "random-sig"):
            assert r["memory_reads"] > 0
            assert 0.0 <= r["memory_topk_recall"] <= 1.0 and 0.0 < r["memory_recall"] <= r["memory_oracle"] + 1e-6
            assert r["memory_ratio"] == pytest.approx(r["memory_recall"] / r["memory_oracle"])
        else:
            assert all(r[k] is None for k in ew.MEMORY_KEYS)
    cell = result["summary"]["hashed"]["1"]
    assert cell["memory_topk_recall"] == pytest.approx(np.mean([r["memory_topk_recall"] for r in result["rows"]
                                                                if r["mode"] == "hashed"]))
    assert f"{cell['memory_topk_recall']:.3f} (" in ew.format_table(result)


def test_away_realism_in_rows_summary_and_table(tiny_result):
    """Both settings get the no-reference realism of the away frames; summary means; a table column;
    results saved before the metric (no such keys) still summarise and print."""
    result, _ = tiny_result
    for r in result["rows"]:
        assert r["away_realism"] > 0 and 0.0 <= r["away_real_share"] <= 1.0
    cell = result["summary"]["hashed"]["1"]
    given = [r for r in result["rows"] if r["mode"] == "hashed" and r["setting"] == "given"]
    own = [r for r in result["rows"] if r["mode"] == "hashed" and r["setting"] == "self"]
    assert cell["away_realism"] == pytest.approx(np.mean([r["away_realism"] for r in given]))
    assert cell["self_away_real_share"] == pytest.approx(np.mean([r["away_real_share"] for r in own]))
    table = ew.format_table(result)
    assert "away realism" in table and f"{cell['away_realism']:.3f} (" in table
    old_rows = [{k: v for k, v in r.items() if k not in ew.REALISM_KEYS} for r in result["rows"]]
    old = dict(result, rows=old_rows, summary=ew.summarize(old_rows, result["modes"], result["horizons_s"]))
    assert old["summary"]["hashed"]["1"]["away_realism"] is None and "away realism" in ew.format_table(old)


def test_full_is_capped_and_skipped_when_it_would_not_fit(tiny_options):
    g = {"height": 16, "action_step": 4}
    o = tiny_options(horizons=(1.0, 2.0, 3.0), full_max_seconds=2.0)
    runs = ew.plan_runs(o, g, 4, False, full_bytes=lambda frames: frames * 1000, available=40_000)
    full = {r.horizon_s: r.skip for r in runs if r.mode == "full" and r.setting == "self"}
    assert full[1.0] is None  # 8 + 8 frames fit
    assert "would not fit" in full[2.0]  # 24 frames × 1000 bytes > half of 40,000
    assert "--full-max-seconds (2 s)" in full[3.0]
    assert all(r.skip is None for r in runs if r.mode != "full")
    assert all(r.same_as == "hashed" for r in runs if r.mode == "random-sig")
    assert all(r.same_as is None for r in ew.plan_runs(o, g, 4, True, lambda f: 0, 1) if r.mode == "random-sig")


def test_table_and_replot(tiny_result, tmp_path, capsys):
    result, out = tiny_result
    table = ew.format_table(result)
    assert "hashed" in table and "self PSNR" in table and "random-sig" in table
    rows = [dict(r, status="skipped", note="beyond --full-max-seconds (0 s)", **dict.fromkeys(ew.METRIC_KEYS))
            if r["mode"] == "full" else r for r in result["rows"]]
    skipped = dict(result, rows=rows, summary=ew.summarize(rows, result["modes"], result["horizons_s"]))
    assert "full        skipped: beyond --full-max-seconds (0 s)" in ew.format_table(skipped)
    assert cli_main(["eval", "world", "--from-json", str(out / "world.json"), "--plot", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").is_file() and "random-sig" in capsys.readouterr().out


def test_deterministic(tiny_options):
    o = tiny_options(horizons=(1.0,), modes=("window",))
    a, b = ew.evaluate(o), ew.evaluate(o)
    assert [{k: r[k] for k in ew.METRIC_KEYS} for r in a["rows"]] == [{k: r[k] for k in ew.METRIC_KEYS} for r in b["rows"]]


def test_given_run_starts_from_ground_truth(tiny_options):
    """The given run's visit is the ground truth; the self run invents its own."""
    pipe, preset = ew.load_pipeline("random-tiny", torch.device("cpu"), torch.float32)
    g = ew.resolve_settings(tiny_options(horizons=(1.0,)), pipe, preset)
    plan = plan_loop(gap_frames=8, visit_frames=4, view=16, step=4, rng=np.random.default_rng(0))
    truth = ProceduralWorld(seed=1_000_000, view=16).render_many(plan.poses)
    given = ew.generate_loop(pipe, g, plan, "given", "window", 1_000_000, truth)
    np.testing.assert_array_equal(given[:4], truth[:4])
    assert not np.array_equal(given[4:], truth[4:])
    own = ew.generate_loop(pipe, g, plan, "self", "window", 1_000_000, truth)
    assert not np.array_equal(own[:4], truth[:4])


@pytest.mark.parametrize("argv,match", [
    (["random-tiny", "--modes", "hashed,nope"], "unknown mode"),
    (["/no/such/model/dir"], "does not exist"),
    (["random-tiny", "--horizons", "10,0"], "must be positive"),
    (["random-tiny", "--horizons", "-5"], "must be positive"),
    (["random-huge"], "unknown model 'random-huge'"),
    (["random-tiny", "--dtype", "bfloat16", "--device", "cpu"], "bfloat16 is for CUDA"),
    (["random-tiny", "--plot", "out.jpg"], "must end in .png"),
    (["random-tiny", "--horizons", "0.5"], r"horizon 0.5 s is 4 frames .* needs at least 31 frames"),
    (["random-tiny", "--json", "/no/such/folder/out.json"], "does not exist"),
    (["random-tiny", "--seeds", "1000000,1000000"], "repeats"),
    (["random-tiny", "--recall-every", "0"], "--recall-every must be a positive int"),
], ids=["unknown-mode", "no-model-dir", "zero-horizon", "negative-horizon", "bad-random", "bf16-cpu", "plot-ext",
        "horizon-too-short", "json-folder", "seed-repeats", "recall-every"])
def test_bad_inputs(argv, match, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(ew.run, "generate_loop", lambda *a, **k: calls.append(1))
    assert cli_main(["eval", "world", *argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "vidhash eval world: error:" in err and __import__("re").search(match, err), err
    assert not calls  # refused before any generation


def test_not_a_pipeline_folder(tmp_path, capsys):
    assert cli_main(["eval", "world", str(tmp_path)]) == 2
    assert "no model_index.json" in capsys.readouterr().err


def test_learned_signatures_get_a_random_sig_twin(tiny_options):
    """A model with LearnedHash modules: random-sig reads SimHash of the same width, weights shared."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from vidhash.models import random_model
    from vidhash.pipelines import VidHashPipeline

    try:
        model = random_model("tiny", memory_hash_bits=32)
    except TypeError:
        pytest.skip("this model has no learned memory signatures (memory_hash_bits)")
    pipe = VidHashPipeline(model, FlowMatchEulerDiscreteScheduler())
    assert len(ew.learned_hashers(pipe.transformer)) == model.config.num_layers
    twin = ew.with_random_signatures(pipe, 32)
    assert ew.learned_hashers(twin.transformer) == [] and twin.transformer.config.memory_hash_bits == 0
    assert len(ew.learned_hashers(pipe.transformer)) == model.config.num_layers  # the original is untouched
    assert twin.transformer.patch_embed.weight is pipe.transformer.patch_embed.weight
    state = twin.init_state(16, 16, 8, ew.memory_config(ew.resolve_settings(tiny_options(), pipe, "tiny"), "random-sig", 32))
    assert type(state.memories[0].hasher).__name__ == "SimHash" and state.memories[0].config.n_bits == 32


def test_from_json_merges_runs_of_one_model(tiny_result, tmp_path, capsys):
    """Runs cut by a time limit, or one per horizon, merge into one table: rows united, summary
    and targets recomputed; other settings, or the same run twice, are refused."""
    result, _ = tiny_result
    by_mode = {m: [r for r in result["rows"] if r["mode"] == m] for m in ("hashed", "window")}
    a = dict(result, rows=by_mode["hashed"], modes=["hashed"], complete=False)
    b = dict(result, rows=by_mode["window"], modes=["window"])
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps(a))
    pb.write_text(json.dumps(b))
    merged = ew.merge_results([a, b])
    assert merged["modes"] == ["hashed", "window"] and not merged["complete"]
    assert len(merged["rows"]) == len(by_mode["hashed"]) + len(by_mode["window"])
    h = f"{result['horizons_s'][0]:g}"
    assert merged["summary"]["hashed"][h]["self_psnr"] == result["summary"]["hashed"][h]["self_psnr"]
    assert merged["summary"]["hashed"][h]["self_psnr_vs_window"] == pytest.approx(
        result["summary"]["hashed"][h]["self_psnr"] - result["summary"]["window"][h]["self_psnr"])
    out = tmp_path / "m.json"
    assert cli_main(["eval", "world", "--from-json", str(pa), str(pb), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["merged_from"] == 2 and "window" in capsys.readouterr().out
    with pytest.raises(ValueError, match="in two results"):
        ew.merge_results([a, a])
    with pytest.raises(ValueError, match="differ in dtype"):
        ew.merge_results([a, dict(b, dtype="bfloat16")])
    # the memory read's select changes speed only (the world preset's levels since 2026-12-06, candidates
    # before, when the key was left out): such runs merge; a field that changes the frames does not
    gen = result["generation"]
    old = dict(b, generation=dict(gen, memory={k: v for k, v in gen["memory"].items() if k != "select"}))
    new = dict(a, generation=dict(gen, memory=dict(gen["memory"], select="levels")))
    assert ew.merge_results([new, old])["generation"]["memory"]["select"] == "levels"
    with pytest.raises(ValueError, match="differ in generation"):
        ew.merge_results([new, dict(old, generation=dict(gen, memory=dict(gen["memory"], top_k=7)))])


def test_timing_parts(tiny_result):
    """Where an eval's time goes: setup, ground truth, generation (the rows' seconds), metrics, realism."""
    result, _ = tiny_result
    t = result["timing"]
    assert tuple(t["parts_s"]) == ew.TIME_PARTS and all(v >= 0 for v in t["parts_s"].values())
    gen = sum(r["seconds"] for r in result["rows"] if r["seconds"] is not None)
    assert t["parts_s"]["generation"] == pytest.approx(gen, abs=0.01)
    assert t["parts_s"]["setup"] > 0 and t["parts_s"]["realism"] > 0
    assert sum(v for k, v in t["parts_s"].items() if k != "setup") <= t["seconds"] + 0.01
    assert "time: setup" in ew.format_table(result)
    other = json.loads(json.dumps(result))  # the same runs as if on another world
    for r in other["rows"]:
        r["seed"] += 1
    other["seeds"] = [s + 1 for s in other["seeds"]]
    merged = ew.merge_results([result, other])
    assert merged["timing"]["parts_s"]["generation"] == pytest.approx(2 * gen, abs=0.02)
