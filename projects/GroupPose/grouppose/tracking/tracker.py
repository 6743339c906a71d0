"""Track identities of poses across video frames.

Association and motion come from norfair (a maintained multi-object tracking library): each
pose is a norfair ``Detection`` of K points; norfair predicts every tracked point with its own
constant-velocity Kalman filter and matches detections to the predictions greedily by a
distance. The distance here is 1 - OKS (object keypoint similarity with the dataset's
per-keypoint sigmas, ``grouppose.modeling.oks``), so two people whose boxes overlap but whose
joints are apart stay apart, where a box IoU would merge them.
"""

from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from grouppose.modeling.oks import as_sigmas, default_oks_sigmas, pairwise_keypoint_similarity

try:
    from norfair import Detection, Tracker
    from norfair.distances import Distance
except ImportError as e:  # the tracker is an optional extra
    raise ImportError(
        "grouppose.tracking.PoseTracker needs norfair: pip install -e '.[track]' "
        "(or `make setup`)"
    ) from e

__all__ = ["PoseTracker", "as_pose_arrays"]

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence]
# Smallest pose area (pixels^2) in the OKS scale: a pose whose keypoints collapse to a point
# still gets a finite tolerance instead of a division by zero.
_MIN_AREA = 1.0


def _to_numpy(values: ArrayLike) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    return np.asarray(values, dtype=np.float64)


def as_pose_arrays(keypoints: ArrayLike, scores: ArrayLike) -> Tuple[np.ndarray, np.ndarray]:
    """One frame's poses as float64 numpy arrays, checked.

    Args:
        keypoints: (n, K, 3) x, y, keypoint score (numpy, torch or nested lists).
        scores: (n,) pose scores.

    Returns:
        (keypoints (n, K, 3), scores (n,)); ValueError naming the bad argument otherwise.
    """
    keypoints, scores = _to_numpy(keypoints), _to_numpy(scores)
    if keypoints.ndim != 3 or keypoints.shape[2] != 3 or keypoints.shape[1] == 0:
        if keypoints.size == 0 and scores.size == 0:  # no pose in this frame
            return np.zeros((0, 0, 3)), np.zeros(0)
        raise ValueError(
            f"keypoints must have shape (n, K, 3) (x, y, score per keypoint), got "
            f"{keypoints.shape}"
        )
    if scores.shape != (keypoints.shape[0],):
        raise ValueError(
            f"scores must have shape (n,) = ({keypoints.shape[0]},) like keypoints, got "
            f"{scores.shape}"
        )
    if not np.isfinite(keypoints).all():
        raise ValueError("keypoints must be finite (found NaN or inf)")
    return keypoints, scores


def _pose_areas(points: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """Area of the box around each pose's visible keypoints, the OKS scale.

    Args:
        points: (n, K, 2); visible: (n, K) bool, at least one True per pose.

    Returns:
        (n,) pixels^2, at least ``_MIN_AREA``.
    """
    low = np.where(visible[..., None], points, np.inf).min(1)
    high = np.where(visible[..., None], points, -np.inf).max(1)
    return np.maximum(np.prod(high - low, axis=1), _MIN_AREA)


class OksDistance(Distance):
    """norfair distance between poses: 1 - OKS of each tracked pose's predicted keypoints
    against each detected pose, over the detection's keypoints scored above the tracker's
    threshold (the detection's ``data[2]``), with the detection's keypoint box area as the
    scale."""

    def __init__(self, sigmas: torch.Tensor):
        self.sigmas = sigmas

    def get_distances(self, objects, candidates) -> np.ndarray:
        """(len(candidates), len(objects)) distances in [0, 1]."""
        if not objects or not candidates:
            return np.ones((len(candidates or ()), len(objects)), dtype=np.float32)
        predicted = np.stack([o.estimate for o in objects])  # (T, K, 2)
        detected = np.stack([c.points for c in candidates])  # (C, K, 2)
        visible = np.stack([c.data[2] for c in candidates])  # (C, K) scored above threshold
        # A pose with no keypoint above the threshold is compared on all of them.
        visible[~visible.any(1)] = True
        similarity = pairwise_keypoint_similarity(
            torch.from_numpy(predicted), torch.from_numpy(detected),
            torch.from_numpy(visible), torch.from_numpy(_pose_areas(detected, visible)),
            self.sigmas.to(torch.float64),
        )  # (T, C)
        return (1.0 - similarity.numpy().T).astype(np.float32)


class PoseTracker:
    """Gives each pose of a video frame a track id that stays with the person across frames.

        tracker = PoseTracker()
        for frame in video:
            poses = predictor(frame)  # GroupPosePredictor or OnnxPosePredictor
            ids = tracker.update(poses.keypoints, poses.scores)  # (n,) int64, -1 = no id yet

    Args:
        sigmas: per-keypoint OKS sigmas; default: the dataset's standard ones for the keypoint
            count of the first frame (COCO for 17, CrowdPose for 14).
        max_missed: frames a person may go undetected and keep their id (the motion model
            carries the pose on meanwhile). A track lives at most as many missed frames as it
            has been seen, so a false pose seen once is forgotten after one frame.
        min_oks: least OKS between a track's predicted pose and a detection to match them.
        min_hits: frames a new person must be seen before getting an id (1: at once; 2 keeps
            one-frame false poses out, at the cost of no id on a person's first frame).
        keypoint_threshold: keypoints scored at or below it are left out of the similarity
            and do not update their Kalman filter (e.g. occluded joints with a per-keypoint
            confidence).
    """

    def __init__(
        self,
        sigmas: Optional[Sequence[float]] = None,
        max_missed: int = 10,
        min_oks: float = 0.2,
        min_hits: int = 2,
        keypoint_threshold: float = 0.0,
    ):
        if max_missed < 1:
            raise ValueError(f"max_missed must be >= 1, got {max_missed}")
        if not 0.0 < min_oks < 1.0:
            raise ValueError(f"min_oks must be in (0, 1), got {min_oks}")
        if not 1 <= min_hits <= max_missed:  # norfair: initialization_delay < hit_counter_max
            raise ValueError(f"min_hits must be in [1, max_missed = {max_missed}], got {min_hits}")
        self._given_sigmas = None if sigmas is None else as_sigmas(sigmas)
        self.max_missed = max_missed
        self.min_oks = min_oks
        self.min_hits = min_hits
        self.keypoint_threshold = keypoint_threshold
        self.reset()

    def reset(self) -> None:
        """Forget every track (e.g. at a scene cut or a new video); ids restart at 1."""
        self._tracker: Optional[Tracker] = None
        self.sigmas = self._given_sigmas  # when None, set from the next first frame's K
        self._frame = 0

    def _build(self, num_keypoints: int) -> Tracker:
        if self.sigmas is None:
            self.sigmas = default_oks_sigmas(num_keypoints)
        if len(self.sigmas) != num_keypoints:
            raise ValueError(
                f"keypoints have K={num_keypoints} keypoints but the tracker's sigmas have "
                f"{len(self.sigmas)}"
            )
        # norfair's hit counter rises by one per frame seen (to hit_counter_max) and falls by
        # one per frame missed; the track ends when it goes below 0.
        tracker = Tracker(
            distance_function="euclidean",  # replaced below
            distance_threshold=1.0 - self.min_oks,
            hit_counter_max=self.max_missed,
            initialization_delay=self.min_hits - 1,
            detection_threshold=self.keypoint_threshold,
            past_detections_length=0,
        )
        # norfair's constructor takes names or scalar (pair by pair) functions only; its public
        # ``distance_function`` attribute takes any ``Distance``, and one OKS matrix per frame
        # makes the whole update ~20x faster for 20 people than 20 x 20 scalar calls.
        tracker.distance_function = OksDistance(self.sigmas)
        return tracker

    def update(self, keypoints: ArrayLike, scores: ArrayLike) -> np.ndarray:
        """Track one frame's poses (call once per frame, also for frames without poses).

        Args:
            keypoints: (n, K, 3) x, y (pixels), keypoint score; numpy or torch.
            scores: (n,) pose scores (kept with the pose; association uses the keypoints).

        Returns:
            (n,) int64 track ids (>= 1), -1 for a pose not given an id (yet).
        """
        keypoints, scores = as_pose_arrays(keypoints, scores)
        self._frame += 1
        if self._tracker is None:
            if len(keypoints) == 0:
                return np.zeros(0, dtype=np.int64)
            self._tracker = self._build(keypoints.shape[1])
        elif len(keypoints) and keypoints.shape[1] != len(self.sigmas):
            raise ValueError(
                f"keypoints have K={keypoints.shape[1]} keypoints, earlier frames had "
                f"{len(self.sigmas)}"
            )
        detections: List[Detection] = []
        for index, pose in enumerate(keypoints):
            visible = pose[:, 2] > self.keypoint_threshold
            # Without scores norfair updates every point's filter on its faster path (the path
            # with scores builds per-point masks in Python: ~10% more per frame).
            detections.append(Detection(
                points=pose[:, :2], scores=None if visible.all() else pose[:, 2],
                data=(self._frame, index, visible),
            ))
        ids = np.full(len(keypoints), -1, dtype=np.int64)
        for track in self._tracker.update(detections):
            frame, index, _ = track.last_detection.data
            if frame == self._frame:  # matched in this frame, not only predicted
                ids[index] = track.id
        return ids
