"""The wheel (issue 19 point 5): every config and path file inside it; a non-editable install runs
``vidhash generate --model random-tiny``, ``vidhash train cpu_test`` and ``vidhash coherence`` from
outside the repository; vidhash runs without triton (a CPU build of torch brings none).

The install test is slow (a wheel build and three CLI runs): .ci/run runs it after ``make test``."""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _configs() -> list[str]:
    """The tracked config files, as paths inside the wheel (``vidhash/configs/...``)."""
    out = subprocess.run(["git", "ls-files", "configs"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    files = [f for f in out.split() if f.endswith((".yaml", ".json"))]
    assert any(f.startswith("configs/train/") for f in files) and any(f.startswith("configs/paths/") for f in files)
    return sorted("vidhash/" + f for f in files)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out)], check=True, capture_output=True, text=True)
    (path,) = out.glob("vidhash-*.whl")
    return path


@pytest.mark.slow
@pytest.mark.wheel
def test_wheel_holds_every_config_and_package(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [f for f in _configs() if f not in names]
    assert not missing, f"not in the wheel: {missing}"
    for package in ("vidhash/kernels/ops.py", "vidhash/kernels/memory/__init__.py", "vidhash/pipelines/pipeline_vidhash.py", "vidhash/cli/__init__.py"):
        assert package in names
    assert "vidhash/kernels/__init__.py" not in names  # a namespace package (kernels/README.md)
    assert not [n for n in names if n.startswith(("kernels/", "pipelines/", "configs/", "tests/"))]


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> dict:
    """A venv with the wheel installed (not editable); the dependencies are this interpreter's (a
    .pth after the venv's own site-packages), so nothing is downloaded. Returns the env to run in."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    site.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q", "--target",
                    str(site), str(wheel)], check=True, capture_output=True, text=True)
    (site / "zz_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    env = {**os.environ, "PYTHONPATH": "", "PYTHONNOUSERSITE": "1", "OMP_NUM_THREADS": "1"}
    return {"python": str(venv / "bin" / "python"), "env": env, "site": site}


def _vidhash(installed, cwd, *args, timeout=300):
    code = "import sys; from vidhash.cli import main; sys.exit(main())"
    run = subprocess.run([installed["python"], "-c", code, *args], cwd=cwd, env=installed["env"],
                         capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, f"vidhash {' '.join(args)} failed:\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
    return run


@pytest.mark.slow
@pytest.mark.wheel
def test_wheel_install_runs_generate_train_coherence(installed, tmp_path):
    where = subprocess.run([installed["python"], "-c", "import vidhash, vidhash.configs as c; print(vidhash.__file__);"
                            "print(c.__file__)"], cwd=tmp_path, env=installed["env"], capture_output=True,
                           text=True, check=True).stdout.split()
    assert all(Path(w).is_relative_to(installed["site"]) for w in where), where  # the wheel's, not the repo's
    _vidhash(installed, tmp_path, "generate", "--model", "random-tiny", "--seconds", "1", "--fps", "4",
             "--seed", "0", "--out", "clip.mp4")
    assert (tmp_path / "clip.mp4").stat().st_size > 0 and (tmp_path / "clip.poses.json").exists()
    _vidhash(installed, tmp_path, "coherence", "clip.mp4", "--poses", "clip.poses.json", "--json", "c.json")
    assert (tmp_path / "c.json").exists()
    _vidhash(installed, tmp_path, "train", "cpu_test", "--no-progress", "--no-export", "out_dir=run",
             "max_steps=2", "model.hidden_dim=16", "model.num_heads=2", "model.num_layers=1", "batch_size=2",
             "data.num_frames=4", "noise.chunk_frames=2", "log_every=1")
    assert (tmp_path / "run" / "loss.csv").read_text().count("\n") == 3  # header + 2 steps


def test_runs_without_triton(tmp_path):
    """No triton: the library imports, and generation on the CPU works (the kernels are not needed)."""
    code = ("import sys; sys.modules['triton'] = None\n"  # `import triton` raises ImportError
            "import torch, vidhash, vidhash.attention, vidhash.cli\n"
            "from vidhash.pipelines import VidHashPipeline\n"
            "p = VidHashPipeline.random('tiny'); p.set_progress_bar_config(disable=True)\n"
            "f = p(num_frames=2, num_inference_steps=1, chunk_frames=2, window_frames=4,"
            " generator=torch.Generator().manual_seed(0)).frames\n"
            "assert f.shape[:2] == (1, 2)\n"
            "assert 'triton' not in [m.split('.')[0] for m in sys.modules if sys.modules[m] is not None]\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
