"""Models: ``VidHashTransformer3DModel`` (one file per model class, diffusers style).

Its constructor is its config: the named sizes (``configs/models.yaml``) are keyword sets of it,
and ``random_model(preset)`` builds one with seeded random weights (:mod:`vidhash.presets`).
"""
from ..presets import random_model
from .transformer_vidhash import TemporalContext, VidHashTransformer3DModel, VidHashTransformerOutput, fourier_features

__all__ = ["TemporalContext", "VidHashTransformer3DModel", "VidHashTransformerOutput", "fourier_features", "random_model"]
