"""Presenting coherence reports: a terminal table (one column per video) and a PNG of curves."""
from __future__ import annotations

import os

__all__ = ["format_table", "plot_reports", "video_labels"]


def video_labels(reports: list[dict]) -> list[str]:
    """Short column names: file names, or full paths where file names repeat."""
    names = [os.path.basename(r["video"]) for r in reports]
    return [r["video"] if names.count(n) > 1 else n for r, n in zip(reports, names)]


def _f(v, fmt: str = ".3g") -> str:
    return "—" if v is None else format(v, fmt)


def _get(report: dict, *keys):
    cur = report
    for k in keys:
        if not isinstance(cur, dict) or k not in cur:
            return None
        cur = cur[k]
    return cur


def _se(report: dict, name: str, fmt: str = ".3g") -> str:
    s, e = _get(report, "start_end", name, "start"), _get(report, "start_end", name, "end")
    return "—" if s is None else f"{s:{fmt}} → {e:{fmt}}"


def _at_lag(report: dict, dist: str, which: int) -> str:
    lags = _get(report, "drift", "lags_s") or []
    vals = _get(report, "drift", "by_lag", dist) or []
    if not lags:
        return "—"
    return f"{vals[which]:.3g} @{lags[which]:g}s"


# (label, function of one report -> cell text); a row whose cells are all "—" is skipped when
# it belongs to an optional block (revisit, features).
ROWS = [
    ("frames @ fps", lambda r: f"{r['frames']} @ {r['fps']:.3g}"),
    ("duration (s)", lambda r: _f(r["duration_s"], ".4g")),
    ("flicker: mean abs diff (0-255)", lambda r: _f(r["flicker"]["mean"])),
    ("flicker: brightness jitter", lambda r: _f(r["flicker"]["brightness_jitter"])),
    ("warp error (Lai 2018)", lambda r: _f(r["warp_error"]["mean"])),
    ("warp error: occluded share", lambda r: _f(r["warp_error"]["occluded_fraction"], ".2f")),
    ("motion (px/frame)", lambda r: _f(r["motion"]["mean_px"])),
    ("frozen pairs (share)", lambda r: _f(r["motion"]["frozen_fraction"], ".2f")),
    ("SSIM adjacent: mean / min", lambda r: f"{_f(r['ssim_adjacent']['mean'], '.3f')} / {_f(r['ssim_adjacent']['min'], '.3f')}"),
    ("PSNR adjacent (dB)", lambda r: _f(r["psnr_adjacent"]["mean"], ".1f")),
    ("smoothness: mean / min", lambda r: f"{_f(r['smoothness']['mean'], '.4f')} / {_f(r['smoothness']['min'], '.4f')}"),
    ("drift 1−SSIM: shortest lag", lambda r: _at_lag(r, "ssim_dist", 0)),
    ("drift 1−SSIM: longest lag", lambda r: _at_lag(r, "ssim_dist", -1)),
    ("drift ΔE: longest lag", lambda r: _at_lag(r, "delta_e", -1)),
    ("drift slope/decade 1−SSIM", lambda r: _f(_get(r, "drift", "slope_per_decade", "ssim_dist"))),
    ("drift slope/decade hist", lambda r: _f(_get(r, "drift", "slope_per_decade", "hist_dist"))),
    ("drift slope/decade ΔE", lambda r: _f(_get(r, "drift", "slope_per_decade", "delta_e"))),
    ("ΔE last vs first keyframe", lambda r: _f(_get(r, "drift", "end_vs_first", "delta_e"))),
    ("brightness L* start → end", lambda r: _se(r, "brightness")),
    ("chroma start → end", lambda r: _se(r, "chroma")),
    ("sharpness start → end", lambda r: _se(r, "sharpness")),
    ("scene cuts", lambda r: str(r["cuts"]["count"])),
]
OPTIONAL_ROWS = [
    ("revisit PSNR (dB) / pairs", lambda r: "—" if "revisit" not in r else f"{_f(r['revisit']['psnr'], '.1f')} / {r['revisit']['pairs']}"),
    ("revisit SSIM", lambda r: _f(_get(r, "revisit", "ssim"), ".3f")),
    ("features consistency", lambda r: _f(_get(r, "features", "consistency"), ".4f")),
]


def format_table(reports: list[dict]) -> str:
    """One row per metric, one column per video."""
    labels = video_labels(reports)
    rows = [(name, [fn(r) for r in reports]) for name, fn in ROWS]
    for name, fn in OPTIONAL_ROWS:
        cells = [fn(r) for r in reports]
        if any(c != "—" for c in cells):
            rows.append((name, cells))
    width0 = max(len(n) for n, _ in rows)
    widths = [max(len(l), *(len(c[i]) for _, c in rows)) for i, l in enumerate(labels)]
    lines = ["  ".join([" " * width0] + [l.rjust(w) for l, w in zip(labels, widths)])]
    lines.append("  ".join(["-" * width0] + ["-" * w for w in widths]))
    for name, cells in rows:
        lines.append("  ".join([name.ljust(width0)] + [c.rjust(w) for c, w in zip(cells, widths)]))
    return "\n".join(lines)


def plot_reports(reports: list[dict], path: str) -> str:
    """Write a PNG of the curves of one or several reports; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")

    labels = video_labels(reports)
    fig, axes = plt.subplots(2, 4, figsize=(18, 8), constrained_layout=True)
    per_second = [
        ("flicker", "flicker: mean abs diff (0–255)"),
        ("warp_error", "warping error (Lai et al. 2018)"),
        ("ssim_adjacent", "SSIM of adjacent frames"),
        ("motion", "motion (px / analysed frame)"),
    ]
    for ax, (key, title) in zip(axes[0], per_second):
        for r, lab in zip(reports, labels):
            t = r["series"]["t_s"]
            v = [float("nan") if x is None else x for x in r["series"][key]]
            ax.plot(t, v, label=lab, lw=1.2)
        ax.set_title(title)
        ax.set_xlabel("time (s)")
    for ax, dist, title in [
        (axes[1][0], "ssim_dist", "drift: mean 1 − SSIM at lag"),
        (axes[1][1], "delta_e", "drift: mean ΔE (Lab) at lag"),
    ]:
        for r, lab in zip(reports, labels):
            d = r["drift"]
            if d["lags_s"]:
                ax.plot(d["lags_s"], d["by_lag"][dist], "o-", label=lab, ms=3)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        ax.set_xlabel("lag (s)")
        ax.set_title(title)
    ax = axes[1][2]
    for r, lab in zip(reports, labels):
        ff = r["drift"]["from_first"]
        ax.plot(ff["t_s"], ff["delta_e"], label=lab, lw=1.2)
    ax.set_title("ΔE of each keyframe from the first")
    ax.set_xlabel("time (s)")
    ax = axes[1][3]
    if any("revisit" in r for r in reports):
        for r, lab in zip(reports, labels):
            rows = [row for row in r.get("revisit", {}).get("by_gap", []) if row["psnr"] is not None]
            if rows:
                ax.plot([row["gap_s"][0] for row in rows], [row["psnr"] for row in rows], "o-", label=lab, ms=3)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(plain)
        ax.set_xlabel("time gap (s, bin start)")
        ax.set_title("revisits: PSNR at the same pose (dB)")
    else:
        ax.axis("off")
        ax.text(0.5, 0.5, "revisits: pass --poses", ha="center", va="center", transform=ax.transAxes, color="grey")
    axes[0][0].legend(fontsize=8, loc="best")
    fig.suptitle("vidhash coherence")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
