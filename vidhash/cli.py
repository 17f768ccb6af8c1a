"""The ``vidhash`` command.

    vidhash --help
    vidhash bench hashhop --sizes 1000,10000

Each subcommand lives in its own module, which exposes ``add_arguments(parser)`` and
``run(args) -> int``; this file only maps names to modules (imported lazily, so ``vidhash
--help`` stays fast). A subcommand is listed here only once it works.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Grouped commands ("bench") map to a dict of the same shape.
COMMANDS: dict[str, tuple[str, str] | dict[str, tuple[str, str]]] = {
    "bench": {
        "hashhop": ("vidhash.bench.hashhop", "HashHop retrieval from a fixed-size HashedMemory vs dense attention"),
        "attention": ("vidhash.bench.attention", "hash-attention kernels vs dense SDPA and FlexAttention, with selection recall"),
        "coherence": ("vidhash.bench.coherence", "speed of the coherence metrics (analysed frames/s) on synthetic video"),
        "memory": ("vidhash.bench.memory", "HashedMemory read/write kernels vs the reference and dense SDPA, with recall"),
        "data": ("vidhash.bench.data", "training data throughput: P processes × W workers, with and without the shared world cache"),
        "generation": ("vidhash.bench.generation", "time per frame and peak memory vs clip length: hashed memory, full context, window only"),
    },
    "eval": {
        "world": ("vidhash.eval.world", "world-model memory on held-out worlds: return after 10 s / 1 min / 5 min, vs ground truth and self-consistency"),
    },
    "generate": ("vidhash.generate_cli", "generate a long clip to mp4 chunk by chunk (constant memory; resumable)"),
    "calibrate": ("vidhash.calibrate", "fit LearnedHash memory signatures per layer on recorded queries/keys; recall before/after"),
    "train": ("vidhash.training.cli", "train a model: rectified flow, per-chunk noise, EMA, checkpoints that resume exactly (accelerate)"),
    "coherence": ("vidhash.metrics.cli", "temporal coherence of any video: flicker, warping error, drift over minutes, revisits"),
}


def _add(sub: argparse._SubParsersAction, name: str, spec: tuple[str, str]) -> None:
    module_name, help_text = spec
    module = importlib.import_module(module_name)
    p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip().splitlines()[0])
    module.add_arguments(p)
    p.set_defaults(_run=module.run)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """Only the module of the command being run is imported; the others are listed by name."""
    parser = argparse.ArgumentParser(prog="vidhash", description="Long video generation with hash attention.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    argv = sys.argv[1:] if argv is None else argv
    wanted = argv[0] if argv else None
    wanted_sub = argv[1] if len(argv) > 1 else None
    for name, spec in COMMANDS.items():
        if isinstance(spec, dict):
            group = sub.add_parser(name, help=f"{name} subcommands: {', '.join(spec)}")
            gsub = group.add_subparsers(dest=f"{name}_command", metavar="WHAT")
            for sname, sspec in spec.items():
                if wanted == name and wanted_sub == sname:
                    _add(gsub, sname, sspec)
                else:
                    gsub.add_parser(sname, help=sspec[1])
        elif wanted == name:
            _add(sub, name, spec)
        else:
            sub.add_parser(name, help=spec[1])
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args, extra = parser.parse_known_args(argv)
    if extra:
        # key=value overrides may come after flags (`vidhash train CFG --max-minutes 8 lr=1e-3`):
        # argparse stops filling a positional list at the first flag, so collect the rest here
        if hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
            args.overrides = [*(args.overrides or []), *extra]
        else:
            parser.parse_args(argv)  # the usual error for what is really unknown
    run = getattr(args, "_run", None)
    if run is None:
        # `vidhash` or `vidhash bench` alone: show the relevant help.
        if args.command and isinstance(COMMANDS.get(args.command), dict):
            parser.parse_args([args.command, "--help"])
        parser.print_help()
        return 2
    try:
        return int(run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, PermissionError, OSError) as err:
        print(f"vidhash {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
