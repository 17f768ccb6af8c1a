"""The files of one clip generated chunk by chunk: :class:`ClipWriter`.

    with ClipWriter("clip.mp4", fps=8, config=cfg, state=None, pipeline=pipe) as clip:
        clip.write(prompt_frames, prompt_poses, prompt_actions)        # given frames: no state
        for chunk in pipe.stream(num_frames, ...):
            clip.write(to_uint8(chunk.frames[0]), chunk.poses, chunk.actions, state=chunk.state)
    # done: clip.mp4, clip.poses.json, clip.config.yaml (+ the state at save_state)

Files, next to ``clip.mp4`` (``vidhash generate`` documents them):

* ``clip.mp4`` — H.264, encoded as chunks arrive (:class:`vidhash.data.video.Mp4Writer`; fragmented,
  so even a killed process leaves a playable file);
* ``clip.poses.json`` — ``{"fps", "start_frame", "poses": [[x, y], ...], "actions": [name, ...], **info}``;
* ``clip.config.yaml`` — the resolved run config (:func:`vidhash.config.save_config`);
* the last state, at ``save_state`` when given.

While the clip is being made every file is named ``clip.partial.*``; only a clean exit moves them
to the final names, so a file named ``clip.mp4`` is always complete. On an exception, or when a
first Ctrl-C / SIGTERM stopped generation (it sets ``pipeline._interrupt``: the pipeline stops after
the current step; a second one raises ``KeyboardInterrupt`` at once), the exit writes what a later
``--resume`` needs: a chunk already committed to the state but not fully in the file is written
first, ``clip.partial.mp4`` is finalised (playable), the poses go to ``clip.partial.poses.json`` and
the last state is saved — to ``save_state`` or ``clip.partial.state.pt`` — if it matches the frames
written (not when generation stopped inside a chunk's commit). Then ``KeyboardInterrupt`` (or the
exception) goes on up.

It lives in ``vidhash.data`` beside the ``Mp4Writer`` and ``partial_path`` it builds on; it needs no
pipeline import (the pipeline and the state are used through ``_interrupt``, ``committing``,
``frame_index`` and ``save``).
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path

import numpy as np

from .video import Mp4Writer, partial_path
from .world import ACTIONS


def _stem(path: Path) -> Path:
    return path.with_suffix("")


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def action_names(ids) -> list[str | None]:
    """Action ids → names (None for the null action and anything else out of range)."""
    return [ACTIONS[i] if 0 <= i < len(ACTIONS) else None for i in np.asarray(ids).tolist()]


class ClipWriter:
    """Context manager owning the output files of one generated clip (module docstring).

    Args:
        out: the final ``.mp4`` path (checked by the caller: folder exists and is writable).
        fps: frames per second.
        config: the resolved run config, saved at once as ``<stem>.partial.config.yaml``.
        state: the state generation continues from (``--resume``), or None; its ``frame_index`` is
            the poses file's ``start_frame``.
        save_state: where the last state goes at the end and on interrupt (None: only on interrupt,
            to ``<stem>.partial.state.pt``).
        info: extra keys of the poses file (``prompt_world``, ``prompt_frames``).
        pipeline: the pipeline making the frames (Ctrl-C / SIGTERM stop it after the current step);
            None: signals keep their handlers.
    """

    def __init__(self, out: str | os.PathLike, fps: int, config, state=None, save_state: str | None = None,
                 info: dict | None = None, pipeline=None):
        self.out, self.fps, self.config, self.pipeline = Path(out), fps, config, pipeline
        self.partial = partial_path(self.out)
        self.config_path, self.poses_path = Path(f"{_stem(self.out)}.config.yaml"), Path(f"{_stem(self.out)}.poses.json")
        self.partial_config = Path(f"{_stem(self.partial)}.config.yaml")
        self.partial_poses = Path(f"{_stem(self.partial)}.poses.json")
        self.save_state = save_state
        self.start_frame = state.frame_index if state is not None else 0
        self.info = dict(info or {})
        self.interrupted: list[int] = []  # signals received
        self._state = state
        self._poses: list[list[float]] = []
        self._names: list[str | None] = []
        self._pending = None  # (frames, poses, actions, frames written before) of the write under way
        self._handlers: dict = {}
        self._mp4: Mp4Writer | None = None

    @property
    def frames_written(self) -> int:
        return self._mp4.frames_written

    # ------------------------------------------------------------------ writing

    def __enter__(self) -> ClipWriter:
        from vidhash.config import save_config

        save_config(self.config, self.partial_config)
        self._mp4 = Mp4Writer(self.out, fps=self.fps)
        if self.pipeline is not None and threading.current_thread() is threading.main_thread():
            self._handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def write(self, frames: np.ndarray, poses, actions, state=None) -> None:
        """Append uint8 frames ``(T, H, W, 3)`` with their poses ``(T, 2)`` and action ids ``(T,)``;
        ``state``: the generation state after these frames (None for given frames)."""
        self._pending = (frames, poses, actions, self._mp4.frames_written)
        if state is not None:
            self._state = state
        self._mp4.write(frames)
        self._poses.extend(np.asarray(poses).tolist())
        self._names.extend(action_names(actions))
        self._pending = None

    def _on_signal(self, signum, frame) -> None:  # first Ctrl-C / SIGTERM: finish cleanly at the next step
        if self.interrupted:
            raise KeyboardInterrupt
        self.interrupted.append(signum)
        self.pipeline._interrupt = True
        print("\nstopping after the current step (Ctrl-C again to stop at once)", file=sys.stderr)

    def _restore_signals(self) -> None:
        for s, h in self._handlers.items():
            signal.signal(s, h)
        self._handlers = {}

    def _record(self) -> dict:
        return {"fps": self.fps, "start_frame": self.start_frame, "poses": self._poses, "actions": self._names,
                **self.info}

    # ------------------------------------------------------------------ the end

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and not self.interrupted:
            self._restore_signals()
            self._finish()
            return
        self._stop()
        if exc_type is None:  # the pipeline stopped early on a first signal
            raise KeyboardInterrupt

    def _finish(self) -> None:
        """Done: finalise the mp4 and move every file to its final name."""
        self._mp4.close()
        _write_json(self.poses_path, self._record())
        os.replace(self.partial_config, self.config_path)
        if self.save_state and self._state is not None:
            self._state.save(self.save_state)

    def _stop(self) -> None:
        """Interrupted or crashed: keep every finished frame in a playable ``.partial.mp4``, save the
        state if it matches the file (it does unless generation stopped inside a chunk's commit)."""
        broken = self.pipeline is not None and self.pipeline.committing
        if self._pending is not None:  # a chunk committed to the state but not (fully) written: write the rest
            frames, poses, actions, before = self._pending
            done = self._mp4.frames_written - before
            del self._poses[before:], self._names[before:]
            try:
                self._mp4.write(frames[done:])
                self._poses.extend(np.asarray(poses).tolist())
                self._names.extend(action_names(actions))
            except BaseException:
                broken = True
        self._restore_signals()
        mp4 = self._mp4.abort()
        _write_json(self.partial_poses, self._record())
        msg = f"stopped: {self._mp4.frames_written} frames in {mp4} (playable)"
        if self._state is not None:
            consistent = not broken and self._state.frame_index == self.start_frame + self._mp4.frames_written
            state_path = Path(self.save_state) if self.save_state else Path(f"{_stem(self.partial)}.state.pt")
            if consistent:
                self._state.save(state_path)
                msg += f"; state saved to {state_path} (continue with --resume {state_path})"
            else:
                msg += "; state not saved (stopped inside a chunk commit; it would not match the file)"
        print(msg, file=sys.stderr)
