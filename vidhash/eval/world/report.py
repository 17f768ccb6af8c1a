"""Report of ``vidhash eval world``: the JSON-able result, means over seeds, the targets, the
terminal table, the plot, and merging saved results (``--from-json``).

    from vidhash.eval.world import format_table, load_result, merge_results
    print(format_table(merge_results([load_result("short.json"), load_result("5min.json")])))
"""
from __future__ import annotations

import datetime
import json
import math
import os
import platform
from pathlib import Path

import numpy as np

from vidhash.files import write_atomic
from vidhash.files import write_json as _write_json

from .plan import MODES, SCHEMA, TIME_PARTS


def build_result(o, *, complete: bool, elapsed: float, rows: list[dict], learned: bool, hashers,
            device, g: dict, visit: int, n_bits: int, total: int, fps_gen: float, estimate: float,
            parts: dict | None = None) -> dict:
    """The JSON-able result (``complete`` False while runs are still to come)."""
    import torch

    frames = sum(r["frames"] for r in rows if r["seconds"] is not None)
    result = {
        "schema": SCHEMA,
        "complete": complete,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": o.model, "learned_signatures": learned, "learned_hashers": [n for n, _ in hashers],
        "device": _device_name(device), "dtype": o.dtype,
        "cuda_graphs": bool(o.cuda_graphs), "fps": o.fps, "seeds": list(o.seeds),
        "horizons_s": [float(h) for h in o.horizons], "modes": list(o.modes),
        "full_max_seconds": o.full_max_seconds, "generation": g,
        "trajectory": {"visit_frames": visit, "leave_frames": math.ceil(g["height"] / g["action_step"]),
                       "step": g["action_step"], "view": g["height"], "world_size": g["world_size"],
                       "random_sig_bits": n_bits},
        "rows": rows,
        "summary": summarize(rows, o.modes, o.horizons),
        "timing": {"frames": frames, "planned_frames": total, "seconds": round(elapsed, 3),
                   "frames_per_s": round(frames / max(elapsed, 1e-9), 2), "warmup_frames_per_s": round(fps_gen, 2),
                   "estimate_s": round(estimate, 1),
                   "parts_s": {k: round(v, 3) for k, v in (parts or {}).items()}},
        "host": {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine()},
    }
    result["targets"] = targets(result["summary"])
    return result


def _device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


# ---------------------------------------------------------------------------------- summary


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def summarize(rows: list[dict], modes, horizons) -> dict:
    """``summary[mode][f"{horizon:g}"]``: means over seeds (None where skipped)."""
    out = {}
    for mode in modes:
        out[mode] = {}
        for h in horizons:
            mine = [r for r in rows if r["mode"] == mode and r["horizon_s"] == float(h) and r["status"] == "ok"]
            given = [r for r in mine if r["setting"] == "given"]
            own = [r for r in mine if r["setting"] == "self"]
            skipped = [r["note"] for r in rows if r["mode"] == mode and r["horizon_s"] == float(h) and r["status"] == "skipped"]
            out[mode][f"{h:g}"] = {
                "return_psnr": _mean(r["return_psnr"] for r in given),
                "return_ssim": _mean(r["return_ssim"] for r in given),
                "away_psnr": _mean(r["away_psnr"] for r in given),
                "away_ssim": _mean(r["away_ssim"] for r in given),
                "self_psnr": _mean(r["self_psnr"] for r in own),
                "self_ssim": _mean(r["self_ssim"] for r in own),
                "self_return_psnr": _mean(r["return_psnr"] for r in own),
                "away_realism": _mean(r.get("away_realism") for r in given),  # .get: results saved before realism
                "away_real_share": _mean(r.get("away_real_share") for r in given),
                "self_away_realism": _mean(r.get("away_realism") for r in own),
                "self_away_real_share": _mean(r.get("away_real_share") for r in own),
                "memory_topk_recall": _mean(r.get("memory_topk_recall") for r in mine),  # both settings
                "memory_ratio": _mean(r.get("memory_ratio") for r in mine),
                "n_seeds": len({r["seed"] for r in mine}),
                "note": skipped[0] if skipped else None,
            }
    for mode in modes:
        for h, cell in out[mode].items():
            base = out.get("window", {}).get(h, {}).get("self_psnr")
            cell["self_psnr_vs_window"] = None if base is None or cell["self_psnr"] is None else cell["self_psnr"] - base
    return out


def targets(summary: dict) -> list[dict]:
    """Issue 5's targets on self-consistency PSNR at 1 min (and 5 min), where measured."""
    checks = []

    def get(mode, h, key="self_psnr"):
        return summary.get(mode, {}).get(h, {}).get(key)

    for h, label in (("60", "1 min"), ("300", "5 min")):
        hashed, window, full = get("hashed", h), get("window", h), get("full", h)
        if hashed is not None and window is not None:
            checks.append({"horizon_s": float(h), "check": f"{label}: hashed ≥ window + 3 dB", "value": hashed - window,
                           "target": 3.0, "met": hashed - window >= 3.0})
        if h == "60" and hashed is not None and full is not None:
            checks.append({"horizon_s": float(h), "check": f"{label}: hashed ≥ full − 1 dB", "value": hashed - full,
                           "target": -1.0, "met": hashed - full >= -1.0})
    return checks


def _f(v, fmt=".2f") -> str:
    return "—" if v is None else format(v, fmt)


def _realism_cell(c: dict) -> str:
    d, share = c.get("away_realism"), c.get("away_real_share")
    return "—" if d is None else f"{d:.3f} ({share:.0%})" if share is not None else f"{d:.3f}"


def _memory_cell(c: dict) -> str:
    top, ratio = c.get("memory_topk_recall"), c.get("memory_ratio")  # .get: results saved before the column
    return "—" if top is None else f"{top:.3f} ({ratio:.3f})" if ratio is not None else f"{top:.3f}"


def format_table(result: dict) -> str:
    """Terminal table: per horizon and mode, return vs ground truth (given), self-consistency, away."""
    head = ("horizon", "mode", "return PSNR", "return SSIM", "self PSNR", "self SSIM", "vs window", "away PSNR",
            "away realism", "memory top-k", "seeds")
    lines = [f"world memory: {result['model']} on {result['device']}, {result['dtype']}; seeds {result['seeds']}; "
             f"{'learned' if result['learned_signatures'] else 'SimHash'} signatures",
             "  return = first visit given (ground truth), return vs ground truth; self = first visit generated, "
             "return vs the model's own first visit; away = given run, frames away vs ground truth (dB / SSIM); "
             "away realism = given run, no-reference patch distance (real ≈ 0.85) and share of real-looking patches "
             "(real ≈ 95%); memory top-k = share of the exact top-k entries the memory reads kept (their mass / the exact "
             "top-k's mass)"]
    body = []
    for h in result["horizons_s"]:
        for mode in result["modes"]:
            c = result["summary"][mode][f"{h:g}"]
            if c["n_seeds"] == 0:
                body.append((f"{h:g} s", mode, "skipped: " + c["note"] if c["note"] else "skipped: not run (yet)",
                             "", "", "", "", "", "", "", ""))
                continue
            vs = c["self_psnr_vs_window"]
            body.append((f"{h:g} s", mode, _f(c["return_psnr"]), _f(c["return_ssim"], ".3f"), _f(c["self_psnr"]),
                         _f(c["self_ssim"], ".3f"), "—" if vs is None or mode == "window" else f"{vs:+.2f}",
                         _f(c["away_psnr"]), _realism_cell(c), _memory_cell(c), str(c["n_seeds"])))
    widths = [max(len(head[i]), *(len(r[i]) for r in body if not r[2].startswith("skipped"))) if body else len(head[i])
              for i in range(len(head))]
    lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    for r in body:
        if r[2].startswith("skipped"):
            lines.append("  ".join([r[0].ljust(widths[0]), r[1].ljust(widths[1]), r[2]]))
        else:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    for t in result.get("targets", []):
        lines.append(f"target {t['check']}: {t['value']:+.2f} dB — {'met' if t['met'] else 'NOT met'}")
    tm = result["timing"]
    lines.append(f"{tm['frames']:,} frames generated in {hms(tm['seconds'])} ({tm['frames_per_s']:.1f} frames/s)")
    if tm.get("parts_s"):  # absent from results made before 2026-11-30 (evening 2) and merges with them
        p = tm["parts_s"]
        other = max(0.0, p.get("setup", 0.0) + tm["seconds"] - sum(p.values()))
        lines.append("time: " + ", ".join(f"{k.replace('_', ' ')} {v:.1f} s" for k, v in p.items())
                     + f", other {other:.1f} s")
    return "\n".join(lines)


def plot_result(result: dict, path: str) -> str:
    """PNG: self-consistency PSNR, return-vs-ground-truth PSNR and SSIM against horizon, one line per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    panels = [("self_psnr", "self-consistency PSNR (dB)\nreturn vs own first visit"),
              ("return_psnr", "return vs ground truth PSNR (dB)\nfirst visit given"),
              ("return_ssim", "return vs ground truth SSIM\nfirst visit given")]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), constrained_layout=True)
    hs = result["horizons_s"]
    for ax, (key, title) in zip(axes, panels):
        for mode in result["modes"]:
            ys = [result["summary"][mode][f"{h:g}"][key] for h in hs]
            pts = [(h, y) for h, y in zip(hs, ys) if y is not None]
            if pts:
                ax.plot(*zip(*pts), "o-", label=mode, ms=4)
        if key == "return_psnr":
            away = [result["summary"].get("window", {}).get(f"{h:g}", {}).get("away_psnr") for h in hs]
            pts = [(h, y) for h, y in zip(hs, away) if y is not None]
            if pts:
                ax.plot(*zip(*pts), ":", color="grey", label="away vs GT (window)")
        if len(hs) > 1 and min(hs) > 0:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
            ax.set_xticks(hs)
        ax.set_xlabel("horizon (s of video away)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"vidhash world memory — {os.path.basename(str(result['model']).rstrip('/'))}, seeds {result['seeds']}",
                 fontsize=10)
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    plt.close(fig)
    return path


def write_json(path: str, result: dict) -> None:
    """``result`` as indented JSON at ``path``, atomically (:func:`vidhash.files.write_json`)."""
    _write_json(path, result, indent=1)


def load_result(path: str) -> dict:
    """A result saved by ``--json`` (``--from-json PATH``); ValueError naming the file for anything else."""
    try:
        result = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"--from-json {path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"--from-json {path} is a directory, not a result file") from None
    except OSError as err:
        raise ValueError(f"--from-json {path}: cannot read it ({err.strerror or err})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"--from-json {path}: not JSON ({err})") from None
    if not isinstance(result, dict) or result.get("schema") != SCHEMA:
        kind = {list: "list", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(result), "null")
        what = "" if isinstance(result, dict) else f" (it holds a JSON {kind}, not an object)"
        raise ValueError(f"--from-json {path}: not a {SCHEMA} file{what}")
    return result


MERGE_SAME = ("model", "learned_signatures", "dtype", "fps", "generation", "trajectory")
SPEED_ONLY = ("select",)
"""``generation.memory`` fields that change how fast a read runs, not what it returns (the two Triton
selects find the same entries): runs that differ only there merge."""


def _merge_view(result: dict, key: str):
    """``result[key]`` as merges compare it: ``generation`` without its speed-only memory fields."""
    value = result.get(key)
    if key == "generation" and isinstance(value, dict) and isinstance(value.get("memory"), dict):
        value = dict(value, memory={k: v for k, v in value["memory"].items() if k not in SPEED_ONLY})
    return value


def merge_results(results: list[dict]) -> dict:
    """One result from several saved runs of the same model and settings (``MERGE_SAME`` equal, but
    for :data:`SPEED_ONLY` memory fields; the merged result keeps the first's):
    rows concatenated (a (seed, horizon, mode, setting) measured twice is an error), seeds,
    horizons and modes united, summary and targets recomputed; ``complete`` only if all were."""
    if len(results) == 1:
        return results[0]
    first = results[0]
    for r in results[1:]:
        diff = [k for k in MERGE_SAME if _merge_view(r, k) != _merge_view(first, k)]
        if diff:
            raise ValueError(f"--from-json: the results differ in {', '.join(diff)}; only runs of one model and "
                             f"settings merge")
    rows, seen = [], set()
    for r in results:
        for row in r["rows"]:
            key = (row["seed"], row["horizon_s"], row["mode"], row["setting"])
            if key in seen:
                raise ValueError(f"--from-json: seed {key[0]}, {key[1]:g} s, {key[2]} ({key[3]}) is in two results")
            seen.add(key)
            rows.append(row)

    def union(key):
        out = []
        for r in results:
            out += [x for x in r[key] if x not in out]
        return out

    merged = dict(first)
    merged.update(rows=rows, seeds=union("seeds"), horizons_s=sorted(union("horizons_s")),
                  modes=[m for m in MODES if m in union("modes")], complete=all(r.get("complete") for r in results),
                  merged_from=len(results))
    merged["full_max_seconds"] = max(r.get("full_max_seconds", 0) for r in results)
    merged["summary"] = summarize(rows, merged["modes"], merged["horizons_s"])
    merged["targets"] = targets(merged["summary"])
    if all("timing" in r for r in results):
        frames = sum(r["timing"].get("frames", 0) for r in results)
        seconds = round(sum(r["timing"].get("seconds", 0) for r in results), 3)
        merged["timing"] = {"frames": frames, "seconds": seconds, "frames_per_s": frames / seconds if seconds else 0.0}
        if all(r["timing"].get("parts_s") for r in results):  # older results have no parts: then none
            merged["timing"]["parts_s"] = {k: round(sum(r["timing"]["parts_s"].get(k, 0.0) for r in results), 3)
                                           for k in TIME_PARTS}
    return merged
