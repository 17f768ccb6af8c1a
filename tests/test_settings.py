"""One shape per setting: the memory's size and read configs, the model's constructor as its config,
and the layering (the pipeline and the model import neither the app's config nor the toy world)."""
import ast
import inspect
from dataclasses import asdict, fields
from pathlib import Path

import pytest
import torch

from vidhash.generation_config import GenerationConfig, MemorySettings
from vidhash.memory import HashedMemory, MemoryConfig, MemoryRead, MemorySignature, MemorySize
from vidhash.models import VidHashTransformer3DModel
from vidhash.presets import (
    GEOMETRY_KEYS,
    check_model_arguments,
    model_arguments,
    model_defaults,
    model_preset,
    model_presets,
    preset_of,
    with_model_defaults,
)

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ memory settings


@pytest.mark.parametrize("make,match", [
    (lambda: MemoryRead(top_k=0), "top_k must be a positive int or None"),
    (lambda: MemoryRead(top_k=True), "top_k"),
    (lambda: MemoryRead(mass_cap=-1), "mass_cap must be an int ≥ 0"),
    (lambda: MemorySize(num_buckets=0), "num_buckets must be a positive int"),
    (lambda: MemorySize(policy="lru"), "policy must be one of"),
    (lambda: MemorySize(n_bits=0), "n_bits"),
    (lambda: MemoryConfig(heads=0), "heads must be a positive int"),
    (lambda: MemoryConfig(n_bits=8, route_bits=9), "route_bits"),
    (lambda: MemorySettings(mode="dense"), "memory.mode"),
    (lambda: MemorySettings(top_k=-2), "top_k"),
    (lambda: MemorySettings(slots=0), "slots"),
], ids=["top-k-0", "top-k-bool", "mass-cap", "buckets", "policy", "bits", "heads", "route-bits", "mode",
        "settings-top-k", "settings-slots"])
def test_each_setting_is_checked_by_its_class(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_the_shapes_share_their_fields():
    """MemorySettings is MemorySize's and MemoryRead's fields plus a mode; MemoryConfig adds the
    layer's shape to MemorySize; training's SelectionConfig signs as a memory does."""
    from vidhash.training.config import SelectionConfig

    names = lambda cls: [f.name for f in fields(cls)]  # noqa: E731
    assert set(names(MemorySettings)) == set(names(MemorySize)) | set(names(MemoryRead)) | {"mode"}
    assert set(names(MemoryConfig)) == set(names(MemorySize)) | {"heads", "head_dim", "route_bits", "batch_size"}
    assert set(names(MemorySignature)) <= set(names(SelectionConfig)) and issubclass(SelectionConfig, MemorySignature)
    with pytest.raises(ValueError, match="n_bits"):
        SelectionConfig(n_bits=0)
    s = MemorySettings(num_buckets=8, slots=4, top_k=2, mass_cap=3, policy="merge")
    assert s.size == MemorySize(num_buckets=8, slots=4, policy="merge") and s.read == MemoryRead(2, 3)
    assert MemorySettings.of("window", s.size, s.read) == MemorySettings(**{**asdict(s), "mode": "window"})


def test_every_entry_is_read_alike():
    """top_k None reads every entry; a top_k of at least the capacity is the same read (normalised
    in one place, MemoryRead.top_k_for) — bitwise, with and without a mass cap."""
    assert MemoryRead(None).top_k_for(16) is None and MemoryRead(16).top_k_for(16) is None
    assert MemoryRead(15).top_k_for(16) == 15
    torch.manual_seed(0)
    mem = HashedMemory(num_buckets=4, slots=4, heads=2, head_dim=8, policy="merge")
    mem.write(torch.randn(1, 2, 40, 8), torch.randn(1, 2, 40, 8), frame_idx=0)
    q = torch.randn(1, 2, 5, 8)
    for cap in (0, 7):
        every = mem.attend(q, None, mass_cap=cap)
        for top_k in (mem.capacity, 10 * mem.capacity):
            same = mem.attend(q, top_k, mass_cap=cap)
            assert torch.equal(every[0], same[0]) and torch.equal(every[1], same[1])
    assert not torch.equal(mem.attend(q, 2)[0], every[0])


# ------------------------------------------------------------------------------ the model's settings


def test_model_arguments_are_the_constructor():
    sig = inspect.signature(VidHashTransformer3DModel.__init__)
    params = {name: p.default for name, p in list(sig.parameters.items())[1:]}
    assert model_defaults() == params
    assert [f.name for f in fields(model_arguments())] == list(params)
    from vidhash.training.config import TrainConfig

    assert asdict(TrainConfig().model) == params  # the train config's model section: the same defaults
    assert with_model_defaults({"hidden_dim": 64}) == {**params, "hidden_dim": 64}


@pytest.mark.parametrize("kwargs,match", [
    ({"hidden_dimm": 64}, "hidden_dimm"),
    ({"num_layers": "three"}, "num_layers"),
    ({"rope": "sometimes"}, "rope"),
], ids=["unknown-key", "wrong-type-int", "wrong-type-bool"])
def test_a_preset_key_is_checked_against_the_signature(kwargs, match):
    with pytest.raises(ValueError, match=match):
        check_model_arguments(kwargs, "models.yaml:test")


def test_a_train_config_model_key_is_checked_against_the_signature():
    from vidhash.training import load_train_config

    with pytest.raises(ValueError, match="model.hidden_dimm"):
        load_train_config("cpu_test", ["model.hidden_dimm=3"])
    with pytest.raises(ValueError, match="model.hidden_dim .* divisible by model.num_heads"):
        load_train_config("cpu_test", ["model.hidden_dim=33"])


def test_presets_build_and_are_recognised():
    for name in model_presets():
        args = model_preset(name)
        assert preset_of(args) == name
        assert set(GEOMETRY_KEYS) <= set(args)
    wider = {**model_preset("world"), "hidden_dim": 384, "num_heads": 6}
    assert preset_of(wider) == "world"  # another width, the world's geometry: its generation settings
    assert preset_of({**model_preset("tiny"), "sample_size": 48}) is None


# ------------------------------------------------------------------------------ layering


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the file's package
                pkg = {"pipelines": "vidhash.pipelines", "vidhash": "vidhash"}[path.relative_to(ROOT).parts[0]]
                pkg = ".".join([pkg, *path.relative_to(ROOT).parts[1:-1]])
                parts = pkg.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names.update([base] + [f"{base}.{a.name}" for a in node.names])
    return names




@pytest.mark.parametrize("folder", ["pipelines", "vidhash/models"])
def test_the_pipeline_and_the_model_import_neither_the_app_config_nor_the_world(folder):
    for path in sorted((ROOT / folder).glob("*.py")):
        bad = {n for n in _imports(path) if n == "vidhash.config" or n.startswith(("vidhash.config.", "vidhash.data"))}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_constants_are_defined_once():
    """Each of these is written once (the world's held-out seeds in vidhash/data/world.py, the umask
    helper in vidhash/files.py), and the replaced shapes are gone."""
    want = {"HELDOUT_WORLD_SEED =": 1, "def _umask": 0, "def umask": 1, "class ModelConfig": 0,
            "class TemporalMemoryConfig": 0, "def state_config": 0, "ACTIONS: tuple": 1}
    found = {key: [] for key in want}
    for folder in ("vidhash", "pipelines", "kernels"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            text = path.read_text()
            for key in want:
                found[key] += [str(path.relative_to(ROOT))] * text.count(key)
    assert {key: len(paths) for key, paths in found.items()} == want, found


def test_generation_config_fields_are_the_cli_keys():
    """The flat memory section keeps the override keys of every earlier config (memory.top_k, ...)."""
    from vidhash.config import generate_config

    cfg = generate_config(["memory.top_k=2048", "memory.num_buckets=32", "chunk_frames=2"], preset="tiny")
    assert (cfg.generation.memory.top_k, cfg.generation.memory.num_buckets, cfg.generation.chunk_frames) == (2048, 32, 2)
    assert isinstance(cfg.generation, GenerationConfig) and isinstance(cfg.generation.memory, MemorySettings)
