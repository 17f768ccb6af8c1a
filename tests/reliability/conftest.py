"""Reliability cases as a user meets them: real ``vidhash`` subprocesses (``sys.executable -m vidhash.cli``).

Every scenario's processes start together, once per session (:func:`scenarios`), so the suite costs
about its longest run, not their sum, on a loaded 2-core machine. When the session has collected a
test that needs them they start at the end of collection, at low priority (``nice``): they run on
the core the in-process tests leave idle and are done, or nearly, when the first test waits. Each is tiny: ``random-tiny``,
one second, one denoising step, 32×32 frames. A test waits for the runs it checks."""
from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from reliability_helpers import LINKED, RESUME

REPO = Path(__file__).resolve().parents[2]
FAST = ["--seconds", "1", "--quiet", "num_inference_steps=1", "height=32", "width=32"]
TIMEOUT_S = 300
_BACKGROUND = [False]  # Runs started while this holds True run at low priority (started at collection)
LOW_PRIORITY = ["nice", "-n", "19"] if shutil.which("nice") else []


class Payload:
    """A pickle that creates ``marker`` when it is unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@dataclass
class Run:
    """One ``vidhash`` subprocess: started at once, waited for on first use."""

    args: list[str]
    cwd: Path
    proc: subprocess.Popen = field(init=False, repr=False)
    _result: tuple[int, str, str] | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        nice = LOW_PRIORITY if _BACKGROUND[0] else []
        self.proc = subprocess.Popen([*nice, sys.executable, "-m", "vidhash.cli", *self.args], cwd=self.cwd,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONPATH": str(REPO)})

    def result(self) -> tuple[int, str, str]:
        """(exit status, stdout, stderr)."""
        if self._result is None:
            out, err = self.proc.communicate(timeout=TIMEOUT_S)
            self._result = (self.proc.returncode, out, err)
        return self._result


def generate(tmp: Path, out: str, *extra: str) -> Run:
    return Run(["generate", "--model", "random-tiny", "--out", str(tmp / out), *FAST, *extra], tmp)


INTERRUPT_AFTER = 4  # growths of the partial mp4 (about one per chunk) before the signal


def _signal_when_written(run: Run, partial: Path, signum: int) -> None:
    """Send ``signum`` to ``run`` once ``partial`` has grown ``INTERRUPT_AFTER`` times (chunks written)."""
    sizes = {0}
    while run.proc.poll() is None:
        try:
            sizes.add(partial.stat().st_size)
        except FileNotFoundError:
            pass
        if len(sizes) > INTERRUPT_AFTER:
            run.proc.send_signal(signum)
            return
        time.sleep(0.05)


def _interrupt(root: Path) -> dict:
    """A long clip stopped by SIGINT after a few chunks (the resume and the straight run for the same
    frames start in the test, which needs to know where it stopped)."""
    run = Run(["generate", "--model", "random-tiny", "--out", str(root / "int.mp4"), "--seconds", "60",
               "--seed", "3", "--save-state", str(root / "int.state.pt"), *RESUME], root)
    threading.Thread(target=_signal_when_written, args=(run, root / "int.partial.mp4", signal.SIGINT),
                     daemon=True).start()
    return {"interrupt": run}




def _race(root: Path) -> dict:
    """Two runs on one --out, started together (they differ in fps and seed), in a folder with a
    symlink planted at every fixed name a finished run writes (and at the old poses temp name)."""
    (root / "targets").mkdir()
    for name in LINKED:
        (root / "targets" / name).write_text(f"precious {name}")
        (root / name).symlink_to(root / "targets" / name)
    state = ["--save-state", str(root / "state.pt")]
    return {"race_a": generate(root, "clip.mp4", "--fps", "8", "--seed", "1", *state),
            "race_b": generate(root, "clip.mp4", "--fps", "4", "--seed", "2", *state)}


def _partial_link(root: Path) -> dict:
    (root / "target").write_text("precious")
    (root / "clip.partial.mp4").symlink_to(root / "target")
    return {"partial_link": generate(root, "clip.mp4")}


def _state_is_out(root: Path) -> dict:
    """--save-state = --out with a model folder that cannot load: the refusal must come first."""
    (root / "broken-model").mkdir()
    (root / "broken-model" / "model_index.json").write_text("not json")
    return {"state_is_out": Run(["generate", "--model", str(root / "broken-model"), "--out", str(root / "clip.mp4"),
                                 "--save-state", str(root / "clip.mp4"), *FAST], root)}


def _train_pickle(root: Path) -> dict:
    """A checkpoint of the old format whose meta.pt carries a payload."""
    import torch

    folder = root / "ckpt" / "step-00000002"
    folder.mkdir(parents=True)
    torch.save({"format": "vidhash-train-ckpt/1", "step": 2, "files": [], "fingerprint": Payload(root / "ran")},
               folder / "meta.pt")
    return {"train_pickle": Run(["train", "cpu_test", f"out_dir={root / 'run'}", "--resume", str(root / "ckpt"),
                                 "--no-progress", "--no-export"], root)}


def _coherence_pickle(root: Path) -> dict:
    """A .pt2 encoder whose sample inputs are a payload pickle (torch.export.load unpickled them)."""
    import torch

    from vidhash.metrics.synthetic import synthetic_clip, write_video

    frames, _ = synthetic_clip("pan", seconds=1, fps=8, size=32)
    video = write_video(str(root / "v.mp4"), frames, fps=8)

    class Tiny(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3))

    good = root / "good.pt2"
    torch.export.save(torch.export.export(Tiny(), (torch.randn(1, 3, 224, 224),)), str(good))
    buf = io.BytesIO()
    torch.save({"x": Payload(root / "ran")}, buf)
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(root / "bad.pt2", "w") as zout:
        for name in zin.namelist():
            zout.writestr(name, buf.getvalue() if name.endswith("sample_inputs/model.pt") else zin.read(name))
    return {"coherence_pickle": Run(["coherence", video, "--features-weights", str(root / "bad.pt2"), "--no-progress"],
                                    root),
            "coherence_json_is_video": Run(["coherence", video, "--json", video, "--no-progress"], root)}


SCENARIOS = {"interrupt": _interrupt, "race": _race, "partial_link": _partial_link, "state_is_out": _state_is_out,
             "train_pickle": _train_pickle, "coherence_pickle": _coherence_pickle}


@pytest.fixture(scope="session")
def vidhash_run():
    """``vidhash_run(args, cwd)``: start one more ``vidhash`` subprocess (a :class:`Run`)."""
    return Run


def _start_scenarios(tmp_path_factory) -> dict:
    """name -> (folder, {run name: Run}); every process is started before any is waited for."""
    started = {}
    try:
        for name, make in SCENARIOS.items():
            root = tmp_path_factory.mktemp(name)
            started[name] = (root, make(root))
    except BaseException:
        _stop(started)
        raise
    return started


def _stop(started: dict) -> None:
    for _, runs in started.values():
        for run in runs.values():
            if run.proc.poll() is None:
                run.proc.kill()
                run.proc.wait()


_early: dict | None = None  # the scenarios started at the end of collection


def pytest_collection_finish(session):
    global _early
    here = Path(__file__).resolve().parent
    if _early is None and not session.config.option.collectonly and any(
            "scenarios" in getattr(item, "fixturenames", ()) and here in Path(str(item.path)).parents
            for item in session.items):
        _BACKGROUND[0] = True
        try:
            _early = _start_scenarios(session.config._tmp_path_factory)
        finally:
            _BACKGROUND[0] = False


def pytest_sessionfinish(session):
    if _early is not None:
        _stop(_early)


@pytest.fixture(scope="session")
def scenarios(tmp_path_factory) -> dict:
    """name -> (folder, {run name: Run}); every process is started before any is waited for (at the
    end of collection when the session collected a test that needs them, else here)."""
    started = _early if _early is not None else _start_scenarios(tmp_path_factory)
    try:
        yield started
    finally:
        _stop(started)
