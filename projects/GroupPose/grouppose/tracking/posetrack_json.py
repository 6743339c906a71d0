"""Tracked poses of a video as JSON close to PoseTrack's (COCO-style images / annotations /
categories, ``track_id`` per annotation); the format is documented in docs/tracking.md."""

import json
import os
from typing import Dict, List

import numpy as np
from detectron2.data import Metadata

__all__ = ["PoseTrackJsonWriter"]


def _category(metadata: Metadata, num_keypoints: int) -> Dict:
    names = list(metadata.get("keypoint_names", ())) or [str(k) for k in range(num_keypoints)]
    index = {name: i + 1 for i, name in enumerate(names)}  # COCO skeletons count from 1
    skeleton = [[index[a], index[b]] for a, b, _ in metadata.get("keypoint_connection_rules", ())
                if a in index and b in index]
    return {"id": 1, "name": "person", "keypoints": names, "skeleton": skeleton}


class PoseTrackJsonWriter:
    """Collects each frame's tracked poses, then writes them as one JSON file.

    Args:
        video: the video's name, recorded in each image's ``file_name`` (``<video>/<frame>``).
        fps: frames per second, for each image's ``time`` (seconds).
        metadata: names the keypoints and the skeleton in ``categories``.
    """

    def __init__(self, video: str, fps: float, metadata: Metadata):
        self.video = video
        self.fps = fps
        self.metadata = metadata
        self.images: List[Dict] = []
        self.annotations: List[Dict] = []
        self._num_keypoints = 0

    def add_frame(self, keypoints: np.ndarray, scores: np.ndarray, track_ids: np.ndarray) -> None:
        """Record the next frame: keypoints (n, K, 3) x, y, score; scores (n,); track_ids (n,)
        (-1 = untracked, written as null)."""
        frame = len(self.images)
        self.images.append({"id": frame, "frame_id": frame, "time": frame / self.fps,
                            "file_name": f"{self.video}/{frame:06d}"})
        for pose, score, track_id in zip(np.asarray(keypoints, dtype=float),
                                         np.asarray(scores, dtype=float).tolist(),
                                         np.asarray(track_ids).tolist()):
            self._num_keypoints = len(pose)
            low, high = pose[:, :2].min(0), pose[:, :2].max(0)
            self.annotations.append({
                "id": len(self.annotations), "image_id": frame, "category_id": 1,
                "track_id": None if track_id < 0 else int(track_id), "score": score,
                "keypoints": np.round(pose, 3).reshape(-1).tolist(),
                "scores": np.round(pose[:, 2], 4).tolist(),
                "bbox": np.round(np.concatenate([low, high - low]), 2).tolist(),
            })

    def write(self, path: str) -> None:
        """Write everything recorded so far to ``path`` (its folder is created)."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        content = {"images": self.images, "annotations": self.annotations,
                   "categories": [_category(self.metadata, self._num_keypoints)]}
        with open(path, "w") as f:
            json.dump(content, f)
