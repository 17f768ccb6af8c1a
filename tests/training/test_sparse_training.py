"""wan-mini trained sparse from the start (issue 17, point 3): the ``attention`` section, the recipes
that differ from wan_mini.yaml only by it (and their name), recipes with a ``base``, forward and
backward through hash attention on the trained model and its EMA copy, under autocast too, and the
export's record of the training attention."""
import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from diffusers import WanTransformer3DModel
from omegaconf import OmegaConf

import vidhash.integrations.diffusers as dropin
from vidhash.integrations.diffusers import is_hash_attention_enabled
from vidhash.training import load_train_config
from vidhash.training.attention import drop_in_kwargs, training_attention
from vidhash.training.families import build_model, get_family
from vidhash.training.state import TRAIN_STATE, build_state
from vidhash.training.trainer import setup_accelerator, train
from vidhash.training.validation import Validator
from vidhash.training.wan_family import WanSamples, conditioning, loss, loss_elements, wan_batch

RECIPES = Path(__file__).resolve().parents[2] / "configs" / "train"
TINY = [str(RECIPES / "wan_mini_cpu.yaml"), "data.num_frames=8", "noise.max_context_frames=3", "batch_size=2"]
SPARSE = ["attention.density=0.25", "attention.block_size=16"]  # 8 frames × 4 × 4 = 128 tokens: 8 key blocks, 2 by SimHash


def tiny(*overrides):
    return load_train_config(TINY[0], [*TINY[1:], *overrides])


def quiet(*a, **k):
    pass


def a_batch(cfg, n=2):
    from torch.utils.data import default_collate

    ds = WanSamples(cfg)
    return default_collate([ds[i] for i in range(n)])


# ------------------------------------------------------------------------------------ recipes
def test_sparse_recipes_are_wan_mini_but_for_the_attention_and_the_name():
    dense = asdict(load_train_config("wan_mini"))
    assert dense["attention"]["density"] == 1.0  # wan_mini.yaml says nothing: dense by default
    names = {dense["out_dir"]}
    for recipe, density in (("wan_mini_sparse8", 1 / 8), ("wan_mini_sparse16", 1 / 16)):
        sparse = asdict(load_train_config(recipe))
        assert {k for k in dense if dense[k] != sparse[k]} == {"attention", "out_dir"}, recipe
        assert sparse["attention"] == {**dense["attention"], "density": density}
        names.add(sparse["out_dir"])
        # the file says only that: a base and the two keys (nothing of wan_mini.yaml copied)
        assert set(OmegaConf.load(RECIPES / f"{recipe}.yaml")) == {"base", "out_dir", "attention"}
    assert len({Path(n).name for n in names}) == 3  # three runs, three export names (scripts/gpu/train_wan_mini.sh)


def test_a_recipe_with_a_base(tmp_path):
    (tmp_path / "a.yaml").write_text("model_family: wan\nmax_steps: 7\nexport_train_state: true\nmodel: {num_layers: 3, ffn_dim: 64}\n")
    (tmp_path / "b.yaml").write_text("base: a\nmodel: {num_layers: 1}\nattention: {density: 0.5}\n")
    (tmp_path / "c.yaml").write_text("base: b.yaml\nlog_every: 7\n")
    cfg = load_train_config(str(tmp_path / "c.yaml"), ["max_steps=14"])
    assert (cfg.model_family, cfg.max_steps, cfg.log_every) == ("wan", 14, 7)  # the chain, then the overrides
    assert (cfg.model.num_layers, cfg.model.ffn_dim, cfg.attention.density) == (1, 64, 0.5)  # merged key by key
    (tmp_path / "loop.yaml").write_text("base: loop\n")
    with pytest.raises(ValueError, match="loops back"):
        load_train_config(str(tmp_path / "loop.yaml"))
    (tmp_path / "missing.yaml").write_text("base: no_such_recipe\n")
    with pytest.raises(FileNotFoundError, match="no_such_recipe"):
        load_train_config(str(tmp_path / "missing.yaml"))
    (tmp_path / "bad.yaml").write_text("base: a\nattention: {densty: 0.5}\n")
    with pytest.raises(ValueError, match="densty"):
        load_train_config(str(tmp_path / "bad.yaml"))


@pytest.mark.parametrize("override, key", [
    ("attention.density=0", "attention.density"),
    ("attention.density=1.5", "attention.density"),
    ("attention.block_size=0", "attention.block_size"),
    ("attention.query_block_size=0", "attention.query_block_size"),
    ("attention.sink_blocks=-1", "attention.sink_blocks"),
    ("attention.scorer=exact", "attention.scorer"),
    ("attention.backend=cuda", "attention.backend"),
    ("attention.n_bits=0", "attention.n_bits"),
    ("attention.remainder=max", "attention.remainder"),
    ("export_train_state=false", "export_train_state"),  # a sparse run's export must record its attention
])
def test_attention_errors_name_the_key(override, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        tiny(*SPARSE, override)


def test_subgrid_needs_query_blocks_a_multiple_of_4():
    tiny(*SPARSE, "attention.scorer=subgrid")  # query blocks of 16: taken
    with pytest.raises(ValueError, match=r"attention\.scorer='subgrid' splits each query block into 4"):
        tiny(*SPARSE, "attention.scorer=subgrid", "attention.query_block_size=6")


# ----------------------------------------------------------------------------- the model trained
def test_sparse_forward_and_backward_go_through_hash_attention(monkeypatch):
    sparse_cfg, dense_cfg = tiny(*SPARSE), tiny()
    sparse, dense = build_model(sparse_cfg), build_model(dense_cfg)
    assert is_hash_attention_enabled(sparse) and not is_hash_attention_enabled(dense)
    assert sparse.state_dict().keys() == dense.state_dict().keys()  # no hasher in the weights
    assert all(torch.equal(v, dense.state_dict()[k]) for k, v in sparse.state_dict().items())  # same initial weights
    for m in (sparse, dense):  # Wan's zero output projection would hide attention from the loss
        torch.manual_seed(1)
        torch.nn.init.normal_(m.proj_out.weight, std=0.1)
    calls = []
    real = dropin.hash_attention

    def spy(q, k, v, **kw):
        calls.append((kw["density"], kw["block_size"], q.requires_grad, q.shape))
        return real(q, k, v, **kw)

    monkeypatch.setattr(dropin, "hash_attention", spy)
    item, cond = a_batch(sparse_cfg), conditioning(sparse_cfg)
    err = loss(sparse, wan_batch(item, "cpu"), cond) / loss_elements([item])
    err.backward()
    assert len(calls) == sparse_cfg.model.num_layers and all(c[:3] == (0.25, 16, True) for c in calls)
    assert calls[0][3] == (2, sparse_cfg.model.num_attention_heads, 128, sparse_cfg.model.attention_head_dim)
    for i in range(sparse_cfg.model.num_layers):  # gradients reach every self-attention's projections
        for proj in ("to_q", "to_k", "to_v"):
            g = getattr(sparse.blocks[i].attn1, proj).weight.grad
            assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, (i, proj)
    with torch.no_grad():  # really sparse: the same weights and batch give another loss dense
        dense_err = loss(dense, wan_batch(item, "cpu"), cond) / loss_elements([item])
    assert torch.isfinite(err) and abs(float(err) - float(dense_err)) > 1e-6 * float(dense_err)


def test_autocast_float32_query_keys_beside_bf16_values():
    """CUDA's autocast runs Wan's q/k RMSNorm in float32 (v stays bf16): emulated here on the CPU, the
    sparse loss and its gradients still come out finite, as the dense model's do."""
    cfg = tiny(*SPARSE)
    model = build_model(cfg)
    torch.nn.init.normal_(model.proj_out.weight, std=0.1)
    for block in model.blocks:
        for norm in (block.attn1.norm_q, block.attn1.norm_k):
            norm.register_forward_hook(lambda mod, inp, out: out.float())
    item = a_batch(cfg)
    with torch.autocast("cpu", torch.bfloat16):
        err = loss(model, wan_batch(item, "cpu"), conditioning(cfg)) / loss_elements([item])
    err.backward()
    g = model.blocks[0].attn1.to_q.weight.grad
    assert torch.isfinite(err) and torch.isfinite(g).all() and g.abs().sum() > 0
    # the processor alone: as SDPA, q, k, v in the autocast dtype, autocast off inside
    proc = model.blocks[0].attn1.processor
    q, k = (torch.randn(1, 128, 2, 16) for _ in range(2))
    v = torch.randn(1, 128, 2, 16).bfloat16()
    with torch.autocast("cpu", torch.bfloat16):
        out = proc._attend(q, k, v)
    want = proc._attend(q.bfloat16(), k.bfloat16(), v)
    assert out.dtype == torch.bfloat16 and torch.equal(out, want)


def test_the_ema_copy_that_validation_scores_is_sparse_too():
    cfg = tiny(*SPARSE, "val_clips=1")
    family = get_family("wan")
    state = build_state(cfg, family, setup_accelerator(cfg), None, quiet)
    assert is_hash_attention_enabled(state.raw)
    validator = Validator(cfg, family, setup_accelerator(cfg))
    row = validator(state)
    assert is_hash_attention_enabled(validator.ema_model) and all(torch.isfinite(torch.tensor(list(row.values()))))


# -------------------------------------------------------------------------- a run and its export
def test_a_sparse_run_trains_exports_its_attention_and_refuses_a_dense_resume(tmp_path):
    over = [*SPARSE, f"out_dir={tmp_path / 'run'}", "max_steps=6", "log_every=2", "val_every=2", "val_clips=2"]
    s = train(tiny(*over), progress=False, log=quiet)
    assert s["step"] == 6 and torch.isfinite(torch.tensor(s["val_loss_ema"]))
    export = Path(s["export"])
    saved = json.loads((export / TRAIN_STATE).read_text())
    assert saved["attention"] == asdict(tiny(*SPARSE).attention)
    assert OmegaConf.create(saved["config"]).attention.density == 0.25
    # a sampler reads the attention to run the model with, and the transformer is a stock one
    kw = training_attention(export)
    assert kw == drop_in_kwargs(tiny(*SPARSE).attention, backend=False) and kw["density"] == 0.25
    # the section's query blocks (None: the key block's size), not the drop-in's default (at least 64)
    assert kw["query_block_size"] == kw["block_size"] == 16
    loaded = WanTransformer3DModel.from_pretrained(str(export / "transformer"))
    assert not is_hash_attention_enabled(loaded)
    assert loaded.state_dict().keys() == build_model(tiny()).state_dict().keys()
    # the training attention is part of the run: a dense config neither resumes it nor continues its export
    with pytest.raises(ValueError, match="another model config.*attention"):
        train(tiny(f"out_dir={tmp_path / 'run'}", "max_steps=8"), resume="auto", progress=False, log=quiet)
    with pytest.raises(ValueError, match="another model config"):
        train(tiny(f"out_dir={tmp_path / 'dense'}", f"init_from={export}"), progress=False, log=quiet)


def test_training_attention_of_dense_and_older_exports(tmp_path):
    assert training_attention(tmp_path) is None  # no train_state.json
    (tmp_path / TRAIN_STATE).write_text(json.dumps({"run": {}}))
    assert training_attention(tmp_path) is None  # exported before the attention section: dense
    (tmp_path / TRAIN_STATE).write_text(json.dumps({"attention": asdict(tiny().attention), "run": {}}))
    assert training_attention(tmp_path) is None  # trained dense
    (tmp_path / TRAIN_STATE).write_text(json.dumps({"attention": {"density": 2.0}, "run": {}}))
    with pytest.raises(ValueError, match="attention"):
        training_attention(tmp_path)
    with pytest.raises(FileNotFoundError):
        training_attention(tmp_path / "nothing")


def test_remainder_reaches_the_drop_in_and_none_keeps_old_fingerprints():
    from vidhash.training.attention import fingerprint_part

    plain, rest = tiny(*SPARSE).attention, tiny(*SPARSE, "attention.remainder=mean").attention
    assert "remainder" not in drop_in_kwargs(plain) and "remainder" not in fingerprint_part(plain)["attention"]
    assert drop_in_kwargs(rest)["remainder"] == "mean" and fingerprint_part(rest)["attention"]["remainder"] == "mean"
    model = build_model(tiny(*SPARSE, "attention.remainder=mean"))
    assert model._vidhash_config.remainder == "mean"
