"""Fit learned signatures (``LearnedHash``) on a model's own queries and keys: a vidhash pipeline's memories, or a diffusers video transformer's self-attention.

    vidhash calibrate PIPELINE_DIR [--out DIR] [--bits 32] [--clips 8] [--top-k 32] [--steps 300] [--json report.json]
    vidhash calibrate TRANSFORMER_DIR --inputs INPUTS.pt [--out FILE] [--bits 32] [--top-k 32] [--steps 300]

A vidhash pipeline (``PIPELINE_DIR``, or ``random-tiny``...): one hasher per layer for its
memories, written as a calibrated pipeline folder; the recording, the fit and the report:
:mod:`vidhash.calibrate`.

A diffusers video transformer the drop-in serves (``TRANSFORMER_DIR``: a folder with its
``config.json``, or a pipeline folder with a ``transformer/`` one) and ``--inputs``: a
``torch.save``'d dict, or list of dicts, of ``transformer(**kwargs)`` inputs — e.g. the latents,
timesteps and text embeddings of a few denoising steps of your own prompts. One hasher per
self-attention module, fitted on those steps' queries and keys
(:mod:`vidhash.integrations.calibrate`), written to ``--out`` (default
``TRANSFORMER_DIR/vidhash_hashers.safetensors``, beside the weights);
``enable_hash_attention(Model.from_pretrained(TRANSFORMER_DIR), hashers=TRANSFORMER_DIR)`` loads them.

Exit status 1 when the learned signatures recall less than SimHash on the held-out clips or
samples and are not written (``--keep-worse`` writes them anyway). ``--val-clips 0`` records no
validation clips: the signatures are written unchecked, and a line says so.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from vidhash.calibrate import CalibrateConfig, calibrate, check_out, format_report, save_calibrated, worse_on_validation
from vidhash.cli import path_arg
from vidhash.files import check_output_file, write_json
from vidhash.generate import resolve_device


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = CalibrateConfig()
    p.add_argument("model", metavar="PIPELINE_DIR", help="saved pipeline folder, or random-tiny | random-small | random-base")
    p.add_argument("--out", default=None, type=path_arg, help="pipeline folder to write (default PIPELINE_DIR-calibrated)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out when it is a saved pipeline folder (with model_index.json; never a file or another folder)")
    p.add_argument("--keep-worse", action="store_true",
                   help="write the learned signatures even when they recall less than SimHash on the validation clips")
    p.add_argument("--bits", type=int, default=d.bits, help=f"signature bits (default {d.bits})")
    p.add_argument("--hidden", type=int, default=d.hidden, help=f"hash MLP width (default {d.hidden})")
    p.add_argument("--clips", type=int, default=d.clips, help=f"world clips to record (default {d.clips})")
    p.add_argument("--val-clips", type=int, default=d.val_clips, help=f"validation clips, on which the learned signatures must recall at least as much as SimHash to be written "
                        f"(default {d.val_clips}; 0: none, written unchecked)")
    p.add_argument("--frames", type=int, default=d.frames, help=f"frames per clip (default {d.frames})")
    p.add_argument("--top-k", type=int, default=d.top_k, help=f"exact top-k keys per query to find (default {d.top_k}; fewer than the keys "
                   "a clip, or a recorded sample, has)")
    p.add_argument("--steps", type=int, default=d.steps, help=f"optimiser steps per layer (default {d.steps})")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--pos-weight", type=float, default=d.pos_weight, help="BCE weight of positives (default 20)")
    p.add_argument("--batch-queries", type=int, default=d.batch_queries)
    p.add_argument("--chunk-frames", type=int, default=None, help="frames per chunk (default: the generation preset's)")
    p.add_argument("--window-frames", type=int, default=None, help="window frames (default: the generation preset's)")
    p.add_argument("--inference-steps", type=int, default=None, help="denoising steps (default: the generation preset's)")
    p.add_argument("--world-seed", type=int, default=d.world_seed, help="procedural world (a training world)")
    p.add_argument("--seed", type=int, default=d.seed, help="trajectory/noise seed")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1, ...")
    p.add_argument("--json", default=None, type=path_arg, metavar="PATH", help="write the report as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    g = p.add_argument_group("diffusers video transformers (the drop-in)")
    g.add_argument("--inputs", default=None, type=path_arg, metavar="PATH",
                   help="torch.save'd dict or list of dicts of transformer(**kwargs) inputs to record (a diffusers model)")
    g.add_argument("--max-queries", type=int, default=512, help="queries kept per sample and module (default 512)")
    g.add_argument("--max-keys", type=int, default=2048, help="keys kept per sample and module (default 2048)")


def _load(model: str, device):
    from vidhash.pipelines import VidHashPipeline

    pipe = VidHashPipeline.load(model)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def config_from_args(args: argparse.Namespace) -> CalibrateConfig:
    from vidhash.config import generation_config, preset_for_model

    gen = generation_config(preset_for_model(args.model))
    cfg = CalibrateConfig(
        bits=args.bits, hidden=args.hidden, clips=args.clips, val_clips=args.val_clips, frames=args.frames,
        top_k=args.top_k, steps=args.steps, lr=args.lr, pos_weight=args.pos_weight, batch_queries=args.batch_queries,
        chunk_frames=gen.chunk_frames if args.chunk_frames is None else args.chunk_frames,
        window_frames=gen.window_frames if args.window_frames is None else args.window_frames,
        inference_steps=gen.num_inference_steps if args.inference_steps is None else args.inference_steps,
        memory_seed=gen.memory.seed,
        world_seed=args.world_seed, seed=args.seed,
    )
    cfg.check()
    return cfg


def check_flags(args: argparse.Namespace) -> None:
    """The flags both kinds of model share, before any model loads or anything is recorded:
    ``--bits`` (at most ``MAX_BITS``), ``--lr`` and ``--pos-weight`` (positive, finite), ``--seed`` (≥ 0), and ``--json``
    (a file that can be created in an existing folder); ValueError naming the flag."""
    CalibrateConfig(bits=args.bits, lr=args.lr, pos_weight=args.pos_weight, seed=args.seed).check()  # its checks, the rest default
    if args.json:
        check_output_file(args.json, "--json")
    resolve_device(args.device)  # auto, cpu, cuda, cuda:N, mps — and present here (ValueError naming --device)


def run(args: argparse.Namespace) -> int:
    from .calibrate_diffusers import diffusers_model_dir, run_diffusers

    check_flags(args)
    folder = diffusers_model_dir(args.model)
    if folder is not None or args.inputs is not None:
        return run_diffusers(args, folder)
    cfg = config_from_args(args)
    if args.out is None and args.model.startswith("random-"):
        raise ValueError("--out is required with a random model")
    out = check_out(args.out if args.out else str(Path(args.model)).rstrip("/") + "-calibrated", args.overwrite)
    if args.json and Path(args.json).resolve() == out.resolve():
        raise ValueError(f"--json {args.json} is --out {out}; pick another path for the report")
    device = resolve_device(args.device)
    pipe = _load(args.model, device)
    hashers, report = calibrate(pipe, cfg, progress=not args.quiet)
    report["model"], report["device"] = args.model, str(device)
    worse = worse_on_validation(report)
    status = 0
    if worse and not getattr(args, "keep_worse", False):
        report["out"] = None
        print(format_report(report))
        print(f"not written: {worse}. They fit the recorded clips but do not generalise; record more clips "
              "(--clips) or take fewer --steps, or pass --keep-worse to write them anyway.")
        status = 1
    else:
        report["out"] = str(save_calibrated(pipe, hashers, cfg, out, overwrite=args.overwrite))
        print(format_report(report))
        if worse:
            print(f"warning: {worse} (written anyway: --keep-worse)")
        if not cfg.val_clips:  # (nothing to check them on: say so rather than write them as if checked)
            print("validation skipped (--val-clips 0): the learned signatures were not checked against SimHash on "
                  "held-out clips; give --val-clips N to check them before they are written")
        print(f"wrote {report['out']}")
    if args.json:
        write_json(args.json, report, indent=2)
        print(f"wrote {args.json}")
    return status
