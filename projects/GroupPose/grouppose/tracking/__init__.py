"""Poses over time: identities across video frames (``PoseTracker``), One-Euro smoothing of
keypoints (``KeypointSmoother``), drawing by identity and PoseTrack-style JSON output.

Needs the ``track`` extra (norfair); importing without it names the install command.
"""

from grouppose.tracking.drawing import draw_tracked_poses, track_color
from grouppose.tracking.posetrack_json import PoseTrackJsonWriter
from grouppose.tracking.smoothing import KeypointSmoother, OneEuroFilter
from grouppose.tracking.tracker import PoseTracker, as_pose_arrays

__all__ = [
    "KeypointSmoother", "OneEuroFilter", "PoseTrackJsonWriter", "PoseTracker", "as_pose_arrays",
    "draw_tracked_poses", "track_color",
]
