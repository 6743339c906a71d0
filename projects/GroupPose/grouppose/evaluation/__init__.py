"""Keypoint evaluation: COCO (pycocotools via Detectron2) and CrowdPose (xtcocotools)."""

from grouppose.evaluation.build import build_keypoint_evaluator, keypoint_oks_sigmas
from grouppose.evaluation.coco import (
    COCO_KEYPOINT_METRICS,
    KeypointCOCOEvaluator,
    keypoint_ground_truth,
)
from grouppose.evaluation.crowdpose import (
    CROWDPOSE_METRICS,
    CrowdPoseEvaluator,
    crowdpose_keypoint_ap,
)

__all__ = [
    "COCO_KEYPOINT_METRICS",
    "CROWDPOSE_METRICS",
    "CrowdPoseEvaluator",
    "KeypointCOCOEvaluator",
    "build_keypoint_evaluator",
    "crowdpose_keypoint_ap",
    "keypoint_ground_truth",
    "keypoint_oks_sigmas",
]
