"""Group Pose predictions -> Detectron2 ``Instances`` in output-image pixels."""

import math
from typing import Optional, Tuple

import torch
from detectron2.structures import Boxes, Instances
from torch import Tensor

# The paper's model has no keypoint-visibility head. Like the official implementation (which
# appends a constant visibility logit of 1), every keypoint gets the score sigmoid(1) ~ 0.731,
# unless MODEL.GROUP_POSE.KEYPOINT_CONFIDENCE adds the head (grouppose.modeling.
# keypoint_confidence): then the score is its probability that the keypoint is visible.
KEYPOINT_SCORE = 1.0 / (1.0 + math.exp(-1.0))

# Detectron2 treats keypoint coordinates as continuous, pixel i spanning [i, i + 1): its COCO
# loader adds 0.5 to annotated coordinates and its COCO evaluator subtracts 0.5 from predicted
# ones. The network works in the official implementation's frame (annotated values as they
# are), so that official weights give the official numbers: targets are shifted by -0.5 on the
# way in (GroupPose._targets) and predictions by +0.5 on the way out.
PIXEL_CENTER_OFFSET = 0.5


def keypoints_to_pixels(
    keypoints: Tensor, output_size: Tuple[int, int], keypoint_scores: Optional[Tensor] = None
) -> Tensor:
    """(..., K, 2) xy in [0, 1] of the unpadded input -> (..., K, 3) Detectron2
    ``pred_keypoints``: x, y in pixels of an image of ``output_size`` (height, width), in
    Detectron2's continuous frame, and the per-keypoint score: ``keypoint_scores`` (..., K)
    when given (the confidence head's), else the constant KEYPOINT_SCORE."""
    height, width = output_size
    scale = torch.tensor([width, height], dtype=keypoints.dtype, device=keypoints.device)
    xy = keypoints * scale + PIXEL_CENTER_OFFSET
    if keypoint_scores is None:
        scores = torch.full_like(xy[..., :1], KEYPOINT_SCORE)
    else:
        scores = keypoint_scores.to(xy.dtype)[..., None]
    return torch.cat([xy, scores], dim=-1)


def poses_to_instances(
    logits: Tensor, keypoints: Tensor, output_size: Tuple[int, int], topk: int,
    score_threshold: float = 0.0, keypoint_scores: Optional[Tensor] = None,
) -> Instances:
    """The ``topk`` highest-scoring poses of one image with score > ``score_threshold``.

    Keypoints are predicted relative to the unpadded network input, so scaling them by the
    output size is Detectron2's ``detector_postprocess`` rescaling (without its removal of empty
    boxes: a pose whose keypoints coincide is still a prediction); then they move to
    Detectron2's continuous frame (+ PIXEL_CENTER_OFFSET).

    Args:
        logits: (N,) person logits.
        keypoints: (N, K, 2) xy in [0, 1] relative to the unpadded input image.
        output_size: (height, width) of the image to report results in.
        topk: maximum number of poses kept.
        score_threshold: poses must score above it.
        keypoint_scores: (N, K) per-keypoint scores in [0, 1] (the confidence head's), or None
            for the constant KEYPOINT_SCORE.

    Returns:
        Instances of size output_size with n <= topk poses, by decreasing score:
        ``pred_keypoints`` (n, K, 3) x, y in pixels and the per-keypoint score; ``scores`` (n,)
        sigmoid of the logit; ``pred_classes`` (n,) int64 zeros (person); ``pred_boxes`` (n, 4)
        XYXY tight box around the keypoints.
    """
    height, width = output_size
    # float32 whatever the inference precision (see GroupPose.inference_dtype).
    scores, indices = logits.float().sigmoid().topk(min(topk, logits.shape[0]))
    keep = scores > score_threshold
    scores, indices = scores[keep], indices[keep]
    if keypoint_scores is not None:
        keypoint_scores = keypoint_scores[indices]
    pred_keypoints = keypoints_to_pixels(keypoints[indices].float(), output_size, keypoint_scores)
    return pose_instances(pred_keypoints, scores, (height, width))


def pose_instances(
    pred_keypoints: Tensor, scores: Tensor, image_size: Tuple[int, int]
) -> Instances:
    """Instances of an image of ``image_size`` with the poses ``pred_keypoints`` (n, K, 3)
    (pixels and keypoint score) and ``scores`` (n,): ``pred_classes`` zeros (person) and
    ``pred_boxes`` the tight XYXY boxes around the keypoints (see poses_to_instances)."""
    xy = pred_keypoints[..., :2]
    instances = Instances(image_size)
    instances.pred_keypoints = pred_keypoints
    instances.scores = scores
    instances.pred_classes = torch.zeros(len(scores), dtype=torch.int64, device=scores.device)
    instances.pred_boxes = Boxes(torch.cat([xy.amin(dim=1), xy.amax(dim=1)], dim=-1))
    return instances
