"""mp4 in and out through PyAV: a crash-safe streaming H.264 writer and a frame reader.

    python -c "import numpy as np; from vidhash.data.video import Mp4Writer; \
w = Mp4Writer('x.mp4', fps=8); w.write(np.zeros((16, 64, 64, 3), np.uint8)); w.close()"

``Mp4Writer`` never leaves a half-written file under the final name:

* frames go to ``<stem>.partial.mp4`` while the clip is being made;
* ``close()`` finalises the container and renames it to the final name (``os.replace``);
* ``abort()`` (also what leaving a ``with`` block by an exception does) finalises the container
  and keeps the ``.partial.mp4`` name, so an interrupted clip stays playable and is clearly
  marked as incomplete;
* the container is fragmented mp4 (a fragment per keyframe, one keyframe per second), so even a
  process killed outright (SIGKILL, power loss) leaves a ``.partial.mp4`` that plays up to its
  last complete fragment.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np



def _av():
    """PyAV, imported on first use: the procedural world and training need no video library."""
    import av

    return av

def partial_path(path: str | os.PathLike) -> Path:
    """``clip.mp4`` -> ``clip.partial.mp4`` (the name used while writing and after an abort)."""
    path = Path(path)
    return path.with_name(path.stem + ".partial" + path.suffix)


def check_writable(path: str | os.PathLike, flag: str = "output file") -> Path:
    """Raise ValueError naming ``flag`` and the problem if ``path`` cannot be created (before any
    work is done): :func:`vidhash.files.check_output_file`, and an existing file must be writable."""
    from vidhash.files import check_output_file

    path = check_output_file(path, flag)
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{flag} {path} exists and is not writable")
    return path


class Mp4Writer:
    """Stream RGB uint8 frames (T, H, W, 3) into an H.264 mp4 at ``path``.

    Args:
        path: final file name (must end in .mp4).
        fps: frames per second (an integer).
        crf: x264 quality (0 lossless … 51 worst; 18 is visually lossless).
        preset: x264 speed preset.
        file: an open binary file to write the partial mp4 into (its caller created
            ``<stem>.partial.mp4``, e.g. exclusively; it stays open); None: open that name here.
    """

    def __init__(self, path: str | os.PathLike, fps: int, crf: int = 18, preset: str = "veryfast", file=None):
        self.path = check_writable(path)
        if self.path.suffix.lower() != ".mp4":
            raise ValueError(f"output file {self.path} must end in .mp4")
        if int(fps) != fps or fps <= 0:
            raise ValueError(f"fps must be a positive integer, got {fps}")
        self.fps, self.crf, self.preset = int(fps), int(crf), preset
        self.partial = partial_path(self.path)
        self.frames_written = 0
        self.finished: Path | None = None
        self._stream = None
        self._container = _av().open(
            str(self.partial) if file is None else file, mode="w", format="mp4",
            options={"movflags": "frag_keyframe+empty_moov+default_base_moof", "flush_packets": "1"},
        )

    def _open_stream(self, height: int, width: int) -> None:
        if height % 2 or width % 2:
            raise ValueError(f"H.264 (yuv420p) needs even frame sizes, got {height}×{width}")
        stream = self._container.add_stream("libx264", rate=self.fps)
        stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
        stream.gop_size = self.fps  # one keyframe (and so one fragment) per second
        stream.options = {"crf": str(self.crf), "preset": self.preset, "tune": "zerolatency"}
        self._stream = stream

    def write(self, frames: np.ndarray) -> None:
        """Append frames (T, H, W, 3) or one frame (H, W, 3), uint8 RGB."""
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
        if self.finished is not None:
            raise ValueError(f"writer for {self.path} is already closed")
        if self._stream is None:
            self._open_stream(frames.shape[1], frames.shape[2])
        elif frames.shape[1:3] != (self._stream.height, self._stream.width):
            raise ValueError(f"frame size {frames.shape[1:3]} differs from the stream's "
                             f"{(self._stream.height, self._stream.width)}")
        for frame in frames:
            packet_frame = _av().VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            self._container.mux(self._stream.encode(packet_frame))
            self.frames_written += 1

    def _finalise(self) -> None:
        if self._stream is not None:
            self._container.mux(self._stream.encode(None))  # flush the encoder
        self._container.close()

    def close(self) -> Path:
        """Finish the file and move it to its final name; returns that name."""
        if self.finished is None:
            self._finalise()
            os.replace(self.partial, self.path)
            self.finished = self.path
        return self.finished

    def abort(self) -> Path:
        """Finish the file as ``<stem>.partial.mp4`` (playable, clearly incomplete); returns that name."""
        if self.finished is None:
            try:
                self._finalise()
            finally:
                self.finished = self.partial
        return self.finished

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def probe_frames(path: str | os.PathLike) -> int:
    """Number of video frames in a file (decodes when the container does not say)."""
    with _av().open(str(path)) as container:
        stream = container.streams.video[0]
        if stream.frames:
            return int(stream.frames)
        return sum(1 for _ in container.decode(stream))


def read_frames(
    path: str | os.PathLike, start: int = 0, count: int | None = None,
    height: int | None = None, width: int | None = None,
) -> np.ndarray:
    """Frames ``start … start+count`` of a video as uint8 (T, H, W, 3) RGB, resized when height/width given."""
    out = []
    with _av().open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            if i < start:
                continue
            if count is not None and len(out) >= count:
                break
            out.append(frame.to_ndarray(format="rgb24", width=width, height=height))
    if not out:
        h, w = height or 0, width or 0
        return np.zeros((0, h, w, 3), dtype=np.uint8)
    return np.stack(out)
