"""Drawing tracked poses: each track id in its own colour, with its number."""

import colorsys
from typing import Sequence, Tuple

import cv2
import numpy as np
from detectron2.data import Metadata

__all__ = ["draw_tracked_poses", "track_color"]

# Keypoints scored at or below this are not drawn (Detectron2's Visualizer uses the same).
KEYPOINT_THRESHOLD = 0.05
_GOLDEN_RATIO = 0.618033988749895
_UNTRACKED_COLOR = (160, 160, 160)


def track_color(track_id: int) -> Tuple[int, int, int]:
    """A BGR colour for a track id; consecutive ids get hues far apart (golden-ratio steps)."""
    if track_id < 0:
        return _UNTRACKED_COLOR
    red, green, blue = colorsys.hsv_to_rgb((track_id * _GOLDEN_RATIO) % 1.0, 0.85, 1.0)
    return int(blue * 255), int(green * 255), int(red * 255)


def _skeleton(metadata: Metadata) -> Sequence[Tuple[int, int]]:
    """Index pairs of the joined keypoints in ``metadata`` (none when it has no names)."""
    names = list(metadata.get("keypoint_names", ()))
    index = {name: i for i, name in enumerate(names)}
    return [(index[a], index[b]) for a, b, _ in metadata.get("keypoint_connection_rules", ())
            if a in index and b in index]


def draw_tracked_poses(image_bgr: np.ndarray, keypoints: np.ndarray, track_ids: np.ndarray,
                       metadata: Metadata) -> np.ndarray:
    """Skeletons and keypoints in each track's colour, its id written above the pose, on a copy
    of the image. Untracked poses (id -1) are grey and unnumbered.

    Args:
        image_bgr: (H, W, 3) uint8; keypoints: (n, K, 3) x, y, score; track_ids: (n,).

    Returns:
        (H, W, 3) uint8 BGR.
    """
    drawn = np.ascontiguousarray(image_bgr.copy())
    thickness = max(1, round(max(drawn.shape[:2]) / 400))
    skeleton = _skeleton(metadata)
    for pose, track_id in zip(np.asarray(keypoints), np.asarray(track_ids).tolist()):
        color = track_color(track_id)
        shown = pose[:, 2] > KEYPOINT_THRESHOLD
        points = np.round(pose[:, :2]).astype(int)
        for a, b in skeleton:
            if shown[a] and shown[b]:
                cv2.line(drawn, tuple(points[a]), tuple(points[b]), color, thickness, cv2.LINE_AA)
        for point in points[shown]:
            cv2.circle(drawn, tuple(point), thickness + 1, color, -1, cv2.LINE_AA)
        if track_id >= 0 and shown.any():
            x, y = points[shown, 0].min(), points[shown, 1].min()
            cv2.putText(drawn, str(track_id), (int(x), max(int(y) - 4, 12)),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thickness + 0.1, color, thickness,
                        cv2.LINE_AA)
    return drawn
