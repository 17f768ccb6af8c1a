"""``vidhash bench WHAT``: the benchmarks of :mod:`vidhash.bench` and the realism validation table.

    vidhash bench hashhop --sizes 1000,10000,100000 --queries 256
    vidhash bench memory --json memory.json
    vidhash bench selection --json selection.json --world models/world-tiny-v3
    vidhash bench realism clip.mp4:24:64
    vidhash bench dropin --model models/wan-mini --json dropin.json --strip dropin.png
    vidhash bench train-compare .wan/wan-mini .wan/wan-mini-sparse8

Each bench is a :class:`Bench`: its flags (the ``add_*`` functions below) and the library module
whose ``run(args)`` measures and prints (``args`` carries the flags as attributes, ``--top-k`` as
``top_k``). One ``run`` here calls it; the module is imported only for the bench being run.
"""
from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from typing import Callable

from vidhash.cli import path_arg


# argparse types: a bad value is a usage error naming the flag ("argument --queries: ..."), before any
# work. List types check every comma-separated item and return the text unchanged (the benches parse it).
def _number(text: str, kind, low: float, name: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}") from None
    if not (value >= low) or value == float("inf"):  # (NaN fails the first test)
        raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, 1, "a positive integer")


def nonneg_int(text: str) -> int:
    return _number(text, int, 0, "an integer ≥ 0")


def positive_float(text: str) -> float:
    value = _number(text, float, 0.0, "a positive number")
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def nonneg_float(text: str) -> float:
    return _number(text, float, 0.0, "a number ≥ 0")


def fraction(text: str) -> float:
    """A share in (0, 1]: ``0.125`` or ``1/8``."""
    try:
        num, _, den = text.partition("/")
        value = float(num) / float(den) if den else float(num)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a share in (0, 1] such as 0.125 or 1/8, got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a share in (0, 1] such as 0.125 or 1/8, got {text!r}")
    return value


def _items(check, allow_empty: bool = False):
    def parse(text: str) -> str:
        if not text.strip():
            if allow_empty:
                return text
            raise argparse.ArgumentTypeError("expected a comma-separated list, got an empty one")
        for item in text.split(","):
            if not item.strip():
                raise argparse.ArgumentTypeError(f"a blank item in {text!r}")
            check(item.strip())
        return text
    return parse


positive_ints = _items(positive_int)
positive_ints_or_none = _items(positive_int, allow_empty=True)
nonneg_ints = _items(nonneg_int)
positive_floats = _items(positive_float)


def output_file(suffixes: tuple[str, ...] = ()):
    """A file a bench writes: its folder exists, a file can be made there, it is not a folder (and
    it ends in one of ``suffixes``) — checked before the run (:func:`vidhash.files.check_output_file`)."""
    def check(text: str) -> str:
        from vidhash.files import check_output_file

        try:
            check_output_file(text, "")
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err).strip()) from None
        if suffixes and not text.lower().endswith(suffixes):
            raise argparse.ArgumentTypeError(f"{text!r} must end in {' or '.join(suffixes)}")
        return text
    return check


json_file = output_file()


def _cache_setting(text: str) -> str:
    if text not in ("off", "auto"):
        raise argparse.ArgumentTypeError(f"a cache setting is off or auto, got {text!r}")
    return text


def device(text: str) -> str:
    """``--device``: auto, cpu, cuda, cuda:N or mps, and present on this machine (the generate
    command's rules, :func:`vidhash.generate.resolve_device`)."""
    from vidhash.generate import resolve_device

    try:
        dev = resolve_device(text)
    except ValueError as err:  # argparse names the flag: keep the value and the reason
        msg = str(err)
        for head, join in ((f"--device {text!r} ", " "), (f"--device {text}: ", ": ")):
            if msg.startswith(head):
                msg = f"{text!r}{join}{msg[len(head):]}"
        raise argparse.ArgumentTypeError(msg) from None
    return dev.type if text == "auto" else text


def compile_mode(text: str) -> str:
    """``--compile-mode``: one of torch.compile's modes (``torch._inductor.list_mode_options()``:
    default, reduce-overhead, max-autotune, ...)."""
    from torch._inductor import list_mode_options

    modes = list(list_mode_options())
    if text not in modes:
        raise argparse.ArgumentTypeError(f"expected one of torch.compile's modes ({', '.join(modes)}), got {text!r}")
    return text


def compile_backend(text: str) -> str:
    """``--compile-backend``: a backend torch.compile knows (``torch._dynamo.list_backends``, the
    debugging ones such as ``eager`` and ``aot_eager`` included)."""
    import torch._dynamo

    if text not in torch._dynamo.list_backends(exclude_tags=()):
        raise argparse.ArgumentTypeError(f"expected a torch.compile backend ({', '.join(torch._dynamo.list_backends())}, "
                                         f"or a debugging one such as eager, aot_eager), got {text!r}")
    return text


def add_hashhop(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", type=positive_ints, default="1000,10000,100000,1000000", help="comma-separated numbers of stored pairs N")
    p.add_argument("--hops", type=positive_ints, default="1,2,3", help="comma-separated hop counts")
    p.add_argument("--queries", type=positive_int, default=512, help="chains started per size")
    p.add_argument("--dim", type=positive_int, default=64, help="key/value dimension")
    p.add_argument("--buckets", type=positive_int, default=4096, help="memory buckets")
    p.add_argument("--slots", type=positive_int, default=16, help="slots per bucket")
    p.add_argument("--bits", type=positive_int, default=32, help="signature bits")
    p.add_argument("--top-k", type=positive_int, default=8, help="entries read per query")
    p.add_argument("--scale", type=positive_float, default=30.0, help="attention scale (unit-norm keys)")
    p.add_argument("--policy", default="fifo", choices=["fifo", "merge"])
    p.add_argument("--device", type=device, default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-dense", action="store_true", help="skip the dense baseline")
    p.add_argument("--json", type=json_file, default=None, help="write results to this JSON file")


def add_attention(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", type=positive_ints_or_none, default="16384,65536,131072,262144", help="comma-separated token counts N")
    p.add_argument("--no-wan", action="store_true", help="skip the Wan 1.3B 81-frame 480p shape")
    p.add_argument("--heads", type=positive_int, default=12)
    p.add_argument("--head-dim", type=positive_int, default=64)
    p.add_argument("--density", type=fraction, default=1 / 32, help="share of key blocks kept")
    p.add_argument("--block-sizes", type=positive_ints, default="64,16", help="comma-separated key-block sizes")
    p.add_argument("--query-block", type=positive_int, default=128, help="query-block size")
    p.add_argument("--scorer", default="pooled", choices=["pooled", "simhash"],
                   help="the selection timed: pooled (the library's default) or simhash (fused with the attention)")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    p.add_argument("--causal", action="store_true")
    p.add_argument("--no-flex", action="store_true", help="skip FlexAttention")
    p.add_argument("--flex-block-sizes", type=positive_ints_or_none, default="64", help="key-block sizes also run through FlexAttention")
    p.add_argument("--no-backward", action="store_true", help="skip forward+backward rows")
    p.add_argument("--recall-blocks", type=positive_int, default=16, help="query blocks evaluated for recall")
    p.add_argument("--rep-ms", type=positive_int, default=100, help="do_bench rep (ms) per measurement")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", type=device, default="cuda",
                   help="cuda (default); cpu only for smoke runs, with TRITON_INTERPRET=1 set before the command")
    p.add_argument("--json", type=json_file, default=None, help="write results to this JSON file")


def add_selection(p: argparse.ArgumentParser) -> None:
    from vidhash.bench.selection import DEFAULT_SCORERS, SCORER_ROWS

    p.add_argument("--sizes", type=positive_ints_or_none, default="65536,131072", help="comma-separated token counts N (empty: none)")
    p.add_argument("--no-wan", action="store_true", help="skip the Wan 1.3B 81-frame 480p shape")
    p.add_argument("--heads", type=positive_int, default=12)
    p.add_argument("--head-dim", type=positive_int, default=64)
    p.add_argument("--wan-heads", type=positive_int, default=12, help="heads of the Wan shape")
    p.add_argument("--block-sizes", type=positive_ints, default="64,16", help="comma-separated key-block sizes")
    p.add_argument("--query-block", type=positive_int, default=128, help="query-block size")
    p.add_argument("--density", type=fraction, default=1 / 32, help="share of key blocks kept")
    p.add_argument("--local-blocks", type=nonneg_int, default=1, help="key blocks forced around each query block's own "
                   "positions (select_blocks' local_blocks; 0: none — every kept block ranked by the scorer)")
    p.add_argument("--sink-blocks", type=nonneg_int, default=1, help="first key blocks always kept (0: none)")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"], help="auto: bf16 on CUDA, fp32 on a CPU")
    p.add_argument("--scorers", default=",".join(DEFAULT_SCORERS), help=f"comma list of rows: {', '.join(SCORER_ROWS)}")
    p.add_argument("--eval-blocks", type=positive_int, default=64, help="query blocks measured per configuration")
    p.add_argument("--fit-blocks", type=positive_int, default=128, help="query blocks of the fitting clip (learned scorers)")
    p.add_argument("--fit-steps", type=positive_int, default=200, help="Adam steps per learned scorer")
    p.add_argument("--backend", default="auto", choices=["auto", "reference", "triton"],
                   help="selection and attention backend (auto: triton on CUDA, the references on a CPU)")
    p.add_argument("--no-flex", action="store_true", help="skip FlexAttention")
    p.add_argument("--flex-block-sizes", type=positive_ints_or_none, default="64", help="key-block sizes also run through FlexAttention (CUDA)")
    p.add_argument("--world", default=None, type=path_arg, help="a pipeline folder (models/world-tiny-v3): also its temporal attention")
    p.add_argument("--world-clips", type=positive_int, default=6, help="clips recorded: the first half fits, the rest is measured")
    p.add_argument("--world-frames", type=positive_int, default=96, help="frames per recorded clip")
    p.add_argument("--world-density", type=fraction, default=1 / 16, help="density of the world rows")
    p.add_argument("--world-cache", default=None, type=path_arg, help="a .pt file: load the recording from it, or record and save it there")
    p.add_argument("--dropin", default=None, type=path_arg, help="a WanMiniPipeline export (models/wan-mini): also its self-attention")
    p.add_argument("--dropin-seeds", default="0,1", help="clips recorded: the first half of the seeds fits, the rest is measured")
    p.add_argument("--dropin-steps", default="3,10,17", help="denoising steps (of 30) recorded per clip")
    p.add_argument("--dropin-schedule", type=positive_int, default=30, help="denoising steps of a recorded clip (default 30)")
    p.add_argument("--dropin-frames", type=positive_int, default=33, help="frames of a recorded clip (default 33)")
    p.add_argument("--dropin-size", type=positive_int, default=256, help="frame height and width of a recorded clip (default 256)")
    p.add_argument("--dropin-density", type=fraction, default=None, help="density of the drop-in rows (default: --density)")
    p.add_argument("--dropin-cache", default=None, type=path_arg, help="a .pt file: load the recording from it, or record and save it there")
    p.add_argument("--rep-ms", type=positive_int, default=50, help="do_bench rep (ms) per timing (CUDA)")
    p.add_argument("--device", type=device, default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=json_file, default=None, help="write all rows to this JSON file")


def add_coherence(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=positive_int, default=128, help="working size (longer side, px; default 128)")
    p.add_argument("--frames", type=positive_int, default=480, help="analysed frames per row (default 480)")
    p.add_argument("--fps", type=positive_float, default=8.0, help="analysis rate (default 8)")
    p.add_argument("--threads", type=positive_ints, default="1,2", help="comma-separated OpenCV thread counts (default 1,2)")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed repeats per row; the best is kept (default 3)")
    p.add_argument("--no-e2e", action="store_true", help="skip the end-to-end rows (no mp4 written)")
    p.add_argument("--json", type=json_file, default=None, help="write the rows to this JSON file")


def add_memory(p: argparse.ArgumentParser) -> None:
    p.add_argument("--queries", type=positive_int, default=2048, help="queries per head")
    p.add_argument("--buckets", type=positive_int, default=4096, help="memory buckets")
    p.add_argument("--slots", type=positive_int, default=16, help="slots per bucket")
    p.add_argument("--heads", type=positive_int, default=12)
    p.add_argument("--head-dim", type=positive_int, default=64)
    p.add_argument("--bits", type=positive_int, default=32, help="signature bits")
    p.add_argument("--top-k", type=positive_ints, default="64,256", help="comma-separated top_k values")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--frame-tokens", type=positive_int, default=1560, help="tokens of one written frame (Wan 1.3B 480p latent frame)")
    p.add_argument("--fill", type=positive_float, default=1.5, help="tokens written before timing, as a multiple of the capacity")
    p.add_argument("--clusters", type=positive_int, default=512, help="key/query cluster centres per head")
    p.add_argument("--recall-queries", type=positive_int, default=256, help="queries per head used for recall")
    p.add_argument("--rep-ms", type=positive_int, default=100, help="do_bench rep (ms) per measurement")
    p.add_argument("--no-reference", action="store_true", help="skip the reference read and write")
    p.add_argument("--graphs", action="store_true",
                   help="also time dense SDPA and both reads as CUDA-graph replays (device time, no launch time; CUDA)")
    p.add_argument("--device", type=device, default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=json_file, default=None, help="write results to this JSON file")


def add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", default="world_tiny", help="training config: a YAML file or a name in configs/train/ (default world_tiny)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. data.pool_size=4")
    p.add_argument("--processes", type=positive_int, default=1, help="training processes to imitate (default 1)")
    p.add_argument("--workers", type=nonneg_int, default=None, help="DataLoader workers per process (default: the config's)")
    p.add_argument("--steps", type=positive_int, default=64, help="batches per process, at least 2 (default 64)")
    p.add_argument("--consumer-ms", type=nonneg_float, default=0.0, help="sleep after each batch: the GPU step (default 0)")
    p.add_argument("--cache", type=_items(_cache_setting), default="off,auto", help="comma-separated data.world_cache settings to compare (off, auto)")
    p.add_argument("--json", type=json_file, default=None, help="write the rows to this JSON file")


def add_generation(p: argparse.ArgumentParser) -> None:
    from vidhash.bench.generation import MODES

    p.add_argument("--preset", default=None, help="model size and generation preset (tiny, small, base; default: "
                   "the --model's size, else tiny)")
    p.add_argument("--model", default=None, type=path_arg, help="a saved pipeline folder to time instead of a random model of --preset")
    p.add_argument("--set", action="append", default=[], metavar="key=value",
                   help="generation preset override, e.g. --set memory.top_k=64 (repeatable; not memory.mode: --modes sets each row's)")
    p.add_argument("--seconds", type=positive_floats, default="10,60,600", help="comma-separated clip lengths in seconds of video")
    p.add_argument("--fps", type=positive_int, default=8, help="frames per second of video (default 8)")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated: hashed, full, window")
    p.add_argument("--steps", type=positive_int, default=None, help="inference steps per chunk (default: the preset's)")
    p.add_argument("--full-max-seconds", type=positive_float, default=60.0,
                   help="longest clip the full-context baseline runs (default 60; it grows without bound)")
    p.add_argument("--device", type=device, default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="model dtype")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=json_file, default=None, help="write all rows (with per-chunk times) to this JSON file")
    p.add_argument("--compile", action="store_true", help="torch.compile each transformer block (compile_blocks)")
    p.add_argument("--compile-mode", type=compile_mode, default=None,
                   help="torch.compile mode with --compile (e.g. max-autotune-no-cudagraphs; default: torch's)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="replay steady chunks' transformer passes from CUDA graphs (enable_cuda_graphs)")


def add_dropin(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=path_arg, help="a wan-mini folder (WanMiniPipeline export, e.g. models/wan-mini)")
    p.add_argument("--densities", default="1/4,1/8,1/16,1/32", help="comma-separated shares of key blocks kept")
    p.add_argument("--block-sizes", default="64,16", help="comma-separated key-block sizes")
    p.add_argument("--query-block-sizes", default="",
                   help="comma-separated query-block sizes, each run with every key-block size (rows ' q<size>'; "
                        "default: the drop-in's, query blocks as large as the key blocks, at least 64 tokens)")
    p.add_argument("--scorers", default="default",
                   help="comma-separated block scorers ('default': the drop-in's default, pooled; or simhash, pooled, "
                        "parent, moments, subgrid, prefilter, rescore; or the fitted ones, fitted on --fit-seeds: learned, "
                        "a learned block scorer per self-attention, and calibrated, simhash on signatures calibrated per "
                        "self-attention)")
    p.add_argument("--fit-seeds", default=None,
                   help="comma-separated seeds whose dense clips the learned and calibrated scorers are fitted on, none "
                        "of --seeds (default: one seed, max(--seeds) + 1)")
    p.add_argument("--fit-denoising-steps", default=None,
                   help="comma-separated denoising steps of the --fit-seeds clips recorded for the fit (default: the first "
                        "sparse step of each --dense-steps, --recall-step and the last step)")
    p.add_argument("--dense-steps", default="0",
                   help="comma-separated counts of first denoising steps run dense (dense warmup; default 0)")
    p.add_argument("--dense-layers", default="0",
                   help="comma-separated counts of first self-attention modules run dense (default 0)")
    p.add_argument("--remainders", default="none",
                   help="comma-separated remainders of the drop-in: none (the unkept key blocks dropped) and/or mean "
                        "(each unkept block as one mean token; rows '+mean')")
    p.add_argument("--reuse-mass", default="0",
                   help="comma-separated: 0 (the scorer selects at the sparse steps) and/or query strides s >= 1 (the "
                        "drop-in's reuse_mass: select from the last dense step's exact block mass of every s-th query; "
                        "rows 'reuse/s'; needs --dense-steps > 0)")
    p.add_argument("--mass-refresh", default="0",
                   help="comma-separated: the reuse rows' mass_refresh (every N sparse steps the mass is measured again "
                        "from that step's own strided queries; 0: never; rows ' rN')")
    p.add_argument("--reuse-delta", default="0",
                   help="comma-separated: 0 and/or half-lives h (sparse steps; inf: no decay) of the drop-in's reuse_delta "
                        "on the reuse rows without --mass-refresh: the last dense step's error of the sparse output added "
                        "to every sparse step's, its weight halving every h steps (rows ' delta/h')")
    p.add_argument("--layer-densities", default="",
                   help="comma-separated MODULE=DENSITY pairs (e.g. blocks.2.attn1=1/8) overriding every sparse "
                        "setting's density for those self-attention modules (the drop-in's layer_densities)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (noise and camera path per seed)")
    p.add_argument("--frames", type=positive_int, default=33, help="frames per clip (default 33)")
    p.add_argument("--size", type=positive_int, default=256, help="frame height and width (default 256)")
    p.add_argument("--steps", type=positive_int, default=30, help="denoising steps per clip (default 30)")
    p.add_argument("--fps", type=positive_float, default=8.0, help="frame rate for the coherence report (default 8)")
    p.add_argument("--recall-step", type=nonneg_int, default=None,
                   help="denoising step whose queries/keys measure recall (default: --steps / 2, step 15 of 30)")
    p.add_argument("--recall-blocks", type=positive_int, default=64, help="query blocks evaluated for recall per layer")
    p.add_argument("--no-recall", action="store_true", help="skip the per-layer recall")
    p.add_argument("--no-coherence", action="store_true", help="skip the coherence reports")
    p.add_argument("--no-repeat", action="store_true",
                   help="skip the 'dense (repeat)' row (the dense clips sampled again: the floor of the comparison)")
    p.add_argument("--no-warmup", action="store_true",
                   help="with one seed, sample each clip once (default: twice, the first untimed) — for runs where only "
                        "the frames count, e.g. a quality study on a CPU")
    p.add_argument("--clips", type=output_file((".npz",)), default=None, help="also save the strip's clips (seed 0, uint8) to this .npz")
    p.add_argument("--no-flex", action="store_true",
                   help="skip FlexAttention on the same selected blocks (its columns stay empty)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the transformer's repeated blocks (fullgraph; diffusers' regional compilation) "
                        "for every setting, dense included: the non-attention ops fused as a user would run them")
    p.add_argument("--compile-mode", type=compile_mode, default=None,
                   help="torch.compile mode with --compile (e.g. max-autotune-no-cudagraphs, reduce-overhead)")
    p.add_argument("--compile-backend", type=compile_backend, default="inductor",
                   help="torch.compile backend with --compile (default inductor)")
    p.add_argument("--compile-scope", default="blocks", choices=["blocks", "model"],
                   help="with --compile: 'blocks' (default), diffusers' regional compilation of the repeated blocks; "
                        "'model', the whole forward — needed for a CUDA-graph --compile-mode (reduce-overhead)")
    p.add_argument("--profile", action="store_true",
                   help="per setting, replay the first seed's --recall-step transformer call under torch.profiler: "
                        "wall ms, CUDA kernel ms and busy share (below 1: launch-bound), launches, ms by kernel "
                        "category (vidhash, dense attention, gemm, inductor, other), top kernels (row key 'profile')")
    p.add_argument("--profile-reps", type=positive_int, default=5, help="calls timed and profiled with --profile (default 5)")
    p.add_argument("--device", type=device, default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32"], help="transformer dtype "
                   "(default: bf16 on cuda, fp32 on cpu)")
    p.add_argument("--json", type=json_file, default=None,
                   help="write the rows (with per-layer recall) to this JSON file, after every row (standard JSON: "
                        "psnr null where the clips are identical, e.g. the dense rows)")
    p.add_argument("--strip", type=output_file((".png",)), default=None, help="write a frame strip PNG (dense, 1/8, 1/32) here")


def add_train_compare(p: argparse.ArgumentParser) -> None:
    from vidhash.bench.train_compare import METRICS

    p.add_argument("run_a", metavar="RUN_A", help="the reference run (dense): a vidhash train out_dir, an export with "
                   "train_state.json, or a loss.csv")
    p.add_argument("run_b", metavar="RUN_B", help="the candidate run (e.g. sparse from the start), the same kinds")
    p.add_argument("--metric", default="val_loss_ema", choices=METRICS, help="validation loss compared (default: the EMA's)")
    p.add_argument("--gpus", default="1,1", help="GPUs of RUN_A,RUN_B: GPU-seconds = elapsed_s × GPUs (default 1,1)")
    p.add_argument("--target-ratio", type=float, default=0.6,
                   help="verdict on RUN_B's time / RUN_A's time to RUN_A's final loss (issue 17: 0.6)")
    p.add_argument("--json", type=json_file, default=None, help="write the comparison to this JSON file")


def add_wan_quality(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="wan-mini folders (WanMiniPipeline exports), e.g. models/wan-mini .wan/wan-mini-sparse8; a model "
                        "trained sparse runs with the attention its train_state.json records")
    p.add_argument("--clips", type=positive_int, default=8, help="held-out worlds, one clip each (default 8)")
    p.add_argument("--context", type=nonneg_int, default=3, help="true frames given as frame prompts (default 3)")
    p.add_argument("--steps", type=positive_int, default=30, help="denoising steps per clip (default 30)")
    p.add_argument("--frames", type=positive_int, default=None, help="frames per clip (default: the data config's)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="noise seed of the first clip (clip i: seed + i)")
    p.add_argument("--config", default=None, type=path_arg,
                   help="train YAML for the data config when the first model has no train_state.json")
    p.add_argument("--fps", type=positive_float, default=8.0, help="frame rate for the coherence report (default 8)")
    p.add_argument("--no-coherence", action="store_true", help="skip the coherence reports")
    p.add_argument("--device", type=device, default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32"],
                   help="transformer dtype (default: bf16 on cuda, fp32 on cpu)")
    p.add_argument("--json", type=json_file, default=None, help="write the rows (and per-clip numbers) to this JSON file")


def add_realism(p: argparse.ArgumentParser) -> None:
    p.add_argument("clips", nargs="*", type=_clip_spec, help="mp4 files, optionally PATH:START:STOP (frame range)")
    p.add_argument("--world-size", type=positive_int, default=512)
    p.add_argument("--seeds", type=nonneg_ints, default="1000000,1000001,1000002,1000003", help="held-out worlds of the real frames")
    p.add_argument("--frames", type=positive_int, default=16, help="real frames per held-out world")


def _clip_spec(text: str) -> str:
    """``PATH`` or ``PATH:START:STOP`` of an existing file, ``0 ≤ START < STOP``."""
    import os

    path, *rng = text.split(":")
    if not os.path.isfile(path):
        raise argparse.ArgumentTypeError(f"{path!r} is not a file (a clip: PATH or PATH:START:STOP)")
    if rng:
        try:
            start, stop = (int(x) for x in rng)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: the range must be START:STOP, two integers") from None
        if not 0 <= start < stop:
            raise argparse.ArgumentTypeError(f"{text!r}: the range needs 0 ≤ START < STOP")
    return text


def _realism(args) -> int:
    from vidhash.metrics.realism import validation_table

    validation_table(args.clips, args.world_size, tuple(int(s) for s in args.seeds.split(",")), args.frames)
    return 0


@dataclass(frozen=True)
class Bench:
    """One ``vidhash bench`` subcommand: ``module`` does the work (``module.run(args)``, or ``call``)."""

    module: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    call: Callable | None = None
    summary: str | None = None  # the --help description; default: the module docstring's first line

    @property
    def description(self) -> str:
        from vidhash.cli import first_paragraph

        return self.summary or first_paragraph(importlib.import_module(self.module).__doc__)

    def run(self, args) -> int:
        if self.call is not None:
            return self.call(args)
        return importlib.import_module(self.module).run(args)


hashhop = Bench("vidhash.bench.hashhop", add_hashhop)
attention = Bench("vidhash.bench.attention", add_attention)
selection = Bench("vidhash.bench.selection", add_selection)
coherence = Bench("vidhash.bench.coherence", add_coherence)
memory = Bench("vidhash.bench.memory", add_memory)
data = Bench("vidhash.bench.data", add_data)
generation = Bench("vidhash.bench.generation", add_generation)
dropin = Bench("vidhash.bench.dropin", add_dropin)
train_compare = Bench("vidhash.bench.train_compare", add_train_compare)
wan_quality = Bench("vidhash.bench.wan_quality", add_wan_quality)
realism = Bench("vidhash.metrics.realism", add_realism, call=_realism, summary="Validation table of the realism metric.")
