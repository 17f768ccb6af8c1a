"""Training logs through accelerate's trackers (issue 19 point 5): TensorBoard event files when
tensorboard is installed, ``loss.csv`` always (the log a resumed run continues)."""
from __future__ import annotations

import pytest

from vidhash.training.trainer import log_trackers

from test_train import csv_rows, micro, run_train


def test_trackers_follow_what_is_installed(monkeypatch):
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, "is_tensorboard_available", lambda: False)
    assert log_trackers() is None
    monkeypatch.setattr(accelerate.utils, "is_tensorboard_available", lambda: True)
    assert log_trackers() == ["tensorboard"]


def test_tensorboard_gets_the_loss_rows(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = micro(tmp_path, "max_steps=3")
    run_train(cfg)
    rows = csv_rows(tmp_path / "run" / "loss.csv")
    events = list((tmp_path / "run").rglob("events.out.tfevents.*"))
    assert len(events) == 1, events
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [int(r["step"]) for r in rows] == [1, 2, 3]
    assert [e.value for e in loss] == pytest.approx([float(r["loss"]) for r in rows], rel=1e-5)
