"""``vidhash train``: --stop-at-step and out_dir are checked before any training, naming the flag
or key; the key=value overrides are optional (only CONFIG is required)."""
from __future__ import annotations

import pytest

from vidhash.cli import main


@pytest.fixture
def no_training(monkeypatch):
    import vidhash.training.trainer as trainer

    monkeypatch.setattr(trainer, "train", lambda *a, **k: pytest.fail("training started"))


def _refused(capsys, *argv) -> str:
    rc = main(["train", "cpu_test", *argv, "--no-progress", "--no-export"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    return err[0].removeprefix("vidhash train: error: ")


@pytest.mark.parametrize("step", ["0", "-1"])
def test_non_positive_stop_at_step_is_refused(tmp_path, no_training, capsys, step):
    """(defect 8) --stop-at-step -1 (or 0) trained a step, wrote a checkpoint and reported success."""
    line = _refused(capsys, f"out_dir={tmp_path / 'run'}", "--stop-at-step", step)
    assert line.startswith("--stop-at-step must be a positive step") and step in line, line
    assert list(tmp_path.iterdir()) == []


def test_out_dir_that_is_a_file(tmp_path, no_training, capsys):
    """(defect 8) out_dir=FILE ended in [Errno 17] File exists."""
    (tmp_path / "notamodel.txt").write_text("mine")
    line = _refused(capsys, f"out_dir={tmp_path / 'notamodel.txt'}")
    assert line.startswith(f"out_dir={tmp_path / 'notamodel.txt'}") and "is a file" in line and "Errno" not in line
    assert (tmp_path / "notamodel.txt").read_text() == "mine"


def test_out_dir_below_a_file(tmp_path, no_training, capsys):
    (tmp_path / "afile").write_text("mine")
    line = _refused(capsys, f"out_dir={tmp_path / 'afile' / 'run'}")
    assert line.startswith(f"out_dir={tmp_path / 'afile' / 'run'}") and "is a file" in line, line


def test_only_config_is_required(capsys):
    """(defect 8) `vidhash train` alone listed the optional key=value overrides as required."""
    with pytest.raises(SystemExit) as exit_info:
        main(["train"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "the following arguments are required: config" in err and "key=value" not in err.splitlines()[-1], err


def test_config_alone_still_parses(capsys):
    assert main(["train", "cpu_test", "--print-config"]) == 0
    assert "max_steps" in capsys.readouterr().out


def test_a_non_finite_loss_is_one_error_line(tmp_path, monkeypatch, capsys):
    """`optim.lr=1e30` ended in the loop's FloatingPointError traceback (its message is the advice):
    now that message on one line, exit status 1."""
    import vidhash.training.trainer as trainer

    def diverge(*args, **kwargs):
        raise FloatingPointError("loss is nan in steps 2..2; lower optim.lr or use mixed_precision=no")

    monkeypatch.setattr(trainer, "train", diverge)
    rc = main(["train", "cpu_test", f"out_dir={tmp_path / 'run'}", "optim.lr=1e30", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err == ["vidhash train: error: loss is nan in steps 2..2; lower optim.lr or use mixed_precision=no"]


def test_max_minutes_help_says_zero_is_no_limit(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "this many minutes of wall time (0: no limit;" in help_text
