"""Generate a long clip to mp4, chunk by chunk, at constant memory.

    vidhash generate --model random-tiny --seconds 60 --fps 8 --out clip.mp4 [--seed N]
        [--actions actions.json] [--resume state.pt] [--save-state state.pt] [--device D] [--dtype T]
        [--prompt-world SEED | --image PATH | --video PATH] [--prompt-frames N] [key=value ...]

The flags; what they do and the files written: :mod:`vidhash.generate`.
"""
from __future__ import annotations

import argparse

from vidhash.camera import ACTIONS
from vidhash.cli import path_arg
from vidhash.config import GenerateConfig, generate_config, resolve_model


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, type=path_arg, help="saved pipeline folder or a name in models/ (default: world-tiny-v3, "
                   "the shipped world model), or random-tiny | random-small | random-base | random-world")
    p.add_argument("--seconds", type=float, default=None, help="clip length in seconds (default 10)")
    p.add_argument("--fps", type=int, default=None, help="frames per second (default 8)")
    p.add_argument("--out", default=None, type=path_arg, help="output .mp4 (default clip.mp4)")
    p.add_argument("--seed", type=int, default=None, help="noise and random-trajectory seed (default 0)")
    p.add_argument("--actions", default=None, type=path_arg, metavar="JSON", help=f"camera actions, one per frame: a JSON list of {', '.join(ACTIONS)} (or {{\"actions\": [...]}})")
    p.add_argument("--prompt-world", type=int, default=None, metavar="SEED",
                   help="start from ground-truth frames of this procedural world (written first into the mp4)")
    p.add_argument("--image", dest="prompt_image", default=None, type=path_arg, metavar="PATH",
                   help="start from this image (any format Pillow reads; resized to the frame size, one context frame)")
    p.add_argument("--video", dest="prompt_video", default=None, type=path_arg, metavar="PATH",
                   help="start from the last --prompt-frames frames of this video (resized to the frame size)")
    p.add_argument("--prompt-frames", type=int, default=None, metavar="N",
                   help="how many prompt frames of --prompt-world / --video (default 8)")
    p.add_argument("--resume", default=None, type=path_arg, metavar="STATE", help="continue from a saved state")
    p.add_argument("--save-state", default=None, type=path_arg, metavar="STATE", help="save the state here at the end (and on interrupt)")
    p.add_argument("--device", default=None, help="auto (default: cuda when available), cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                   help="the transformer's weights and state (default float32)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile each transformer block (VidHashPipeline.compile_blocks; compiles on the first chunks)")
    p.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="replay steady chunks' transformer passes from CUDA graphs (VidHashPipeline.enable_cuda_graphs; "
                        "frames unchanged; default: on for a CUDA device)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="generation settings, e.g. chunk_frames=2 memory.top_k=16")


# run settings: each has its flag, and only the flag sets it (a key=value override naming one is an error)
RUN_FLAGS = {"model": "--model", "seconds": "--seconds", "fps": "--fps", "out": "--out", "seed": "--seed",
             "actions": "--actions", "prompt_world": "--prompt-world", "prompt_frames": "--prompt-frames",
             "resume": "--resume", "save_state": "--save-state", "device": "--device", "dtype": "--dtype",
             "prompt_image": "--image", "prompt_video": "--video"}


def check_overrides(args: argparse.Namespace) -> None:
    """``key=value`` overrides are generation settings; one naming a run setting (``seconds=3``,
    ``out=../x.mp4``) is an error naming its flag — and the flag's value when both were given."""
    for item in args.overrides or []:
        key = item.split("=", 1)[0].strip()
        if key in RUN_FLAGS:
            flag, given = RUN_FLAGS[key], getattr(args, key, None)
            both = f" (conflicts with {flag} {given})" if given is not None else ""
            raise ValueError(f"{item}: {key} is set by {flag}, not by a key=value override{both}")


def check_prompt_frames(args: argparse.Namespace) -> None:
    """``--prompt-frames`` counts the frames of ``--prompt-world`` or ``--video``: given without
    either (alone, or with ``--image``, which is one frame) it would be ignored; an error instead."""
    if args.prompt_frames is not None and args.prompt_world is None and args.prompt_video is None:
        why = "--image is one frame" if args.prompt_image is not None else "neither is given"
        raise ValueError(f"--prompt-frames counts the prompt frames of --prompt-world or --video, and {why}; "
                         "leave --prompt-frames out or give --prompt-world / --video")


def config_from_args(args: argparse.Namespace) -> GenerateConfig:
    check_overrides(args)
    check_prompt_frames(args)
    model = resolve_model(args.model)
    flags = {"model": model, **{key: getattr(args, key, None) for key in RUN_FLAGS if key != "model"}}
    return generate_config(args.overrides, **flags)  # generation settings: the model's own, then the overrides


def run(args: argparse.Namespace) -> int:
    from vidhash.generate import generate

    return generate(config_from_args(args), progress=not args.quiet, compile_blocks=args.compile,
                    cuda_graphs=args.cuda_graphs)
