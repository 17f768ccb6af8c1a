"""World-model memory on held-out worlds: see a place, wander away for a horizon, come back.

    vidhash eval world PIPELINE_DIR|random-tiny [--seeds 1000000,1000001] [--horizons 10,60,300] [--fps 8]
        [--modes hashed,window,full,random-sig] [--json out.json] [--plot out.png] [--device auto]
        [--dtype float32|bfloat16] [--full-max-seconds 60]

For every held-out world seed (worlds ≥ 1,000,000 are never used in training) and horizon, the
camera follows a loop (:mod:`vidhash.eval.trajectory`): a **first visit** of a landmark (a
straight path of ``--visit-seconds``), **away** for the horizon (out of view of everything the
visit saw, except the first and last ``view/step`` frames that leave and approach along the
visit line), and a **return** over the visit poses in reverse. Every generated frame is at a
known pose, so the world renders its ground truth.

Two runs per (seed, horizon, mode), with the same noise in every mode:

* ``given`` — the first visit is given: its ground-truth frames are a frame prompt
  (``context_frames``), committed into the window and then the memory exactly as generated
  frames are; the model generates away + return. Metrics: return vs ground truth
  (``return_psnr``, ``return_ssim``) and away vs ground truth (``away_psnr``, a sanity number:
  the model cannot know unseen places, so this is its floor).
* ``self`` — nothing is given: the model generates the first visit too. Metrics: each return
  frame vs the model's own first-visit frame at the same pose (``self_psnr``, ``self_ssim``: the
  fair test where the first visit was invented), plus visit/return/away vs ground truth.

Modes (memory config of the state; same model): ``hashed`` — window + ``HashedMemory`` read
with the model's signatures (learned ``LearnedHash`` when the model has them, else SimHash);
``window`` — the window only (the no-memory baseline); ``full`` — every past frame attended
densely, skipped beyond ``--full-max-seconds`` of horizon or when its K/V would not fit;
``random-sig`` — hashed memory read with untrained random SimHash signatures of the same bit
width (for a model without learned signatures this is ``hashed`` itself, reported once and
copied, marked ``same_as``).

PSNR is per frame on RGB uint8 (dB, capped at 100), SSIM on luma (Gaussian σ 1.5), both from
:mod:`vidhash.metrics.short_range`, averaged over the frames of the segment, then over seeds.

Realism (both settings, no reference: does invented ground look like a world at all?):
``away_realism`` is the mean normalised distance of the away frames' 8×8 patches to a bank of
real patches of other worlds at the model's world size, ``away_real_share`` the share of them
within the distance that covers 95 % of real patches (:mod:`vidhash.metrics.realism`; real
frames ≈ 0.85 and 0.95, lower distance = more real; docs/realism.md).

JSON (``--json``; stable keys, ``"schema": "vidhash-eval-world/1"``): ``complete`` (false in the copy
rewritten after every seed × horizon while the run goes on), ``model``, ``learned_signatures``,
``device``, ``dtype``, ``fps``, ``seeds``, ``horizons_s``, ``modes``, ``generation`` (resolved
settings), ``trajectory`` (visit/leave frames, step, view, world size), ``rows`` (one per
seed × horizon × mode × setting: ``seed``, ``horizon_s``, ``mode``, ``setting``, ``status``
``ok|skipped``, ``note``, ``same_as``, ``gap_frames``, ``frames``, ``seconds`` and the metric keys
above, null where not measured), ``summary[mode][horizon]`` (means over seeds:
``return_psnr``, ``return_ssim``, ``away_psnr``, ``away_ssim`` of ``given``; ``self_psnr``,
``self_ssim``, ``self_return_psnr`` of ``self``; ``away_realism``, ``away_real_share`` of ``given`` and
``self_away_realism``, ``self_away_real_share`` of ``self``; ``n_seeds``; ``self_psnr_vs_window``), ``targets``
(issue 5's checks on self-consistency PSNR) and ``timing`` (``frames`` generated, ``seconds``,
``frames_per_s``, the warm-up's rate and the estimate). ``--plot`` draws the metrics against
the horizon, one line per mode; ``--from-json`` redraws table and plot from a saved JSON.

Deterministic: seeds fix worlds, loops and noise (bitwise on CPU).

Modules: :mod:`~vidhash.eval.world.plan` (options, the checks before any model loads, resolved
settings, the runs and which are skipped), :mod:`~vidhash.eval.world.run` (model, one loop per
run, its metrics, :func:`evaluate`), :mod:`~vidhash.eval.world.report` (the result above, means,
targets, table, plot, ``--from-json`` merges). The flags: :mod:`vidhash.cli.eval_world`.
"""
from .plan import (
    DEFAULT_HORIZONS,
    DEFAULT_SEEDS,
    GIVEN_KEYS,
    MEMORY_KEYS,
    METRIC_KEYS,
    MODES,
    REALISM_KEYS,
    SCHEMA,
    SELF_KEYS,
    SETTINGS,
    TIME_PARTS,
    Run,
    WorldEvalOptions,
    check_options,
    check_plot,
    plan_runs,
    resolve_settings,
)
from .report import (
    build_result,
    format_table,
    load_result,
    merge_results,
    plot_result,
    summarize,
    targets,
    write_json,
)
from .run import (
    compare,
    evaluate,
    generate_loop,
    learned_hashers,
    load_pipeline,
    memory_config,
    prepare,
    with_random_signatures,
)

__all__ = [
    "DEFAULT_HORIZONS", "DEFAULT_SEEDS", "GIVEN_KEYS", "MEMORY_KEYS", "METRIC_KEYS", "MODES", "REALISM_KEYS", "SCHEMA", "SELF_KEYS",
    "SETTINGS", "TIME_PARTS", "Run", "WorldEvalOptions", "build_result", "check_options", "check_plot", "compare",
    "evaluate", "format_table", "generate_loop", "learned_hashers", "load_pipeline", "load_result", "memory_config",
    "merge_results", "plan_runs", "plot_result", "prepare", "resolve_settings", "summarize", "targets",
    "with_random_signatures", "write_json",
]
