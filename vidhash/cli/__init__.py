"""The ``vidhash`` command.

    vidhash --help
    vidhash bench hashhop --sizes 1000,10000
    python -m vidhash.cli train world_tiny        # the same (e.g. under ``accelerate launch``)

Every command lives in one module of this package, which exposes ``add_arguments(parser)`` and
``run(args) -> int``; ``COMMANDS`` maps names to those modules and imports only the one being
run, so ``vidhash --help`` stays fast. argparse lives in this package only: the modules it runs
(``vidhash.generate``, ``vidhash.eval.world``, ``vidhash.bench.*``, ...) are plain library code.
A command is listed here only once it works.

Exit status: what the command returns (0 done), 2 for a usage error or an error the command
raises as ``ValueError`` / ``OSError`` (printed as ``vidhash COMMAND: error: ...``), 130 on
Ctrl-C.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import sys

# name -> (target, one-line help); a target is a module of this package, or "module:attribute" for an
# object with add_arguments / run. Grouped commands ("bench") map to a dict of the same shape.
COMMANDS: dict[str, tuple[str, str] | dict[str, tuple[str, str]]] = {
    "bench": {
        "hashhop": ("vidhash.cli.bench:hashhop", "HashHop retrieval from a fixed-size HashedMemory vs dense attention"),
        "attention": ("vidhash.cli.bench:attention", "hash-attention kernels vs dense SDPA and FlexAttention, with selection recall"),
        "selection": ("vidhash.cli.bench:selection", "block selection: recall beside the oracle, output error and cost per scorer, shape, key-block size"),
        "coherence": ("vidhash.cli.bench:coherence", "speed of the coherence metrics (analysed frames/s) on synthetic video"),
        "memory": ("vidhash.cli.bench:memory", "HashedMemory read/write kernels vs the reference and dense SDPA, with recall"),
        "data": ("vidhash.cli.bench:data", "training data throughput: P processes × W workers, with and without the shared world cache"),
        "generation": ("vidhash.cli.bench:generation", "time per frame and peak memory vs clip length: hashed memory, full context, window only"),
        "dropin": ("vidhash.cli.bench:dropin", "hash-attention drop-in on a trained wan-mini: PSNR/SSIM vs dense, coherence, recall, ms/step"),
        "train-compare": ("vidhash.cli.bench:train_compare", "two training runs: validation loss against GPU-seconds, time to the first run's final loss and the ratio"),
        "wan-quality": ("vidhash.cli.bench:wan_quality", "wan-mini models' clips on held-out worlds against the rendered truth: PSNR, return PSNR, coherence, realism (dense- vs sparse-trained)"),
        "realism": ("vidhash.cli.bench:realism", "validation table of the no-reference realism score: real frames, distortions, clips"),
    },
    "eval": {
        "world": ("vidhash.cli.eval_world", "world-model memory on held-out worlds: return after 10 s / 1 min / 5 min, vs ground truth and self-consistency"),
    },
    "generate": ("vidhash.cli.generate", "generate a long clip to mp4 chunk by chunk (constant memory; resumable)"),
    "calibrate": ("vidhash.cli.calibrate", "fit LearnedHash signatures on recorded queries/keys: a vidhash model's memory, or the drop-in's per layer and head of a diffusers transformer folder; recall before/after"),
    "train": ("vidhash.cli.train", "train a model: rectified flow, per-chunk noise, EMA, checkpoints that resume exactly (accelerate)"),
    "coherence": ("vidhash.cli.coherence", "temporal coherence of any video: flicker, warping error, drift over minutes, revisits"),
}


def path_arg(text: str) -> str:
    """argparse type of a path flag (``--json``, ``--save-state``, ...): any text but an empty one,
    which would otherwise read as the flag not given (or as the current folder)."""
    if not text:
        raise argparse.ArgumentTypeError("is an empty path; give a path, or leave the flag out")
    return text


def _version() -> str:
    from vidhash import __version__

    return __version__


def _load(target: str):
    """The module (or ``module:attribute`` object) with ``add_arguments`` and ``run``."""
    module_name, _, attribute = target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attribute) if attribute else module


def first_paragraph(doc: str) -> str:
    """A docstring's first paragraph as one line (its first line alone may stop mid-sentence)."""
    return " ".join(doc.strip().split("\n\n")[0].split())


def _add(sub: argparse._SubParsersAction, name: str, spec: tuple[str, str]) -> argparse.ArgumentParser:
    command = _load(spec[0])
    doc = getattr(command, "description", None) or command.__doc__ or spec[1]
    p = sub.add_parser(name, help=spec[1], description=first_paragraph(doc))
    command.add_arguments(p)
    p.set_defaults(_run=command.run)
    return p


class _Parsers:
    """The top-level parser, the group parsers (``bench``, ``eval``) and the parser of the command being run."""

    def __init__(self, argv: list[str]):
        self.top = argparse.ArgumentParser(prog="vidhash", description="Long video generation with hash attention.")
        self.top.add_argument("--version", action="version", version=f"vidhash {_version()}")
        sub = self.top.add_subparsers(dest="command", metavar="COMMAND")
        wanted = argv[0] if argv else None
        wanted_sub = argv[1] if len(argv) > 1 else None
        self.groups: dict[str, argparse.ArgumentParser] = {}
        self.command: argparse.ArgumentParser | None = None
        for name, spec in COMMANDS.items():
            if isinstance(spec, dict):
                group = sub.add_parser(name, help=f"{name} subcommands: {', '.join(spec)}")
                gsub = group.add_subparsers(dest=f"{name}_command", metavar="WHAT")
                self.groups[name] = group
                for sname, sspec in spec.items():
                    if wanted == name and wanted_sub == sname:
                        self.command = _add(gsub, sname, sspec)
                    else:
                        gsub.add_parser(sname, help=sspec[1])
            elif wanted == name:
                self.command = _add(sub, name, spec)
            else:
                sub.add_parser(name, help=spec[1])


def main(argv: list[str] | None = None) -> int:
    program = argv is None  # the `vidhash` program (not a call from Python): its process ends with it
    argv = sys.argv[1:] if argv is None else list(argv)
    if program:
        gc.freeze()  # (see _exit_quickly) what `import vidhash` made: torch, ~10⁵ objects alive until exit
    try:
        return _main(argv)
    finally:
        if program:
            _exit_quickly()


def _exit_quickly() -> None:
    """Before a program run's exit: every object alive now moves to the collector's permanent
    generation. They live until the process ends in any case; the interpreter's last full
    collection (and any collection on the way out) then skips them: with torch and diffusers
    loaded, ~10⁶ objects and 0.8 s of a `vidhash generate` run's exit. (Freezing after
    ``import vidhash`` likewise keeps the start-up's collections off torch's objects: ~0.3 s.)"""
    gc.freeze()


def _main(argv: list[str]) -> int:
    parsers = _Parsers(argv)
    args, extra = parsers.top.parse_known_args(argv)
    if extra:
        # key=value overrides may come after flags (`vidhash train CFG --max-minutes 8 lr=1e-3`):
        # argparse stops filling a positional list at the first flag, so collect the rest here
        if hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
            args.overrides = [*(args.overrides or []), *extra]
        else:  # the usual error, with the usage of the command that was given them
            parser = parsers.command or parsers.groups.get(args.command) or parsers.top
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    run = getattr(args, "_run", None)
    if run is None:
        # `vidhash` or `vidhash bench` alone: the relevant help, and the status of a usage error
        parsers.groups.get(args.command, parsers.top).print_help()
        return 2
    try:
        return int(run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, PermissionError, OSError) as err:
        name = " ".join(x for x in (args.command, getattr(args, f"{args.command}_command", None)) if x)
        print(f"vidhash {name}: error: {err}", file=sys.stderr)
        return 2
