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
    with pytest.raises(ValueError, match="memory.mass_cap must be ≥ 0"):
        generate_config(["memory.mass_cap=-1"], preset="world")
