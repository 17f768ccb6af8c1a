"""Generate a long clip to mp4, chunk by chunk, at constant memory.

    vidhash generate --model random-tiny --seconds 60 --fps 8 --out clip.mp4 [--seed N]
        [--actions actions.json] [--resume state.pt] [--save-state state.pt] [key=value ...]

Writes, next to ``clip.mp4``:

* ``clip.poses.json`` — ``{"fps": F, "start_frame": S, "poses": [[x, y], ...], "actions": [...]}``;
* ``clip.config.yaml`` — the resolved run config (model, length, seed, generation settings).

Frames are encoded (H.264 through PyAV) as chunks finish. While the clip is being made, every
file carries ``.partial`` in its name (``clip.partial.mp4``, ...); only a finished run renames
them to the final names, so a file named ``clip.mp4`` is always complete. On Ctrl-C (or
SIGTERM) the current chunk is dropped, ``clip.partial.mp4`` is finalised (playable, every
finished frame in it; a later run refuses to overwrite it) and the state is saved — to ``--save-state`` or ``clip.partial.state.pt``
— so ``--resume`` continues exactly where the file stops. A second Ctrl-C stops at once (the
file is still finalised; the state is saved only if it matches the frames written). The mp4 is
fragmented, so even a killed process leaves a playable ``clip.partial.mp4``.

``--model``: a folder written by ``VidHashPipeline.save_pretrained``, the name of one in the
repository's ``models/`` (default: ``world-tiny-v3``, the shipped world model, whose generation
preset ``world`` is used), or ``random-tiny`` / ``random-small`` / ``random-base`` /
``random-world`` (untrained, seeded random weights; for smoke tests and benchmarks).

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

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from .config import GenerateConfig, generate_config, preset_for_model, resolve_model, save_config
from .data.video import Mp4Writer, check_writable, partial_path
from .data.world import ACTIONS, action_ids


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="saved pipeline folder or a name in models/ (default: world-tiny-v3, "
                   "the shipped world model), or random-tiny | random-small | random-base | random-world")
    p.add_argument("--seconds", type=float, default=None, help="clip length in seconds (default 10)")
    p.add_argument("--fps", type=int, default=None, help="frames per second (default 8)")
    p.add_argument("--out", default=None, help="output .mp4 (default clip.mp4)")
    p.add_argument("--seed", type=int, default=None, help="noise and random-trajectory seed (default 0)")
    p.add_argument("--actions", default=None, metavar="JSON", help=f"camera actions, one per frame: a JSON list of {', '.join(ACTIONS)} (or {{\"actions\": [...]}})")
    p.add_argument("--prompt-world", type=int, default=None, metavar="SEED",
                   help="start from ground-truth frames of this procedural world (written first into the mp4)")
    p.add_argument("--prompt-frames", type=int, default=None, metavar="N", help="how many prompt frames (default 8)")
    p.add_argument("--resume", default=None, metavar="STATE", help="continue from a saved state")
    p.add_argument("--save-state", default=None, metavar="STATE", help="save the state here at the end (and on interrupt)")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1, ...")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile each transformer block (VidHashPipeline.compile_blocks; compiles on the first chunks)")
    p.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="replay steady chunks' transformer passes from CUDA graphs (VidHashPipeline.enable_cuda_graphs; "
                        "frames unchanged; default: on for a CUDA device)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="generation settings, e.g. chunk_frames=2 memory.top_k=16")


def config_from_args(args: argparse.Namespace) -> GenerateConfig:
    model = resolve_model(args.model)
    flags = {"model": model, "seconds": args.seconds, "fps": args.fps, "out": args.out, "seed": args.seed,
             "actions": args.actions, "prompt_world": args.prompt_world, "prompt_frames": args.prompt_frames,
             "resume": args.resume, "save_state": args.save_state, "device": args.device}
    return generate_config(args.overrides, preset=preset_for_model(model), **flags)


def run(args: argparse.Namespace) -> int:
    return main(config_from_args(args), progress=not args.quiet, compile_blocks=getattr(args, "compile", False),
                cuda_graphs=getattr(args, "cuda_graphs", None))


# ------------------------------------------------------------------------------------- run


def _load_pipeline(cfg: GenerateConfig, device: torch.device, progress: bool = True):
    from diffusers.utils import logging as diffusers_logging

    from vidhash.pipelines import VidHashPipeline

    if not progress:  # --quiet: no "Loading pipeline components" bar either
        diffusers_logging.disable_progress_bar()
    try:
        pipe = VidHashPipeline.load(resolve_model(cfg.model))
    finally:
        if not progress:
            diffusers_logging.enable_progress_bar()
    return pipe.to(device)


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


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _stem(path: Path) -> Path:
    return path.with_suffix("")


def main(cfg: GenerateConfig, progress: bool = True, compile_blocks: bool = False, cuda_graphs: bool | None = None) -> int:
    """Run one ``vidhash generate`` (see the module docstring); returns the exit status."""
    from vidhash.pipelines import VidHashState

    # 1. everything that can be checked before work starts
    out = check_writable(cfg.out)
    if out.suffix.lower() != ".mp4":
        raise ValueError(f"--out {out} must end in .mp4")
    if cfg.fps <= 0:
        raise ValueError(f"--fps must be positive, got {cfg.fps}")
    num_frames = int(round(cfg.seconds * cfg.fps))
    if num_frames <= 0:
        raise ValueError(f"--seconds {cfg.seconds} at --fps {cfg.fps} is {num_frames} frames; need at least one")
    if partial_path(out).exists():
        raise ValueError(f"{partial_path(out)} exists (an interrupted earlier run); move it away or pick another --out")
    if cfg.save_state:
        check_writable(cfg.save_state)
    actions = _read_actions(cfg.actions, num_frames) if cfg.actions else None
    if cfg.prompt_world is not None and cfg.resume:
        raise ValueError("--prompt-world starts a new clip; it cannot be combined with --resume")
    if cfg.prompt_world is not None and cfg.prompt_frames < 1:
        raise ValueError(f"--prompt-frames must be at least 1, got {cfg.prompt_frames}")
    device = torch.device(cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    pipe = _load_pipeline(cfg, device, progress)
    if compile_blocks:
        pipe.compile_blocks()
    from vidhash.pipelines.cuda_graphs import use_cuda_graphs

    if use_cuda_graphs(cuda_graphs, device):
        pipe.enable_cuda_graphs()
    pipe.set_progress_bar_config(disable=not progress, desc="chunks")
    state = VidHashState.load(cfg.resume, device=device) if cfg.resume else None
    gen = cfg.generation
    prompt = _prompt(cfg, pipe, actions) if cfg.prompt_world is not None else None
    kwargs = dict(
        height=gen.height, width=gen.width, fps=cfg.fps, actions=actions, trajectory_seed=cfg.seed,
        chunk_frames=gen.chunk_frames, window_frames=gen.window_frames, memory=gen.memory,
        num_inference_steps=gen.num_inference_steps, action_step=gen.action_step, output_type="pt", state=state,
        guidance_scale=gen.guidance_scale, guidance_steps=gen.guidance_steps,
        generator=None if state is not None else torch.Generator().manual_seed(cfg.seed),
    )
    if prompt is not None:
        kwargs.update(context_frames=prompt["frames"], context_poses=prompt["poses"], context_actions=prompt["actions"])
    pipe.check_inputs(num_frames, gen.height, gen.width, cfg.fps, actions, None, gen.chunk_frames,
                      gen.window_frames, gen.memory, gen.num_inference_steps, "pt", state, ["latents"],
                      guidance_scale=gen.guidance_scale, guidance_steps=gen.guidance_steps)

    # 2. generate, writing each chunk as it finishes; everything is named *.partial.* until done
    partial = partial_path(out)
    config_partial, config_final = Path(f"{_stem(partial)}.config.yaml"), Path(f"{_stem(out)}.config.yaml")
    poses_partial, poses_final = Path(f"{_stem(partial)}.poses.json"), Path(f"{_stem(out)}.poses.json")
    save_config(cfg, config_partial)
    start_frame = state.frame_index if state is not None else 0
    poses: list[list[float]] = []
    names: list[str] = []
    writer = Mp4Writer(out, fps=cfg.fps)
    info = {}
    if prompt is not None:  # the given frames open the clip
        writer.write(prompt["frames"])
        poses.extend(prompt["poses"].tolist())
        names.extend(_names(prompt["actions"]))
        info = {"prompt_world": cfg.prompt_world, "prompt_frames": len(prompt["frames"])}
    stream = pipe.stream(num_frames, **kwargs)
    interrupted = []

    def on_signal(signum, frame):  # first Ctrl-C / SIGTERM: finish cleanly at the next step
        if interrupted:
            raise KeyboardInterrupt
        interrupted.append(signum)
        pipe._interrupt = True
        print("\nstopping after the current step (Ctrl-C again to stop at once)", file=sys.stderr)

    handlers = {}
    if threading.current_thread() is threading.main_thread():  # signals can only be caught there
        handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    pending, written_before, last_state = None, 0, state
    t0 = time.perf_counter()
    try:
        for chunk in stream:
            pending, written_before, last_state = chunk, writer.frames_written, chunk.state
            writer.write(_to_uint8(chunk.frames[0]))
            poses.extend(chunk.poses.tolist())
            names.extend(_names(chunk.actions))
            pending = None
        if interrupted:
            raise KeyboardInterrupt
    except BaseException:
        # 3a. interrupted or crashed: keep every finished frame in a playable .partial.mp4, save the
        # state if it matches the file (it does unless generation stopped inside a chunk's commit)
        broken = pipe.committing
        if pending is not None:  # a chunk committed to the state but not (fully) written: write the rest
            done = writer.frames_written - written_before
            del poses[written_before:], names[written_before:]
            try:
                writer.write(_to_uint8(pending.frames[0][done:]))
                poses.extend(pending.poses.tolist())
                names.extend(_names(pending.actions))
            except BaseException:
                broken = True
        for s, h in handlers.items():
            signal.signal(s, h)
        mp4 = writer.abort()
        _write_json(poses_partial, {"fps": cfg.fps, "start_frame": start_frame, "poses": poses, "actions": names, **info})
        msg = f"stopped: {writer.frames_written} frames in {mp4} (playable)"
        if last_state is not None:
            consistent = not broken and last_state.frame_index == start_frame + writer.frames_written
            state_path = Path(cfg.save_state) if cfg.save_state else Path(f"{_stem(partial)}.state.pt")
            if consistent:
                last_state.save(state_path)
                msg += f"; state saved to {state_path} (continue with --resume {state_path})"
            else:
                msg += "; state not saved (stopped inside a chunk commit; it would not match the file)"
        print(msg, file=sys.stderr)
        raise
    for s, h in handlers.items():
        signal.signal(s, h)

    # 3b. done: finalise, then move every file to its final name
    elapsed = time.perf_counter() - t0
    writer.close()
    _write_json(poses_final, {"fps": cfg.fps, "start_frame": start_frame, "poses": poses, "actions": names, **info})
    os.replace(config_partial, config_final)
    if cfg.save_state and last_state is not None:
        last_state.save(cfg.save_state)
    msg = (f"wrote {out}: {writer.frames_written} frames ({writer.frames_written / cfg.fps:.1f} s at {cfg.fps} fps) "
           f"in {elapsed:.1f} s ({1000 * elapsed / max(1, writer.frames_written):.1f} ms/frame); "
           f"poses {poses_final}, config {config_final}")
    if cfg.save_state:
        msg += f", state {cfg.save_state}"
    print(msg)
    return 0


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


def _names(ids: np.ndarray) -> list[str | None]:
    return [ACTIONS[i] if 0 <= i < len(ACTIONS) else None for i in ids.tolist()]
