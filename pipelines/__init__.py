"""Pipelines (installed as ``vidhash.pipelines``): ``VidHashPipeline``, its output and ``VidHashState``.

Importing this package registers ``VidHashPipeline`` with diffusers: ``DiffusionPipeline.from_pretrained``
looks the ``_class_name`` of a folder's ``model_index.json`` up by name in the ``diffusers``
namespace, so after ``import vidhash.pipelines`` (or any import of ``VidHashPipeline``)
``DiffusionPipeline.from_pretrained(folder)`` returns a ``VidHashPipeline``. (diffusers 0.42 loads
other pipeline classes only from a ``.py`` file in the folder, with ``trust_remote_code=True``.)
"""
import diffusers as _diffusers

from .pipeline_output import VidHashPipelineOutput
from .pipeline_vidhash import VidHashPipeline
from .state import VidHashState

if getattr(_diffusers, "VidHashPipeline", None) is not VidHashPipeline:
    setattr(_diffusers, "VidHashPipeline", VidHashPipeline)

__all__ = ["VidHashPipeline", "VidHashPipelineOutput", "VidHashState"]
