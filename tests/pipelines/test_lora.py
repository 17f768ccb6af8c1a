"""LoRA on ``VidHashTransformer3DModel`` through diffusers' ``PeftAdapterMixin`` (issue 19 point 3):
an adapter changes the frames, disabling it gives the base frames back bitwise, the adapter saves
and loads. Needs peft (``pip install vidhash[peft]``); skipped without it."""
import pytest
import torch

from vidhash.pipelines import VidHashPipeline

peft = pytest.importorskip("peft")

KW = dict(num_frames=2, num_inference_steps=1, chunk_frames=2, window_frames=4, height=16, width=16, output_type="pt")


def _frames(pipe):
    return pipe(generator=torch.Generator().manual_seed(0), **KW).frames


def test_lora_adapter_changes_and_restores_the_frames(tmp_path):
    pipe = VidHashPipeline.random("tiny", seed=0)
    pipe.set_progress_bar_config(disable=True)
    base = _frames(pipe)
    config = peft.LoraConfig(r=4, lora_alpha=4, target_modules=["to_qkv", "proj"], init_lora_weights=False)
    pipe.transformer.add_adapter(config, adapter_name="style")
    assert pipe.transformer.active_adapters() == ["style"]
    adapted = _frames(pipe)
    assert not torch.equal(adapted, base)
    pipe.transformer.disable_adapters()
    assert torch.equal(_frames(pipe), base)
    pipe.transformer.enable_adapters()
    assert torch.equal(_frames(pipe), adapted)
    # the adapter's weights alone, saved and loaded into a fresh model
    from peft.utils import get_peft_model_state_dict

    weights = get_peft_model_state_dict(pipe.transformer, adapter_name="style")
    assert weights and all("lora_" in k for k in weights)
    fresh = VidHashPipeline.random("tiny", seed=0)
    fresh.set_progress_bar_config(disable=True)
    fresh.transformer.add_adapter(config, adapter_name="style")
    peft.set_peft_model_state_dict(fresh.transformer, weights, adapter_name="style")
    assert torch.equal(_frames(fresh), adapted)
