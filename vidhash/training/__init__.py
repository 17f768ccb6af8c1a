"""Training: ``vidhash train CONFIG [key=value ...]``.

    vidhash train world_tiny out_dir=out/world max_steps=200
    accelerate launch --num_processes 2 -m vidhash.cli train world_tiny --resume auto

* ``config`` — ``TrainConfig`` (OmegaConf dataclass; presets in ``configs/train/``).
* ``trainer`` — ``train()``: the run in numbered steps (accelerator, resume, state, data, loop,
  export); each step lives in one of the modules below.
* ``families`` — the model seam: a family's model, samples, loss and export (``model_family``;
  ``vidhash`` = ``VidHashTransformer3DModel``). A new family is a module plus a registry line.
* ``objective`` — rectified flow with per-chunk noise levels: the batch, its noising, the error.
* ``state`` — model, EMA, AdamW, schedule, position: built, warm-started, restored, saved.
* ``loop`` — the step loop: loss log (``loss.csv``), stop conditions, checkpoints.
* ``schedule`` — warmup + cosine LR, the ``max_minutes`` budget, ``fit_schedule``.
* ``timing`` — the step-time breakdown in ``loss.csv`` and the summary.
* ``data`` — samples addressed by a global index (world pool / mp4 folders + noise), resumable.
* ``checkpoint`` — crash-safe sharded checkpoint folders.
* ``ema``, ``profile``, ``affinity`` — EMA weights, ``--profile-steps``, CPU pinning.
"""
from .config import HELDOUT_WORLD_SEED, TrainConfig
from .recipes import load_train_config
from .ema import EMA

__all__ = ["EMA", "HELDOUT_WORLD_SEED", "TrainConfig", "load_train_config", "train"]


def train(*args, **kwargs):
    from .trainer import train as _train

    return _train(*args, **kwargs)
