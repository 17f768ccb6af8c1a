"""Calibrate the drop-in's hashers on a diffusers video transformer's own activations.

Letters: s recorded samples (calls × batch), h heads, m tokens kept per sample, d head_dim.

    hashers, report = calibrate_hash_attention(pipe.transformer, lambda: pipe(prompt, num_inference_steps=4))
    save_hashers(hashers, "my-model/transformer")          # vidhash_hashers.safetensors beside the weights
    enable_hash_attention(transformer, hashers="my-model/transformer", density=0.125)

1. **Record.** While ``run`` runs (a callable — a short pipeline call — or a list of keyword
   dicts for ``transformer(**kwargs)``), every self-attention module the drop-in serves hands
   its queries and keys (after q/k norms and rotary embedding; CogVideoX: the video tokens) to
   a recorder, which keeps, per sample, ``max_queries`` queries and ``max_keys`` keys drawn at
   random (seeded) on the CPU in float32. A model without hash attention is enabled at
   ``density=1.0`` for the recording (its outputs are then the stock model's) and disabled
   after; an enabled model records under its own configuration.
2. **Fit.** Per module, a :class:`~vidhash.hashing.LearnedHash` (per head MLPs) is fitted by
   :meth:`~vidhash.hashing.LearnedHash.fit` (HashAttention's weighted BCE: positives are each
   query's exact top-``top_k`` keys) on the even samples; the odd samples (other steps or batch
   items) are held out.
3. **Report.** Per module, recall of the exact top-``top_k`` keys within the top-``top_k`` by
   signature, for a SimHash of the same bits (the drop-in's default hasher family) and for the
   learned hashers, on the fitted and on the held-out samples.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch

from ..hashing import LearnedHash, SimHash, signature_topk_recall
from .diffusers import (
    _CONFIG_ATTR,
    _heads_and_dim,
    disable_hash_attention,
    enable_hash_attention,
    is_hash_attention_enabled,
    self_attention_modules,
)


@dataclass(frozen=True)
class HashCalibrationConfig:
    """Settings of :func:`calibrate_hash_attention` (``vidhash calibrate`` flags of the same names)."""

    bits: int = 32
    hidden: int = 128
    top_k: int = 32
    steps: int = 300
    lr: float = 3e-3
    pos_weight: float = 20.0
    batch_queries: int = 1024
    max_queries: int = 512
    max_keys: int = 2048
    seed: int = 0

    def __post_init__(self):
        for key in ("bits", "hidden", "top_k", "steps", "batch_queries", "max_queries", "max_keys"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{key} must be a positive int, got {value!r}")
        if self.top_k >= self.max_keys:
            raise ValueError(f"top_k ({self.top_k}) must be less than max_keys ({self.max_keys}), the keys recorded per "
                             "sample: its top-k would be every key, recall 1 before and after")


class SelfAttentionRecorder:
    """Context manager that records the queries and keys of every self-attention module the
    drop-in serves; ``samples[name]`` is a list of ``(q (h, m_q, d), k (h, m_k, d))``."""

    def __init__(self, transformer, max_queries: int = 512, max_keys: int = 2048, seed: int = 0):
        self.transformer, self.max_queries, self.max_keys = transformer, max_queries, max_keys
        self.modules = self_attention_modules(transformer)
        self.samples: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {name: [] for name in self.modules}
        self._generator = torch.Generator().manual_seed(seed)
        self._enabled_here = False

    def _pick(self, x: torch.Tensor, m: int) -> torch.Tensor:
        n = x.shape[-2]
        if n <= m:
            return x
        idx = torch.randperm(n, generator=self._generator)[:m].sort().values.to(x.device)
        return x.index_select(-2, idx)

    @torch.no_grad()
    def __call__(self, name: str, q: torch.Tensor, k: torch.Tensor) -> None:
        for b in range(q.shape[0]):
            self.samples[name].append((self._pick(q[b], self.max_queries).float().cpu(),
                                       self._pick(k[b], self.max_keys).float().cpu()))

    def __enter__(self) -> SelfAttentionRecorder:
        if not is_hash_attention_enabled(self.transformer):
            enable_hash_attention(self.transformer, density=1.0)
            self._enabled_here = True
        for attn in self.modules.values():
            attn.processor.recorder = self
        return self

    def __exit__(self, *exc) -> None:
        for attn in self.modules.values():
            if hasattr(attn.processor, "recorder"):
                attn.processor.recorder = None
        if self._enabled_here:
            disable_hash_attention(self.transformer)


def record_self_attention(transformer, run: Callable[[], object] | Iterable[dict], *, max_queries: int = 512,
                          max_keys: int = 2048, seed: int = 0) -> dict[str, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Queries and keys of every served self-attention module while ``run`` runs (see module
    docstring, step 1), by module name."""
    with SelfAttentionRecorder(transformer, max_queries, max_keys, seed) as rec, torch.no_grad():
        if callable(run):
            run()
        else:
            for kwargs in run:
                if not isinstance(kwargs, dict):
                    raise TypeError(f"run must be a callable or an iterable of keyword dicts, got an item of {type(kwargs).__name__}")
                transformer(**kwargs)
    if not any(rec.samples.values()):
        raise ValueError("run did not call the transformer's self-attention: nothing was recorded")
    return rec.samples


def _stack(samples: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q (s, h, m_q, d), k (s, h, m_k, d))``, every sample trimmed to the fewest tokens of any."""
    mq, mk = min(q.shape[-2] for q, _ in samples), min(k.shape[-2] for _, k in samples)
    return torch.stack([q[:, :mq] for q, _ in samples]), torch.stack([k[:, :mk] for _, k in samples])


def _recall(hasher, q, k, top_k) -> float:
    return signature_topk_recall(hasher, q, k, min(top_k, k.shape[-2]))


def fit_hashers(samples: dict[str, list[tuple[torch.Tensor, torch.Tensor]]], heads: int, head_dim: int,
                cfg: HashCalibrationConfig, device: torch.device | str = "cpu") -> tuple[dict[str, LearnedHash], list[dict]]:
    """One fitted :class:`LearnedHash` per module (even samples) and a report row per module.
    ValueError where ``top_k`` is not below a module's keys per sample (a sequence shorter than
    ``max_keys``): its top-k would be every key."""
    keys = {name: min(k.shape[-2] for _, k in recorded) for name, recorded in samples.items() if recorded}
    short = min(keys, key=keys.get, default=None)
    if short is not None and cfg.top_k >= keys[short]:
        raise ValueError(f"top_k ({cfg.top_k}) must be less than the keys recorded per sample: {short} has "
                         f"{keys[short]} (the sequence is shorter than max_keys {cfg.max_keys}); its top-k would be "
                         "every key, recall 1 before and after")
    hashers, rows = {}, []
    for layer, (name, recorded) in enumerate(samples.items()):
        q, k = (t.to(device) for t in _stack(recorded))
        held_out = q.shape[0] > 1
        fq, fk = (q[0::2], k[0::2]) if held_out else (q, k)
        simhash = SimHash(head_dim, cfg.bits, seed=0).to(device)
        learned = LearnedHash(head_dim, cfg.bits, heads, cfg.hidden, seed=cfg.seed + layer).to(device)
        fit = learned.fit(fq, fk, top_k=min(cfg.top_k, fk.shape[-2]), steps=cfg.steps, lr=cfg.lr,
                          pos_weight=cfg.pos_weight, batch_queries=cfg.batch_queries, seed=cfg.seed + layer)
        learned.eval()
        row = {"module": name, "samples": int(q.shape[0]), "queries": int(q.shape[-2]), "keys": int(k.shape[-2]),
               "recall_simhash": _recall(simhash, fq, fk, cfg.top_k), "recall_learned": _recall(learned, fq, fk, cfg.top_k),
               "loss": fit["loss"]}
        if held_out:
            vq, vk = q[1::2], k[1::2]
            row.update(val_recall_simhash=_recall(simhash, vq, vk, cfg.top_k),
                       val_recall_learned=_recall(learned, vq, vk, cfg.top_k))
        hashers[name] = learned.cpu()
        rows.append(row)
    return hashers, rows


def calibrate_hash_attention(transformer, run: Callable[[], object] | Iterable[dict],
                             config: HashCalibrationConfig | None = None, **overrides) -> tuple[dict[str, LearnedHash], dict]:
    """Record (``run``), fit one LearnedHash per self-attention module, report; returns
    ``(hashers, report)``. ``hashers`` is what ``enable_hash_attention(transformer, hasher=...)``
    takes, and what :func:`~vidhash.integrations.hashers.save_hashers` writes. The model is left
    as it was (its processors and outputs unchanged)."""
    cfg = HashCalibrationConfig(**{**asdict(config or HashCalibrationConfig()), **overrides})
    modules = self_attention_modules(transformer)
    heads, head_dim = _heads_and_dim(modules)
    t0 = time.perf_counter()
    samples = record_self_attention(transformer, run, max_queries=cfg.max_queries, max_keys=cfg.max_keys, seed=cfg.seed)
    t_record = time.perf_counter() - t0
    device = next(transformer.parameters()).device
    hashers, rows = fit_hashers(samples, heads, head_dim, cfg, device)
    keys = [key for key in rows[0] if key.startswith(("recall", "val_recall"))]
    report = {
        "config": asdict(cfg),
        "model": type(transformer).__name__,
        "was_enabled": getattr(transformer, _CONFIG_ATTR, None) is not None,
        "modules": rows,
        "mean": {key: sum(r[key] for r in rows) / len(rows) for key in keys},
        "seconds": {"record": round(t_record, 2), "total": round(time.perf_counter() - t0, 2)},
    }
    return hashers, report


def format_report(report: dict) -> str:
    """The report as a table: recall of the exact top-k keys, SimHash → learned, fitted and held out."""
    val = "val_recall_learned" in report["mean"]
    lines = [f"{'module':<28} {'recall SimHash→learned':>24}" + (f" {'held out SimHash→learned':>26}" if val else "")]
    for r in report["modules"] + [dict(report["mean"], module="mean")]:
        line = f"{r['module']:<28} {r['recall_simhash']:>11.3f} → {r['recall_learned']:<10.3f}"
        if val:
            line += f" {r['val_recall_simhash']:>13.3f} → {r['val_recall_learned']:<10.3f}"
        lines.append(line)
    c = report["config"]
    lines.append(f"recall of each query's exact top-{c['top_k']} keys among its top-{c['top_k']} by {c['bits']}-bit "
                 f"signatures; {report['seconds']['total']:.1f} s")
    return "\n".join(lines)


def worse_on_held_out(report: dict) -> str | None:
    """A sentence when the learned hashers' mean held-out recall is below SimHash's, else None."""
    m = report["mean"]
    if "val_recall_learned" not in m or m["val_recall_learned"] >= m["val_recall_simhash"]:
        return None
    return (f"on the held-out samples the learned hashers recall {m['val_recall_learned']:.3f} of the exact top-k keys, "
            f"SimHash {m['val_recall_simhash']:.3f}")
