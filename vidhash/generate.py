"""Generate a long clip to mp4, chunk by chunk, at constant memory.

    from vidhash.config import generate_config
    from vidhash.generate import generate
    generate(generate_config(["num_inference_steps=2"], preset="tiny", model="random-tiny", seconds=4, out="clip.mp4"))

    vidhash generate --model random-tiny --seconds 60 --fps 8 --out clip.mp4 [--seed N]
        [--actions actions.json] [--resume state.pt] [--save-state state.pt] [key=value ...]

Writes, next to ``clip.mp4``:

* ``clip.poses.json`` — ``{"fps": F, "start_frame": S, "poses": [[x, y], ...], "actions": [...]}``;
* ``clip.config.yaml`` — the resolved run config (model, length, seed, generation settings).

Frames are encoded (H.264 through PyAV) as chunks finish; the files are a
:class:`vidhash.data.clip_writer.ClipWriter`'s. While the clip is being made, every file carries
``.partial`` in its name (``clip.partial.mp4``, ...); only a finished run renames them to the
final names, so a file named ``clip.mp4`` is always complete. On Ctrl-C (or SIGTERM) the current
chunk is dropped, ``clip.partial.mp4`` is finalised (playable, every finished frame in it; a
later run refuses to overwrite it) and the state is saved — to ``--save-state`` or
``clip.partial.state.pt`` — so ``--resume`` continues exactly where the file stops. A second
Ctrl-C stops at once (the file is still finalised; the state is saved only if it matches the
frames written). The mp4 is fragmented, so even a killed process leaves a playable
``clip.partial.mp4``. That file is created exclusively (never through a symlink) right after the
checks, before the model loads, and stays locked until the last rename: a second run on the same
``--out`` stops at once (exit status 2, one line naming the file). ``--save-state`` may not name any
of the clip's files (:func:`vidhash.data.clip_writer.output_paths`).

``--model``: a folder written by ``VidHashPipeline.save_pretrained``, the name of one in the
repository's ``models/`` (default: ``world-tiny-v3``, the shipped world model), or ``random-tiny`` /
``random-small`` / ``random-base`` / ``random-world`` (untrained, seeded random weights; for smoke
tests and benchmarks). The generation settings start from the model's own — a folder's saved
``generation_config`` (``world-tiny-v3``: the ``world`` preset), else the preset of its size — so
``VidHashPipeline.from_pretrained(folder)(num_frames=N, generator=..., trajectory_seed=seed)``
makes the same frames as ``vidhash generate --model folder`` (:func:`vidhash.config.generation_for`).

``--prompt-world SEED`` starts from ground truth (a world model's frame prompt): ``--prompt-frames``
frames (default 8) of procedural world ``SEED`` (``vidhash.data.world``, the model's world size)
along a straight path into the clip's first move, given to the pipeline as ``context_frames``
and written first into the mp4 and the poses file (``"prompt_frames": N``); ``--seconds`` counts
the generated frames after them. With ``--actions`` that lead back (``configs/paths/``), the end
of the clip revisits the prompt — what ``vidhash coherence`` scores as revisits.

``key=value`` overrides set generation settings (``chunk_frames=2``, ``num_inference_steps=8``,
``memory.mode=window``, ``memory.top_k=16``, ...; see ``vidhash.config``); an unknown key or a
wrong type is an error. ``--resume`` continues a saved state: the new frames (``--seconds``
more) go to ``--out``, and ``start_frame`` in the poses file says where they start; ``--seed``
is then ignored (the state carries its random generator).
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from .config import GenerateConfig, resolve_model
from .data.clip_writer import ClipWriter, OutputClaim, output_paths, same_path
from .data.video import check_writable
from .data.world import ACTIONS, action_ids


def generate(cfg: GenerateConfig, progress: bool = True, compile_blocks: bool = False,
             cuda_graphs: bool | None = None) -> int:
    """Run one ``vidhash generate`` (see the module docstring); returns the exit status.

    ``compile_blocks``: ``VidHashPipeline.compile_blocks``; ``cuda_graphs``: replay steady chunks from
    CUDA graphs (None: on for a CUDA device)."""
    # 1. everything that can be checked before work starts; then --out is this run's (OutputClaim:
    #    a second run on it fails here, before its model loads) until the clip's last rename
    out, num_frames, actions = check_request(cfg)
    with OutputClaim(out) as claim:
        # 2. the pipeline on its device, and the state to continue from
        device = torch.device(cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
        pipe = load_pipeline(cfg, device, progress, compile_blocks, cuda_graphs)
        from vidhash.pipelines import VidHashState  # here: a run refused by step 1 imports no model code

        state = VidHashState.load(cfg.resume, device=device) if cfg.resume else None
        # 3. the plan: ground-truth prompt frames, the stream's arguments (checked by the pipeline)
        prompt = _prompt(cfg, pipe, actions) if cfg.prompt_world is not None else None
        kwargs = stream_arguments(cfg, pipe, num_frames, actions, state, prompt)
        # 4. write each chunk as it finishes; every file is named *.partial.* until the clip is done
        info = {"prompt_world": cfg.prompt_world, "prompt_frames": len(prompt["frames"])} if prompt is not None else {}
        with ClipWriter(out, cfg.fps, config=cfg, state=state, save_state=cfg.save_state, info=info, pipeline=pipe,
                        claim=claim) as clip:
            if prompt is not None:  # the given frames open the clip
                clip.write(prompt["frames"], prompt["poses"], prompt["actions"])
            t0 = time.perf_counter()
            for chunk in pipe.stream(num_frames, **kwargs):
                clip.write(_to_uint8(chunk.frames[0]), chunk.poses, chunk.actions, state=chunk.state)
            elapsed = time.perf_counter() - t0
    n = clip.frames_written
    msg = (f"wrote {out}: {n} frames ({n / cfg.fps:.1f} s at {cfg.fps} fps) in {elapsed:.1f} s "
           f"({1000 * elapsed / max(1, n):.1f} ms/frame); poses {clip.poses_path}, config {clip.config_path}")
    if cfg.save_state:
        msg += f", state {cfg.save_state}"
    print(msg)
    return 0


def check_request(cfg: GenerateConfig):
    """``(out, num_frames, actions)`` after every check that needs no model; ValueError naming the flag."""
    out = check_writable(cfg.out)
    if out.suffix.lower() != ".mp4":
        raise ValueError(f"--out {out} must end in .mp4")
    if cfg.fps <= 0:
        raise ValueError(f"--fps must be positive, got {cfg.fps}")
    num_frames = int(round(cfg.seconds * cfg.fps))
    if num_frames <= 0:
        raise ValueError(f"--seconds {cfg.seconds} at --fps {cfg.fps} is {num_frames} frames; need at least one")
    OutputClaim.check(out)  # free now (OutputClaim takes it after these checks, or fails the same way)
    if cfg.save_state:
        check_writable(cfg.save_state)
        check_state_path(cfg.save_state, out)
    actions = _read_actions(cfg.actions, num_frames) if cfg.actions else None
    if cfg.prompt_world is not None and cfg.resume:
        raise ValueError("--prompt-world starts a new clip; it cannot be combined with --resume")
    if cfg.prompt_world is not None and cfg.prompt_frames < 1:
        raise ValueError(f"--prompt-frames must be at least 1, got {cfg.prompt_frames}")
    return out, num_frames, actions


def check_state_path(save_state: str, out: Path) -> None:
    """``--save-state`` may not be one of the run's other files (the mp4, poses, config or their
    partial names): the state would overwrite it, or it the state. ValueError naming both."""
    for role, path in output_paths(out).items():
        if role != "partial state" and same_path(save_state, path):
            what = "--out" if role == "mp4" else f"the {role} file of --out"
            raise ValueError(f"--save-state {save_state} is {what} ({path}); pick another path for the state")


def load_pipeline(cfg: GenerateConfig, device: torch.device, progress: bool = True, compile_blocks: bool = False,
                  cuda_graphs: bool | None = None):
    """The pipeline of ``cfg.model`` on ``device``, compiled / with CUDA graphs as asked."""
    from diffusers.utils import logging as diffusers_logging

    from vidhash.pipelines import VidHashPipeline
    from vidhash.pipelines.cuda_graphs import use_cuda_graphs

    if not progress:  # --quiet: no "Loading pipeline components" bar either
        diffusers_logging.disable_progress_bar()
    try:
        pipe = VidHashPipeline.load(resolve_model(cfg.model))
    finally:
        if not progress:
            diffusers_logging.enable_progress_bar()
    pipe = pipe.to(device)
    if compile_blocks:
        pipe.compile_blocks()
    if use_cuda_graphs(cuda_graphs, device):
        pipe.enable_cuda_graphs()
    pipe.set_progress_bar_config(disable=not progress, desc="chunks")
    return pipe


def stream_arguments(cfg: GenerateConfig, pipe, num_frames: int, actions: list[str] | None, state,
                     prompt: dict | None) -> dict:
    """Keyword arguments of ``pipe.stream(num_frames, ...)`` for ``cfg`` — every generation setting
    given explicitly (``cfg.generation``) —, checked by ``pipe.check_inputs``."""
    gen = cfg.generation
    settings = {f.name: getattr(gen, f.name) for f in dataclasses.fields(gen)}
    kwargs = dict(settings, fps=cfg.fps, actions=actions, trajectory_seed=cfg.seed, output_type="pt", state=state,
                  generator=None if state is not None else torch.Generator().manual_seed(cfg.seed))
    if prompt is not None:
        kwargs.update(context_frames=prompt["frames"], context_poses=prompt["poses"], context_actions=prompt["actions"])
    pipe.check_inputs(num_frames, pipe.resolve_settings(state, **settings), cfg.fps, actions, None, "pt", state,
                      ["latents"])
    return kwargs


def _read_actions(path: str, num_frames: int) -> list[str]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"--actions {path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"--actions {path}: not valid JSON ({err})") from None
    if isinstance(data, dict):
        data = data.get("actions")
    if not isinstance(data, list):
        raise ValueError(f"--actions {path}: expected a JSON list of actions or {{\"actions\": [...]}}")
    try:
        action_ids(data)
    except ValueError as err:
        raise ValueError(f"--actions {path}: {err}") from None
    if len(data) < num_frames:
        raise ValueError(f"--actions {path}: {len(data)} actions for {num_frames} frames")
    return data[:num_frames]


def _prompt(cfg: GenerateConfig, pipe, actions: list[str] | None) -> dict:
    """Ground-truth prompt frames of world ``cfg.prompt_world``: ``prompt_frames`` frames moving
    in the direction of the clip's first action (right when it has none or stays), ending at
    the world's centre, where generation continues."""
    from .data.world import ACTION_DELTAS, ProceduralWorld

    gen, n = cfg.generation, cfg.prompt_frames
    if gen.height != gen.width:
        raise ValueError(f"--prompt-world renders square views; height and width are {gen.height}×{gen.width}")
    size = int(round(float(pipe.transformer.config.pos_period)))
    first = action_ids(actions[:1])[0] if actions else ACTIONS.index("right")
    if first == ACTIONS.index("stay"):
        first = ACTIONS.index("right")
    d = ACTION_DELTAS[first] * gen.action_step
    end = np.array([size // 2, size // 2], dtype=np.int64)
    poses = np.mod(end[None] - d[None] * np.arange(n - 1, -1, -1)[:, None], size).astype(np.float64)
    world = ProceduralWorld(seed=int(cfg.prompt_world), size=size, view=gen.height)
    return {"frames": world.render_many(poses), "poses": poses, "actions": np.full(n, first, dtype=np.int64)}


def _to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(f, 3, h, w) float in [0, 1] -> (f, h, w, 3) uint8."""
    return (frames.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
