"""``VidHashPipeline``: long clips chunk by chunk against a fixed-size hashed memory.

    python -c "from vidhash.pipelines import VidHashPipeline; pipe = VidHashPipeline.random('tiny'); \
print(pipe(num_frames=16, generator=__import__('torch').Generator().manual_seed(0)).frames.shape)"

For each chunk of ``chunk_frames`` frames:

1. draw the chunk's noise from the state's generator;
2. denoise it with ``FlowMatchEulerDiscreteScheduler`` — the transformer sees the chunk (noisy,
   one timestep for all its frames) and, per layer, the window cache (clean K/V of the last
   ``window_frames`` frames, exact) merged with a ``HashedMemory`` read for everything older;
3. run one clean commit pass (t = 0) to get the chunk's K/V; push them into the window cache;
   frames leaving the window are written to the memory;
4. yield the frames.

**Frame prompts** (world-model conditioning): ``context_frames`` (observed frames, with
``context_poses`` and/or ``context_actions``) are run clean through the same commit pass (t = 0),
chunk by chunk, before generation: they enter the window and then the memory exactly as
generated frames do, count in the state's frame index, draw no noise, and are not yielded.
Generation continues after them.

Memory and window sizes come from the config, never from the clip length, so ``pipe.stream``
runs any length at constant memory; ``pipe(...)`` collects the chunks. Everything that
continues a clip — window, memories, RNG, frame counter, pose, trajectory — is a
``VidHashState``: ``pipe(..., state=state)`` picks up where it stopped (N frames, save, load,
N more == 2N frames straight, bitwise on CPU, when N is a multiple of ``chunk_frames``).

**Settings.** Every argument of a call left None comes from the state being continued (frame
size, window, memory mode and size) or else from :attr:`VidHashPipeline.generation_config` — a
:class:`~vidhash.generation_config.GenerationConfig` saved with the pipeline (``model_index.json``)
and read back by ``from_pretrained``, so ``VidHashPipeline.from_pretrained(folder)(num_frames=N)``
generates what ``vidhash generate --model folder`` does. A folder saved before it carried one gets
the preset of its model size (:func:`vidhash.presets.generation_for_model`).
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.schedulers import FlowMatchEulerDiscreteScheduler
from diffusers.utils.torch_utils import randn_tensor

from vidhash.camera import NULL_ACTION, RandomTrajectory, action_ids, integrate_actions
from vidhash.generation_config import GenerationConfig, MemorySettings
from vidhash.memory import MemoryRead
from vidhash.models.transformer_vidhash import VidHashTransformer3DModel
from vidhash.presets import (
    config_diff,
    generation_for_model,
    generation_from_dict,
    generation_preset,
    model_presets,
    random_model,
)

from .pipeline_output import VidHashPipelineOutput, pil_frames
from .state import VidHashState

OUTPUT_TYPES = ("np", "pt", "pil", "latent")
# The arguments of VidHashPipeline.stream and __call__, written once (_document_arguments puts them in both docstrings).
ARGUMENTS_DOC = r"""Args:
    num_frames: frames to generate in this call (> 0).
    height, width: frame size (multiples of the patch size).
    fps: frames per second of the clip (recorded only).
    actions: one action (name or id, see ``vidhash.camera.ACTIONS``) per frame; the camera
        pose follows them by ``action_step`` pixels per move.
    poses: one world (x, y) per frame (the camera path itself).
    action_step: pixels the camera moves per action (world units per move).
    trajectory_seed: with neither actions nor poses, a seeded random trajectory (that
        wanders and returns) is used; its seed is this or drawn from the generator. A
        state continues its own trajectory.
    chunk_frames: frames denoised together (≤ window_frames unless memory mode is full).
    window_frames: recent frames attended exactly; with a state, the state's.
    memory: ``MemorySettings`` (or a dict of its fields over the resolved ones): mode
        ``hashed`` / ``window`` / ``full``, size (``num_buckets``, ``slots``, ``n_bits``,
        ``policy``, ``seed``; with a state, the state's) and read (``top_k`` entries per
        query, None for all; ``mass_cap``: the read's weight cap, 0 = off).
    num_inference_steps: denoising steps per chunk (``pipe.scheduler``'s; a flow-matching
        scheduler, see :func:`check_scheduler`).
    generator: ``torch.Generator`` for all noise (carried in the state as a CPU generator);
        with a state, replaces the state's generator. ``__call__`` also takes a list, one
        generator per clip (a batch: see ``num_videos_per_prompt``).
    latents: the initial noise of the first chunks of this call, ``(batch, n, channels,
        height, width)`` with ``n`` ≤ ``num_frames`` a multiple of ``chunk_frames`` (or
        ``num_frames``) and ``batch`` the call's clips (1 for ``stream``). Those chunks
        start from it instead of drawing noise from the generator (nothing is drawn for
        them); later chunks draw as usual. The noise a call would draw is
        ``randn_tensor((1, c, channels, height, width), generator)`` per chunk of ``c``
        frames, in order — after one draw of the trajectory seed when a random trajectory
        without ``trajectory_seed`` starts.
    output_type: ``"np"``, ``"pt"``, ``"pil"`` or ``"latent"`` (the denoised latents as the
        transformer makes them — pixel space in [-1, 1], ``(batch, frames, channels, height,
        width)``, on its device and in its dtype).
    guidance_scale: context guidance. A guided step also runs the chunk with no window and
        no memory (the model saw such chunks in training: a clip's first chunk) and steps
        along ``v_free + guidance_scale · (v_context − v_free)``. 1 is off: one pass per
        step. Above 1 the chunk commits harder to what its context implies.
    guidance_steps: guide only the first this many denoising steps of each chunk (where
        the layout is decided); the settings' None guides every step.
    callback_on_step_end: ``fn(pipe, step, timestep, callback_kwargs) -> dict`` after each
        denoising step. ``step`` counts the denoising steps of the whole call, over chunks
        and clips: 0 … ``pipe.num_timesteps`` − 1 (``pipe.chunk_index`` says which chunk,
        ``pipe.clip_index`` which clip of a batch, ``step % pipe.steps_per_chunk`` the step
        within the chunk). Setting ``pipe._interrupt = True`` stops generation: the current
        chunk is dropped and the state stays at the last finished chunk (its generator too:
        continuing it equals a straight run).
    callback_on_step_end_tensor_inputs: tensors passed in ``callback_kwargs``.
    state: a ``VidHashState`` to continue (updated in place); None starts a new clip.
        ``__call__`` also takes a list, one state per clip.
    context_frames: observed frames that come before the generated ones (a frame prompt):
        numpy ``(F, h, w, 3)`` (uint8, or float in [0, 1]; a leading batch axis of 1 is
        allowed — the layout ``output_type="np"`` returns), torch ``(F, 3, h, w)`` float in
        [0, 1] (as ``"pt"``), or a list of ``PIL.Image``. Frames of another size than the
        generation's are resized to it (stretched, not cropped): averaged over areas when
        neither side grows (exact for whole-number factors), else bilinear with
        antialiasing (``torch.nn.functional.interpolate``). They run clean (t = 0) through the commit pass in chunks of ``chunk_frames`` —
        into the window, then the memory, exactly as generated frames — count in the
        state's frame index, draw no noise, and are not yielded. Works with ``state``
        (observations appended to a clip) and ``stream``.
    context_poses: world (x, y) of each context frame ``(F, 2)``.
    context_actions: one action per context frame; without ``context_poses`` the poses
        follow them from the state's pose. One of the two is required. A random
        trajectory restarts from the last context pose.
"""


def _document_arguments(fn):
    """``fn``'s docstring with its ``{arguments}`` line replaced by :data:`ARGUMENTS_DOC` (indented)."""
    fn.__doc__ = fn.__doc__.replace("{arguments}", ARGUMENTS_DOC.strip().replace("\n", "\n        "))
    return fn


@dataclass
class _Chunk:
    """One chunk's camera path — action ids ``(c,)``, poses ``(c, 2)``, as tensors ``act (1, c)`` and
    ``pos (1, c, 2)``, the random trajectory that made them (None for a given path) — and what its
    passes share once denoising starts: the context, the frame inputs, and the CUDA graphs when
    its passes replay (None: eager)."""

    ids: np.ndarray
    poses: np.ndarray
    act: torch.Tensor
    pos: torch.Tensor
    trajectory: RandomTrajectory | None = None
    context: list | None = None
    frame_inputs: Any = None
    graphs: Any = None


class VidHashPipeline(DiffusionPipeline):
    r"""Chunked long-video generation with a hashed temporal memory.

    Components:
        transformer: ``VidHashTransformer3DModel`` (LoRA through diffusers' ``PeftAdapterMixin``:
            ``pipe.transformer.add_adapter(LoraConfig(target_modules=["to_qkv", "proj"]))``).
        scheduler: ``FlowMatchEulerDiscreteScheduler``, or another flow-matching scheduler
            (:func:`check_scheduler` says which; others are refused when called).

    Settings:
        generation_config: ``GenerationConfig`` (or its dict) of every call argument left None;
            saved in ``model_index.json``; None: the preset of the transformer's size.
    """

    model_cpu_offload_seq = "transformer"
    _callback_tensor_inputs = ["latents"]

    def __init__(self, transformer: VidHashTransformer3DModel, scheduler: FlowMatchEulerDiscreteScheduler,
                 generation_config: GenerationConfig | dict | None = None):
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler)
        self.generation_config = generation_config
        self._interrupt, self._chunk_index, self._clip_index, self._committing = False, 0, 0, False
        self._guidance_scale, self._num_timesteps, self._steps_per_chunk, self._step = None, 0, 0, 0
        self._place = None  # (device, dtype) of the transformer for the clip being generated (_begin)
        self._schedule = None  # the schedule _begin built: (steps, device, timesteps)
        self._call_clip = None  # (clip, clips) while __call__ runs a batch's clip through stream

    @property
    def generation_config(self) -> GenerationConfig:
        """The settings of every call argument left None (frame size, chunk, window, steps, camera
        step, memory, guidance). Saved by ``save_pretrained`` in ``model_index.json`` and passed back
        by ``from_pretrained`` (``VidHashPipeline`` or ``DiffusionPipeline``); assign a
        ``GenerationConfig`` (or its dict) to change it, None for the preset of the model's size."""
        return self._generation_config

    @generation_config.setter
    def generation_config(self, value: GenerationConfig | dict | None) -> None:
        if value is None:
            value = generation_for_model(self.transformer.config)
        elif isinstance(value, dict):
            value = generation_from_dict(value, "generation_config")
        elif not isinstance(value, GenerationConfig):
            raise TypeError(f"generation_config must be a GenerationConfig, a dict or None, got {type(value).__name__}")
        self._generation_config = value
        self.register_to_config(generation_config=value.to_dict())

    @classmethod
    def random(cls, preset: str = "tiny", seed: int = 0) -> VidHashPipeline:
        """An untrained pipeline of model size ``preset`` with seeded random weights and that size's
        generation preset (smoke tests, benchmarks)."""
        return cls(random_model(preset, seed=seed), FlowMatchEulerDiscreteScheduler(), generation_preset(preset))

    @classmethod
    def load(cls, model: str | os.PathLike) -> VidHashPipeline:
        """``random-<preset>`` (an untrained pipeline of that size) or a saved pipeline folder,
        with a clear error for anything else (what the ``--model`` of every command takes)."""
        model = str(model)
        if model.startswith("random-"):
            preset = model.removeprefix("random-")
            if preset not in model_presets():
                raise ValueError(f"unknown model {model!r}; random models: "
                                 f"{', '.join('random-' + p for p in model_presets())}")
            return cls.random(preset, seed=0)
        if not (Path(model) / "model_index.json").is_file():
            raise ValueError(f"{model}: not a saved pipeline folder (no model_index.json)")
        from vidhash.presets import check_not_wan_mini

        check_not_wan_mini(model)
        return cls.from_pretrained(model)

    def compile_blocks(self, **compile_kwargs) -> VidHashPipeline:
        """Regional compilation: ``block.compile(**compile_kwargs)`` for every transformer block
        (one graph per block, shared by all layers; what training does with ``compile: true``).
        Opt-in; returns self.

        The memory read (``HashedMemory.attend``: data-dependent Python and Triton launches) runs
        eagerly inside the compiled block (a graph break), so states and memories are never
        baked into a graph. Each block compiles a few variants while the window fills at the
        start of a clip (no window, partial, full) and with/without a memory read; after that a
        clip runs without recompiling. Frames match eager generation up to the compiler's
        floating-point reordering (``backend="inductor"`` fuses kernels; not bitwise).
        """
        for block in self.transformer.blocks:
            block.compile(**compile_kwargs)
        self._compiled_blocks = dict(compile_kwargs)
        return self

    @property
    def compiled(self) -> bool:
        """True after :meth:`compile_blocks`."""
        return getattr(self, "_compiled_blocks", None) is not None

    def enable_cuda_graphs(self, emulate: bool = False) -> VidHashPipeline:
        """Replay the transformer passes of steady chunks (window full, a whole chunk) from CUDA
        graphs: one capture per kind of pass (denoise, commit), then one launch per pass instead
        of ~1,000 (``pipelines/cuda_graphs.py``). Frames are bitwise those of eager generation;
        the first steady chunk captures. Works with :meth:`compile_blocks`. Only on CUDA (a CPU
        run ignores it) unless ``emulate=True``, which exercises the same buffers on any device
        by re-running the pass (tests). Returns self."""
        from .cuda_graphs import PassGraphs

        self._pass_graphs = PassGraphs(self.transformer, emulate=emulate)
        return self

    def disable_cuda_graphs(self) -> VidHashPipeline:
        """Back to eager passes (drops the captured graphs). Returns self."""
        self._pass_graphs = None
        return self

    @property
    def pass_graphs(self):
        """The :class:`~vidhash.pipelines.cuda_graphs.PassGraphs` of :meth:`enable_cuda_graphs`
        (None when off): its ``time_replays`` / ``replay_ms`` time the replays on the GPU."""
        return getattr(self, "_pass_graphs", None)

    @property
    def cuda_graph_stats(self) -> dict | None:
        """``{"captures", "replays", "eager_passes", "failed"}`` since :meth:`enable_cuda_graphs`
        (None when off): replays count passes run from a graph, eager_passes the rest."""
        graphs = getattr(self, "_pass_graphs", None)
        return None if graphs is None else graphs.stats()

    # ------------------------------------------------------------------ properties for callbacks
    @property
    def interrupt(self) -> bool:
        """True once a callback set ``pipe._interrupt = True`` (generation stops after the step)."""
        return self._interrupt

    @property
    def guidance_scale(self) -> float | None:
        """The context guidance scale of the current (or last) call, resolved (1 = off)."""
        return self._guidance_scale

    @property
    def chunk_index(self) -> int:
        """Chunk being denoised (0-based, within this clip of this call)."""
        return self._chunk_index

    @property
    def clip_index(self) -> int:
        """Clip of the batch being generated (0-based; clips run one after another)."""
        return self._clip_index

    @property
    def steps_per_chunk(self) -> int:
        """Denoising steps of each chunk (the scheduler's timesteps for ``num_inference_steps``)."""
        return self._steps_per_chunk

    @property
    def committing(self) -> bool:
        """True while a chunk's commit (window push, memory write, counters) is under way; a state
        taken from a generation stopped there is inconsistent."""
        return getattr(self, "_committing", False)

    @property
    def num_timesteps(self) -> int:
        """Denoising steps of the whole call (clips × chunks × :attr:`steps_per_chunk`): the
        callback's ``step`` runs from 0 to this − 1."""
        return self._num_timesteps

    # ------------------------------------------------------------------ settings and state
    def resolve_settings(self, state: VidHashState | None = None, memory: MemorySettings | dict | None = None,
                         **given: Any) -> GenerationConfig:
        """The settings of a call: each argument ``given`` that is not None (``height``, ``width``,
        ``chunk_frames``, ``window_frames``, ``num_inference_steps``, ``action_step``,
        ``guidance_scale``, ``guidance_steps``), else — continuing ``state`` — the state's frame
        size, window and memory mode and size, else :attr:`generation_config`'s. ``memory``: a
        ``MemorySettings``, or a dict of its fields over the resolved ones (``{"top_k": 8}``).
        Checked on construction (ValueError naming the key)."""
        if state is not None and not isinstance(state, VidHashState):
            raise TypeError(f"state must be a VidHashState or None, got {type(state).__name__}")
        base = self.generation_config
        unknown = set(given) - {f.name for f in dataclasses.fields(GenerationConfig)} - {"memory"}
        if unknown:
            raise TypeError(f"resolve_settings got unknown settings {sorted(unknown)}")
        values = {k: v for k, v in given.items() if v is not None}
        mem = base.memory
        if state is not None:
            values = {"height": state.config["height"], "width": state.config["width"],
                      "window_frames": state.config["window_frames"], **values}
            mem = MemorySettings.of(state.mode, state.memory_size, base.memory)
        if isinstance(memory, dict):
            mem = mem.replace(memory)
        elif isinstance(memory, MemorySettings):
            mem = memory
        elif memory is not None:
            raise ValueError(f"memory must be MemorySettings or a dict of its fields, got {type(memory).__name__}")
        return dataclasses.replace(base, memory=mem, **values)

    def init_state(self, height: int | None = None, width: int | None = None, window_frames: int | None = None,
                   memory: MemorySettings | dict | None = None, generator: torch.Generator | None = None) -> VidHashState:
        """A fresh state for this transformer (empty window and memories); settings left None
        are :attr:`generation_config`'s."""
        settings = self.resolve_settings(height=height, width=width, window_frames=window_frames, memory=memory)
        self.transformer.tokens_per_frame(settings.height, settings.width)
        config = VidHashState.config_for(self.transformer, settings.height, settings.width,
                                         settings.window_frames, settings.memory.mode, settings.memory, 1,
                                         self.transformer.dtype)
        return VidHashState(config, generator=_cpu_generator(generator), device=self.transformer.device)

    # ------------------------------------------------------------------ checks
    def check_inputs(self, num_frames, settings: GenerationConfig, fps, actions, poses, output_type, state,
                     callback_on_step_end_tensor_inputs, context_frames=None, context_poses=None, context_actions=None,
                     latents=None, batch_size: int = 1, trajectory_seed=None, callback_on_step_end=None):
        """Every argument that can be checked before work starts (``settings``, from
        :meth:`resolve_settings`, checked themselves; the scheduler, :func:`check_scheduler`);
        ValueError naming the problem. Returns ``(action ids, poses, frame prompt)``."""
        if not isinstance(num_frames, (int, np.integer)) or isinstance(num_frames, bool) or num_frames <= 0:
            raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
        check_scheduler(self.scheduler, settings.num_inference_steps)
        height, width = settings.height, settings.width
        self.transformer.tokens_per_frame(height, width)
        if fps is not None and (not isinstance(fps, (int, float, np.integer, np.floating)) or isinstance(fps, bool)
                                or not np.isfinite(fps) or fps <= 0):
            raise ValueError(f"fps must be a positive finite number, got {fps!r}")
        if callback_on_step_end is not None and not callable(callback_on_step_end):
            raise ValueError(f"callback_on_step_end must be callable, got {type(callback_on_step_end).__name__}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if trajectory_seed is not None and (not isinstance(trajectory_seed, (int, np.integer)) or isinstance(trajectory_seed, bool)
                                            or not 0 <= trajectory_seed < 2**63):
            raise ValueError(f"trajectory_seed must be None or an int in [0, 2**63), got {trajectory_seed!r}")
        ids, poses = _check_path(actions, poses, num_frames, "actions", "poses", "frames", "num_frames")
        if state is not None:
            want = VidHashState.config_for(self.transformer, height, width, settings.window_frames,
                                           settings.memory.mode, settings.memory, 1, self.transformer.dtype)
            VidHashState.check_config(state.config, want)  # the weights' digest too
        bad = [k for k in callback_on_step_end_tensor_inputs or [] if k not in self._callback_tensor_inputs]
        if bad:
            raise ValueError(f"callback_on_step_end_tensor_inputs {bad} not in {self._callback_tensor_inputs}")
        self._check_latents(latents, num_frames, settings, batch_size)
        context = self._check_context(context_frames, context_poses, context_actions, height, width)
        return ids, poses, context

    def _check_latents(self, latents, num_frames: int, settings: GenerationConfig, batch_size: int) -> None:
        """``latents``: None or a float tensor ``(batch_size, n, channels, height, width)``, ``n`` ≤
        ``num_frames`` whole chunks (or ``num_frames``), finite. ValueError naming the problem."""
        if latents is None:
            return
        if not isinstance(latents, torch.Tensor) or not latents.is_floating_point():
            raise ValueError(f"latents must be a float torch.Tensor, got {getattr(latents, 'dtype', type(latents).__name__)}")
        n = latents.shape[1] if latents.ndim == 5 else 0
        want = (batch_size, n, self.transformer.config.in_channels, settings.height, settings.width)
        if latents.ndim != 5 or tuple(latents.shape) != want or n == 0:
            raise ValueError(f"latents must have shape (batch, frames, channels, height, width) = "
                             f"({batch_size}, n, {want[2]}, {want[3]}, {want[4]}), got {tuple(latents.shape)}")
        if n > num_frames or (n % settings.chunk_frames and n != num_frames):
            raise ValueError(f"latents must cover whole chunks of the first frames: {n} frames is not a multiple of "
                             f"chunk_frames ({settings.chunk_frames}) up to num_frames ({num_frames}), nor num_frames")
        if not torch.isfinite(latents).all():
            raise ValueError("latents contain NaN or infinity")

    def _check_context(self, frames, poses, actions, height, width):
        """``(latents (1, F, c, h, w) float32 in [-1, 1] on the CPU, action ids (F,), poses (F, 2) or None)``
        for ``context_frames``; None without them. ValueError naming the problem."""
        if frames is None:
            if poses is not None or actions is not None:
                raise ValueError("context_poses / context_actions given without context_frames")
            return None
        video = _frames_to_tensor(frames)  # (F, c, h, w) float32 in [0, 1]
        n, c = video.shape[0], self.transformer.config.in_channels
        if n == 0:
            raise ValueError("context_frames is empty")
        if video.shape[1] != c:
            raise ValueError(f"context_frames must have {c} channels, got frames of shape {tuple(video.shape[1:])} (c, h, w)")
        video = resize_frames(video, height, width)
        if poses is None and actions is None:
            raise ValueError("context_frames need their camera path: pass context_poses (F, 2) and/or context_actions (F,)")
        ids, poses = _check_path(actions, poses, n, "context_actions", "context_poses", "context_frames", "context frames")
        if ids is None:
            ids = np.full(n, NULL_ACTION, dtype=np.int64)
        return (video * 2 - 1).unsqueeze(0), ids, poses

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    @_document_arguments
    def stream(
        self, num_frames: int = 16, height: int | None = None, width: int | None = None, fps: int | None = 8,
        actions: Sequence[str | int] | None = None, poses: np.ndarray | Sequence[Sequence[float]] | None = None,
        trajectory_seed: int | None = None, chunk_frames: int | None = None, window_frames: int | None = None,
        memory: MemorySettings | dict | None = None, num_inference_steps: int | None = None,
        action_step: int | None = None, generator: torch.Generator | None = None, output_type: str = "np",
        guidance_scale: float | None = None, guidance_steps: int | None = None,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",), state: VidHashState | None = None,
        context_frames: np.ndarray | torch.Tensor | Sequence[Any] | None = None,
        context_poses: np.ndarray | Sequence[Sequence[float]] | None = None,
        context_actions: Sequence[str | int] | None = None,
        latents: torch.Tensor | None = None,
    ) -> Iterator[VidHashPipelineOutput]:
        r"""Generate ``num_frames`` frames of one clip, yielding a ``VidHashPipelineOutput`` per
        finished chunk (``frames`` with a batch axis of 1).

        Every setting left None is the state's (continuing one: frame size, window, memory mode and
        size) or else :attr:`generation_config`'s (:meth:`resolve_settings`).

        {arguments}
        """
        # 1. settings (the arguments, else the state's, else generation_config) and checks, before any work
        settings = self.resolve_settings(
            state, memory, height=height, width=width, chunk_frames=chunk_frames, window_frames=window_frames,
            num_inference_steps=num_inference_steps, action_step=action_step, guidance_scale=guidance_scale,
            guidance_steps=guidance_steps)
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        generator, state = _one_clip(generator, "generator"), _one_clip(state, "state")
        ids, poses, prompt = self.check_inputs(num_frames, settings, fps, actions, poses, output_type, state,
                                               callback_on_step_end_tensor_inputs, context_frames, context_poses,
                                               context_actions, latents, trajectory_seed=trajectory_seed,
                                               callback_on_step_end=callback_on_step_end)
        state = self._start(state, settings, generator)
        size = settings.chunk_frames
        num_chunks, num_prompt = -(-num_frames // size), 0 if prompt is None else prompt[0].shape[1]
        self._begin(settings, num_chunks)
        with self.progress_bar(total=num_chunks + -(-num_prompt // size)) as bar:
            # 2. frame prompt: observed frames committed clean (t = 0), chunk by chunk, as generated frames are
            for start in range(0, num_prompt, size):
                self._commit_prompt(state, settings, prompt, start)
                bar.update()
            # 3. chunks
            for index in range(num_chunks):
                self._chunk_index = index
                c = min(size, num_frames - index * size)
                # 3a. camera path of this chunk (committed to the state only when the chunk is); a chunk
                #     dropped by an interrupt or an exception gives back its generator draws too
                rng = state.generator.get_state()
                try:
                    chunk = self._camera_path(state, settings, ids, poses, index * size, c, trajectory_seed)
                    # 3b. denoise the chunk against window + memory (the given noise, else drawn)
                    out = self._denoise(state, settings, chunk, callback_on_step_end,
                                        callback_on_step_end_tensor_inputs, _chunk_noise(latents, index * size, c))
                except BaseException:
                    state.generator.set_state(rng)
                    raise
                if self.interrupt:  # the state stays at the last finished chunk, generator included
                    state.generator.set_state(rng)
                    return
                # 3c. commit pass on the clean chunk (t = 0): its K/V enter the window, old frames the memory
                self._commit(state, out, chunk, settings.memory)
                bar.update()
                # 3d. the chunk's frames
                yield VidHashPipelineOutput(
                    frames=self._postprocess(out, output_type), state=state, poses=np.asarray(chunk.poses),
                    actions=np.asarray(chunk.ids), frame_start=state.frame_index - c,
                )
        self.maybe_free_model_hooks()

    @_document_arguments
    def __call__(
        self, num_frames: int = 16, height: int | None = None, width: int | None = None, fps: int | None = 8,
        actions: Sequence[str | int] | None = None, poses: np.ndarray | Sequence[Sequence[float]] | None = None,
        trajectory_seed: int | None = None, chunk_frames: int | None = None, window_frames: int | None = None,
        memory: MemorySettings | dict | None = None, num_inference_steps: int | None = None,
        action_step: int | None = None, generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "np", guidance_scale: float | None = None, guidance_steps: int | None = None,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        state: VidHashState | list[VidHashState] | None = None,
        context_frames: np.ndarray | torch.Tensor | Sequence[Any] | None = None,
        context_poses: np.ndarray | Sequence[Sequence[float]] | None = None,
        context_actions: Sequence[str | int] | None = None,
        latents: torch.Tensor | None = None, num_videos_per_prompt: int = 1, return_dict: bool = True,
    ) -> VidHashPipelineOutput | tuple:
        r"""Generate ``num_frames`` frames of each clip and return them all (:meth:`stream` per clip).

        {arguments}
            num_videos_per_prompt: clips made from the same arguments (the batch). A list of
                generators or of states, or ``latents``, give the batch size too; sizes that
                are given must agree. Clips run one after another, each bitwise the call of one
                clip with its generator (and state, and noise), in the memory of one clip. One
                generator serves the clips in turn: each clip draws where the one before stopped
                (clip 0 is the single-clip call's).
            return_dict: False returns the tuple ``(frames, state)``.

        Returns:
            ``VidHashPipelineOutput(frames, state, poses, actions, frame_start)``, or with
            ``return_dict=False`` the tuple ``(frames, state)`` — the frames first (diffusers'
            ``pipe(...)[0]``), then the state that continues the clip (as Stable Diffusion's
            tuple carries its safety flags after the images). With a batch of ``B`` > 1 clips,
            or a list of states, ``state`` is a list of ``B`` states, ``poses`` is
            ``(B, frames, 2)`` and ``actions`` ``(B, frames)``; ``frame_start`` is the first
            clip's. A callback that stops generation returns the chunks finished so far
            (possibly none; with a batch, the clips started so far, each cut to the frames the
            stopped clip finished; every state holds what its clip finished).
        """
        # 1. the batch: one generator, state and noise per clip (checked before any clip runs)
        generators, states = self._batch(num_videos_per_prompt, generator, state, latents)
        arguments = dict(height=height, width=width, fps=fps, actions=actions, poses=poses,
                         trajectory_seed=trajectory_seed, chunk_frames=chunk_frames, window_frames=window_frames,
                         memory=memory, num_inference_steps=num_inference_steps, action_step=action_step,
                         output_type=output_type, guidance_scale=guidance_scale, guidance_steps=guidance_steps,
                         callback_on_step_end=callback_on_step_end,
                         callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
                         context_frames=context_frames, context_poses=context_poses, context_actions=context_actions)
        # 2. the clips, one after another (stream per clip; the callback's step runs on over the batch)
        clips = []
        for b, clip_state in enumerate(states):
            clip_generator = generators[b]
            if clip_generator is _CONTINUE:  # one generator for the batch: where the clip before stopped
                clip_generator = clips[-1]["state"].generator
            noise = None if latents is None else latents[b : b + 1]
            self._call_clip = (b, len(states))
            try:
                chunks = list(self.stream(num_frames, generator=clip_generator, state=clip_state, latents=noise,
                                          **arguments))
            finally:
                self._call_clip = None
            clips.append(_gather_chunks(chunks, output_type, clip_state))
            if self.interrupt:
                break
        # 3. one output: clips stacked on the batch axis
        out = _stack_clips(clips, output_type, per_clip=len(states) > 1 or isinstance(state, (list, tuple)))
        if not return_dict:
            return out.frames, out.state
        return out

    def _batch(self, num_videos_per_prompt, generator, state, latents) -> tuple[list, list]:
        """One generator and one state per clip of a call: the batch size from ``num_videos_per_prompt``
        (when not 1), the lengths of generator and state lists and ``latents``' first axis, which must
        agree; one generator for several clips: ``_CONTINUE`` for the clips after the first."""
        if not isinstance(num_videos_per_prompt, (int, np.integer)) or isinstance(num_videos_per_prompt, bool) \
                or num_videos_per_prompt < 1:
            raise ValueError(f"num_videos_per_prompt must be a positive int, got {num_videos_per_prompt!r}")
        if latents is not None and (not isinstance(latents, torch.Tensor) or latents.ndim != 5):
            raise ValueError(f"latents must be a tensor (batch, frames, channels, height, width), got "
                             f"{tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__}")
        sizes = {"num_videos_per_prompt": int(num_videos_per_prompt)} if num_videos_per_prompt != 1 else {}
        if isinstance(generator, (list, tuple)):
            sizes["generator"] = len(generator)
        if isinstance(state, (list, tuple)):
            sizes["state"] = len(state)
        if latents is not None:
            sizes["latents"] = latents.shape[0]
        if len(set(sizes.values())) > 1:
            raise ValueError(f"the batch sizes disagree: {', '.join(f'{k} {v}' for k, v in sizes.items())}")
        batch = next(iter(sizes.values()), 1)
        if batch == 0:
            raise ValueError(f"an empty batch: {', '.join(f'{k} {v}' for k, v in sizes.items())}")
        if isinstance(generator, (list, tuple)):
            generators = list(generator)
        else:
            generators = [generator] + [_CONTINUE if generator is not None else None] * (batch - 1)
        if isinstance(state, (list, tuple)):
            states = list(state)
        elif state is not None and batch > 1:
            raise ValueError(f"one state continues one clip: pass a list of {batch} states for a batch of {batch}")
        else:
            states = [state] * batch
        bad = [i for i, g in enumerate(generators) if g is not None and g is not _CONTINUE
               and not isinstance(g, torch.Generator)]
        if bad:
            raise TypeError(f"generator[{bad[0]}] must be a torch.Generator or None, got {type(generators[bad[0]]).__name__}")
        bad = [i for i, s in enumerate(states) if s is not None and not isinstance(s, VidHashState)]
        if bad:
            raise TypeError(f"state[{bad[0]}] must be a VidHashState or None, got {type(states[bad[0]]).__name__}")
        for i, s in enumerate(states[1:], 1):
            if s is not None and states[0] is not None and s.config != states[0].config:
                raise ValueError(f"state[{i}] was made for another generation config than state[0] "
                                 f"({config_diff(states[0].config, s.config, 'state[0]', '')})")
            if s is not None and any(s is t for t in states[:i]):
                raise ValueError(f"state[{i}] is state[{[j for j, t in enumerate(states[:i]) if t is s][0]}]: "
                                 "each clip needs its own state")
        return generators, states

    def _begin(self, settings: GenerationConfig, num_chunks: int) -> None:
        """What callbacks read during a clip: no interrupt, chunk 0, the guidance scale, the steps per
        chunk and of the call, the global step of the clip's first denoising step."""
        clip, clips = self._call_clip or (0, 1)
        # the transformer's device and dtype for the clip's chunks: diffusers' ``.device`` / ``.dtype`` walk
        # every parameter (~0.3 ms each on a 2-core CPU), host time between chunks while a GPU waits
        self._place = (self.transformer.device, self.transformer.dtype)
        self.scheduler.set_timesteps(settings.num_inference_steps, device=self._place[0])
        self._schedule = (settings.num_inference_steps, self._place[0], self.scheduler.timesteps)
        graphs = getattr(self, "_pass_graphs", None)
        if graphs is not None:
            graphs.new_call()
        self._steps_per_chunk = len(self.scheduler.timesteps)
        self._interrupt, self._chunk_index, self._committing = False, 0, False
        self._clip_index, self._guidance_scale = clip, settings.guidance_scale
        self._num_timesteps = clips * num_chunks * self._steps_per_chunk
        self._step = clip * num_chunks * self._steps_per_chunk

    # ------------------------------------------------------------------ the steps of stream
    def _new_state(self, settings: GenerationConfig, generator: torch.Generator | None) -> VidHashState:
        self.transformer.tokens_per_frame(settings.height, settings.width)
        config = VidHashState.config_for(self.transformer, settings.height, settings.width,
                                         settings.window_frames, settings.memory.mode, settings.memory, 1,
                                         self.transformer.dtype)
        return VidHashState(config, generator=_cpu_generator(generator), device=self.transformer.device)

    def _start(self, state: VidHashState | None, settings: GenerationConfig,
               generator: torch.Generator | None) -> VidHashState:
        """The state to continue (its generator replaced by ``generator`` when given), or a new one;
        on the transformer's device."""
        if state is None:
            if getattr(self, "_pass_graphs", None) is not None:
                self._pass_graphs.release()  # the last clip's graphs cannot serve a new state: free them first
            state = self._new_state(settings, generator)
        elif generator is not None:
            state.generator = _cpu_generator(generator)
        if state.device != self.transformer.device:
            state.to(self.transformer.device)
        return state

    def _chunk(self, ids: np.ndarray, poses: np.ndarray, trajectory: RandomTrajectory | None = None) -> _Chunk:
        device = self._place[0]
        act = torch.as_tensor(ids, device=device).unsqueeze(0).clamp(max=self.transformer.config.num_actions)
        pos = torch.as_tensor(poses, device=device, dtype=torch.float32).unsqueeze(0)
        return _Chunk(ids, poses, act, pos, trajectory)

    def _camera_path(self, state: VidHashState, settings: GenerationConfig, ids: np.ndarray | None,
                     poses: np.ndarray | None, start: int, c: int, trajectory_seed: int | None) -> _Chunk:
        """Frames ``[start, start + c)`` of the call's path: its actions (poses from them when not
        given), its poses, or the state's random trajectory continued."""
        period = int(self.transformer.config.pos_period)
        if ids is not None:
            chunk_ids = ids[start : start + c]
            chunk_poses = (poses[start : start + c] if poses is not None
                           else integrate_actions(chunk_ids, state.pose, settings.action_step, period))
            return self._chunk(chunk_ids, chunk_poses)
        if poses is not None:
            return self._chunk(np.full(c, NULL_ACTION, dtype=np.int64), poses[start : start + c])
        trajectory = self._trajectory(state, trajectory_seed, settings.action_step, period)
        return self._chunk(*trajectory.take(c), trajectory)

    def _commit_prompt(self, state: VidHashState, settings: GenerationConfig, prompt: tuple, start: int) -> None:
        """Commit prompt frames ``[start, start + chunk_frames)`` clean, as a generated chunk is."""
        frames, ids, poses = prompt
        c = min(settings.chunk_frames, frames.shape[1] - start)
        chunk_ids = ids[start : start + c]
        chunk_poses = (poses[start : start + c] if poses is not None else
                       integrate_actions(chunk_ids, state.pose, settings.action_step, int(self.transformer.config.pos_period)))
        latents = frames[:, start : start + c].to(*self._place)
        self._commit(state, latents, self._chunk(chunk_ids, chunk_poses), settings.memory)
        state.trajectory = None  # a random trajectory restarts from the last observed pose

    def _denoise(self, state: VidHashState, settings: GenerationConfig, chunk: _Chunk, callback, callback_inputs,
                 noise: torch.Tensor | None = None):
        """The chunk's noise (``noise``, else drawn from the state's generator) denoised against window +
        memory; sets the chunk's context, frame inputs and replaying graphs for its commit. Returns the latents."""
        cfg, (device, dtype) = self.transformer.config, self._place
        c = chunk.act.shape[1]
        if noise is None:
            noise = randn_tensor((1, c, cfg.in_channels, settings.height, settings.width), generator=state.generator,
                                 device=torch.device("cpu"), dtype=torch.float32)
        latents = noise.to(device, dtype)
        self._reset_scheduler(settings.num_inference_steps, device)
        timesteps = self.scheduler.timesteps
        step_kwargs = _step_kwargs(self.scheduler, state.generator)
        chunk.context = state.context(settings.memory)
        graphs = self._graphs_for(device)
        if graphs is not None and graphs.begin_chunk(state, chunk.context, c, settings.chunk_frames, chunk.act,
                                                     chunk.pos, latents):
            chunk.graphs = graphs
        else:  # constant over the chunk's passes (denoising steps and commit): built once
            chunk.frame_inputs = self.transformer.frame_inputs(chunk.act, chunk.pos, 1, c, settings.height,
                                                               settings.width, device=device)
        step_t = timesteps.to(dtype).view(-1, 1, 1).expand(-1, 1, c)  # (steps, 1, c), one cast per chunk
        for i, t in enumerate(timesteps):
            if self.interrupt:
                break
            velocity = self._velocity(latents, step_t[i], chunk, i < settings.guided_steps, settings.guidance_scale)
            latents = self.scheduler.step(velocity, t, latents, **step_kwargs, return_dict=False)[0]
            if callback is not None:
                tensors = {"latents": latents}
                outputs = callback(self, self._step, t, {k: tensors[k] for k in callback_inputs}) or {}
                latents = outputs.pop("latents", latents)
            self._step += 1
        return latents

    def _reset_scheduler(self, steps: int, device: torch.device) -> None:
        """The scheduler at the first step of a chunk's schedule. ``set_timesteps`` builds the schedule
        on the device (numpy, then two host-to-device copies, each a synchronize) and resets every
        scheduler's state (a multistep solver's saved outputs, say). FlowMatchEulerDiscreteScheduler
        keeps no state between chunks but its step index: when the schedule ``_begin`` built for the
        clip is still the scheduler's (same steps and device, the same timesteps tensor), only the
        index is reset — the same sigmas, the same frames bit for bit."""
        sched = self.scheduler
        key = getattr(self, "_schedule", None)
        if (type(sched) is FlowMatchEulerDiscreteScheduler and key is not None
                and key[:2] == (steps, device) and sched.timesteps is key[2]):
            sched._step_index = None  # what set_timesteps resets (diffusers 0.3x-0.42)
        else:
            sched.set_timesteps(steps, device=device)
        if hasattr(sched, "set_begin_index"):
            sched.set_begin_index(0)  # no timestep lookup (nonzero + .item(): a device sync) per chunk

    def _velocity(self, latents: torch.Tensor, t: torch.Tensor, chunk: _Chunk, guided: bool, scale: float):
        """One denoising step's velocity; ``guided``: lerped from the pass without window and memory."""
        if chunk.graphs is not None:
            velocity = chunk.graphs.denoise(latents, t)
        else:
            velocity = self.transformer(latents, t, chunk.act, chunk.pos, context=chunk.context,
                                        frame_inputs=chunk.frame_inputs).sample
            self._count_eager(latents.device)
        if guided:  # context guidance: the same chunk with no window and no memory
            if chunk.graphs is not None:
                free = chunk.graphs.free(latents, t)
            else:
                free = self.transformer(latents, t, chunk.act, chunk.pos, frame_inputs=chunk.frame_inputs).sample
                self._count_eager(latents.device)
            velocity = torch.lerp(free, velocity, scale)
        return velocity

    def _commit(self, state: VidHashState, latents: torch.Tensor, chunk: _Chunk, read: MemoryRead) -> None:
        """Clean pass (t = 0) over a finished or observed chunk ``(1, c, ch, h, w)``: its K/V enter the
        window (frames leaving it, the memory); counters, pose and trajectory advance."""
        self._committing = True
        c = latents.shape[1]
        if chunk.graphs is not None:  # a captured commit pass (begin_chunk was called for this chunk)
            kv = chunk.graphs.commit(latents)
        else:
            context = chunk.context if chunk.context is not None else state.context(read)
            zero = torch.zeros(1, c, device=latents.device, dtype=latents.dtype)
            kv = self.transformer(latents, zero, chunk.act, chunk.pos, context=context, return_kv=True,
                                  frame_inputs=chunk.frame_inputs, kv_only=True).kv
            self._count_eager(latents.device)
        state.push(kv, state.frame_index)
        state.frame_index += c
        state.pose = [float(chunk.poses[-1][0]), float(chunk.poses[-1][1])]
        if chunk.trajectory is not None:
            state.trajectory = chunk.trajectory.state_dict()
        self._committing = False

    def _count_eager(self, device: torch.device) -> None:
        graphs = self._graphs_for(device)
        if graphs is not None:
            graphs.count_eager()

    # ------------------------------------------------------------------ helpers
    def _graphs_for(self, device: torch.device):
        """The pass graphs when enabled and usable on ``device`` (CUDA, or emulated), else None."""
        graphs = getattr(self, "_pass_graphs", None)
        if graphs is None or not (graphs.emulate or device.type == "cuda"):
            return None
        return graphs

    @staticmethod
    def _trajectory(state: VidHashState, seed: int | None, step: int, period: int) -> RandomTrajectory:
        if state.trajectory is not None:
            return RandomTrajectory.from_state_dict(state.trajectory)
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,), generator=state.generator))
        start = state.pose if state.frame_index > 0 else None
        return RandomTrajectory(period, step, seed=seed, start=start)

    @staticmethod
    def _postprocess(latents: torch.Tensor, output_type: str):
        if output_type == "latent":
            return latents
        video = (latents.float() / 2 + 0.5).clamp(0, 1)  # (b, f, c, h, w)
        if output_type == "pt":
            return video.cpu()
        array = video.permute(0, 1, 3, 4, 2).cpu().numpy()
        return array if output_type == "np" else pil_frames(array)


_CONTINUE = object()  # a batch's clip draws from the generator where the clip before stopped


def check_scheduler(scheduler, num_inference_steps: int = 4) -> None:
    """ValueError naming the scheduler unless the sampler can drive it. The model predicts the
    flow-matching velocity ``noise − x0`` at ``x_t = (1 − σ) x0 + σ · noise`` and takes the timestep
    ``σ · 1000``; each chunk starts from pure noise (σ = 1) and must end clean (σ = 0). So a scheduler
    qualifies when it reads the model output as a flow (``prediction_type`` absent, as in the
    ``FlowMatch*`` schedulers, or ``"flow_prediction"``) and, after ``set_timesteps``, its
    ``sigmas`` run from ≈ 1 to 0 with ``timesteps`` = ``1000 · sigmas`` (± 1, integer timesteps).
    ``FlowMatchEulerDiscreteScheduler`` (the default), ``FlowMatchHeunDiscreteScheduler`` and
    ``UniPCMultistepScheduler`` / ``DPMSolverMultistepScheduler`` with
    ``prediction_type="flow_prediction", use_flow_sigmas=True`` qualify; a noise-prediction
    scheduler (DDPM, DDIM, Euler, a default UniPC) would run silently into garbage."""
    name, config = type(scheduler).__name__, getattr(scheduler, "config", {})
    prediction = config.get("prediction_type")
    why = None
    if prediction not in (None, "flow_prediction"):
        why = f"it reads the model output as {prediction!r}, not a flow velocity (prediction_type='flow_prediction')"
    else:
        scheduler.set_timesteps(num_inference_steps)
        sigmas, timesteps = getattr(scheduler, "sigmas", None), getattr(scheduler, "timesteps", None)
        if sigmas is None or timesteps is None:
            why = "it has no sigmas"
        else:
            # numpy, not tensor comparisons: no .item() per call (tests/pipelines/test_speed_paths.py counts them)
            sigmas, timesteps = (torch.as_tensor(v).detach().cpu().double().numpy() for v in (sigmas, timesteps))
            if sigmas[0] < 0.99 or sigmas[-1] != 0:
                why = (f"its sigmas run from {float(sigmas[0]):.4g} to {float(sigmas[-1]):.4g}, not from 1 (noise) to 0 "
                       "(clean; final_sigmas_type='zero'?)")
            elif len(timesteps) > len(sigmas) or np.abs(timesteps - 1000 * sigmas[: len(timesteps)]).max() > 1.001:
                why = "its timesteps are not 1000 · sigma (use_flow_sigmas=True, num_train_timesteps=1000?)"
    if why is not None:
        raise ValueError(f"scheduler {name} cannot drive VidHashPipeline: {why}. The model predicts a flow-matching "
                         "velocity at timestep σ · 1000: use FlowMatchEulerDiscreteScheduler, or e.g. "
                         "UniPCMultistepScheduler(prediction_type='flow_prediction', use_flow_sigmas=True)")


def _step_kwargs(scheduler, generator: torch.Generator) -> dict:
    """``generator=`` for ``scheduler.step`` when it takes one (FlowMatchEuler, DPM-Solver), else nothing (UniPC)."""
    return {"generator": generator} if _step_takes_generator(type(scheduler)) else {}


@functools.lru_cache(maxsize=None)
def _step_takes_generator(scheduler_class: type) -> bool:
    return "generator" in inspect.signature(scheduler_class.step).parameters


def _one_clip(value, name: str):
    """``stream``'s generator or state: one, or a list of one (a list of more is ``__call__``'s batch)."""
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise ValueError(f"stream generates one clip: got a list of {len(value)} {name}s (a batch is __call__'s)")
        return value[0]
    return value


def _chunk_noise(latents: torch.Tensor | None, start: int, c: int) -> torch.Tensor | None:
    """The given initial noise of frames ``[start, start + c)``, or None where ``latents`` stops."""
    if latents is None or start >= latents.shape[1]:
        return None
    return latents[:, start : start + c]


def _gather_chunks(chunks: list[VidHashPipelineOutput], output_type: str, state) -> dict:
    """One clip's chunks from ``stream`` as one clip: frames joined on the frame axis (None, or an
    empty list of images, when there are none), poses, actions, the state, the first frame's index."""
    if not chunks:
        frames = [[]] if output_type == "pil" else None
    elif output_type == "np":
        frames = np.concatenate([c.frames for c in chunks], axis=1)
    elif output_type == "pil":
        frames = [sum((c.frames[0] for c in chunks), [])]
    else:  # "pt", "latent"
        frames = torch.cat([c.frames for c in chunks], dim=1)
    state = chunks[-1].state if chunks else state
    return dict(frames=frames, state=state,
                poses=np.concatenate([c.poses for c in chunks]) if chunks else np.zeros((0, 2)),
                actions=np.concatenate([c.actions for c in chunks]) if chunks else np.zeros((0,), np.int64),
                start=chunks[0].frame_start if chunks else (state.frame_index if state is not None else 0))


def _stack_clips(clips: list[dict], output_type: str, per_clip: bool) -> VidHashPipelineOutput:
    """The clips of a call as one output; ``per_clip``: state a list, poses and actions with a batch axis.
    A stopped batch: every clip cut to the frames of the shortest."""
    if len(clips) == 1 and not per_clip:
        one = clips[0]
        return VidHashPipelineOutput(frames=one["frames"], state=one["state"], poses=one["poses"],
                                     actions=one["actions"], frame_start=one["start"])
    n = min(len(c["poses"]) for c in clips)
    if output_type == "pil":
        frames = [c["frames"][0][:n] for c in clips]
    elif n == 0:
        frames = None
    elif output_type == "np":
        frames = np.concatenate([c["frames"][:, :n] for c in clips])
    else:
        frames = torch.cat([c["frames"][:, :n] for c in clips])
    return VidHashPipelineOutput(frames=frames, state=[c["state"] for c in clips],
                                 poses=np.stack([c["poses"][:n] for c in clips]),
                                 actions=np.stack([c["actions"][:n] for c in clips]), frame_start=clips[0]["start"])


def resize_frames(video: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Frames ``(F, c, h, w)`` float in [0, 1] at ``height × width`` (unchanged when they are): stretched,
    not cropped; averaged over areas when neither side grows (``mode="area"``: exact for whole-number
    factors), else bilinear with antialiasing (``align_corners=False``); clamped to [0, 1]."""
    h, w = video.shape[-2:]
    if (h, w) == (height, width):
        return video
    if h == 0 or w == 0:
        raise ValueError(f"context_frames have no pixels ({h}×{w})")
    if h >= height and w >= width:
        out = F.interpolate(video, size=(height, width), mode="area")
    else:
        out = F.interpolate(video, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return out.clamp(0, 1)


def _check_path(actions, poses, n: int, actions_name: str, poses_name: str, frames_name: str, count_name: str):
    """``(action ids or None, poses (n, 2) float64 or None)``: one action and one pose per frame."""
    ids = None
    if actions is not None:
        ids = action_ids(actions)
        if len(ids) != n:
            raise ValueError(f"got {len(ids)} {actions_name} for {n} {frames_name}")
    if poses is not None:
        poses = np.asarray(poses, dtype=np.float64)
        if poses.shape != (n, 2):
            raise ValueError(f"{poses_name} must have shape ({count_name}, 2) = ({n}, 2), got {poses.shape}")
        if not np.isfinite(poses).all():
            raise ValueError(f"{poses_name} contain NaN or infinity")
    return ids, poses


def _frames_to_tensor(frames: Any) -> torch.Tensor:
    """Frames as numpy ``(F, h, w, c)`` / ``(1, F, h, w, c)`` (uint8 or float in [0, 1]), torch
    ``(F, c, h, w)`` / ``(1, F, c, h, w)`` float in [0, 1], or a list of PIL images → float32 ``(F, c, h, w)``."""
    if isinstance(frames, (list, tuple)) and frames and not isinstance(frames[0], (np.ndarray, torch.Tensor)):
        try:
            frames = np.stack([np.asarray(im.convert("RGB")) for im in frames])
        except AttributeError:
            raise ValueError("context_frames as a list must hold PIL images") from None
    if isinstance(frames, torch.Tensor):
        video = frames.detach().cpu()
        if video.ndim == 5 and video.shape[0] == 1:
            video = video[0]
        if video.ndim != 4:
            raise ValueError(f"context_frames tensor must be (frames, channels, height, width), got {tuple(frames.shape)}")
    else:
        try:
            array = np.asarray(frames)
        except ValueError as err:
            raise ValueError(f"context_frames could not be read as an array ({err})") from None
        if array.ndim == 5 and array.shape[0] == 1:
            array = array[0]
        if array.ndim != 4:
            raise ValueError(f"context_frames array must be (frames, height, width, channels), got {array.shape}")
        if array.dtype == np.uint8:
            array = array.astype(np.float32) / 255.0
        elif not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"context_frames must be uint8 or float in [0, 1], got dtype {array.dtype}")
        video = torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2)
    if torch.is_complex(video) or not video.is_floating_point():
        if video.dtype == torch.uint8:
            video = video.float() / 255.0
        else:
            raise ValueError(f"context_frames must be uint8 or float in [0, 1], got dtype {video.dtype}")
    video = video.float()
    if not torch.isfinite(video).all():
        raise ValueError("context_frames contain NaN or infinity")
    if video.numel() and (video.min() < 0 or video.max() > 1):
        raise ValueError(f"context_frames must lie in [0, 1] (float) or be uint8, got values in "
                         f"[{float(video.min()):.3g}, {float(video.max()):.3g}]")
    return video.contiguous()


def _cpu_generator(generator: torch.Generator | None) -> torch.Generator:
    """A CPU generator carrying ``generator``'s stream (copied for CPU, seeded from it otherwise)."""
    out = torch.Generator()
    if generator is None:
        out.seed()
    elif generator.device.type == "cpu":
        out.set_state(generator.get_state())
    else:
        out.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device)))
    return out
