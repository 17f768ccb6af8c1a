"""Data: the procedural world, clip datasets (world, folders of mp4), and mp4 in/out.

The camera names (``ACTIONS``, ``RandomTrajectory``, ...) live in :mod:`vidhash.camera`; they are
re-exported here.
"""
from ..camera import ACTIONS, NULL_ACTION, RandomTrajectory, action_ids, integrate_actions, revisits
from .clips import VideoFolderDataset, WorldClipDataset, to_model_frames
from .video import Mp4Writer, partial_path, probe_frames, read_frames
from .world import ProceduralWorld

__all__ = [
    "ACTIONS", "NULL_ACTION", "ProceduralWorld", "RandomTrajectory", "action_ids", "integrate_actions", "revisits",
    "WorldClipDataset", "VideoFolderDataset", "to_model_frames", "Mp4Writer", "partial_path", "probe_frames",
    "read_frames",
]
