"""``WanMiniPipeline``: clips from diffusers' own ``WanTransformer3DModel`` trained in pixel space (wan-mini).

    python -c "from vidhash.pipelines.pipeline_wan_mini import WanMiniPipeline; import torch; \
pipe = WanMiniPipeline.from_pretrained('models/wan-mini'); \
print(pipe(actions=['right'] * 33, num_inference_steps=30, generator=torch.Generator().manual_seed(0)).frames.shape)"

**Why not diffusers' ``WanPipeline``.** It needs a T5 tokenizer and text encoder (``prompt_embeds``
can stand in for them) and a VAE: without one it still assumes the Wan VAE's 4× temporal and 8×
spatial compression (33 frames → 9 latent frames of 32×32) and takes ``in_channels`` as the
latent channels. wan-mini works on pixels, so this pipeline drives the same transformer class with
diffusers' ``FlowMatchEulerDiscreteScheduler`` and no VAE or text encoder.

**Conditioning** (:class:`WanMiniConditioning`, shared with training). The transformer's input is
the noisy clip with conditioning channels concatenated, as Wan 2.1 I2V concatenates its mask and
image latents::

    [ x_σ (3) | context frames (3, zero where none) | context mask (1) | one-hot action (num_actions) ]

and ``encoder_hidden_states`` holds one token per frame: the one-hot action ⊕ sin/cos of the frame
index at ``time_freqs`` frequencies (``text_dim = num_actions + 2·time_freqs``). Wan's own
``text_embedder`` MLP embeds these tokens, so every learned weight lives in the transformer and
``WanTransformer3DModel.from_pretrained(folder/transformer)`` loads the whole model. Both paths,
because Wan's tokens carry no absolute frame index (its 3D rope is relative and cross-attention
has none): through cross-attention alone a frame could not find its own action; the planes give
each frame its action, the tokens give every token the whole trajectory. Action ids are
``vidhash.camera.ACTIONS`` plus ``NULL_ACTION`` (no action: videos, unconditional clips).

**Frame prompts.** ``context_frames`` (the first k frames, clean) enter through the context
channels; the model was trained with such prompts on a share of its clips. They are pasted back
into the output unchanged.

**Prediction.** ``prediction="sample"``: the network outputs the clean clip x̂0 and the pipeline
takes the velocity ``(x_σ − x̂0) / max(σ, sigma_min)``, which is what the scheduler steps with
(``x ← x + (σ_next − σ)·v``); ``"velocity"``: the output is the velocity itself.

Letters: b batch, c channels, f frames, h height, w width, a actions, k context frames.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import WanTransformer3DModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.pipelines.wan.pipeline_output import WanPipelineOutput
from diffusers.schedulers import FlowMatchEulerDiscreteScheduler
from diffusers.utils.torch_utils import randn_tensor
from einops import rearrange

from vidhash.camera import ACTIONS
from vidhash.models.transformer_vidhash import PREDICTIONS  # what the network outputs: the same two as vidhash's model

from .pipeline_output import pil_frames

OUTPUT_TYPES = ("np", "pt", "pil", "latent")


_SHAPE = "actions must be (num_frames,) or (batch, num_frames) names or ids, every row of one length"


def _action_ids(actions, null: int) -> np.ndarray:
    """int64 ids in ``0..null`` of any shape (the caller checks it) from action names, integer ids or a
    mix of both, as a list, numpy array (object arrays too) or tensor (any dtype, whole-number floats
    included); ValueError naming the problem (ragged rows, an unknown name, a non-integer or out-of-range
    id, another type)."""
    if torch.is_tensor(actions):
        t = actions.detach().cpu()
        return _integer_ids((t.double() if t.is_floating_point() else t).numpy(), null)
    if isinstance(actions, (list, tuple)) and actions and all(torch.is_tensor(a) for a in actions):
        try:  # a list of tensors (0-d ids, or rows): numpy cannot take every dtype (bf16)
            return _action_ids(torch.stack([a.detach().cpu() for a in actions]), null)
        except RuntimeError as err:
            raise ValueError(f"{_SHAPE} ({err})") from None
    try:
        arr = np.asarray(actions)
    except (ValueError, TypeError) as err:  # ragged rows
        raise ValueError(f"{_SHAPE} ({err})") from None
    if arr.dtype.kind in "UO":  # names, or names and ids mixed: each element as it was given
        items = np.asarray(actions, dtype=object)
        ids = [_one_id(a, null) for a in items.ravel().tolist()]
        return np.array(ids, dtype=np.int64).reshape(items.shape)
    return _integer_ids(arr, null)


def _one_id(a, null: int) -> int:
    """One action of a names/mixed list: a name of ``ACTIONS`` or an integer id in ``0..null``."""
    if isinstance(a, str):
        if a not in ACTIONS:
            raise ValueError(f"actions: unknown name {a!r}; known: {', '.join(ACTIONS)}")
        return ACTIONS.index(a)
    if isinstance(a, (int, np.integer, float, np.floating)) and not isinstance(a, (bool, np.bool_)):
        if isinstance(a, (float, np.floating)) and not (math.isfinite(a) and a == round(a)):
            raise ValueError(f"actions must be integer ids, got {float(a):.6g}")
        if not 0 <= a <= null:
            raise ValueError(f"actions must be ids in 0..{null} ({null}: no action), got {a!r}")
        return int(a)
    raise ValueError(f"actions must be names or integer ids, got {a!r} ({type(a).__name__})")


def _integer_ids(arr: np.ndarray, null: int) -> np.ndarray:
    """Action ids as int64, in ``0..null``; floats only where whole numbers (a float 0.7 is refused, not
    cut to 0); the range is checked before the cast, so a uint64 or float too large for int64 is named
    as given, not as its wrapped value."""
    if arr.dtype.kind == "b" or arr.dtype.kind not in "iuf":
        raise ValueError(f"actions must be names or integer ids, got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and arr.size and not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
        bad = arr[~(np.isfinite(arr) & (arr == np.round(arr)))].ravel()[0]
        raise ValueError(f"actions must be integer ids, got {float(bad):.6g}")
    if arr.size and (arr.min() < 0 or arr.max() > null):
        lo, hi = (f"{float(x):.6g}" if arr.dtype.kind == "f" else str(x) for x in (arr.min(), arr.max()))
        raise ValueError(f"actions must be ids in 0..{null} ({null}: no action), got {lo}..{hi}")
    return arr.astype(np.int64)


@dataclass(frozen=True)
class WanMiniConditioning:
    """How clips, actions and frame prompts become ``WanTransformer3DModel`` inputs (module docstring).

    Args:
        channels: image channels (3: RGB in [-1, 1]).
        num_actions: action ids 0..num_actions-1 (the world's actions and a null id last).
        time_freqs: frequencies of the frame-index features of each action token.
        action_planes: one-hot action planes in the input channels.
        context_planes: context frames + mask in the input channels (frame prompts).
        prediction: ``"sample"`` (the network outputs x̂0) or ``"velocity"``.
        sigma_min: floor of σ in the ``"sample"`` conversion.
    """

    channels: int = 3
    num_actions: int = len(ACTIONS) + 1
    time_freqs: int = 8
    action_planes: bool = True
    context_planes: bool = True
    prediction: str = "sample"
    sigma_min: float = 0.05

    def __post_init__(self):
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {self.prediction!r}")
        if not 0.0 < self.sigma_min < 1.0:
            raise ValueError(f"sigma_min must be in (0, 1), got {self.sigma_min}")
        if self.channels <= 0 or self.num_actions <= 0 or self.time_freqs < 0:
            raise ValueError(f"channels and num_actions must be positive and time_freqs >= 0, got "
                             f"{self.channels}, {self.num_actions}, {self.time_freqs}")

    @property
    def in_channels(self) -> int:
        """The transformer's ``in_channels``: the clip and its conditioning planes."""
        return (self.channels + (self.channels + 1) * self.context_planes
                + self.num_actions * self.action_planes)

    @property
    def text_dim(self) -> int:
        """The transformer's ``text_dim``: one action token's width."""
        return self.num_actions + 2 * self.time_freqs

    def null_action(self) -> int:
        return self.num_actions - 1

    def action_tokens(self, actions: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``encoder_hidden_states`` (b, f, text_dim) of actions (b, f) int64."""
        onehot = F.one_hot(actions, self.num_actions).to(dtype)
        f = actions.shape[1]
        t = torch.arange(f, device=actions.device, dtype=torch.float64)[:, None]
        omega = (math.pi / 2) * 2.0 ** -torch.arange(self.time_freqs, device=actions.device, dtype=torch.float64)
        phase = t * omega  # periods of 4 .. 4·2^(time_freqs-1) frames
        time = torch.cat([phase.sin(), phase.cos()], dim=-1).to(dtype)
        return torch.cat([onehot, time.expand(actions.shape[0], f, -1)], dim=-1)

    def model_input(self, x_t: torch.Tensor, actions: torch.Tensor, context: torch.Tensor | None = None,
                    context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``hidden_states`` (b, in_channels, f, h, w): ``x_t`` (b, c, f, h, w) with its planes.
        ``context`` (b, c, f, h, w) is read only where ``context_mask`` (b, f) bool is set."""
        b, _, f, h, w = x_t.shape
        parts = [x_t]
        if self.context_planes:
            if context_mask is None:
                context_mask = torch.zeros(b, f, dtype=torch.bool, device=x_t.device)
            m = context_mask.to(x_t.dtype)[:, None, :, None, None]
            ctx = torch.zeros_like(x_t) if context is None else context.to(x_t.dtype) * m
            parts += [ctx, m.expand(b, 1, f, h, w)]
        if self.action_planes:
            onehot = F.one_hot(actions, self.num_actions).to(x_t.dtype)
            parts.append(rearrange(onehot, "b f a -> b a f 1 1").expand(b, self.num_actions, f, h, w))
        return torch.cat(parts, dim=1)

    def velocity(self, out: torch.Tensor, x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The flow velocity (float32) from the network's output; ``sigma`` (b,)."""
        if self.prediction == "velocity":
            return out.float()
        s = sigma.float().clamp(min=self.sigma_min).view(-1, *([1] * (x_t.ndim - 1)))
        return (x_t.float() - out.float()) / s

    def velocity_target(self, x_t: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor,
                        sigma: torch.Tensor) -> torch.Tensor:
        """What :meth:`velocity` should equal: ``noise − x0``; for ``"sample"`` the velocity the true
        x0 gives, ``(x_t − x0) / max(σ, sigma_min)`` (the same above ``sigma_min``)."""
        if self.prediction == "velocity":
            return noise.float() - x0.float()
        s = sigma.float().clamp(min=self.sigma_min).view(-1, *([1] * (x_t.ndim - 1)))
        return (x_t.float() - x0.float()) / s


class WanMiniPipeline(DiffusionPipeline):
    r"""Pixel-space clip generation with a ``WanTransformer3DModel`` (module docstring).

    Components:
        transformer: ``WanTransformer3DModel`` with ``in_channels`` and ``text_dim`` of the conditioning.
        scheduler: ``FlowMatchEulerDiscreteScheduler``.
    The conditioning fields (:class:`WanMiniConditioning`) are pipeline config (``model_index.json``).
    """

    model_cpu_offload_seq = "transformer"
    _callback_tensor_inputs = ["latents"]

    def __init__(self, transformer: WanTransformer3DModel, scheduler: FlowMatchEulerDiscreteScheduler,
                 channels: int = 3, num_actions: int = len(ACTIONS) + 1, time_freqs: int = 8,
                 action_planes: bool = True, context_planes: bool = True, prediction: str = "sample",
                 sigma_min: float = 0.05):
        super().__init__()
        cond = WanMiniConditioning(channels, num_actions, time_freqs, action_planes, context_planes,
                                   prediction, sigma_min)
        tc = transformer.config
        if tc.in_channels != cond.in_channels or tc.text_dim != cond.text_dim or tc.out_channels != channels:
            raise ValueError(f"transformer (in_channels {tc.in_channels}, text_dim {tc.text_dim}, out_channels "
                             f"{tc.out_channels}) does not fit the conditioning (in_channels {cond.in_channels}, "
                             f"text_dim {cond.text_dim}, out_channels {channels})")
        self.register_modules(transformer=transformer, scheduler=scheduler)
        self.register_to_config(channels=channels, num_actions=num_actions, time_freqs=time_freqs,
                                action_planes=action_planes, context_planes=context_planes,
                                prediction=prediction, sigma_min=sigma_min)
        self.conditioning = cond
        self._interrupt, self._num_timesteps = False, 0

    @property
    def num_timesteps(self) -> int:
        """Scheduler steps of the current (or last) call: a callback's ``step`` runs from 0 to this − 1
        (diffusers' cutoff callbacks read it)."""
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        """True once a ``callback_on_step_end`` set ``pipe._interrupt = True``: the remaining steps are
        skipped and the clip is returned as the last step left it."""
        return self._interrupt

    # -- inputs --------------------------------------------------------------------------------
    def _actions(self, ids: np.ndarray | None, batch: int, frames: int) -> torch.Tensor:
        """(b, f) int64 ids on the device from :func:`_action_ids`' ids, (f,) or (b, f); None → the null id."""
        if ids is None:
            return torch.full((batch, frames), self.conditioning.null_action(), dtype=torch.int64,
                              device=self._execution_device)
        ids = ids[None] if ids.ndim == 1 else ids
        if ids.ndim != 2 or ids.shape[1] != frames or ids.shape[0] not in (1, batch):
            raise ValueError(f"actions must be (num_frames,) or (batch, num_frames) = ({batch}, {frames}), "
                             f"got shape {tuple(ids.shape)}")
        return torch.from_numpy(np.broadcast_to(ids, (batch, frames)).copy()).to(self._execution_device)

    def _context(self, frames, batch: int, h: int, w: int) -> torch.Tensor | None:
        """Context frames as (b, c, k, h, w) float32 in [-1, 1], or None.
        Accepts numpy (…, k, h, w, c) uint8 or float in [0, 1], or torch (…, k, c, h, w) in [-1, 1]."""
        if frames is None:
            return None
        c = self.conditioning.channels
        if torch.is_tensor(frames):
            if not frames.is_floating_point():
                raise ValueError(f"context_frames as a tensor must be float in [-1, 1], got dtype {frames.dtype}")
            x = frames.detach().float()
            what, low, high = "a tensor", -1.0, 1.0
        else:
            arr = np.asarray(frames)
            if arr.dtype != np.uint8 and not np.issubdtype(arr.dtype, np.floating):
                raise ValueError(f"context_frames as numpy must be uint8 or float in [0, 1], got dtype {arr.dtype}")
            x = torch.from_numpy(arr.astype(np.float32) / (255.0 if arr.dtype == np.uint8 else 1.0))
            what, low, high = "numpy float", 0.0, 1.0
        if not torch.isfinite(x).all():
            raise ValueError("context_frames contain NaN or infinity")
        if x.numel() and (x.min() < low or x.max() > high):
            raise ValueError(f"context_frames as {what} must lie in [{low:g}, {high:g}], got values in "
                             f"[{float(x.min()):.3g}, {float(x.max()):.3g}]")
        if not torch.is_tensor(frames):
            x = x.movedim(-1, -3) * 2.0 - 1.0
        x = x[None] if x.ndim == 4 else x
        if x.ndim != 5 or x.shape[2:] != (c, h, w) or x.shape[0] not in (1, batch):
            raise ValueError(f"context_frames must be (k, {c}, {h}, {w}) or (batch, k, {c}, {h}, {w}) tensors "
                             f"(or numpy (…, k, {h}, {w}, {c})), got {tuple(x.shape)} after conversion")
        return rearrange(x.expand(batch, *x.shape[1:]), "b k c h w -> b c k h w").to(self._execution_device)

    # -- generation ----------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, actions=None, num_frames: int = 33, height: int = 256, width: int = 256,
                 num_inference_steps: int = 50, generator: torch.Generator | list | None = None,
                 context_frames=None, batch_size: int | None = None, latents: torch.Tensor | None = None,
                 output_type: str = "np", return_dict: bool = True,
                 callback_on_step_end=None, callback_on_step_end_tensor_inputs=("latents",)):
        r"""Generate ``batch_size`` clips of ``num_frames`` frames.

        Args:
            actions: per-frame actions: names (``ACTIONS``) or ids (or a mix), shape (num_frames,) or (batch,
                num_frames), as a list, numpy array or tensor (whole-number floats are ids);
                ``actions[t]`` brought the camera to frame t. None: no action (null id).
            num_frames, height, width: clip size (multiples of the transformer's patch size).
            num_inference_steps: scheduler steps.
            generator: torch generator(s) for the initial noise.
            context_frames: the first k frames, given clean (frame prompts): numpy (…, k, h, w, 3)
                uint8 or float in [0, 1], or torch (…, k, 3, h, w) in [-1, 1]; pasted into the output.
            batch_size: clips (default: the batch of ``actions`` / ``context_frames``, else 1).
            latents: initial noise (b, 3, f, h, w) instead of drawing it.
            output_type: ``"np"`` float32 (b, f, h, w, 3) in [0, 1]; ``"pt"`` float32 (b, f, 3, h, w)
                in [0, 1]; ``"pil"`` a list (clips) of lists (frames) of RGB ``PIL.Image``s, as diffusers'
                video pipelines return them (``diffusers.utils.export_to_video(out.frames[0], ...)``);
                ``"latent"`` the raw clip (b, 3, f, h, w) in [-1, 1].
            callback_on_step_end: ``fn(pipe, step, timestep, callback_kwargs) -> dict`` after each
                scheduler step (or a diffusers ``PipelineCallback`` / ``MultiPipelineCallbacks``);
                ``callback_kwargs`` holds ``callback_on_step_end_tensor_inputs`` (``"latents"``: the clip
                (b, 3, f, h, w) in [-1, 1] after the step), and a ``"latents"`` the callback returns
                replaces it. Setting ``pipe._interrupt = True`` skips the remaining steps.
        Returns:
            ``WanPipelineOutput(frames=...)`` (or a tuple when ``return_dict=False``).
        """
        # 1. check inputs
        cond, tf = self.conditioning, self.transformer
        p_t, p_h, p_w = tf.config.patch_size
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        if callback_on_step_end is not None and not callable(callback_on_step_end):
            raise ValueError(f"callback_on_step_end must be callable, got {type(callback_on_step_end).__name__}")
        bad = [k for k in callback_on_step_end_tensor_inputs or [] if k not in self._callback_tensor_inputs]
        if bad:
            raise ValueError(f"callback_on_step_end_tensor_inputs {bad} not in {self._callback_tensor_inputs}")
        for name, value in (("num_frames", num_frames), ("height", height), ("width", width),
                            ("num_inference_steps", num_inference_steps)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if num_frames <= 0 or num_frames % p_t or height % p_h or width % p_w or height <= 0 or width <= 0:
            raise ValueError(f"num_frames, height, width ({num_frames}, {height}, {width}) must be positive "
                             f"multiples of the patch size {tuple(tf.config.patch_size)}")
        if num_inference_steps <= 0:
            raise ValueError(f"num_inference_steps must be positive, got {num_inference_steps}")
        if batch_size is not None and (not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool)
                                       or batch_size < 1):
            raise ValueError(f"batch_size must be a positive int or None (from actions / context_frames), got {batch_size!r}")
        if actions is not None:  # ids (ValueError for ragged rows, unknown names, bad ids) before np.ndim sees them
            actions = _action_ids(actions, cond.null_action())
        if batch_size is None:
            sizes = [len(actions) for actions in [actions] if actions is not None and np.ndim(actions) == 2]
            if context_frames is not None and np.ndim(context_frames) == 5:
                sizes.append(len(context_frames))
            batch_size = max(sizes, default=1)
        device, dtype = self._execution_device, tf.dtype
        ids = self._actions(actions, batch_size, num_frames)
        ctx = self._context(context_frames, batch_size, height, width)
        k = 0 if ctx is None else ctx.shape[2]
        if k > num_frames:
            raise ValueError(f"context_frames: {k} frames given for a clip of {num_frames}")
        if k and not cond.context_planes:
            raise ValueError("context_frames: this model was trained without context planes")
        mask = torch.zeros(batch_size, num_frames, dtype=torch.bool, device=device)
        mask[:, :k] = True
        context = None
        if k:
            context = torch.zeros(batch_size, cond.channels, num_frames, height, width, device=device)
            context[:, :, :k] = ctx
        # 2. noise and schedule
        shape = (batch_size, cond.channels, num_frames, height, width)
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"got a list of {len(generator)} generators for a batch of {batch_size} clips (one per clip)")
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        elif not torch.isfinite(latents).all():
            raise ValueError("latents contain NaN or infinity")
        latents = latents.to(device, torch.float32)
        tokens = cond.action_tokens(ids, dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        # 3. denoise: the transformer's output → velocity → one Euler step
        self._interrupt, self._num_timesteps = False, len(self.scheduler.timesteps)
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            if self.interrupt:
                continue
            sigma = (t / self.scheduler.config.num_train_timesteps).expand(batch_size)
            hidden = cond.model_input(latents.to(dtype), ids, None if context is None else context.to(dtype), mask)
            out = tf(hidden, timestep=t.expand(batch_size), encoder_hidden_states=tokens, return_dict=False)[0]
            latents = self.scheduler.step(cond.velocity(out, latents, sigma), t, latents, return_dict=False)[0]
            if callback_on_step_end is not None:
                given = {"latents": latents}
                returned = callback_on_step_end(self, i, t, {k: given[k] for k in callback_on_step_end_tensor_inputs})
                latents = (returned or {}).get("latents", latents)
        # 4. frame prompts back in, output
        if k:
            latents[:, :, :k] = ctx
        frames = self._postprocess(latents, output_type)
        self.maybe_free_model_hooks()
        return WanPipelineOutput(frames=frames) if return_dict else (frames,)

    @staticmethod
    def _postprocess(clip: torch.Tensor, output_type: str):
        if output_type == "latent":
            return clip
        video = rearrange(((clip.float() + 1.0) / 2.0).clamp(0.0, 1.0), "b c f h w -> b f c h w")
        if output_type == "pt":
            return video
        array = rearrange(video, "b f c h w -> b f h w c").cpu().numpy()
        return array if output_type == "np" else pil_frames(array)
