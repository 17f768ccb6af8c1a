"""Pipelines (installed as ``vidhash.pipelines``): ``VidHashPipeline``, its output and ``VidHashState``."""
from .pipeline_output import VidHashPipelineOutput
from .pipeline_vidhash import VidHashPipeline
from .state import VidHashState

__all__ = ["VidHashPipeline", "VidHashPipelineOutput", "VidHashState"]
