"""``vidhash bench train-compare RUN_A RUN_B`` on synthetic runs: time to the reference's final
validation loss (interpolated), the ratio, losses at equal GPU time, the run formats it reads."""
import csv
import json

import pytest

from vidhash.bench.train_compare import compare, loss_at, read_curve, time_to_reach
from vidhash.cli import main as cli_main

FIELDS = ("step", "loss", "elapsed_s", "val_loss", "val_loss_ema")


def write_csv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in FIELDS})
    return path


def rows(points, every=2):
    """Log rows every 25 steps at (seconds, ema loss) points; validations on every ``every``-th row only."""
    out = []
    for i, (t, v) in enumerate(points):
        row = {"step": 25 * (i + 1), "loss": 0.1, "elapsed_s": t}
        if i % every == every - 1:
            row.update(val_loss=v + 0.01, val_loss_ema=v)
        out.append(row)
    return out


DENSE = [(100, 9), (200, 0.50), (300, 9), (400, 0.40), (500, 9), (600, 0.30)]  # validations: 200 .50, 400 .40, 600 .30
SPARSE = [(50, 9), (100, 0.45), (150, 9), (200, 0.35), (250, 9), (300, 0.25)]  # 100 .45, 200 .35, 300 .25


def test_time_to_reach_and_ratio(tmp_path):
    a = read_curve(write_csv(tmp_path / "dense" / "loss.csv", rows(DENSE)))
    b = read_curve(write_csv(tmp_path / "sparse" / "loss.csv", rows(SPARSE)))
    assert a.steps == (50, 100, 150) and a.seconds == (200.0, 400.0, 600.0) and a.name == "dense"
    r = compare(a, b)
    assert r["target"] == 0.30
    # dense reaches its own final loss at its last validation; sparse between 200 s (.35) and 300 s (.25)
    assert r["runs"][0]["gpu_s_to_target"] == 600 and r["runs"][1]["gpu_s_to_target"] == pytest.approx(250)
    assert r["ratio"] == pytest.approx(250 / 600)
    # equal GPU time: the shorter run's end (300 s), the dense curve interpolated there (.50 → .40 over 200..400)
    assert r["equal_time_s"] == 300 and r["runs"][0]["loss_at_equal_time"] == pytest.approx(0.45)
    assert r["runs"][1]["loss_at_equal_time"] == pytest.approx(0.25)
    assert compare(b, a)["ratio"] is None  # dense never reaches .25


def test_matched_losses_while_both_runs_are_unfinished(tmp_path, capsys):
    a = read_curve(write_csv(tmp_path / "dense" / "loss.csv", rows(DENSE)))
    b = read_curve(write_csv(tmp_path / "sparse" / "loss.csv", rows(SPARSE)))
    m = compare(a, b)["matched"]
    # sparse's .45 at 100 s: dense crossed .45 halfway between 200 s (.50) and 400 s (.40) → 300 s
    assert [x["step"] for x in m] == [50, 100, 150] and m[0]["gpu_s_a"] == pytest.approx(300)
    assert m[0]["ratio"] == pytest.approx(100 / 300) and m[1]["ratio"] == pytest.approx(200 / 500)
    assert m[2]["gpu_s_a"] is None and m[2]["ratio"] is None  # .25: dense never got there
    assert compare(a, b)["matched_median_ratio"] == pytest.approx((1 / 3 + 2 / 5) / 2)
    assert cli_main(["bench", "train-compare", str(tmp_path / "dense"), str(tmp_path / "sparse")]) == 0
    out = capsys.readouterr().out
    assert "not reached" in out and "median ratio over the losses both reached: 0.367" in out


def test_edges_of_the_curve(tmp_path):
    c = read_curve(write_csv(tmp_path / "r.csv", rows([(10, 0.5), (20, 0.7), (30, 0.4), (40, 0.2)], every=1)))
    assert time_to_reach(c, 0.6) == 10  # already there at the first validation
    assert time_to_reach(c, 0.45) == pytest.approx(20 + 10 * (0.7 - 0.45) / 0.3)  # the first crossing, not the dip
    assert time_to_reach(c, 0.1) is None
    assert loss_at(c, 5) is None and loss_at(c, 45) is None and loss_at(c, 35) == pytest.approx(0.3)
    assert read_curve(tmp_path / "r.csv", "val_loss").losses[0] == pytest.approx(0.51)
    assert read_curve(tmp_path / "r.csv", gpus=2).seconds == (20.0, 40.0, 60.0, 80.0)  # GPU-seconds


def test_exports_train_state_rows_and_the_cli(tmp_path, capsys):
    write_csv(tmp_path / "dense.csv", rows(DENSE))  # a loss.csv file by path
    export = tmp_path / "wan-mini-sparse8"  # an export: rows in train_state.json, missing keys for no validation
    export.mkdir()
    state_rows = [{k: v for k, v in r.items() if k in FIELDS} for r in rows(SPARSE)]
    (export / "train_state.json").write_text(json.dumps({"fingerprint": "x", "config": "", "run": {"rows": state_rows}}))
    out = tmp_path / "cmp.json"
    assert cli_main(["bench", "train-compare", str(tmp_path / "dense.csv"), str(export), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "wan-mini-sparse8" in text and "0.417×" in text and "target ≤ 0.6: met" in text
    saved = json.loads(out.read_text())
    assert saved["ratio"] == pytest.approx(250 / 600) and saved["gpus"] == [1, 1] and saved["metric"] == "val_loss_ema"
    assert cli_main(["bench", "train-compare", str(tmp_path / "dense.csv"), str(export), "--gpus", "1,4"]) == 0
    assert "missed by" in capsys.readouterr().out  # 4 GPUs: 1000 GPU-s to the target, 1.67×
    kept = tmp_path / "sparse8-state.json"  # a train_state.json kept under another name (docs/log): named by it
    kept.write_text((export / "train_state.json").read_text())
    assert read_curve(kept).name == "sparse8-state" and read_curve(export / "train_state.json").name == "wan-mini-sparse8"


@pytest.mark.parametrize("argv, match", [
    (["--gpus", "1"], "--gpus"),
    (["--gpus", "0,1"], "--gpus"),
    (["--target-ratio", "-1"], "--target-ratio"),
])
def test_flag_errors_name_the_flag(tmp_path, capsys, argv, match):
    run = write_csv(tmp_path / "loss.csv", rows(DENSE))
    assert cli_main(["bench", "train-compare", str(run), str(run), *argv]) == 2
    assert match in capsys.readouterr().err


def test_runs_that_cannot_be_compared(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run"):
        read_curve(tmp_path)
    no_val = write_csv(tmp_path / "a" / "loss.csv", [{"step": 25, "loss": 0.1, "elapsed_s": 10}])
    with pytest.raises(ValueError, match="no row has val_loss_ema"):
        read_curve(no_val.parent)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "train_state.json").write_text("{}")
    with pytest.raises(ValueError, match="not a train_state.json"):
        read_curve(tmp_path / "b")
    (tmp_path / "notes.md").write_text("# a run\n\nno table here\n")
    with pytest.raises(ValueError, match="not a loss.csv"):
        read_curve(tmp_path / "notes.md")


@pytest.mark.parametrize("content, match", [
    ("{not json", "not a train_state.json \\(not JSON"),
    ({"run": {"rows": None}}, r"run.rows is not a list of rows"),
    ({"run": {"rows": {"step": 25}}}, r"run.rows is not a list of rows"),
    ({"run": {"rows": ["x"]}}, r"run.rows is not a list of rows"),
    ({"run": [1]}, r"not a train_state.json \(no run.rows\)"),
    ({"run": {"rows": [{"elapsed_s": 5, "val_loss_ema": 0.9}]}}, r"the row of step None .*not an integer step"),
    ({"run": {"rows": [{"step": 10.5, "elapsed_s": 5, "val_loss_ema": 0.9}]}}, r"the row of step 10.5 .*not an integer step"),
    ({"run": {"rows": [{"step": 10, "elapsed_s": 5, "val_loss_ema": "abc"}]}}, r"val_loss_ema 'abc'.*not an integer step and numbers"),
    ({"run": {"rows": [{"step": 10, "elapsed_s": -5, "val_loss_ema": 0.9}]}}, r"elapsed_s -5: training seconds are never negative"),
])
def test_broken_train_states_name_the_file(tmp_path, capsys, content, match):
    """Malformed rows ended in a KeyError / AttributeError / TypeError traceback, or an error without the
    file (bad JSON, a loss that is not a number); a negative elapsed_s gave negative ratios."""
    good = write_csv(tmp_path / "a" / "loss.csv", rows(DENSE))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "train_state.json").write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ValueError, match=match):
        read_curve(tmp_path / "b")
    assert cli_main(["bench", "train-compare", str(good), str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error: " in err[0] and "train_state.json" in err[0], err


def test_a_loss_csv_step_that_is_not_an_integer_names_the_file(tmp_path):
    bad = write_csv(tmp_path / "a" / "loss.csv", [{"step": "x", "elapsed_s": 1, "val_loss_ema": 0.5}])
    with pytest.raises(ValueError, match=r"loss.csv: the row of step 'x'"):
        read_curve(bad)


def test_reference_at_its_final_loss_from_the_start_is_no_miss_of_the_candidate(tmp_path, capsys):
    """RUN_A at its final loss at 0 GPU-s (its first validation row, elapsed_s 0): the ratio is undefined,
    and the report said RUN_B did not reach the target although it did."""
    a = write_csv(tmp_path / "a" / "loss.csv", [{"step": 0, "elapsed_s": 0, "val_loss_ema": 0.3},
                                                {"step": 10, "elapsed_s": 10, "val_loss_ema": 0.3}])
    b = write_csv(tmp_path / "b" / "loss.csv", [{"step": 10, "elapsed_s": 5, "val_loss_ema": 0.2}])
    assert cli_main(["bench", "train-compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "RUN_B did not reach" not in out and "RUN_A reached its final loss at 0 GPU-s" in out
    result = compare(read_curve(a), read_curve(b))
    assert result["ratio"] is None and result["runs"][1]["gpu_s_to_target"] == 5


def test_a_calls_last_validation_is_a_point_of_its_curve(tmp_path):
    """A call that stops between log rows still leaves its closing validation in loss.csv (a row of
    its own: step, elapsed_s, the validation losses) and in the export's rows."""
    from pathlib import Path

    from vidhash.training import load_train_config
    from vidhash.training.trainer import train

    recipe = Path(__file__).resolve().parents[2] / "configs" / "train" / "wan_mini_cpu.yaml"
    cfg = load_train_config(str(recipe), ["data.num_frames=8", "noise.max_context_frames=3", "batch_size=2",
                                          f"out_dir={tmp_path / 'run'}", "max_steps=8", "log_every=2", "val_every=2",
                                          "val_clips=2"])
    s = train(cfg, stop_at_step=5, progress=False, log=lambda *a, **k: None)  # as a time limit or a signal would
    assert s["step"] == 5
    with open(tmp_path / "run" / "loss.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [2, 4, 5]
    assert rows[-1]["loss"] == "" and float(rows[-1]["val_loss_ema"]) == pytest.approx(s["val_loss_ema"])
    assert float(rows[-1]["elapsed_s"]) >= float(rows[-2]["elapsed_s"])
    curve = read_curve(tmp_path / "run")
    assert curve.steps == (2, 4, 5) and curve.losses[-1] == pytest.approx(s["val_loss_ema"])
    assert read_curve(s["export"]).steps == (2, 4, 5)  # train_state.json's rows
