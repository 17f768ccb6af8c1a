"""``vidhash calibrate TRANSFORMER_DIR --inputs INPUTS.pt``: the drop-in's hashers for a diffusers
video transformer (see :mod:`vidhash.cli.calibrate`; the library code:
:mod:`vidhash.integrations.calibrate`)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from vidhash.generate import resolve_device


def diffusers_model_dir(model: str) -> Path | None:
    """The folder of a diffusers transformer the drop-in serves in ``model`` (the folder itself,
    or its ``transformer/`` subfolder), else None."""
    from vidhash.integrations.diffusers import REFUSED_CLASSES, SUPPORTED_CLASSES

    for folder in (Path(model), Path(model) / "transformer"):
        config = folder / "config.json"
        if config.is_file():
            name = json.loads(config.read_text()).get("_class_name")
            if name in SUPPORTED_CLASSES or name in REFUSED_CLASSES:
                return folder
    return None


def _load_inputs(path: str, device: torch.device) -> list[dict]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"--inputs {path} does not exist")
    data = torch.load(path, map_location=device, weights_only=True)
    calls = [data] if isinstance(data, dict) else data
    if not isinstance(calls, list) or not calls or not all(isinstance(c, dict) for c in calls):
        raise ValueError(f"--inputs {path} must hold a dict or a non-empty list of dicts of transformer(**kwargs) inputs")
    return calls


def run_diffusers(args: argparse.Namespace, folder: Path | None) -> int:
    import diffusers

    from vidhash.integrations.calibrate import HashCalibrationConfig, calibrate_hash_attention, format_report, worse_on_held_out
    from vidhash.integrations.hashers import FILE_NAME, save_hashers

    # 1. arguments
    if folder is None:
        raise ValueError(f"--inputs needs a diffusers video transformer folder (config.json of a supported class); got {args.model}")
    if args.inputs is None:
        raise ValueError(f"{args.model} is a diffusers model: --inputs (its transformer's recorded inputs) is required")
    cfg = HashCalibrationConfig(bits=args.bits, hidden=args.hidden, top_k=args.top_k, steps=args.steps, lr=args.lr,
                                pos_weight=args.pos_weight, batch_queries=args.batch_queries,
                                max_queries=args.max_queries, max_keys=args.max_keys, seed=args.seed)
    out = Path(args.out) if args.out else folder / FILE_NAME
    if out.suffix != ".safetensors":
        out = out / FILE_NAME
    if out.exists() and not args.overwrite:
        raise ValueError(f"--out {out} exists (pass --overwrite to replace it)")
    device = resolve_device(args.device)
    # 2. model and inputs
    name = json.loads((folder / "config.json").read_text())["_class_name"]
    transformer = getattr(diffusers, name).from_pretrained(str(folder)).to(device).eval()
    calls = _load_inputs(args.inputs, device)
    # 3. record, fit, report, write
    hashers, report = calibrate_hash_attention(transformer, calls, cfg)
    report["model_dir"], report["device"] = str(folder), str(device)
    worse = worse_on_held_out(report)
    status = 0
    if worse and not args.keep_worse:
        report["out"] = None
        print(format_report(report))
        print(f"not written: {worse}. Record more steps or prompts, or take fewer --steps; --keep-worse writes them anyway.")
        status = 1
    else:
        report["out"] = save_hashers(hashers, out)
        print(format_report(report))
        if worse:
            print(f"warning: {worse} (written anyway: --keep-worse)")
        print(f"wrote {report['out']}")
    if args.json:  # (checked before any work: vidhash.cli.calibrate.check_flags)
        from vidhash.files import write_json

        write_json(args.json, report, indent=2)
        print(f"wrote {args.json}")
    return status
