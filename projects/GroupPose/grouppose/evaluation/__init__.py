"""Keypoint evaluation: COCO (pycocotools via Detectron2) and CrowdPose (xtcocotools); how
closely the inference modes of one model agree (``grouppose.evaluation.inference_modes``)."""

from grouppose.evaluation.build import build_keypoint_evaluator, keypoint_oks_sigmas
from grouppose.evaluation.crowdpose import CROWDPOSE_METRICS, CrowdPoseEvaluator

__all__ = [
    "CROWDPOSE_METRICS",
    "CrowdPoseEvaluator",
    "build_keypoint_evaluator",
    "keypoint_oks_sigmas",
]
