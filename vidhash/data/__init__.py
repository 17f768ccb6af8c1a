"""Data: the procedural world, clip datasets (world, folders of mp4), and mp4 in/out."""
from .clips import VideoFolderDataset, WorldClipDataset, to_model_frames
from .video import Mp4Writer, partial_path, probe_frames, read_frames
from .world import ACTIONS, NULL_ACTION, ProceduralWorld, RandomTrajectory, action_ids, integrate_actions, revisits

__all__ = [
    "ACTIONS", "NULL_ACTION", "ProceduralWorld", "RandomTrajectory", "action_ids", "integrate_actions", "revisits",
    "WorldClipDataset", "VideoFolderDataset", "to_model_frames", "Mp4Writer", "partial_path", "probe_frames",
    "read_frames",
]
