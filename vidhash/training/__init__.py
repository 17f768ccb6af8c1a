"""Training for ``VidHashTransformer3DModel``: ``vidhash train CONFIG [key=value ...]``.

    vidhash train world_tiny out_dir=out/world max_steps=200
    accelerate launch --num_processes 2 -m vidhash.cli train world_tiny --resume auto

* ``config`` — ``TrainConfig`` (OmegaConf dataclass; presets in ``configs/train/``).
* ``data`` — samples addressed by a global index (world pool / mp4 folders + noise), resumable.
* ``trainer`` — accelerate loop: rectified flow with per-chunk noise levels, chunk-causal
  temporal attention, AdamW + warmup/cosine, clipping, EMA, CSV loss log, checkpoints
  that resume exactly, ``max_minutes`` budget, EMA export as a ``VidHashPipeline`` folder.
* ``checkpoint`` — crash-safe sharded checkpoints.
"""
from .config import HELDOUT_WORLD_SEED, TrainConfig, load_train_config
from .ema import EMA

__all__ = ["EMA", "HELDOUT_WORLD_SEED", "TrainConfig", "load_train_config", "train"]


def train(*args, **kwargs):
    from .trainer import train as _train

    return _train(*args, **kwargs)
