"""Two training runs by validation loss against GPU-seconds: how long each took to reach the first's final loss.

    vidhash bench train-compare .wan/wan-mini .wan/wan-mini-sparse8 --json compare.json

Issue 17's "sparse from the start": RUN_A is the reference (the dense run), RUN_B the candidate
(trained with hash attention). A run is a ``vidhash train`` output folder (its ``loss.csv``), an
export with ``train_state.json`` (the same rows; the GPU calls bring these back) or a ``loss.csv``
file. Time is the rows' ``elapsed_s`` — the run's training seconds over all its calls (validation
and checkpoints included, start-up of each call not) — times the run's GPU count (``--gpus``).
The loss is the validation loss of the rows that have one (``--metric``: ``val_loss_ema``, the
exported weights', or ``val_loss``).

Printed (and with ``--json`` written):

* per run: steps, GPU-seconds, final validation loss, and the GPU-seconds it needed to reach
  RUN_A's final validation loss — the first crossing, linear between the two validation rows
  around it (the first row's time when the first validation is already below; "not reached" when
  none is);
* ``ratio`` = RUN_B's time / RUN_A's time to that loss, against ``--target-ratio`` (issue 17:
  sparse at 1/8 within 0.6× of dense);
* both runs' validation loss at equal GPU time (the shorter run's last time, interpolated in the other);
* ``matched`` — for each of RUN_B's validation rows, the GPU-seconds RUN_A needed to first reach the
  same loss and the ratio RUN_B / RUN_A (while both runs are unfinished, this is how far apart they
  are at every loss both reached), and the median ratio.
"""
from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from vidhash.files import write_json

METRICS = ("val_loss_ema", "val_loss")


@dataclass(frozen=True)
class Curve:
    """One run's validation rows: ``steps``, GPU-``seconds`` and ``losses`` in step order."""

    name: str
    source: str
    steps: tuple[int, ...]
    seconds: tuple[float, ...]
    losses: tuple[float, ...]


def read_rows(path: str | Path) -> tuple[list[dict], str]:
    """A run's log rows and the file they came from: ``loss.csv`` (a file, or in the folder), else
    the folder's ``train_state.json``. FileNotFoundError naming the path when it has neither."""
    p = Path(path)
    if p.is_dir() and (p / "loss.csv").is_file():
        p = p / "loss.csv"
    elif p.is_dir() and (p / "train_state.json").is_file():
        p = p / "train_state.json"
    if not p.is_file():
        raise FileNotFoundError(f"{path}: not a run (no loss.csv or train_state.json)")
    if p.suffix == ".json":
        try:
            saved = json.loads(p.read_text())
        except ValueError as err:  # (JSONDecodeError, UnicodeDecodeError)
            raise ValueError(f"{p}: not a train_state.json (not JSON: {err})") from None
        run = saved.get("run") if isinstance(saved, dict) else None
        if not isinstance(run, dict) or "rows" not in run:
            raise ValueError(f"{p}: not a train_state.json (no run.rows)")
        if not isinstance(run["rows"], list) or not all(isinstance(row, dict) for row in run["rows"]):
            raise ValueError(f"{p}: not a train_state.json (run.rows is not a list of rows)")
        return list(run["rows"]), str(p)
    with open(p, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "step" not in reader.fieldnames:
            raise ValueError(f"{p}: not a loss.csv (its header has no 'step' column)")
        return list(reader), str(p)


def read_curve(path: str | Path, metric: str = "val_loss_ema", gpus: int = 1) -> Curve:
    """The validation curve of a run (:func:`read_rows`); ValueError naming the file when no row has
    ``metric``, or a row with it has no ``elapsed_s``, a step that is not an integer, a loss or time that is
    not a finite number, or a negative time."""
    if metric not in METRICS:
        raise ValueError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if not isinstance(gpus, int) or gpus < 1:
        raise ValueError(f"--gpus must be positive ints, got {gpus!r}")
    rows, source = read_rows(path)
    points = []
    for row in rows:
        value = row.get(metric)
        if value in (None, ""):
            continue
        if row.get("elapsed_s") in (None, ""):
            raise ValueError(f"{source}: the row of step {row.get('step')} has {metric} but no elapsed_s")
        try:
            step, loss, elapsed = _step(row.get("step")), float(value), float(row["elapsed_s"])
        except (TypeError, ValueError):
            raise ValueError(f"{source}: the row of step {row.get('step')!r} has {metric} {value!r} and elapsed_s "
                             f"{row['elapsed_s']!r}: not an integer step and numbers") from None
        if not (math.isfinite(loss) and math.isfinite(elapsed)):
            raise ValueError(f"{source}: the row of step {row.get('step')} has {metric} {value} and elapsed_s "
                             f"{row['elapsed_s']}: not finite numbers (a diverged or broken run)")
        if elapsed < 0:
            raise ValueError(f"{source}: the row of step {step} has elapsed_s {row['elapsed_s']}: training seconds "
                             "are never negative")
        points.append((step, elapsed * gpus, loss))
    if not points:
        raise ValueError(f"{source}: no row has {metric} (was the run trained with val_every > 0?)")
    points.sort()
    steps, seconds, losses = zip(*points)
    p = Path(path).resolve()  # a run's folder or its loss.csv / train_state.json: the folder's name; another file: its stem
    name = (p.parent.name if p.name in ("loss.csv", "train_state.json") else p.stem) if p.is_file() else p.name
    return Curve(name, source, steps, seconds, losses)


def _step(value) -> int:
    """A row's ``step``: an int, or its text in ``loss.csv`` (``"25"``); ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"not a step: {value!r}")
    return int(value)


def time_to_reach(curve: Curve, target: float) -> float | None:
    """GPU-seconds at which ``curve`` first reaches ``target`` (≤): linear between the validation
    rows around the crossing; the first row's time when it is already there; None when never."""
    t, y = curve.seconds, curve.losses
    for i, value in enumerate(y):
        if value <= target:
            if i == 0 or y[i - 1] == value:
                return t[i]
            return t[i - 1] + (t[i] - t[i - 1]) * (y[i - 1] - target) / (y[i - 1] - value)
    return None


def loss_at(curve: Curve, seconds: float) -> float | None:
    """The validation loss at ``seconds``, linear between rows; None outside the run's rows."""
    t, y = curve.seconds, curve.losses
    if not t[0] <= seconds <= t[-1]:
        return None
    for i in range(1, len(t)):
        if seconds <= t[i]:
            if t[i] == t[i - 1]:
                return y[i]
            return y[i - 1] + (y[i] - y[i - 1]) * (seconds - t[i - 1]) / (t[i] - t[i - 1])
    return y[-1]


@dataclass(frozen=True)
class RunSummary:
    name: str
    source: str
    final_step: int
    final_gpu_s: float
    final_loss: float
    gpu_s_to_target: float | None
    loss_at_equal_time: float | None


def compare(a: Curve, b: Curve) -> dict:
    """The comparison of the module docstring as a dict: ``target`` (RUN_A's final loss),
    ``equal_time_s``, ``ratio`` (None when RUN_B never reaches the target, or RUN_A reaches it at 0
    GPU-seconds), ``runs`` (two
    :class:`RunSummary` dicts)."""
    target = a.losses[-1]
    equal = min(a.seconds[-1], b.seconds[-1])
    names = [a.name, b.name]
    if names[0] == names[1] and a.source != b.source:  # two files of one folder: tell them apart
        names = [Path(c.source).name for c in (a, b)]
    runs = [RunSummary(name, c.source, c.steps[-1], c.seconds[-1], c.losses[-1], time_to_reach(c, target),
                       loss_at(c, equal)) for name, c in zip(names, (a, b))]
    ta, tb = runs[0].gpu_s_to_target, runs[1].gpu_s_to_target
    ratio = tb / ta if tb is not None and ta else None
    matched = matched_times(a, b)
    ratios = [m["ratio"] for m in matched if m["ratio"] is not None]
    return {"target": target, "equal_time_s": equal, "ratio": ratio, "runs": [asdict(r) for r in runs],
            "matched": matched, "matched_median_ratio": float(statistics.median(ratios)) if ratios else None}


def matched_times(a: Curve, b: Curve) -> list[dict]:
    """For each validation row of ``b``: its step, GPU-seconds and loss, the GPU-seconds ``a`` needed
    to first reach that loss (:func:`time_to_reach`; None when it never did) and ``b``'s time over it."""
    out = []
    for step, seconds, loss in zip(b.steps, b.seconds, b.losses):
        ta = time_to_reach(a, loss)
        out.append({"step": step, "gpu_s": seconds, "loss": loss, "gpu_s_a": ta,
                    "ratio": seconds / ta if ta else None})
    return out


def format_report(result: dict, metric: str, target_ratio: float | None) -> str:
    """The table and the verdict lines."""
    lines = [f"target: RUN_A's final {metric} {result['target']:.5f}",
             f"{'run':<24} {'steps':>7} {'GPU-s':>9} {'final':>9} {'GPU-s to target':>16} "
             f"{'at ' + format(result['equal_time_s'], '.0f') + ' GPU-s':>14}"]
    for r in result["runs"]:
        reach = "not reached" if r["gpu_s_to_target"] is None else f"{r['gpu_s_to_target']:.0f}"
        at = "-" if r["loss_at_equal_time"] is None else f"{r['loss_at_equal_time']:.5f}"
        lines.append(f"{r['name'][:24]:<24} {r['final_step']:>7} {r['final_gpu_s']:>9.0f} {r['final_loss']:>9.5f} "
                     f"{reach:>16} {at:>14}")
    ratio = result["ratio"]
    reached = [r["gpu_s_to_target"] is not None for r in result["runs"]]
    if ratio is None and reached[1]:  # RUN_A there at 0 GPU-s (its first validation row at elapsed_s 0)
        lines.append("ratio: none — RUN_A reached its final loss at 0 GPU-s (its first validation row), "
                     "so no time ratio is defined")
    elif ratio is None:
        lines.append("ratio: RUN_B did not reach the target loss")
    else:
        verdict = ""
        if target_ratio is not None:
            verdict = (f" (target ≤ {target_ratio:g}: met)" if ratio <= target_ratio else
                       f" (target ≤ {target_ratio:g}: missed by {ratio - target_ratio:.2f})")
        lines.append(f"ratio: RUN_B needed {ratio:.3f}× RUN_A's GPU time to reach it{verdict}")
    matched = result.get("matched") or []
    if matched:
        lines.append("RUN_B's validation rows, and RUN_A's GPU-s to the same loss:")
        lines.append(f"{'step':>7} {'GPU-s':>9} {'loss':>9} {'RUN_A GPU-s':>12} {'ratio':>7}")
        for m in matched:
            ga = "not reached" if m["gpu_s_a"] is None else f"{m['gpu_s_a']:.0f}"
            r = "-" if m["ratio"] is None else f"{m['ratio']:.2f}"
            lines.append(f"{m['step']:>7} {m['gpu_s']:>9.0f} {m['loss']:>9.5f} {ga:>12} {r:>7}")
        if result.get("matched_median_ratio") is not None:
            lines.append(f"median ratio over the losses both reached: {result['matched_median_ratio']:.3f}")
    return "\n".join(lines)


def parse_gpus(text: str) -> tuple[int, int]:
    """``--gpus A,B`` → two positive ints; ValueError naming the flag."""
    try:
        parts = tuple(int(x) for x in str(text).split(","))
    except ValueError:
        parts = ()
    if len(parts) != 2 or min(parts) < 1:
        raise ValueError(f"--gpus must be two positive ints A,B (GPUs of RUN_A and RUN_B), got {text!r}")
    return parts


def run(args) -> int:
    """``vidhash bench train-compare RUN_A RUN_B``."""
    ga, gb = parse_gpus(args.gpus)
    if args.target_ratio is not None and not (args.target_ratio > 0 and math.isfinite(args.target_ratio)):
        raise ValueError(f"--target-ratio must be a positive number, got {args.target_ratio}")
    a, b = read_curve(args.run_a, args.metric, ga), read_curve(args.run_b, args.metric, gb)
    result = compare(a, b)
    print(format_report(result, args.metric, args.target_ratio))
    if args.json:
        write_json(args.json, {"metric": args.metric, "gpus": [ga, gb], **result}, indent=1)
    return 0
