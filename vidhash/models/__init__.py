"""Models: ``VidHashTransformer3DModel`` (one file per model class, diffusers style)."""
from .transformer_vidhash import (
    TemporalContext,
    VidHashTransformer3DModel,
    VidHashTransformerOutput,
    fourier_features,
    random_model,
)

__all__ = ["TemporalContext", "VidHashTransformer3DModel", "VidHashTransformerOutput", "fourier_features", "random_model"]
