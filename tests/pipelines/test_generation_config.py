"""One source of defaults: a pipeline folder carries its GenerationConfig (model_index.json), which
``from_pretrained`` (VidHashPipeline or DiffusionPipeline) and ``vidhash generate`` both start from."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from vidhash.config import generate_config, generation_for
from vidhash.generation_config import GenerationConfig, MemorySettings
from vidhash.memory import MemoryRead
from vidhash.pipelines import VidHashPipeline
from vidhash.presets import generation_from_dict, generation_preset

REPO = Path(__file__).resolve().parents[2]
# settings unlike the tiny preset (and unlike the call's old signature defaults) in every field
SAVED = GenerationConfig(
    height=32, width=32, chunk_frames=2, window_frames=4, num_inference_steps=2, action_step=8,
    memory=MemorySettings(mode="hashed", num_buckets=8, slots=4, n_bits=32, policy="merge", seed=1, top_k=3, mass_cap=12),
    guidance_scale=2.0, guidance_steps=1,
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    pipe = VidHashPipeline.random("tiny", seed=0)
    pipe.generation_config = SAVED
    path = tmp_path_factory.mktemp("pipe") / "saved"
    pipe.save_pretrained(path)
    return path


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_saved_in_model_index_and_read_back(folder):
    index = json.loads((folder / "model_index.json").read_text())
    assert generation_from_dict(index["generation_config"]) == SAVED
    assert VidHashPipeline.from_pretrained(folder).generation_config == SAVED
    assert generation_for(str(folder)) == SAVED  # what the CLI reads, without loading weights


def test_diffusion_pipeline_from_pretrained_is_a_vidhash_pipeline(folder):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(folder)
    assert type(pipe) is VidHashPipeline and pipe.generation_config == SAVED


def test_python_and_cli_make_the_same_frames(folder, tmp_path):
    """``VidHashPipeline.from_pretrained(folder)(num_frames=N, ...)`` and ``vidhash generate --model
    folder`` with the same seed: bitwise the same frames (the CLI's own stream) and state (the
    CLI's file). Generating with the tiny preset instead would differ — the test can fail."""
    from vidhash.generate import generate, load_pipeline, stream_arguments

    seed, fps, seconds = 3, 8, 1.0
    num_frames = int(seconds * fps)
    cfg = generate_config([], model=str(folder), seconds=seconds, fps=fps, seed=seed, out=str(tmp_path / "clip.mp4"),
                          save_state=str(tmp_path / "cli.state.pt"), device="cpu")
    assert cfg.generation == SAVED
    assert generate(cfg, progress=False) == 0
    python = _quiet(VidHashPipeline.from_pretrained(folder))(
        num_frames=num_frames, generator=torch.Generator().manual_seed(seed), trajectory_seed=seed, output_type="pt")
    with safe_open(str(tmp_path / "cli.state.pt"), "pt") as f:
        cli_state = {k: f.get_tensor(k) for k in f.keys()}
    path = python.state.save(tmp_path / "python.state.pt")
    with safe_open(str(path), "pt") as f:
        assert all(torch.equal(cli_state[k], f.get_tensor(k)) for k in f.keys())
    # the frames of the stream the CLI runs (its arguments, its library function)
    pipe = load_pipeline(cfg, torch.device("cpu"), progress=False)
    cli_frames = torch.cat([c.frames for c in pipe.stream(num_frames, **stream_arguments(cfg, pipe, num_frames, None,
                                                                                        None, None))], 1)
    assert torch.equal(cli_frames, python.frames)
    tiny = _quiet(VidHashPipeline.from_pretrained(folder, generation_config=generation_preset("tiny").to_dict()))
    other = tiny(num_frames=num_frames, generator=torch.Generator().manual_seed(seed), trajectory_seed=seed,
                 output_type="pt")
    assert other.frames.shape != python.frames.shape or not torch.equal(other.frames, python.frames)


def test_shipped_model_carries_the_world_preset():
    folder = REPO / "models" / "world-tiny-v3"
    saved = json.loads((folder / "model_index.json").read_text())["generation_config"]
    assert generation_from_dict(saved) == generation_preset("world")
    assert generation_for(str(folder)) == generation_preset("world")


def test_a_folder_saved_before_the_setting_loads_with_its_size_preset(tmp_path):
    """Old folders (no generation_config in model_index.json) still load, and Python and CLI agree
    on their settings: the preset of the model's size (world-tiny-v3 before: the world preset)."""
    old = tmp_path / "world-tiny-v3-old"
    old.mkdir()
    for part in ("transformer", "scheduler"):
        (old / part).symlink_to(REPO / "models" / "world-tiny-v3" / part)
    index = json.loads((REPO / "models" / "world-tiny-v3" / "model_index.json").read_text())
    index.pop("generation_config")
    (old / "model_index.json").write_text(json.dumps(index))
    assert VidHashPipeline.from_pretrained(old).generation_config == generation_preset("world") == generation_for(str(old))
    tiny = tmp_path / "tiny-old"
    VidHashPipeline.random("tiny").save_pretrained(tiny)
    index = json.loads((tiny / "model_index.json").read_text())
    index.pop("generation_config")
    (tiny / "model_index.json").write_text(json.dumps(index))
    assert VidHashPipeline.from_pretrained(tiny).generation_config == generation_preset("tiny") == generation_for(str(tiny))


def test_random_pipelines_carry_their_size_preset():
    assert VidHashPipeline.random("world").generation_config == generation_preset("world")
    assert VidHashPipeline.load("random-small").generation_config == generation_preset("small")


def test_call_arguments_override_the_saved_settings(folder):
    pipe = _quiet(VidHashPipeline.from_pretrained(folder))
    settings = pipe.resolve_settings(height=64, width=64, memory={"top_k": None})
    assert (settings.height, settings.memory.top_k, settings.memory.num_buckets) == (64, None, 8)
    out = pipe(num_frames=2, height=64, width=64, generator=torch.Generator().manual_seed(0))
    assert out.frames.shape == (1, 2, 64, 64, 3) and out.state.memory_size.num_buckets == 8


@pytest.mark.parametrize("data,match", [
    ({"chunk_frame": 2}, "chunk_frame"),
    ({"height": "tall"}, "height"),
    ({"memory": {"top_k": 0}}, "top_k must be a positive int or None"),
    ({"memory": {"bucketz": 2}}, "bucketz"),
    ({"memory": {"select": "fastest"}}, "select must be one of"),
    ({"chunk_frames": 9, "window_frames": 8}, r"chunk_frames \(9\) is larger than window_frames \(8\)"),
], ids=["unknown-key", "wrong-type", "top-k", "unknown-memory-key", "select", "chunk-gt-window"])
def test_a_bad_saved_config_names_the_key(data, match):
    with pytest.raises(ValueError, match=match):
        generation_from_dict(data)


def test_memory_select_is_saved_only_when_not_the_default():
    """A folder saved with the default read kernel keeps the keys it had before ``memory.select``
    existed; another kernel is saved and read back."""
    assert "select" not in GenerationConfig().to_dict()["memory"]
    levels = GenerationConfig(memory=MemorySettings(select="levels"))
    assert levels.to_dict()["memory"]["select"] == "levels"
    assert generation_from_dict(levels.to_dict()) == levels
    assert generation_from_dict(GenerationConfig().to_dict()) == GenerationConfig()


def test_generation_config_is_validated_and_frozen():
    with pytest.raises(ValueError, match="guidance_scale"):
        GenerationConfig(guidance_scale=-1.0)
    with pytest.raises(ValueError, match="memory.mode"):
        MemorySettings(mode="dense")
    with pytest.raises(AttributeError):
        SAVED.height = 64  # frozen: a pipeline's settings change only by assigning a new config
    pipe = VidHashPipeline.random("tiny")
    with pytest.raises(TypeError, match="generation_config"):
        pipe.generation_config = 3
    assert SAVED.memory.size.capacity == 32 and SAVED.memory.read == MemoryRead(3, 12)


def test_saved_settings_survive_a_copy_of_the_folder(folder, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    assert VidHashPipeline.load(str(copy)).generation_config == SAVED
