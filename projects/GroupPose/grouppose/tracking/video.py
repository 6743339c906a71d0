"""Tracking in a video: ids per frame, optional smoothing, drawing by id, JSON recording."""

from typing import Optional

import numpy as np
from detectron2.data import Metadata
from detectron2.structures import Instances

from grouppose.tracking.drawing import draw_tracked_poses
from grouppose.tracking.posetrack_json import PoseTrackJsonWriter
from grouppose.tracking.smoothing import KeypointSmoother
from grouppose.tracking.tracker import PoseTracker

__all__ = ["VideoTracking"]


class VideoTracking:
    """What ``demo.py --track [--smooth] [--output-json FILE]`` does to each frame's poses.

    Args:
        metadata: keypoint names and skeleton for drawing and for the JSON.
        fps: the video's frame rate (frame times for smoothing and the JSON).
        smooth: One-Euro smoothing of each track's keypoints (``KeypointSmoother``).
        json_path: where ``close`` writes the tracked poses (``PoseTrackJsonWriter``).
        video_name: the video's name in the JSON.
    """

    def __init__(self, metadata: Metadata, fps: float, smooth: bool = False,
                 json_path: Optional[str] = None, video_name: str = "video"):
        self.metadata = metadata
        self.fps = fps
        self.tracker = PoseTracker()
        self.smoother = KeypointSmoother() if smooth else None
        self.json_path = json_path
        self.writer = PoseTrackJsonWriter(video_name, fps, metadata) if json_path else None
        self._frame = 0

    def __call__(self, frame_bgr: np.ndarray, instances: Instances) -> np.ndarray:
        """Track (and smooth, record) one frame's poses; returns the (H, W, 3) BGR drawing."""
        keypoints = instances.pred_keypoints.numpy().astype(np.float64)
        scores = instances.scores.numpy()
        track_ids = self.tracker.update(keypoints, scores)
        if self.smoother is not None:
            keypoints = self.smoother(keypoints, track_ids, self._frame / self.fps)
        if self.writer is not None:
            self.writer.add_frame(keypoints, scores, track_ids)
        self._frame += 1
        return draw_tracked_poses(frame_bgr, keypoints, track_ids, self.metadata)

    def close(self) -> None:
        """Write the JSON file, if one was asked for."""
        if self.writer is not None:
            self.writer.write(self.json_path)
