"""Tiny random configs of diffusers' video transformer classes and their inputs, for the drop-in's tests
(a helper module: conftest is not importable by name across test folders)."""
import pytest
import torch
from diffusers import (
    CogVideoXTransformer3DModel,
    LTXVideoTransformer3DModel,
    SkyReelsV2Transformer3DModel,
    WanTransformer3DModel,
    WanVACETransformer3DModel,
)
from diffusers.models.embeddings import get_3d_rotary_pos_embed

TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
# torch.compile(fullgraph=True) of a diffusers transformer: on torch 2.5.1 dynamo fails inside
# diffusers' own Wan forward (is_torch_version -> packaging.Version; the stock call at density 1
# too), measured 2026-12-03 with the pyproject floors (docs/log/2026-12-03-torch-floor.md).
COMPILE_OK = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 6)
needs_compile = pytest.mark.skipif(not COMPILE_OK, reason="torch < 2.6: dynamo cannot trace diffusers' Wan forward")


def rel_err(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30))


# --------------------------------------------------------------------------------------------
# tiny models and inputs: 3 latent frames of 8×8 (patch 2×2 → 48 video tokens), 2 layers
# --------------------------------------------------------------------------------------------
def tiny_wan(i2v=False, fused=False, layers=2):
    heads, head_dim = 2, 12
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim, in_channels=4,
        out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=layers, rope_max_seq_len=32,
        image_dim=8 if i2v else None, added_kv_proj_dim=heads * head_dim if i2v else None,
    ).eval()
    if fused:
        model.fuse_qkv_projections()
    # WanAttnProcessor hard-codes 512 text tokens after the image tokens (I2V).
    inputs = dict(
        hidden_states=torch.randn(1, 4, 3, 8, 8),
        timestep=torch.tensor([500]),
        encoder_hidden_states=torch.randn(1, 512 if i2v else 6, 16),
    )
    if i2v:
        inputs["encoder_hidden_states_image"] = torch.randn(1, 5, 8)
    return model, inputs


def tiny_cogvideox(rope=False, fused=False, batch=1, layers=2):
    head_dim = 16
    model = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=head_dim, in_channels=4, out_channels=4, time_embed_dim=4,
        text_embed_dim=8, num_layers=layers, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=7, use_rotary_positional_embeddings=rope,
    ).eval()
    if fused:
        model.fuse_qkv_projections()
    inputs = dict(
        hidden_states=torch.randn(batch, 3, 4, 8, 8),
        encoder_hidden_states=torch.randn(batch, 7, 8),
        timestep=torch.tensor([500] * batch),
    )
    if rope:
        inputs["image_rotary_emb"] = get_3d_rotary_pos_embed(
            embed_dim=head_dim, crops_coords=((0, 0), (4, 4)), grid_size=(4, 4), temporal_size=3
        )
    return model, inputs


WAN_LIKE = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
                text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2, rope_max_seq_len=32)


def tiny_wan_vace():
    model = WanVACETransformer3DModel(**WAN_LIKE, vace_layers=[0], vace_in_channels=6).eval()
    inputs = dict(hidden_states=torch.randn(1, 4, 3, 8, 8), timestep=torch.tensor([500]),
                  encoder_hidden_states=torch.randn(1, 6, 16), control_hidden_states=torch.randn(1, 6, 3, 8, 8))
    return model, inputs


def tiny_skyreels_v2(batch=1):
    model = SkyReelsV2Transformer3DModel(**WAN_LIKE).eval()
    inputs = dict(hidden_states=torch.randn(batch, 4, 3, 8, 8), timestep=torch.tensor([500] * batch),
                  encoder_hidden_states=torch.randn(batch, 6, 16))
    return model, inputs


def tiny_ltx(batch=1):
    """3 latent frames of 4×4 tokens (patch 1): 48 video tokens, 2 layers."""
    model = LTXVideoTransformer3DModel(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8,
                                       cross_attention_dim=16, num_layers=2, caption_channels=8).eval()
    inputs = dict(hidden_states=torch.randn(batch, 48, 4), encoder_hidden_states=torch.randn(batch, 5, 8),
                  timestep=torch.tensor([500] * batch), encoder_attention_mask=torch.ones(batch, 5), num_frames=3,
                  height=4, width=4)
    return model, inputs


MODELS = [
    pytest.param(tiny_wan, {}, id="wan-t2v"),
    pytest.param(tiny_wan, {"i2v": True}, id="wan-i2v"),
    pytest.param(tiny_wan, {"fused": True}, id="wan-fused"),
    pytest.param(tiny_wan_vace, {}, id="wan-vace"),
    pytest.param(tiny_skyreels_v2, {"batch": 2}, id="skyreels-v2-B2"),
    pytest.param(tiny_ltx, {}, id="ltx-video"),
    pytest.param(tiny_cogvideox, {}, id="cogvideox-sincos"),
    pytest.param(tiny_cogvideox, {"rope": True, "batch": 2}, id="cogvideox-rope-B2"),
    pytest.param(tiny_cogvideox, {"fused": True}, id="cogvideox-fused"),
]
WAN, WAN_I2V, COG, COG_ROPE = MODELS[0], MODELS[1], MODELS[6], MODELS[7]


def run(model, inputs):
    with torch.no_grad():
        return model(**inputs)[0]


def cast(inputs, dtype):
    return {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() and k != "image_rotary_emb" else v for k, v in inputs.items()}
