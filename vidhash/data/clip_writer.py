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
written (not when generation stopped inside a chunk's commit, and not when no chunk of this run
finished: the state it started from is never written back). Then ``KeyboardInterrupt`` (or the
exception) goes on up.

Safe writes. ``clip.partial.mp4`` is created exclusively (``O_CREAT | O_EXCL | O_NOFOLLOW``) and
locked (``flock``) by an :class:`OutputClaim`, which ``vidhash generate`` takes before the model
loads and which is held until the last rename: a second run on the same ``--out`` fails at once
(ValueError naming the file), and a planted symlink at that name is refused, never followed. Every
other file (poses, config, state) is written to a random temporary name in the same folder
(``mkstemp``) and renamed into place (``os.replace``), which replaces a symlink at the final name
instead of writing through it. The mp4 is renamed last, so the partial name — the lock — stays
taken until every final file is in place. :func:`output_paths` lists every name a run writes
(``vidhash generate`` refuses a ``--save-state`` among them).

It lives in ``vidhash.data`` beside the ``Mp4Writer`` and ``partial_path`` it builds on; it needs no
pipeline import (the pipeline and the state are used through ``_interrupt``, ``committing``,
``frame_index`` and ``save``).
"""
from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: O_EXCL alone guards the name
    fcntl = None

import numpy as np

from vidhash.files import umask

from .video import Mp4Writer, partial_path
from vidhash.camera import ACTIONS


def _stem(path: Path) -> Path:
    return path.with_suffix("")


def _write_json(path: Path, data: dict) -> None:
    """``data`` to ``path`` through a random temporary file in its folder (never through a link)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(data))
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def output_paths(out: str | os.PathLike) -> dict[str, Path]:
    """Every file a clip at ``out`` may write, by role (final and partial names)."""
    out = Path(out)
    part = partial_path(out)
    return {
        "mp4": out, "poses": Path(f"{_stem(out)}.poses.json"), "config": Path(f"{_stem(out)}.config.yaml"),
        "partial mp4": part, "partial poses": Path(f"{_stem(part)}.poses.json"),
        "partial config": Path(f"{_stem(part)}.config.yaml"), "partial state": Path(f"{_stem(part)}.state.pt"),
    }


def same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """The same file (through links too), or the same resolved path when either does not exist."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


class OutputClaim:
    """This run's exclusive claim on a clip's names: ``<stem>.partial.mp4`` created with
    ``O_CREAT | O_EXCL | O_NOFOLLOW`` and locked (``flock``) until :meth:`release`.

        with OutputClaim("clip.mp4") as claim:     # before the model loads
            ...
            with ClipWriter("clip.mp4", ..., claim=claim) as clip:
                ...

    Taking it fails (ValueError naming the file) when another run holds it, when an interrupted
    run left the partial file, or when something else (a symlink) has that name. Leaving the
    ``with`` block before a ClipWriter took it over removes the empty file; a ClipWriter releases
    it after its last rename (or keeps the file, finalised, when stopped)."""

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)
        self.partial = partial_path(self.out)
        self.file = None  # the partial mp4, open for writing (unbuffered: a killed process loses nothing)
        self.used = False  # a ClipWriter wrote into it

    def __enter__(self) -> OutputClaim:
        fd = self._create_locked()
        try:
            self.file = os.fdopen(fd, "wb", buffering=0)
        except BaseException:
            os.close(fd)
            self.partial.unlink(missing_ok=True)
            raise
        return self

    def _create_locked(self) -> int:
        """The partial file, created exclusively and already locked when its name appears: a random
        temporary file, locked, hard-linked to the name (``link`` fails on any existing name, a
        symlink included), so another run never sees the name unlocked. Where hard links are not
        supported: ``O_CREAT | O_EXCL | O_NOFOLLOW``, then the lock."""
        if fcntl is not None:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.partial.name}.", suffix=".tmp", dir=self.partial.parent)
            try:
                os.fchmod(fd, 0o666 & ~umask())
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                try:
                    os.link(tmp, self.partial, follow_symlinks=False)
                    return fd
                except FileExistsError:
                    os.close(fd)
                    raise ValueError(self._taken_reason()) from None
                except OSError:  # no hard links here: the plain exclusive create below
                    os.close(fd)
            finally:
                os.unlink(tmp)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.partial, flags, 0o666)
        except FileExistsError:
            raise ValueError(self._taken_reason()) from None
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd

    @staticmethod
    def check(out: str | os.PathLike) -> None:
        """ValueError (the reason taking it would fail) when the claim on ``out`` is taken now."""
        claim = OutputClaim(out)
        if os.path.lexists(claim.partial):
            raise ValueError(claim._taken_reason())

    def _taken_reason(self) -> str:
        p = self.partial
        if p.is_symlink():
            return f"{p} is a symlink; refusing to write through it: remove it or pick another --out"
        if fcntl is not None and p.is_file():
            try:
                fd = os.open(p, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
            except OSError:
                fd = None
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    return f"{p} is being written by another vidhash run on {self.out}; wait for it or pick another --out"
                finally:
                    os.close(fd)
        return f"{p} exists (an interrupted earlier run); move it away or pick another --out"

    def release(self, keep: bool) -> None:
        """Unlock and close; ``keep=False`` removes the partial file if it is still this run's."""
        if self.file is None:
            return
        try:
            if not keep:
                mine = os.fstat(self.file.fileno())
                try:
                    there = os.lstat(self.partial)
                    if (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino):
                        self.partial.unlink()
                except FileNotFoundError:
                    pass
        finally:
            self.file.close()  # closing drops the flock
            self.file = None

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.used:  # no ClipWriter took it over: nothing was written
            self.release(keep=False)


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
        claim: the :class:`OutputClaim` on ``out`` taken earlier (before the model loaded); None:
            taken on entering.
    """

    def __init__(self, out: str | os.PathLike, fps: int, config, state=None, save_state: str | None = None,
                 info: dict | None = None, pipeline=None, claim: OutputClaim | None = None):
        self.out, self.fps, self.config, self.pipeline = Path(out), fps, config, pipeline
        names = output_paths(self.out)
        self.partial = names["partial mp4"]
        self.config_path, self.poses_path = names["config"], names["poses"]
        self.partial_config, self.partial_poses = names["partial config"], names["partial poses"]
        self.partial_state = names["partial state"]
        if claim is not None and (claim.file is None or claim.out != self.out):
            raise ValueError(f"the output claim passed for {self.out} is not a held claim on it")
        self._claim = claim
        self.save_state = save_state
        self.start_frame = state.frame_index if state is not None else 0
        self.info = dict(info or {})
        self.interrupted: list[int] = []  # signals received
        self._state = state
        self._advanced = False  # a chunk of this run reached the state (until then it is the --resume file's)
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

        if self._claim is None:
            self._claim = OutputClaim(self.out).__enter__()
        self._claim.used = True
        try:
            save_config(self.config, self.partial_config)
            self._mp4 = Mp4Writer(self.out, fps=self.fps, file=self._claim.file)
        except BaseException:
            self._claim.release(keep=False)
            raise
        if self.pipeline is not None and threading.current_thread() is threading.main_thread():
            self._handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def write(self, frames: np.ndarray, poses, actions, state=None) -> None:
        """Append uint8 frames ``(T, H, W, 3)`` with their poses ``(T, 2)`` and action ids ``(T,)``;
        ``state``: the generation state after these frames (None for given frames)."""
        self._pending = (frames, poses, actions, self._mp4.frames_written)
        if state is not None:
            self._state, self._advanced = state, True
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
            try:
                self._finish()
            finally:
                self._claim.release(keep=True)
            return
        try:
            self._stop()
        finally:
            self._claim.release(keep=self._mp4.frames_written > 0)
        if exc_type is None:  # the pipeline stopped early on a first signal
            raise KeyboardInterrupt

    def _finish(self) -> None:
        """Done: finalise the mp4, write every other file under its final name, then rename the mp4
        (last: until then its partial name keeps other runs off ``out``)."""
        self._mp4.abort()  # finalised, still under the partial name
        _write_json(self.poses_path, self._record())
        os.replace(self.partial_config, self.config_path)
        if self.save_state and self._state is not None:
            self._state.save(self.save_state)
        os.replace(self.partial, self.out)
        self._mp4.finished = self.out

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
        if self._mp4.frames_written:
            msg = f"stopped: {self._mp4.frames_written} frames in {mp4} (playable)"
        else:  # the (empty) partial mp4 is removed on release
            msg = f"stopped before the first frame was written (no {mp4} kept)"
        if self._state is not None and not self._advanced:  # the state given (--resume) is unchanged: not re-saved
            msg += "; state unchanged (continue from the state this run started from)"
        elif self._state is not None:
            consistent = not broken and self._state.frame_index == self.start_frame + self._mp4.frames_written
            state_path = Path(self.save_state) if self.save_state else self.partial_state
            if consistent:
                self._state.save(state_path)
                msg += f"; state saved to {state_path} (continue with --resume {state_path})"
            else:
                msg += "; state not saved (stopped inside a chunk commit; it would not match the file)"
        print(msg, file=sys.stderr)
