"""The vidhash command line: key=value overrides may follow flags; unknown flags stay errors."""
import pytest

from vidhash.cli import main


def test_overrides_after_flags(capsys):
    assert main(["train", "configs/train/cpu_test.yaml", "--print-config", "max_steps=7", "optim.lr=0.01"]) == 0
    out = capsys.readouterr().out
    assert "max_steps: 7" in out and "lr: 0.01" in out


def test_unknown_flag_is_still_an_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "configs/train/cpu_test.yaml", "--bogus", "max_steps=7"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_key_value_for_a_command_without_overrides_is_an_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "hashhop", "--sizes", "1000", "a=b"])  # hashhop takes no overrides
    assert exit_info.value.code == 2
    assert "unrecognized arguments: a=b" in capsys.readouterr().err


def test_generation_guidance_settings_checked():
    import pytest

    from vidhash.config import generate_config, generation_config

    g = generation_config("world")
    assert g.guidance_scale == 3.0 and g.guidance_steps == 2 and g.num_inference_steps == 8
    assert generate_config(["guidance_scale=1"], preset="world").generation.guidance_scale == 1.0
    with pytest.raises(ValueError, match="guidance_scale"):
        generate_config(["guidance_scale=-1"], preset="world")
    with pytest.raises(ValueError, match="guidance_steps"):
        generate_config(["guidance_steps=0"], preset="world")


def test_generation_mass_cap_checked():
    import pytest

    from vidhash.config import generate_config

    assert generate_config(["memory.mass_cap=2560"], preset="world").generation.memory.mass_cap == 2560
    with pytest.raises(ValueError, match="mass_cap must be an int ≥ 0"):
        generate_config(["memory.mass_cap=-1"], preset="world")


# ------------------------------------------------------------------------- the command table


def _commands():
    from vidhash.cli import COMMANDS

    for name, spec in COMMANDS.items():
        if isinstance(spec, dict):
            yield from ([name, sub] for sub in spec)
        else:
            yield [name]


@pytest.mark.parametrize("command", list(_commands()), ids=" ".join)
def test_every_command_loads_and_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: vidhash {' '.join(command)}") and "--" in out


def test_a_group_alone_shows_its_help_and_fails(capsys):
    assert main(["bench"]) == 2
    out = capsys.readouterr().out
    assert out.startswith("usage: vidhash bench") and "hashhop" in out and "generation" in out
    assert main([]) == 2 and "COMMAND" in capsys.readouterr().out


def test_unknown_flag_shows_the_usage_of_its_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "world", "random-tiny", "--bogus"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: vidhash eval world") and "unrecognized arguments: --bogus" in err


def test_version(capsys):
    import vidhash

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"vidhash {vidhash.__version__}"


def test_help_imports_no_command_module():
    """`vidhash --help` lists every command without importing any command's module."""
    import subprocess
    import sys

    code = ("import sys\nfrom vidhash.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.startswith(('vidhash.cli.', 'vidhash.bench', 'vidhash.eval', "
            "'vidhash.generate', 'vidhash.pipelines', 'vidhash.training', 'diffusers'))))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "generate" in res.stdout and res.stdout.strip().splitlines()[-1] == "[]"


def test_argparse_and_the_cli_stay_in_the_cli_package():
    """argparse is imported only under vidhash/cli/, and nothing outside it imports vidhash.cli (no cycle) —
    but vidhash/__main__.py, the ``python -m vidhash`` entry point, which nothing imports."""
    import ast
    from pathlib import Path

    import vidhash

    root = Path(vidhash.__file__).resolve().parent
    offenders = []
    for path in root.rglob("*.py"):
        if (root / "cli") in path.parents or path == root / "__main__.py":
            continue
        package = ["vidhash", *path.relative_to(root).parent.parts]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):  # relative imports made absolute
                base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
                module = ".".join(x for x in (base, node.module) if x)
                names = [module, *(f"{module}.{a.name}" for a in node.names)]
            else:
                continue
            if any(n == "argparse" or n == "vidhash.cli" or n.startswith("vidhash.cli.") for n in names):
                offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert not offenders


def test_bench_realism_prints_the_validation_table(capsys, monkeypatch):
    """`vidhash bench realism` (was `python -m vidhash.metrics.realism`): real frames score as real,
    blur does not; a small bank keeps the test fast."""
    from vidhash.metrics import realism

    small = realism.RealismBank.build(world_size=256, bank_worlds=1, bank_frames=8, bank_size=512, cal_worlds=1,
                                      cal_frames=4)
    monkeypatch.setattr(realism, "realism_bank", lambda world_size: small)
    assert main(["bench", "realism", "--world-size", "256", "--seeds", "1000000", "--frames", "2"]) == 0
    rows = {line[:44].strip(): line.split() for line in capsys.readouterr().out.splitlines()[2:]}
    assert set(rows) >= {"real, worlds 1000000…1000000", "real, mp4 round trip (crf 18)", "blur σ 2.0"}
    assert float(rows["blur σ 2.0"][-3]) > float(rows["real, worlds 1000000…1000000"][-3])  # farther from real


# --------------------------------------------------------------- generate: frame prompts, --dtype (issue 19)

PROMPT_RUN = ["--model", "random-tiny", "--seconds", "0.5", "--quiet", "num_inference_steps=1", "height=32", "width=32"]


def _pictures(tmp_path):
    """Two unlike images of another size than the frames (50×70 vs 32×32)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i, colour in enumerate(([230, 40, 40], [30, 60, 220])):
        array = np.clip(np.array(colour)[None, None] + rng.normal(0, 10, (50, 70, 3)), 0, 255).astype(np.uint8)
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(array).save(paths[-1])
    return paths


def _resized(path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB").resize((32, 32), Image.Resampling.BICUBIC), dtype=np.float64)


def test_image_prompt_opens_the_clip_and_is_the_context(tmp_path):
    """--image: resized to the frame size, written first and given to the pipeline as the context
    frame (the state counts it); the first frame is the image's, not the other image's."""
    import json

    import numpy as np

    from vidhash.data.video import read_frames
    from vidhash.pipelines import VidHashState

    mine, other = _pictures(tmp_path)
    out = tmp_path / "clip.mp4"
    assert main(["generate", *PROMPT_RUN, "--image", str(mine), "--out", str(out),
                 "--save-state", str(tmp_path / "s.pt")]) == 0
    frames = read_frames(out).astype(np.float64)
    poses = json.loads((tmp_path / "clip.poses.json").read_text())
    assert (poses["prompt_image"], poses["prompt_frames"], poses["actions"][0]) == (str(mine), 1, None)
    assert len(frames) == len(poses["poses"]) == 1 + 4 and VidHashState.load(tmp_path / "s.pt").frame_index == 5
    assert np.abs(frames[0] - _resized(mine)).mean() < np.abs(frames[0] - _resized(other)).mean()


def test_video_prompt_takes_the_last_frames(tmp_path):
    """--video with --prompt-frames 3: the clip's last 3 frames, resized, open the output."""
    import json

    import numpy as np

    from vidhash.data.video import read_frames
    from vidhash.metrics.synthetic import synthetic_clip, write_video

    clip, _ = synthetic_clip("pan", seconds=2, fps=8, size=48)
    video = write_video(str(tmp_path / "in.mp4"), clip, fps=8)
    source = read_frames(video, height=32, width=32).astype(np.float64)
    out = tmp_path / "clip.mp4"
    assert main(["generate", *PROMPT_RUN, "--video", video, "--prompt-frames", "3", "--out", str(out)]) == 0
    frames = read_frames(out).astype(np.float64)
    assert json.loads((tmp_path / "clip.poses.json").read_text())["prompt_frames"] == 3 and len(frames) == 3 + 4
    near = [int(np.argmin([np.abs(f - s).mean() for s in source])) for f in frames[:3]]
    assert near == [len(source) - 3, len(source) - 2, len(source) - 1], near


def test_dtype_sets_the_weights_and_the_state(tmp_path):
    from vidhash.pipelines import VidHashState

    out = tmp_path / "clip.mp4"
    assert main(["generate", *PROMPT_RUN, "--dtype", "bfloat16", "--out", str(out),
                 "--save-state", str(tmp_path / "s.pt")]) == 0
    assert VidHashState.load(tmp_path / "s.pt").config["dtype"] == "bfloat16"
    assert "dtype: bfloat16" in (tmp_path / "clip.config.yaml").read_text()


def test_only_a_program_run_freezes_the_collector(monkeypatch, capsys):
    """`vidhash ...` (argv from sys.argv) moves the objects alive at its start and end out of the
    collector's generations, for a quick exit; main(argv) called from Python leaves them."""
    import gc

    args = ["train", "configs/train/cpu_test.yaml", "--print-config"]
    gc.unfreeze()
    try:
        assert main(args) == 0 and gc.get_freeze_count() == 0
        monkeypatch.setattr("sys.argv", ["vidhash", *args])
        assert main() == 0 and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


@pytest.mark.parametrize("argv", [
    ["generate", "--model", "random-tiny", "--out", ""],
    ["generate", "--model", "random-tiny", "--save-state", ""],
    ["generate", "--model", "random-tiny", "--resume", ""],
    ["generate", "--model", "random-tiny", "--actions", ""],
    ["generate", "--model", "random-tiny", "--image", ""],
    ["coherence", "x.mp4", "--json", ""],
    ["coherence", "x.mp4", "--poses", ""],
    ["eval", "world", "random-tiny", "--json", ""],
    ["calibrate", "random-tiny", "--out", ""],
    ["train", "cpu_test", "--resume", ""],
    ["bench", "hashhop", "--json", ""],
    ["bench", "dropin", "--model", "models/wan-mini", "--strip", ""],
    ["bench", "dropin", "--model", ""],
    ["bench", "generation", "--model", ""],
    ["bench", "selection", "--dropin-cache", ""],
    ["bench", "selection", "--world-cache", ""],
    ["generate", "--model", ""],
], ids=lambda argv: " ".join(a or "''" for a in argv))
def test_an_empty_path_is_a_usage_error(argv, capsys, monkeypatch):
    """`--json ''` and the like were read as the flag not given (generate, coherence, eval world,
    calibrate) or as the current folder ("is a directory"): a usage error naming the flag."""
    import importlib

    for name in ("generate", "coherence", "eval_world", "calibrate", "train"):
        monkeypatch.setattr(importlib.import_module(f"vidhash.cli.{name}"), "run",
                            lambda args: pytest.fail("the command ran"))
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    flag = argv[-2]
    assert exit_info.value.code == 2 and f"error: argument {flag}: is an empty path" in err[-1], err
