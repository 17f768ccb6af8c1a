"""Train a VidHashTransformer3DModel (rectified flow, per-chunk noise, EMA, exact resume) on accelerate.

    vidhash train configs/train/world_tiny.yaml out_dir=out/world max_steps=2000
    vidhash train world_tiny --resume auto --max-minutes 8
    accelerate launch --num_processes 2 -m vidhash.cli train world_tiny --resume auto

CONFIG is a YAML file or a name in configs/train/; ``key=value`` overrides any key
(``data.num_frames=32``, ``optim.lr=1e-4``); an unknown key or wrong type is an error naming it.
Writes OUT_DIR/config.yaml, OUT_DIR/loss.csv, OUT_DIR/checkpoints/step-*/ and, at the end or
whenever the run stops (time budget, SIGTERM, Ctrl-C), a checkpoint and OUT_DIR/export/ (the EMA
weights as a VidHashPipeline folder: VidHashPipeline.from_pretrained(OUT_DIR/export)).
A loss that turns non-finite stops the run: one error line (what to change), exit status 1.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vidhash.cli import path_arg


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="training YAML (configs/train/*.yaml) or a preset name (world_tiny)")
    parser.add_argument("overrides", nargs="*", default=[], metavar="key=value", help="config overrides (optional)")
    parser.add_argument("--resume", default=None, type=path_arg, metavar="auto|PATH",
                        help="continue: 'auto' = latest checkpoint under out_dir (fresh if none), or a checkpoint "
                             "folder / checkpoints root")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop cleanly (checkpoint + export) before this many minutes of wall time (0: no limit; "
                             "default: the config's max_minutes)")
    parser.add_argument("--stop-at-step", type=int, default=None,
                        help="stop (with a checkpoint) at this step, as if interrupted (LR schedule keeps max_steps)")
    parser.add_argument("--profile-steps", default=None, metavar="START:STOP",
                        help="torch.profiler over these steps (e.g. 300:310, after compilation): host time, "
                             "kernel time and launches per step in OUT_DIR/profile.txt")
    parser.add_argument("--no-export", action="store_true", help="skip the EMA pipeline export")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def check_flags(args: argparse.Namespace) -> None:
    """The flags, before the config is read or anything trains; ValueError naming the flag."""
    if args.max_minutes is not None and not args.max_minutes >= 0:
        raise ValueError(f"--max-minutes must be >= 0, got {args.max_minutes}")
    if args.stop_at_step is not None and args.stop_at_step < 1:
        raise ValueError(f"--stop-at-step must be a positive step (the run stops once it reaches it), got {args.stop_at_step}")


def check_out_dir(out_dir: str) -> None:
    """``out_dir``: a folder, or a path where one can be made — not an existing file, nor below one.
    ValueError naming the key."""
    from vidhash.files import nearest_existing

    path = Path(out_dir)
    here = nearest_existing(path)
    if here.exists() and not here.is_dir():
        what = "is a file" if here == path else f"is below {here}, which is a file"
        raise ValueError(f"out_dir={out_dir} {what}, not a folder; pick another out_dir")


def run(args: argparse.Namespace) -> int:
    from vidhash.training.config import to_yaml_text
    from vidhash.training.recipes import load_train_config

    check_flags(args)
    overrides = list(args.overrides or [])
    named = {item.split("=", 1)[0].strip() for item in overrides if "=" in item}
    if "max_steps" in named and "budget_minutes" not in named:  # a named length is the length
        overrides.append("budget_minutes=0")
    cfg = load_train_config(args.config, overrides)
    if args.print_config:
        print(to_yaml_text(cfg), end="")
        return 0
    check_out_dir(cfg.out_dir)
    from vidhash.training.profile import parse_steps
    from vidhash.training.trainer import train

    profile_steps = parse_steps(args.profile_steps) if args.profile_steps else None

    # a run continued by a call that names neither budget_minutes nor max_steps keeps its schedule
    # (the fit of its first call, or the length it was set to); budget_minutes=B fits B anew;
    # max_steps=N alone sets the length N (budget_minutes=0, above), for this and later calls
    named = bool(named & {"budget_minutes", "max_steps"})
    try:
        summary = train(cfg, resume=args.resume, max_minutes=args.max_minutes, stop_at_step=args.stop_at_step,
                        progress=not args.no_progress, export=not args.no_export, profile_steps=profile_steps,
                        keep_budget=not named)
    except FloatingPointError as err:  # the loss went non-finite: the run stops, its message says what to change
        print(f"vidhash train: error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0
