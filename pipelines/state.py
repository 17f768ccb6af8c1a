"""``VidHashState``: everything generation needs to continue a clip, in fixed-size buffers.

    python -c "from vidhash.pipelines import VidHashState; print(VidHashState.load('state.pt'))"

Letters: l layers, b batch, h heads, w window frames, n tokens per frame, e head_dim.

* the window cache: temporal K/V of the last ``window_frames`` frames, per layer
  ``(l, b, h, w, n, e)``, preallocated;
* one ``HashedMemory`` per layer (``mode="hashed"``), which receives frames leaving the window;
* the random generator (one CPU ``torch.Generator``: all noise comes from it, so a saved and
  reloaded state continues exactly as a straight run would);
* frame counter, camera pose, random-trajectory state, and a fingerprint of the configuration
  (model, frame size, window, memory mode and :class:`~vidhash.memory.MemorySize`) that a
  pipeline checks before using the state.

How the memories are read (:class:`~vidhash.memory.MemoryRead`: ``top_k``, ``mass_cap``, ``select``) is not
part of a state: it is given per call (:meth:`VidHashState.context`). Files of the first format
recorded the last read (``top_k``, ``mass_cap`` in the metadata); loading ignores them.

Signatures: a model with learned memory hashes (``memory_hash_bits > 0``) gets memories of that
many bits whose hasher is an ``UnboundHasher``; the model binds its own ``LearnedHash`` on the
first forward. The config then records ``model.memory_hash_bits``/``memory_hash_hidden`` (absent
for SimHash models, whose fingerprints are unchanged), and once bound the hashers' digests join
the fingerprint and the file: a state written with other signatures is refused when the model
binds its hashers (ValueError), a SimHash state by the pipeline's config check.

``nbytes`` is fixed by the configuration (modes ``hashed`` and ``window``); mode ``full`` keeps
every frame's K/V (the dense baseline) and grows.

Files are safetensors (tensors + JSON metadata, no pickle), written atomically (temp file in the
same folder, fsync, rename). Loading a truncated or foreign file raises ValueError saying so.
"""
from __future__ import annotations

import hashlib
import math
import json
import os
import tempfile
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vidhash.files import umask
from vidhash.generation_config import MEMORY_MODES
from vidhash.memory import HashedMemory, MemoryRead, MemorySize, UnboundHasher
from vidhash.presets import config_diff
from vidhash.models.transformer_vidhash import TemporalContext

FORMAT = "vidhash-state/2"  # /1 plus a checksum, the weights' digest and every model key in the config
OLD_FORMATS = ("vidhash-state/1",)  # still read, with the checks that apply to them (no checksum)
# Model config keys that shape or change the K/V a state holds (every key the model's forward reads).
MODEL_KEYS = ("in_channels", "patch_size", "hidden_dim", "num_layers", "num_heads", "mlp_ratio", "num_actions",
              "pos_freqs", "pos_period", "qk_norm")
# ... and those added to the fingerprint later (with the weights' digest, config key "weights"): a state
# written before them lacks them, and is checked against the keys it has
LATER_MODEL_KEYS = ("rope", "prediction", "sigma_min")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
MAX_FRAME_INDEX = 2**53  # frame counters beyond this are corrupt (a float64 pose of that many steps is meaningless)


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 (16 hex digits) of ``model``'s parameters and buffers: names, dtypes, shapes and bytes.
    Cached on the model until a tensor is replaced or changed in place (its ``_version``)."""
    tensors = sorted(model.state_dict(keep_vars=True).items())
    key = tuple((name, t.data_ptr(), t._version, t.dtype, tuple(t.shape)) for name, t in tensors)
    cached = getattr(model, "_vidhash_weights_digest", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    h = hashlib.sha256()
    for name, t in tensors:
        t = t.detach()
        h.update(f"{name}:{str(t.dtype).removeprefix('torch.')}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).contiguous().view(torch.uint8).cpu().numpy().data if t.numel() else b"")
    digest = h.hexdigest()[:16]
    try:
        model._vidhash_weights_digest = (key, digest)
    except AttributeError:  # (a module that refuses attributes: no cache)
        pass
    return digest


def tensors_checksum(tensors: dict[str, torch.Tensor], meta: dict) -> str:
    """sha256 of a state file's tensors (names, dtypes, shapes, bytes) and metadata (without the checksum)."""
    h = hashlib.sha256(json.dumps({k: v for k, v in meta.items() if k != "checksum"}, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}:{str(t.dtype).removeprefix('torch.')}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else b"")
    return h.hexdigest()


def fingerprint(config: dict, hashers: list | None = None) -> str:
    """sha256 of the config (and of the bound hashers' digests, when there are any)."""
    data = config if not hashers else {**config, "hashers": list(hashers)}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


class VidHashState:
    """Window cache + hashed memories + RNG + counters of one generation run (see module docstring).

    Build one with ``VidHashPipeline.init_state(...)`` (or let the pipeline make it), save it with
    ``state.save(path)``, continue with ``pipe(..., state=VidHashState.load(path))``.
    """

    @staticmethod
    def config_for(model: Any, height: int, width: int, window_frames: int, mode: str, size: MemorySize,
                   batch_size: int = 1, dtype: torch.dtype = torch.float32) -> dict:
        """The JSON-able configuration a state is built from (and fingerprinted by): the model keys
        its forward reads (``MODEL_KEYS``, ``LATER_MODEL_KEYS``), the digest of its weights
        (``"weights"``, :func:`weights_digest`; when ``model`` is the model rather than its config),
        frame size, window, memory ``mode`` and ``size``, batch and dtype. A model with learned
        signatures (``memory_hash_bits > 0``) stores its bits in the memory."""
        weights = weights_digest(model) if isinstance(model, torch.nn.Module) else None
        model_config = model.config if isinstance(model, torch.nn.Module) else model
        mem = {"mode": mode, **asdict(size.size)}
        keys = MODEL_KEYS + tuple(k for k in LATER_MODEL_KEYS if k in model_config)
        model = {k: (float(model_config[k]) if isinstance(model_config[k], float) else model_config[k]) for k in keys}
        bits = int(model_config.get("memory_hash_bits", 0) or 0)
        if bits:
            model.update(memory_hash_bits=bits, memory_hash_hidden=int(model_config.get("memory_hash_hidden", 128)))
            mem["n_bits"] = bits
        return {
            "model": model,
            "height": int(height), "width": int(width), "window_frames": int(window_frames),
            "memory": mem, "batch_size": int(batch_size), "dtype": str(dtype).removeprefix("torch."),
            **({"weights": weights} if weights is not None else {}),
        }

    @staticmethod
    def check_config(have: dict, want: dict) -> None:
        """ValueError unless a state of config ``have`` can continue under ``want`` (what
        :meth:`config_for` gives for the model and settings at hand): equal, except that a state
        written before the weights' digest and ``LATER_MODEL_KEYS`` joined the config is compared
        on the keys it has."""
        if "weights" not in have:  # an older state: what it recorded must match
            want = {k: v for k, v in want.items() if k != "weights"}
            want["model"] = {k: v for k, v in want["model"].items() if k not in LATER_MODEL_KEYS or k in have["model"]}
        if want == have:
            return
        if have.get("weights") not in (None, want.get("weights")) and {**have, "weights": None} == {**want, "weights": None}:
            raise ValueError(f"the state was made with other weights (digest {have['weights']}, this model's "
                             f"{want['weights']}): it continues only under the model that made it")
        diff = config_diff(have, want, "state")
        raise ValueError(f"the state was made for another model or generation config ({diff})")

    def __init__(self, config: dict, generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                 hashers: list | None = None):
        self.config = config
        m, mem = config["model"], config["memory"]
        if mem["mode"] not in MEMORY_MODES:
            raise ValueError(f"memory mode must be one of {MEMORY_MODES}, got {mem['mode']!r}")
        self.num_layers, self.heads = m["num_layers"], m["num_heads"]
        self.head_dim = m["hidden_dim"] // m["num_heads"]
        p = m["patch_size"]
        self.tokens_per_frame = (config["height"] // p) * (config["width"] // p)
        self.window_frames, self.mode = config["window_frames"], mem["mode"]
        self.batch_size, self.dtype = config["batch_size"], _DTYPES[config["dtype"]]
        device = torch.device(device)
        # 1. window cache (preallocated; mode "full" grows it instead)
        frames = 0 if self.mode == "full" else self.window_frames
        shape = (self.num_layers, self.batch_size, self.heads, frames, self.tokens_per_frame, self.head_dim)
        self.window_k = torch.zeros(shape, dtype=self.dtype, device=device)
        self.window_v = torch.zeros(shape, dtype=self.dtype, device=device)
        self.window_index = torch.full((frames,), -1, dtype=torch.int64, device=device)
        self.window_filled = 0
        # 2. memories
        #    (learned signatures: bound by the model, or given here as ``hashers``, one per layer)
        self.memories: list[HashedMemory] = []
        learned = bool(m.get("memory_hash_bits", 0))
        if hashers is not None and (not learned or len(hashers) != self.num_layers):
            raise ValueError(f"hashers: give one per layer ({self.num_layers}) and only for a model with memory_hash_bits > 0")
        if self.mode == "hashed":
            size = self.memory_size
            self.memories = [
                HashedMemory(size.num_buckets, size.slots, self.heads, self.head_dim, n_bits=size.n_bits,
                             policy=size.policy, batch_size=self.batch_size, seed=size.seed + layer,
                             dtype=self.dtype, device=device,
                             hasher=(hashers[layer] if hashers is not None
                                     else UnboundHasher(size.n_bits, self.heads, self.head_dim)) if learned else None)
                for layer in range(self.num_layers)
            ]
        # 3. RNG and counters
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        if self.generator.device.type != "cpu":
            raise ValueError("the state's generator must be a CPU torch.Generator (noise is drawn on the CPU)")
        self.frame_index = 0
        self.pose = [0.0, 0.0]
        self.trajectory: dict | None = None

    @property
    def memory_size(self) -> MemorySize:
        """The memories' :class:`MemorySize` (what the state was built with; mode ``hashed``)."""
        mem = self.config["memory"]
        return MemorySize(**{f.name: mem[f.name] for f in fields(MemorySize)})

    # ------------------------------------------------------------------ identity
    @property
    def hasher_digests(self) -> list | None:
        """Digests of the learned hashers the memories read with (None per unbound layer), or
        None for SimHash memories."""
        if not self.config["model"].get("memory_hash_bits"):
            return None
        return [mem.hasher_digest or getattr(mem.hasher, "expected_digest", None) for mem in self.memories] or None

    @property
    def fingerprint(self) -> str:
        """Of the config and, once bound, the learned hashers."""
        digests = self.hasher_digests
        return fingerprint(self.config, digests if digests and any(d is not None for d in digests) else None)

    def bind_hashers(self, hashers: list) -> None:
        """Bind the model's learned hashers (one per layer; ``model.memory_hashers()``) now
        rather than at the model's first forward."""
        if len(hashers) != len(self.memories):
            raise ValueError(f"need one hasher per memory ({len(self.memories)}), got {len(hashers)}")
        for mem, h in zip(self.memories, hashers):
            mem.bind_hasher(h)

    # ------------------------------------------------------------------ size
    @property
    def device(self) -> torch.device:
        return self.window_k.device

    @property
    def nbytes(self) -> int:
        """Bytes held: window cache, memories, RNG state (fixed by the config except in mode ``full``)."""
        n = sum(t.numel() * t.element_size() for t in (self.window_k, self.window_v, self.window_index))
        n += sum(mem.nbytes for mem in self.memories)
        return n + self.generator.get_state().numel()

    def to(self, device: torch.device | str) -> VidHashState:
        device = torch.device(device)
        self.window_k, self.window_v = self.window_k.to(device), self.window_v.to(device)
        self.window_index = self.window_index.to(device)
        for mem in self.memories:
            mem.to(device)
        return self

    # ------------------------------------------------------------------ attention context
    def context(self, read: MemoryRead) -> list[TemporalContext]:
        """Per layer: window K/V (exact) and the memory, to be read as ``read`` says."""
        f = self.window_filled
        out = []
        for layer in range(self.num_layers):
            k = v = None
            if f:
                k = self.window_k[layer, :, :, :f].reshape(self.batch_size, self.heads, f * self.tokens_per_frame, -1)
                v = self.window_v[layer, :, :, :f].reshape(self.batch_size, self.heads, f * self.tokens_per_frame, -1)
            mem = self.memories[layer] if self.memories else None
            out.append(TemporalContext(k=k, v=v, memory=mem, read=read.read))
        return out

    @torch.no_grad()
    def push(self, kv: list[tuple[torch.Tensor, torch.Tensor]], first_frame: int) -> None:
        """Add a chunk's clean K/V (per layer ``(b, h, frames·n, e)``) to the window; frames that
        leave the window go to the memory (mode ``hashed``) or are dropped (mode ``window``)."""
        n = self.tokens_per_frame
        k_new = torch.stack([k for k, _ in kv]).unflatten(3, (-1, n)).to(self.dtype)  # (l, b, h, c, n, e)
        v_new = torch.stack([v for _, v in kv]).unflatten(3, (-1, n)).to(self.dtype)
        c = k_new.shape[3]
        idx_new = torch.arange(first_frame, first_frame + c, device=self.device)
        f = self.window_filled
        if self.mode == "full":
            self.window_k = torch.cat([self.window_k, k_new], dim=3)
            self.window_v = torch.cat([self.window_v, v_new], dim=3)
            self.window_index = torch.cat([self.window_index, idx_new])
            self.window_filled += c
            return
        if c > self.window_frames:
            raise ValueError(f"a chunk of {c} frames does not fit a window of {self.window_frames}")
        if f + c <= self.window_frames:
            self.window_k[:, :, :, f : f + c] = k_new
            self.window_v[:, :, :, f : f + c] = v_new
            self.window_index[f : f + c] = idx_new
            self.window_filled = f + c
            return
        evict = f + c - self.window_frames
        old_k, old_v = self.window_k[:, :, :, :evict].clone(), self.window_v[:, :, :, :evict].clone()
        old_idx = self.window_index[:evict].clone()
        keep = f - evict
        self.window_k[:, :, :, :keep] = self.window_k[:, :, :, evict:f].clone()
        self.window_v[:, :, :, :keep] = self.window_v[:, :, :, evict:f].clone()
        self.window_index[:keep] = self.window_index[evict:f].clone()
        self.window_k[:, :, :, keep:] = k_new
        self.window_v[:, :, :, keep:] = v_new
        self.window_index[keep:] = idx_new
        self.window_filled = self.window_frames
        if self.memories:
            token_frames = old_idx.repeat_interleave(n)
            for layer, mem in enumerate(self.memories):
                mem.write(old_k[layer].flatten(2, 3), old_v[layer].flatten(2, 3), token_frames)

    # ------------------------------------------------------------------ save / load
    def _meta(self) -> dict:
        return {
            "format": FORMAT, "fingerprint": self.fingerprint, "config": self.config,
            "frame_index": self.frame_index, "window_filled": self.window_filled,
            "pose": [float(x) for x in self.pose], "trajectory": self.trajectory,
            **({"hashers": self.hasher_digests} if self.hasher_digests else {}),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the state atomically (temp file + rename), with a checksum of every tensor and the
        metadata; returns the path."""
        path = Path(path)
        tensors = {
            "window.k": self.window_k, "window.v": self.window_v, "window.index": self.window_index,
            "rng": self.generator.get_state(),
        }
        for layer, mem in enumerate(self.memories):
            for name, t in mem.state_dict().items():
                if torch.is_tensor(t):
                    tensors[f"memory.{layer}.{name}"] = t
        tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        meta = self._meta()
        meta["checksum"] = tensors_checksum(tensors, meta)
        parent = path.parent if str(path.parent) else Path(".")
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=parent)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata={"vidhash": json.dumps(meta)})
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; give the file the usual permissions
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str = "cpu") -> VidHashState:
        """Read a state written by :meth:`save`. Raises FileNotFoundError for a missing file and
        ValueError naming the file for a truncated, corrupt (checksum), edited (a field out of
        range) or foreign one. Files of the first format (no checksum) get every other check."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"state file {path} does not exist")
        # 1. the file: tensors and metadata, the checksum over both
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                raw = (f.metadata() or {}).get("vidhash")
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as err:  # safetensors raises its own error types for bad headers and short files
            raise ValueError(f"state file {path} is truncated or not a safetensors file ({err})") from None
        try:
            meta = json.loads(raw)
        except (TypeError, json.JSONDecodeError):
            raise ValueError(f"state file {path} has no vidhash metadata (not a VidHashState file)") from None
        if not isinstance(meta, dict) or meta.get("format") not in (FORMAT, *OLD_FORMATS):
            found = meta.get("format") if isinstance(meta, dict) else None
            raise ValueError(f"state file {path} has format {found!r}, expected {FORMAT!r}")
        if meta["format"] == FORMAT and meta.get("checksum") != tensors_checksum(tensors, meta):
            raise ValueError(f"state file {path}: checksum mismatch (the file was changed or damaged after it was saved)")
        # 2. every field checked before it is used (ValueError naming the field)
        try:
            return cls._from_file(meta, tensors).to(device)
        except (KeyError, TypeError, IndexError, AttributeError, RuntimeError, ValueError, OverflowError) as err:
            what = f"missing field {err}" if isinstance(err, KeyError) else str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ValueError(f"state file {path}: {what}") from None

    @classmethod
    def _from_file(cls, meta: dict, tensors: dict) -> VidHashState:
        """The state of a file's metadata and tensors, every field range-checked (:func:`check_meta`)."""
        digests = meta.get("hashers")
        if fingerprint(meta["config"], digests if digests and any(d is not None for d in digests) else None) != meta["fingerprint"]:
            raise ValueError("metadata does not match its fingerprint (corrupt)")
        check_config_values(meta["config"])
        expected = _expected_shapes(meta["config"], meta["window_filled"])
        for key, shape in expected.items():
            if key not in tensors:
                raise ValueError(f"tensor {key} is missing")
            if tuple(tensors[key].shape) != shape:
                raise ValueError(f"{key} has shape {tuple(tensors[key].shape)}, expected {shape}")
        generator = torch.Generator()
        generator.set_state(tensors["rng"])
        state = cls(meta["config"], generator=generator, device="cpu")
        for mem, digest in zip(state.memories, digests or []):
            if isinstance(mem.hasher, UnboundHasher):
                mem.hasher.expected_digest = digest  # the model's hasher must be this one
        state.window_k, state.window_v = tensors["window.k"].to(state.dtype), tensors["window.v"].to(state.dtype)
        state.window_index = tensors["window.index"]
        for layer, mem in enumerate(state.memories):
            prefix = f"memory.{layer}."
            sd = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            sd.update({k: v for k, v in mem.state_dict().items() if not torch.is_tensor(v)})  # extra state
            mem.load_state_dict(sd)
        state.window_filled = meta["window_filled"]
        state.frame_index = meta["frame_index"]
        state.pose = list(meta["pose"])
        state.trajectory = meta["trajectory"]  # (files of the first format also hold top_k, mass_cap: not state)
        check_state_values(state)
        return state

    def __repr__(self) -> str:
        return (f"VidHashState(frames={self.frame_index}, mode={self.mode!r}, window={self.window_filled}/"
                f"{self.window_frames}, layers={self.num_layers}, nbytes={self.nbytes}, fingerprint={self.fingerprint})")


# ---------------------------------------------------------------------- checks of a loaded file


def _int(name: str, value: Any, low: int = 0, high: int = MAX_FRAME_INDEX) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{name} must be an int in [{low}, {high}], got {value!r}")
    return value


def check_config_values(config: dict) -> None:
    """ValueError naming the key of a state config that is not one :meth:`VidHashState.config_for` makes."""
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict) or not isinstance(config.get("memory"), dict):
        raise ValueError("config must hold the model and memory sections")
    m = config["model"]
    for key in ("in_channels", "patch_size", "hidden_dim", "num_layers", "num_heads", "num_actions", "pos_freqs"):
        _int(f"config.model.{key}", m[key], 1, 2**20)
    for key in ("mlp_ratio", "pos_period"):
        if not isinstance(m[key], (int, float)) or isinstance(m[key], bool) or not 0 < m[key] < float("inf"):
            raise ValueError(f"config.model.{key} must be a positive number, got {m[key]!r}")
    if m["hidden_dim"] % m["num_heads"]:
        raise ValueError(f"config.model.hidden_dim {m['hidden_dim']} is not divisible by num_heads {m['num_heads']}")
    for key in ("height", "width"):
        if _int(f"config.{key}", config[key], 1, 2**16) % m["patch_size"]:
            raise ValueError(f"config.{key} {config[key]} is not a multiple of patch_size {m['patch_size']}")
    _int("config.window_frames", config["window_frames"], 1, 2**20)
    _int("config.batch_size", config["batch_size"], 1, 2**16)
    if config["dtype"] not in _DTYPES:
        raise ValueError(f"config.dtype must be one of {sorted(_DTYPES)}, got {config['dtype']!r}")
    mem = config["memory"]
    if mem.get("mode") not in MEMORY_MODES:
        raise ValueError(f"config.memory.mode must be one of {MEMORY_MODES}, got {mem.get('mode')!r}")
    MemorySize(**{f.name: mem[f.name] for f in fields(MemorySize)})  # its own checks (ValueError naming the field)
    _int("config.memory.num_buckets", mem["num_buckets"], 1, 2**24)
    _int("config.memory.slots", mem["slots"], 1, 2**16)


def _expected_shapes(config: dict, window_filled: Any) -> dict[str, tuple]:
    """The shape of every tensor of a state file of ``config`` (``window_filled``: the frames a mode
    ``full`` window holds)."""
    from vidhash.hashing import num_words

    m, mem = config["model"], config["memory"]
    frames = config["window_frames"]
    if mem["mode"] == "full":
        frames = _int("window_filled", window_filled)
    b, h, e = config["batch_size"], m["num_heads"], m["hidden_dim"] // m["num_heads"]
    n = (config["height"] // m["patch_size"]) * (config["width"] // m["patch_size"])
    window = (m["num_layers"], b, h, frames, n, e)
    shapes = {"window.k": window, "window.v": window, "window.index": (frames,), "rng": tuple(torch.Generator().get_state().shape)}
    if mem["mode"] == "hashed":
        slots = (b, h, mem["num_buckets"], mem["slots"])
        for layer in range(m["num_layers"]):
            shapes.update({f"memory.{layer}.keys": (*slots, e), f"memory.{layer}.values": (*slots, e),
                           f"memory.{layer}.signatures": (*slots, num_words(mem["n_bits"])),
                           f"memory.{layer}.frames": slots, f"memory.{layer}.counts": slots,
                           f"memory.{layer}.bucket_writes": slots[:3]})
    return shapes


def check_state_values(state: VidHashState) -> None:
    """ValueError naming the field of a loaded state whose value cannot come from generation: the
    counters, the window's frame indices, pose, trajectory, the memories' frames and counts, and
    non-finite K/V."""
    f = _int("frame_index", state.frame_index)
    full = state.mode == "full"
    filled = _int("window_filled", state.window_filled, 0, f if full else min(f, state.window_frames))
    if full and filled != f:
        raise ValueError(f"window_filled {filled} must equal frame_index {f} in memory mode 'full'")
    index = state.window_index
    want = torch.cat([torch.arange(f - filled, f), torch.full((index.numel() - filled,), -1)]).to(index)
    if index.dtype != torch.int64 or not torch.equal(index, want):
        raise ValueError(f"window.index must hold frames {f - filled}..{f - 1} (the last window_filled), then -1")
    pose = state.pose
    if len(pose) != 2 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in pose):
        raise ValueError(f"pose must be two finite numbers, got {pose!r}")
    if state.trajectory is not None:
        check_trajectory(state.trajectory)
    for name, t in (("window.k", state.window_k), ("window.v", state.window_v)):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} holds non-finite values")
    for layer, mem in enumerate(state.memories):
        if not bool(torch.isfinite(mem.keys).all() and torch.isfinite(mem.values).all()):
            raise ValueError(f"memory.{layer} keys/values hold non-finite values")
        if bool(((mem.frames < -1) | (mem.frames >= max(f - filled, 0))).any()):
            raise ValueError(f"memory.{layer}.frames must be -1 or a frame before the window (< {f - filled})")
        if bool((mem.counts < 0).any()) or bool((mem.bucket_writes < 0).any()):
            raise ValueError(f"memory.{layer}.counts / bucket_writes must not be negative")


def check_trajectory(t: Any) -> None:
    """ValueError naming the field of a random-trajectory state (``RandomTrajectory.state_dict``) out of range."""
    from vidhash.camera import RandomTrajectory

    if not isinstance(t, dict):
        raise ValueError(f"trajectory must be a dict or null, got {type(t).__name__}")
    size = _int("trajectory.size", t["size"], 1, 2**31)
    step = _int("trajectory.step", t["step"], 1, size)
    _int("trajectory.reach", t["reach"], 0, 2**31)
    _int("trajectory.history_len", t["history_len"], 1, 2**16)
    pause_max = _int("trajectory.max_pause", t["max_pause"], 0, 2**16)
    _int("trajectory.pause", t["pause"], 0, pause_max)
    if size % step or not isinstance(t["revisit"], (int, float)) or not 0 <= t["revisit"] <= 1:
        raise ValueError(f"trajectory.step must divide trajectory.size and revisit be in [0, 1], got {t['step']}, "
                         f"{t['size']}, {t['revisit']!r}")
    places = [("trajectory.pos", t["pos"])] + ([("trajectory.target", t["target"])] if t["target"] is not None else [])
    if not isinstance(t["history"], list) or not 1 <= len(t["history"]) <= t["history_len"]:
        raise ValueError(f"trajectory.history must be a list of 1..history_len places, got {t['history']!r}")
    places += [(f"trajectory.history[{i}]", p) for i, p in enumerate(t["history"])]
    for name, p in places:
        if not isinstance(p, list) or len(p) != 2:
            raise ValueError(f"{name} must be [x, y], got {p!r}")
        _int(f"{name}[0]", p[0], 0, size - 1), _int(f"{name}[1]", p[1], 0, size - 1)
    try:
        RandomTrajectory.from_state_dict(t)  # the generator state (numpy validates it)
    except (TypeError, ValueError, KeyError) as err:
        raise ValueError(f"trajectory.rng is not a generator state ({err})") from None
