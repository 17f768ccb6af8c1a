"""Small synthetic videos with known defects (64×64, 8 s at 8 fps), written once per session."""
import json

import pytest

from vidhash.metrics import CoherenceOptions, measure_coherence
from vidhash.metrics.synthetic import KINDS, synthetic_clip, write_video

SIZE, FPS, SECONDS = 64, 8, 8.0


@pytest.fixture(scope="session")
def clip_paths(tmp_path_factory):
    """kind -> (mp4 path, poses json path) for every synthetic kind."""
    root = tmp_path_factory.mktemp("clips")
    out = {}
    for kind in KINDS:
        frames, poses = synthetic_clip(kind, seconds=SECONDS, fps=FPS, size=SIZE)
        video = write_video(str(root / f"{kind}.mp4"), frames, fps=FPS)
        pose_file = root / f"{kind}.poses.json"
        pose_file.write_text(json.dumps({"poses": poses.tolist(), "fps": FPS}))
        out[kind] = (video, str(pose_file))
    return out


@pytest.fixture(scope="session")
def reports(clip_paths):
    """kind -> coherence report at the clips' own size."""
    opts = CoherenceOptions(size=SIZE, progress=False)
    return {kind: measure_coherence(video, opts) for kind, (video, _) in clip_paths.items()}
