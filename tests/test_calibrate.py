"""vidhash calibrate: recording, fitting, report, written pipeline, errors (tiny random model, CPU)."""
import json

import pytest
import torch

from vidhash.calibrate import CalibrateConfig, record
from vidhash.cli import main
from vidhash.pipelines import VidHashPipeline

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
], ids=["random-without-out", "clip-too-short", "zero-bits", "missing-model"])
def test_errors(argv, match, capsys):
    assert main(["calibrate", *argv]) == 2
    assert match in capsys.readouterr().err


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
