"""World-model memory on held-out worlds: see a place, wander away for a horizon, come back.

    vidhash eval world PIPELINE_DIR|random-tiny [--seeds 1000000,1000001] [--horizons 10,60,300] [--fps 8]
        [--modes hashed,window,full,random-sig] [--json out.json] [--plot out.png] [--device auto]
        [--dtype float32|bfloat16] [--full-max-seconds 60]
    vidhash eval world --from-json short.json 5min.json [--json all.json] [--plot all.png]

The flags; the evaluation, its JSON and its table: :mod:`vidhash.eval.world`.
"""
from __future__ import annotations

import argparse

from vidhash.cli import path_arg
from vidhash.eval.world import (
    DEFAULT_HORIZONS,
    DEFAULT_SEEDS,
    MODES,
    WorldEvalOptions,
    check_plot,
    evaluate,
    format_table,
    load_result,
    merge_results,
    plot_result,
    write_json,
)
from vidhash.training.config import HELDOUT_WORLD_SEED


def _csv(kind, name: str):
    def parse(text: str):
        try:
            values = tuple(kind(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a comma-separated list of {kind.__name__}s, got {text!r}")
        if not values:
            raise argparse.ArgumentTypeError(f"{name} is empty")
        return values
    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=None,
                   help="saved pipeline folder (VidHashPipeline.save_pretrained), or random-tiny / random-small / random-base / random-world")
    p.add_argument("--memory", type=_csv(str, "--memory"), default=(),
                   help="comma-separated key=value overrides of the preset's memory config, "
                        "e.g. num_buckets=1024,slots=16,top_k=64 (every memory mode uses them)")
    p.add_argument("--seeds", type=_csv(int, "--seeds"), default=DEFAULT_SEEDS,
                   help=f"held-out world seeds (default {','.join(map(str, DEFAULT_SEEDS))}; training uses seeds below {HELDOUT_WORLD_SEED:,})")
    p.add_argument("--horizons", type=_csv(float, "--horizons"), default=DEFAULT_HORIZONS,
                   help="seconds of video between leaving the place and coming back (default 10,60,300)")
    p.add_argument("--fps", type=int, default=8, help="frames per second of video (default 8)")
    p.add_argument("--modes", type=_csv(str, "--modes"), default=MODES, help=f"comma-separated: {', '.join(MODES)}")
    p.add_argument("--visit-seconds", type=float, default=2.0, help="length of the first visit (default 2 s)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps per chunk (default: the model's generation preset)")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="context guidance scale (default: the model's generation preset; 1 = off)")
    p.add_argument("--guidance-steps", type=int, default=None,
                   help="guide the first N denoising steps of each chunk (default: the preset's)")
    p.add_argument("--frame-size", type=int, default=None, help="frame side in pixels (default: the preset's; smaller only for smoke tests)")
    p.add_argument("--full-max-seconds", type=float, default=60.0,
                   help="longest horizon the dense full-context baseline runs (default 60)")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="model dtype (bfloat16: CUDA only)")
    p.add_argument("--json", default=None, type=path_arg, help="write the results here")
    p.add_argument("--plot", default=None, type=path_arg, help="write a PNG of metric against horizon here")
    p.add_argument("--from-json", default=None, type=path_arg, nargs="+", metavar="JSON",
                   help="no run: print the table (and --plot) of a saved result; several results of the same model "
                        "and settings (e.g. runs cut by a time limit, or one per horizon) are merged; takes --json, --plot "
                        "and --quiet, and refuses a run's flags")
    p.add_argument("--recall-every", type=int, default=1,
                   help="measure the memory read's top-k recall on every N-th read (default 1: all; the reference "
                        "selection it runs costs a CPU ~10× the read, so e.g. 16 there)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="replay steady chunks from CUDA graphs (VidHashPipeline.enable_cuda_graphs; same frames; "
                        "default: on for a CUDA device)")


def options_from_args(args: argparse.Namespace) -> WorldEvalOptions:
    return WorldEvalOptions(model=args.model, seeds=tuple(args.seeds), horizons=tuple(args.horizons), fps=args.fps,
                            modes=tuple(args.modes), visit_seconds=args.visit_seconds, steps=args.steps,
                            guidance_scale=args.guidance_scale, guidance_steps=args.guidance_steps,
                            frame_size=args.frame_size, full_max_seconds=args.full_max_seconds, device=args.device,
                            dtype=args.dtype, json=args.json, plot=args.plot, progress=not args.quiet,
                            memory=tuple(args.memory), cuda_graphs=getattr(args, "cuda_graphs", None),
                            recall_every=getattr(args, "recall_every", 1))


def check_outputs(args: argparse.Namespace) -> None:
    """--json and --plot, before any evaluation or reading: files that can be created in existing
    folders (:func:`vidhash.files.check_output_file`), the plot a .png; ValueError naming the flag."""
    from vidhash.files import check_output_file

    for flag, path in (("--json", args.json), ("--plot", args.plot)):
        if path:
            check_output_file(path, flag)
    if args.plot:
        check_plot(args.plot)


FROM_JSON_FLAGS = ("from_json", "json", "plot", "quiet")
"""What ``--from-json`` reads of the flags (``--quiet``: it shows no progress bar either way); the
rest (and the model) set up a run."""


def check_from_json_flags(args: argparse.Namespace) -> None:
    """``--from-json`` runs nothing: a run's flags given beside it (a value other than argparse's
    default, and the model) would have no effect; ValueError naming them, before any file is read."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    defaults = vars(parser.parse_args([]))
    given = [dest for dest, default in defaults.items()
             if dest not in FROM_JSON_FLAGS and getattr(args, dest, default) != default]
    if not given:
        return
    names = [f"the model {args.model}" if dest == "model" else
             "--no-cuda-graphs" if dest == "cuda_graphs" and args.cuda_graphs is False else
             "--" + dest.replace("_", "-") for dest in given]
    raise ValueError(f"--from-json redraws saved results and runs nothing: {', '.join(names)} "
                     f"{'applies' if len(names) == 1 else 'apply'} to a run and would be ignored; leave "
                     f"{'it' if len(names) == 1 else 'them'} out, or run without --from-json")


def run(args: argparse.Namespace) -> int:
    if args.from_json:
        check_from_json_flags(args)
    check_outputs(args)
    if args.from_json:
        result = merge_results([load_result(path) for path in args.from_json])
        if args.json:
            write_json(args.json, result)
        print(format_table(result))
        if args.plot:
            print(f"wrote {plot_result(result, args.plot)}")
        return 0
    if args.model is None:
        raise ValueError("give a model: a saved pipeline folder, or random-tiny")
    result = evaluate(options_from_args(args))
    print(format_table(result))
    return 0
