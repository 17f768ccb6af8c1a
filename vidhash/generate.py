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

``--image PATH`` / ``--video PATH`` start from a real picture or clip instead: the image (one
frame) or the video's last ``--prompt-frames`` frames, resized to the frame size, are the context
frames (placed at the world's centre with no action: their camera path is unknown) and open the mp4
(``"prompt_image"`` / ``"prompt_video"`` in the poses file). ``--device`` (auto, cpu, cuda, cuda:N,
mps) and ``--dtype`` (float32, bfloat16, float16) place the transformer and its state.

Every flag and override is checked before any model loads or file is created (:func:`check_request`),
including the model folder's config (read without weights) and an estimate of the memory the run
needs against what the device has free (:func:`check_budget`): a refusal is one line naming the flag
or key.

``key=value`` overrides set generation settings (``chunk_frames=2``, ``num_inference_steps=8``,
``memory.mode=window``, ``memory.top_k=16``, ...; see ``vidhash.config``); an unknown key or a
wrong type is an error, and so is an override of a run setting that has a flag (``seconds=3``,
``out=...``: use ``--seconds``, ``--out``). ``--resume`` continues a saved state: the new frames (``--seconds``
more) go to ``--out``, and ``start_frame`` in the poses file says where they start; ``--seed``
is then ignored (the state carries its random generator).
"""
from __future__ import annotations

import ctypes
import dataclasses
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from .config import GenerateConfig, model_config_for, resolve_model
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
    device = resolve_device(cfg.device)
    from vidhash.pipelines.cuda_graphs import use_cuda_graphs

    use_cuda_graphs(cuda_graphs, device)  # (--cuda-graphs on a CPU device: refused here, before any file)
    if device.type == "cpu":
        keep_freed_memory()
    # 2. the state to continue from, read and checked (checksum, every field) before --out is claimed
    #    or the model loads; whether it fits the model is checked with the model, in step 4
    state = None
    if cfg.resume:
        from vidhash.pipelines import VidHashState  # here: a run refused by step 1 imports no model code

        state = VidHashState.load(cfg.resume, device=device)
    with OutputClaim(out) as claim:
        # 3. the pipeline on its device
        pipe = load_pipeline(cfg, device, progress, compile_blocks, cuda_graphs)
        # 4. the plan: ground-truth prompt frames, the stream's arguments (checked by the pipeline)
        prompt = prompt_frames(cfg, pipe, actions)
        kwargs = stream_arguments(cfg, pipe, num_frames, actions, state, prompt)
        # 5. write each chunk as it finishes; every file is named *.partial.* until the clip is done
        info = {prompt["flag"]: prompt["source"], "prompt_frames": len(prompt["frames"])} if prompt is not None else {}
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


# glibc mallopt parameters (malloc.h) and the values keep_freed_memory sets
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 64 << 20
TRIM_THRESHOLD = 256 << 20


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed blocks of up to 64 MiB for the next allocation instead of
    handing them back to the OS. By default it maps blocks over its (adaptive, ≤ 32 MiB) threshold
    anew and trims the heap's top beyond twice that, so the step's large temporaries (attention
    scores, memory-read ranks: a few MiB each) are mapped again on every pass and every 4-KiB page
    faults in on first touch: 1.75 million page faults, ~3.3 s of system time in the default 10-s
    clip on the CPU, against 0.11 million and 0.3 s with this (peak memory within 1 %). Only
    allocation changes — no value. Process-wide; ``vidhash generate`` calls it for a CPU device.
    Returns False where the C library has no ``mallopt`` (not glibc) or refuses the values."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) & bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def check_request(cfg: GenerateConfig):
    """``(out, num_frames, actions)`` after every check that needs no weights — every flag and
    setting, the model folder's config, and the memory the run needs against what the device has
    (:func:`check_budget`) — before any file is created; ValueError naming the flag or key."""
    out = check_writable(cfg.out, "--out")
    if out.suffix.lower() != ".mp4":
        raise ValueError(f"--out {out} must end in .mp4")
    if not 0 < cfg.fps <= MAX_FPS:
        raise ValueError(f"--fps must be positive (at most {MAX_FPS}), got {cfg.fps}")
    if not math.isfinite(cfg.seconds):
        raise ValueError(f"--seconds must be a finite number, got {cfg.seconds}")
    for flag, seed in (("--seed", cfg.seed), ("--prompt-world", cfg.prompt_world)):
        if seed is not None and not 0 <= seed <= MAX_SEED:
            raise ValueError(f"{flag} must be in [0, 2**63 - 1], got {seed}")
    num_frames = int(round(cfg.seconds * cfg.fps))
    if num_frames <= 0:
        raise ValueError(f"--seconds {cfg.seconds} at --fps {cfg.fps} is {num_frames} frames; need at least one")
    OutputClaim.check(out)  # free now (OutputClaim takes it after these checks, or fails the same way)
    if cfg.save_state:
        check_writable(cfg.save_state, "--save-state")
        check_state_path(cfg.save_state, out)
    actions = _read_actions(cfg.actions, num_frames) if cfg.actions else None
    check_prompt(cfg)
    if cfg.resume:
        check_resume(cfg.resume)
    if cfg.dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {cfg.dtype!r}")
    device = resolve_device(cfg.device)
    name = resolve_model(cfg.model)
    model = model_config_for(name)
    gen, patch = cfg.generation, model["patch_size"]
    if gen.height % patch or gen.width % patch:
        raise ValueError(f"height and width ({gen.height}×{gen.width}) must be divisible by the patch size {patch} of the model")
    prompt = 0 if cfg.prompt_world is None and cfg.prompt_video is None else cfg.prompt_frames
    source = name if name.startswith("random-") else str(Path(name) / "transformer" / "config.json")
    check_budget(model, cfg.generation, num_frames, prompt, DTYPES[cfg.dtype], device, source=source)
    return out, num_frames, actions


MAX_SEED = 2**63 - 1
MAX_FPS = 1000
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    """``--device``: ``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda``, ``cuda:N``,
    ``mps``; ValueError naming the flag for anything else or a device this machine lacks."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {device!r} is not a device: auto, cpu, cuda, cuda:N or mps")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available on this machine; use --device cpu (or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: MPS is not available on this machine; use --device cpu (or auto)")
    return dev


def available_bytes(device: torch.device) -> tuple[int, str]:
    """(free bytes, what they are) on ``device``: free GPU memory, else the RAM the OS can give."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0], f"free on {device}"
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: line.split()[1] for line in f}
        return int(info["MemAvailable"]) * 1024, "RAM available"
    except (OSError, KeyError, ValueError, IndexError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "RAM available"


def run_bytes(model: dict, gen, num_frames: int, prompt_frames: int, dtype: torch.dtype,
              source: str = "the model") -> dict[str, tuple[int, str]]:
    """An estimate of the memory a run holds at its peak, by part: ``{part: (bytes, the flag or key
    that sets it)}`` — weights, window cache, memories, one pass's activations (float32 attention
    scores, as the CPU reference computes them), prompt frames, and the per-frame poses and actions.
    ``source``: where the model's config comes from (named when the weights are the largest part)."""
    item = torch.tensor([], dtype=dtype).element_size()
    d, layers, heads, p = model["hidden_dim"], model["num_layers"], model["num_heads"], model["patch_size"]
    e, n = d // heads, (gen.height // p) * (gen.width // p)
    full = gen.memory.mode == "full"
    window = (num_frames + prompt_frames) if full else gen.window_frames
    mem = gen.memory
    slot = 2 * e * item + 4 * -(-mem.n_bits // 32) + 8 + 4
    tokens, context = gen.chunk_frames * n, window * n + gen.chunk_frames * n
    read = min(mem.top_k or mem.num_buckets * mem.slots, mem.num_buckets * mem.slots) if mem.mode == "hashed" else 0
    return {
        "weights": (int(layers * (14 + 2 * model["mlp_ratio"]) * d * d * item), f"{source}: hidden_dim × num_layers"),
        "window cache": (2 * layers * heads * window * n * e * item, "--seconds (memory.mode=full)" if full else "window_frames"),
        "memories": ((layers * heads * mem.num_buckets * mem.slots * slot) if mem.mode == "hashed" else 0,
                     "memory.num_buckets × memory.slots"),
        "attention": (4 * heads * (tokens * context + gen.chunk_frames * n * n + 2 * tokens * read * e),
                      "height/width" if n >= window + gen.chunk_frames else "window_frames/chunk_frames"),
        "activations": (16 * 4 * tokens * d, "height/width"),
        "prompt frames": (9 * prompt_frames * 3 * gen.height * gen.width, "--prompt-frames"),
        "poses": (64 * (num_frames + prompt_frames), "--seconds"),
    }


def check_budget(model: dict, gen, num_frames: int, prompt_frames: int, dtype: torch.dtype,
                 device: torch.device, available: int | None = None, source: str = "the model") -> None:
    """ValueError naming the flag or key behind the largest part when :func:`run_bytes` exceeds the
    memory ``device`` has free (``available``: that many bytes instead)."""
    parts = run_bytes(model, gen, num_frames, prompt_frames, dtype, source)
    total = sum(b for b, _ in parts.values())
    where = "given"
    if available is None:
        available, where = available_bytes(device)
    if total > available:
        part, (size, knob) = max(parts.items(), key=lambda kv: kv[1][0])
        raise ValueError(f"{knob}: this run needs about {_gb(total)} of memory ({part}: {_gb(size)}), more than the "
                         f"{_gb(available)} {where}; lower {knob}")


def _gb(n: int) -> str:
    return f"{n / 2**30:.3g} GiB" if n < 2**50 else f"{n / 2**50:.3g} PiB"


def check_resume(path: str) -> None:
    """``--resume``: an existing file (its contents are checked when it is read, before the model
    loads; whether it fits the model, once the model is there). ValueError naming the flag."""
    if os.path.isdir(path):
        raise ValueError(f"--resume {path} is a directory, not a state file")
    if not os.path.exists(path):
        raise ValueError(f"--resume {path}: no such state file")


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
    if cfg.dtype != "float32":
        pipe.transformer.to(DTYPES[cfg.dtype])
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
    context = {}
    if prompt is not None:  # (an image or video has no actions: its frames get the null action from the poses)
        context = dict(context_frames=prompt["frames"], context_poses=prompt["poses"],
                       context_actions=prompt["actions"] if prompt["flag"] == "prompt_world" else None)
        kwargs.update(context)
    pipe.check_inputs(num_frames, pipe.resolve_settings(state, **settings), cfg.fps, actions, None, "pt", state,
                      ["latents"], **context)
    return kwargs


def _read_actions(path: str, num_frames: int) -> list[str]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"--actions {path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"--actions {path} is a directory, not a JSON file") from None
    except OSError as err:
        raise ValueError(f"--actions {path}: cannot read it ({err.strerror or err})") from None
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


PROMPT_FLAGS = {"prompt_world": "--prompt-world", "prompt_image": "--image", "prompt_video": "--video"}


def check_prompt(cfg: GenerateConfig) -> None:
    """The frame prompt's flags: at most one of ``--prompt-world``, ``--image``, ``--video``, not
    with ``--resume``; the file of ``--image`` / ``--video`` readable as one (ValueError naming the flag)."""
    given = [flag for key, flag in PROMPT_FLAGS.items() if getattr(cfg, key) is not None]
    if len(given) > 1:
        raise ValueError(f"{' and '.join(given)}: give one frame prompt")
    if not given:
        return
    if cfg.resume:
        raise ValueError(f"{given[0]} starts a new clip; it cannot be combined with --resume")
    if cfg.prompt_frames < 1:
        raise ValueError(f"--prompt-frames must be at least 1, got {cfg.prompt_frames}")
    gen = cfg.generation
    if cfg.prompt_world is not None and gen.height != gen.width:
        raise ValueError(f"--prompt-world renders square views; height and width are {gen.height}×{gen.width}")
    if cfg.prompt_image is not None:
        _read_image(cfg.prompt_image, gen.height, gen.width, check_only=True)
    if cfg.prompt_video is not None:
        _video_length(cfg.prompt_video)


def _read_image(path: str, height: int, width: int, check_only: bool = False) -> np.ndarray | None:
    """``--image``: the file as one RGB uint8 frame ``(1, height, width, 3)``, resized (bicubic)."""
    from PIL import Image, UnidentifiedImageError

    if Path(path).is_dir():
        raise ValueError(f"--image {path} is a directory, not an image file")
    if not Path(path).is_file():
        raise ValueError(f"--image {path}: no such file")
    try:
        with Image.open(path) as image:
            if check_only:
                image.verify()
                return None
            rgb = image.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"--image {path}: not a readable image ({err})") from None
    return np.asarray(rgb, dtype=np.uint8)[None]


def _video_length(path: str) -> int:
    from .data.video import probe_frames

    if Path(path).is_dir():
        raise ValueError(f"--video {path} is a directory, not a video file")
    if not Path(path).is_file():
        raise ValueError(f"--video {path}: no such file")
    try:
        n = probe_frames(path)
    except Exception as err:  # PyAV raises its own error types for damaged or foreign files
        raise ValueError(f"--video {path}: not a readable video ({str(err).splitlines()[0] if str(err) else err})") from None
    if n < 1:
        raise ValueError(f"--video {path}: the video has no frames")
    return n


def prompt_frames(cfg: GenerateConfig, pipe, actions: list[str] | None) -> dict | None:
    """The frame prompt — ``{"frames" (F, h, w, 3) uint8, "poses" (F, 2), "actions" (F,), "flag", "source"}`` —
    of ``--prompt-world`` (:func:`_prompt`), ``--image`` (the image, resized to the generation size: one
    frame) or ``--video`` (its last ``--prompt-frames`` frames, resized); None without one. An image or
    video is placed at the world's centre with no action (its camera path is unknown); generation
    continues from there."""
    if cfg.prompt_world is not None:
        return {**_prompt(cfg, pipe, actions), "flag": "prompt_world", "source": cfg.prompt_world}
    gen = cfg.generation
    if cfg.prompt_image is not None:
        frames, flag, source = _read_image(cfg.prompt_image, gen.height, gen.width), "prompt_image", cfg.prompt_image
    elif cfg.prompt_video is not None:
        from .data.video import read_frames

        n = _video_length(cfg.prompt_video)
        count = min(n, cfg.prompt_frames)
        try:
            frames = read_frames(cfg.prompt_video, start=n - count, count=count, height=gen.height, width=gen.width)
        except Exception as err:  # (PyAV's error types)
            raise ValueError(f"--video {cfg.prompt_video}: not a readable video ({err})") from None
        flag, source = "prompt_video", cfg.prompt_video
    else:
        return None
    from .camera import NULL_ACTION

    size = int(round(float(pipe.transformer.config.pos_period)))
    poses = np.full((len(frames), 2), float(size // 2))
    return {"frames": frames, "poses": poses, "actions": np.full(len(frames), NULL_ACTION, dtype=np.int64),
            "flag": flag, "source": source}


def _prompt(cfg: GenerateConfig, pipe, actions: list[str] | None) -> dict:
    """Ground-truth prompt frames of world ``cfg.prompt_world``: ``prompt_frames`` frames moving
    in the direction of the clip's first action (right when it has none or stays), ending at
    the world's centre, where generation continues."""
    from .data.world import ACTION_DELTAS, ProceduralWorld

    gen, n = cfg.generation, cfg.prompt_frames
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
