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
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.schedulers import FlowMatchEulerDiscreteScheduler
from diffusers.utils.torch_utils import randn_tensor

from vidhash.config import GenerationConfig, TemporalMemoryConfig, check_generation, config_diff, generation_config
from vidhash.data.world import NULL_ACTION, RandomTrajectory, action_ids, integrate_actions
from vidhash.models.transformer_vidhash import VidHashTransformer3DModel, random_model

from .pipeline_output import VidHashPipelineOutput
from .state import VidHashState, state_config

OUTPUT_TYPES = ("np", "pt", "pil")


class VidHashPipeline(DiffusionPipeline):
    r"""Chunked long-video generation with a hashed temporal memory.

    Components:
        transformer: ``VidHashTransformer3DModel``.
        scheduler: ``FlowMatchEulerDiscreteScheduler``.
    """

    model_cpu_offload_seq = "transformer"
    _callback_tensor_inputs = ["latents"]

    def __init__(self, transformer: VidHashTransformer3DModel, scheduler: FlowMatchEulerDiscreteScheduler):
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler)

    @classmethod
    def random(cls, preset: str = "tiny", seed: int = 0) -> VidHashPipeline:
        """An untrained pipeline of model size ``preset`` with seeded random weights (smoke tests, benchmarks)."""
        return cls(random_model(preset, seed=seed), FlowMatchEulerDiscreteScheduler())

    @classmethod
    def load(cls, model: str | os.PathLike) -> VidHashPipeline:
        """``random-<preset>`` (an untrained pipeline of that size) or a saved pipeline folder,
        with a clear error for anything else (what the ``--model`` of every command takes)."""
        from vidhash.config import preset_for_model

        model = str(model)
        if model.startswith("random-"):
            return cls.random(preset_for_model(model), seed=0)
        if not (Path(model) / "model_index.json").is_file():
            raise ValueError(f"{model}: not a saved pipeline folder (no model_index.json)")
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
    def cuda_graph_stats(self) -> dict | None:
        """``{"captures", "replays", "eager_passes", "failed"}`` since :meth:`enable_cuda_graphs`
        (None when off): replays count passes run from a graph, eager_passes the rest."""
        graphs = getattr(self, "_pass_graphs", None)
        return None if graphs is None else graphs.stats()

    # ------------------------------------------------------------------ properties for callbacks
    @property
    def interrupt(self) -> bool:
        return self._interrupt

    @property
    def chunk_index(self) -> int:
        """Chunk being denoised (0-based, within this call)."""
        return self._chunk_index

    @property
    def committing(self) -> bool:
        """True while a chunk's commit (window push, memory write, counters) is under way; a state
        taken from a generation stopped there is inconsistent."""
        return getattr(self, "_committing", False)

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    # ------------------------------------------------------------------ state
    def init_state(
        self, height: int | None = None, width: int | None = None, window_frames: int = 8,
        memory: TemporalMemoryConfig | dict | None = None, generator: torch.Generator | None = None,
    ) -> VidHashState:
        """A fresh state for this transformer (empty window and memories)."""
        cfg = self.transformer.config
        height = height or cfg.sample_size
        width = width or cfg.sample_size
        self.transformer.tokens_per_frame(height, width)
        memory = _memory_config(memory)
        config = state_config(cfg, height, width, window_frames, memory, 1, self.transformer.dtype)
        state = VidHashState(config, generator=_cpu_generator(generator), device=self.transformer.device)
        state.top_k, state.mass_cap = memory.top_k, memory.mass_cap
        return state

    # ------------------------------------------------------------------ checks
    def check_inputs(self, num_frames, height, width, fps, actions, poses, chunk_frames, window_frames, memory,
                     num_inference_steps, output_type, state, callback_on_step_end_tensor_inputs,
                     context_frames=None, context_poses=None, context_actions=None, guidance_scale=1.0,
                     guidance_steps=None):
        """Every argument that can be checked before work starts; ValueError naming the problem."""
        if not isinstance(num_frames, (int, np.integer)) or isinstance(num_frames, bool) or num_frames <= 0:
            raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
        self.transformer.tokens_per_frame(height, width)
        if fps is not None and fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        gen = GenerationConfig(height=height, width=width, chunk_frames=chunk_frames, window_frames=window_frames,
                               num_inference_steps=num_inference_steps, memory=memory,
                               guidance_scale=guidance_scale, guidance_steps=guidance_steps)
        check_generation(gen)
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        ids, poses = _check_path(actions, poses, num_frames, "actions", "poses", "frames", "num_frames")
        if state is not None:
            want = state_config(self.transformer.config, height, width, window_frames, memory, 1, self.transformer.dtype)
            if want != state.config:
                diff = config_diff(state.config, want, "state")
                raise ValueError(f"the state was made for another model or generation config ({diff})")
        bad = [k for k in callback_on_step_end_tensor_inputs or [] if k not in self._callback_tensor_inputs]
        if bad:
            raise ValueError(f"callback_on_step_end_tensor_inputs {bad} not in {self._callback_tensor_inputs}")
        context = self._check_context(context_frames, context_poses, context_actions, height, width)
        return ids, poses, context

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
        if video.shape[1:] != (c, height, width):
            raise ValueError(f"context_frames must be {n} frames of {height}×{width} with {c} channels "
                             f"(the generation size), got frames of shape {tuple(video.shape[1:])} (c, h, w)")
        if poses is None and actions is None:
            raise ValueError("context_frames need their camera path: pass context_poses (F, 2) and/or context_actions (F,)")
        ids, poses = _check_path(actions, poses, n, "context_actions", "context_poses", "context_frames", "context frames")
        if ids is None:
            ids = np.full(n, NULL_ACTION, dtype=np.int64)
        return (video * 2 - 1).unsqueeze(0), ids, poses

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def stream(
        self,
        num_frames: int = 16,
        height: int | None = None,
        width: int | None = None,
        fps: int | None = 8,
        actions: Sequence[str | int] | None = None,
        poses: np.ndarray | Sequence[Sequence[float]] | None = None,
        trajectory_seed: int | None = None,
        chunk_frames: int = 4,
        window_frames: int | None = None,
        memory: TemporalMemoryConfig | dict | None = None,
        num_inference_steps: int = 4,
        action_step: int = 4,
        generator: torch.Generator | None = None,
        output_type: str = "np",
        guidance_scale: float = 1.0,
        guidance_steps: int | None = None,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        state: VidHashState | None = None,
        context_frames: np.ndarray | torch.Tensor | Sequence[Any] | None = None,
        context_poses: np.ndarray | Sequence[Sequence[float]] | None = None,
        context_actions: Sequence[str | int] | None = None,
    ) -> Iterator[VidHashPipelineOutput]:
        r"""Generate ``num_frames`` frames, yielding a ``VidHashPipelineOutput`` per finished chunk.

        Args:
            num_frames: frames to generate in this call (> 0).
            height, width: frame size (multiples of the patch size); default ``sample_size``.
            fps: frames per second of the clip (recorded only).
            actions: one action (name or id, see ``vidhash.data.ACTIONS``) per frame; the camera
                pose follows them by ``action_step`` pixels per move.
            poses: one world (x, y) per frame (the camera path itself).
            trajectory_seed: with neither actions nor poses, a seeded random trajectory (that
                wanders and returns) is used; its seed is this or drawn from the generator. A
                state continues its own trajectory.
            chunk_frames: frames denoised together (≤ window_frames unless memory mode is full).
            window_frames: recent frames attended exactly; with a state, the state's.
            memory: ``TemporalMemoryConfig`` (or dict): mode ``hashed`` / ``window`` / ``full``,
                size, read width ``top_k``, read weight ``mass_cap``; with a state, the state's
                (``top_k`` and ``mass_cap`` may differ: read settings).
            num_inference_steps: flow-matching Euler steps per chunk.
            generator: CPU ``torch.Generator`` for all noise (carried in the state); with a
                state, replaces the state's generator.
            output_type: ``"np"``, ``"pt"`` or ``"pil"``.
            guidance_scale: context guidance. A guided step also runs the chunk with no window and
                no memory (the model saw such chunks in training: a clip's first chunk) and steps
                along ``v_free + guidance_scale · (v_context − v_free)``. 1 (default) is off: one
                pass per step. Above 1 the chunk commits harder to what its context implies.
            guidance_steps: guide only the first this many denoising steps of each chunk (where
                the layout is decided); None guides every step.
            callback_on_step_end: ``fn(pipe, step, timestep, callback_kwargs) -> dict`` after each
                denoising step (``pipe.chunk_index`` says which chunk); setting
                ``pipe._interrupt = True`` stops generation: the current chunk is dropped and the
                state stays at the last finished chunk.
            callback_on_step_end_tensor_inputs: tensors passed in ``callback_kwargs``.
            state: a ``VidHashState`` to continue (updated in place); None starts a new clip.
            context_frames: observed frames that come before the generated ones (a frame prompt):
                numpy ``(F, h, w, 3)`` (uint8, or float in [0, 1]; a leading batch axis of 1 is
                allowed — the layout ``output_type="np"`` returns), torch ``(F, 3, h, w)`` float in
                [0, 1] (as ``"pt"``), or a list of ``PIL.Image``; ``h × w`` is the generation size.
                They run clean (t = 0) through the commit pass in chunks of ``chunk_frames`` —
                into the window, then the memory, exactly as generated frames — count in the
                state's frame index, draw no noise, and are not yielded. Works with ``state``
                (observations appended to a clip) and ``stream``.
            context_poses: world (x, y) of each context frame ``(F, 2)``.
            context_actions: one action per context frame; without ``context_poses`` the poses
                follow them from the state's pose. One of the two is required. A random
                trajectory restarts from the last context pose.
        """
        # 1. defaults and checks (all before any work)
        cfg = self.transformer.config
        if state is not None:
            height = height or state.config["height"]
            width = width or state.config["width"]
            window_frames = window_frames or state.config["window_frames"]
            if memory is None:
                memory = TemporalMemoryConfig(**state.config["memory"], top_k=state.top_k, mass_cap=state.mass_cap)
        height, width = height or cfg.sample_size, width or cfg.sample_size
        window_frames = window_frames or generation_config("tiny").window_frames
        memory = _memory_config(memory)
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        ids, poses, prompt = self.check_inputs(num_frames, height, width, fps, actions, poses, chunk_frames,
                                               window_frames, memory, num_inference_steps, output_type, state,
                                               callback_on_step_end_tensor_inputs, context_frames, context_poses,
                                               context_actions, guidance_scale, guidance_steps)
        guided_steps = 0 if guidance_scale == 1 else (num_inference_steps if guidance_steps is None else guidance_steps)
        if state is None:
            if getattr(self, "_pass_graphs", None) is not None:
                self._pass_graphs.release()  # the last clip's graphs cannot serve a new state: free them first
            state = self.init_state(height, width, window_frames, memory, generator)
        elif generator is not None:
            state.generator = _cpu_generator(generator)
        device, dtype = self.transformer.device, self.transformer.dtype
        if state.device != device:
            state.to(device)
        period, n_act = int(cfg.pos_period), cfg.num_actions
        self._interrupt, self._chunk_index, self._committing = False, 0, False

        # 2. frame prompt: observed frames committed clean (t = 0), chunk by chunk, as generated frames are
        num_chunks = -(-num_frames // chunk_frames)
        num_prompt = 0 if prompt is None else prompt[0].shape[1]
        with self.progress_bar(total=num_chunks + -(-num_prompt // chunk_frames)) as bar:
            for start in range(0, num_prompt, chunk_frames):
                c = min(chunk_frames, num_prompt - start)
                chunk_ids = prompt[1][start : start + c]
                chunk_poses = (prompt[2][start : start + c] if prompt[2] is not None
                               else integrate_actions(chunk_ids, state.pose, action_step, period))
                act = torch.as_tensor(chunk_ids, device=device).unsqueeze(0).clamp(max=n_act)
                pos = torch.as_tensor(chunk_poses, device=device, dtype=torch.float32).unsqueeze(0)
                latents = prompt[0][:, start : start + c].to(device, dtype)
                self._commit(state, latents, act, pos, chunk_poses, memory, None)
                state.trajectory = None  # a random trajectory restarts from the last observed pose
                bar.update()

            # 3. chunks
            for chunk in range(num_chunks):
                self._chunk_index = chunk
                start = chunk * chunk_frames
                c = min(chunk_frames, num_frames - start)
                # 3a. camera path of this chunk (committed to the state only when the chunk is)
                trajectory = None
                if ids is not None:
                    chunk_ids = ids[start : start + c]
                    chunk_poses = (poses[start : start + c] if poses is not None
                                   else integrate_actions(chunk_ids, state.pose, action_step, period))
                elif poses is not None:
                    chunk_ids = np.full(c, NULL_ACTION, dtype=np.int64)
                    chunk_poses = poses[start : start + c]
                else:
                    trajectory = self._trajectory(state, trajectory_seed, action_step, period)
                    chunk_ids, chunk_poses = trajectory.take(c)
                act = torch.as_tensor(chunk_ids, device=device).unsqueeze(0).clamp(max=n_act)
                pos = torch.as_tensor(chunk_poses, device=device, dtype=torch.float32).unsqueeze(0)
                # 3b. denoise the chunk against window + memory
                latents = randn_tensor((1, c, cfg.in_channels, height, width), generator=state.generator,
                                       device=torch.device("cpu"), dtype=torch.float32).to(device, dtype)
                self.scheduler.set_timesteps(num_inference_steps, device=device)
                self.scheduler.set_begin_index(0)  # no timestep lookup (nonzero + .item(): a device sync) per chunk
                timesteps = self.scheduler.timesteps
                self._num_timesteps = len(timesteps)
                context = state.context(memory.top_k, memory.mass_cap)
                graphs = self._graphs_for(device)
                replay = graphs is not None and graphs.begin_chunk(state, context, c, chunk_frames, act, pos, latents)
                # constant over the chunk's passes (denoising steps and commit): built once
                frame_inputs = (None if replay else
                                self.transformer.frame_inputs(act, pos, 1, c, height, width, device=device))
                step_t = timesteps.to(dtype).view(-1, 1, 1).expand(-1, 1, c)  # (steps, 1, c), one cast per chunk
                for i, t in enumerate(timesteps):
                    if self.interrupt:
                        break
                    if replay:
                        velocity = graphs.denoise(latents, step_t[i])
                    else:
                        velocity = self.transformer(latents, step_t[i], act, pos, context=context,
                                                    frame_inputs=frame_inputs).sample
                        if graphs is not None:
                            graphs.count_eager()
                    if i < guided_steps:  # context guidance: the same chunk with no window and no memory
                        if replay:
                            free = graphs.free(latents, step_t[i])
                        else:
                            free = self.transformer(latents, step_t[i], act, pos, frame_inputs=frame_inputs).sample
                            if graphs is not None:
                                graphs.count_eager()
                        velocity = torch.lerp(free, velocity, guidance_scale)
                    latents = self.scheduler.step(velocity, t, latents, generator=state.generator,
                                                  return_dict=False)[0]
                    if callback_on_step_end is not None:
                        tensors = {"latents": latents}
                        kwargs = {k: tensors[k] for k in callback_on_step_end_tensor_inputs}
                        outputs = callback_on_step_end(self, i, t, kwargs) or {}
                        latents = outputs.pop("latents", latents)
                if self.interrupt:
                    return
                # 3c. commit pass on the clean chunk (t = 0): its K/V enter the window, old frames the memory
                self._commit(state, latents, act, pos, chunk_poses, memory, trajectory, context, frame_inputs,
                             graphs if replay else None)
                bar.update()
                yield VidHashPipelineOutput(
                    frames=self._postprocess(latents, output_type), state=state, poses=np.asarray(chunk_poses),
                    actions=np.asarray(chunk_ids), frame_start=state.frame_index - c,
                )
        self.maybe_free_model_hooks()

    def __call__(self, num_frames: int = 16, *args, return_dict: bool = True, **kwargs):
        r"""Generate ``num_frames`` frames and return them all (see :meth:`stream` for the arguments).

        Returns ``VidHashPipelineOutput(frames, state, poses, actions)``, or ``(frames, state)``
        with ``return_dict=False``. A callback that stops generation returns the frames of the
        chunks finished so far (possibly none).
        """
        output_type = kwargs.get("output_type", "np")
        chunks = list(self.stream(num_frames, *args, **kwargs))
        state = chunks[-1].state if chunks else kwargs.get("state")
        if output_type == "np":
            frames = np.concatenate([c.frames for c in chunks], axis=1) if chunks else None
        elif output_type == "pt":
            frames = torch.cat([c.frames for c in chunks], dim=1) if chunks else None
        else:
            frames = [sum((c.frames[0] for c in chunks), [])]
        poses = np.concatenate([c.poses for c in chunks]) if chunks else np.zeros((0, 2))
        actions = np.concatenate([c.actions for c in chunks]) if chunks else np.zeros((0,), np.int64)
        start = chunks[0].frame_start if chunks else (state.frame_index if state is not None else 0)
        if not return_dict:
            return frames, state
        return VidHashPipelineOutput(frames=frames, state=state, poses=poses, actions=actions, frame_start=start)

    # ------------------------------------------------------------------ helpers
    def _commit(self, state: VidHashState, latents: torch.Tensor, act: torch.Tensor, pos: torch.Tensor,
                chunk_poses: np.ndarray, memory: TemporalMemoryConfig, trajectory: RandomTrajectory | None,
                context: list | None = None, frame_inputs=None, graphs=None) -> None:
        """Clean pass (t = 0) over a finished or observed chunk ``(1, c, ch, h, w)``: its K/V enter the
        window (frames leaving it, the memory); counters, pose and trajectory advance."""
        self._committing = True
        c = latents.shape[1]
        if context is None:
            context = state.context(memory.top_k, memory.mass_cap)
        if graphs is not None:  # a captured commit pass (begin_chunk was called for this chunk)
            kv = graphs.commit(latents)
        else:
            zero = torch.zeros(1, c, device=latents.device, dtype=latents.dtype)
            kv = self.transformer(latents, zero, act, pos, context=context, return_kv=True,
                                  frame_inputs=frame_inputs).kv
            if self._graphs_for(latents.device) is not None:
                self._pass_graphs.count_eager()
        state.push(kv, state.frame_index)
        state.top_k, state.mass_cap = memory.top_k, memory.mass_cap
        state.frame_index += c
        state.pose = [float(chunk_poses[-1][0]), float(chunk_poses[-1][1])]
        if trajectory is not None:
            state.trajectory = trajectory.state_dict()
        self._committing = False

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
        video = (latents.float() / 2 + 0.5).clamp(0, 1)  # (b, f, c, h, w)
        if output_type == "pt":
            return video.cpu()
        array = video.permute(0, 1, 3, 4, 2).cpu().numpy()
        if output_type == "np":
            return array
        from PIL import Image

        return [[Image.fromarray((f * 255).round().astype(np.uint8)) for f in clip] for clip in array]


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


def _memory_config(memory: TemporalMemoryConfig | dict | None) -> TemporalMemoryConfig:
    if memory is None:
        return generation_config("tiny").memory
    if isinstance(memory, TemporalMemoryConfig):
        return memory
    if isinstance(memory, dict):
        unknown = set(memory) - set(asdict(TemporalMemoryConfig()))
        if unknown:
            raise ValueError(f"unknown memory config keys: {sorted(unknown)}")
        return TemporalMemoryConfig(**{**asdict(generation_config("tiny").memory), **memory})
    raise ValueError(f"memory must be a TemporalMemoryConfig or dict, got {type(memory).__name__}")


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
