"""Losses of the human detection decoder (paper Table 5): focal person classification, box L1 and
GIoU, after a Hungarian matching of box queries to people, for every detection layer.

Loss names (unweighted): ``loss_det_cls_{l}``, ``loss_det_bbox_{l}``, ``loss_det_giou_{l}`` for
detection layer l. Target boxes are the annotated person boxes, or, for people without one, the
extent of their labeled keypoints.
"""

from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou, generalized_box_iou_loss

from grouppose.modeling.criterion import (
    focal_classification_loss,
    match_each,
    matched_queries,
    matched_targets,
    num_people_across_workers,
)
from grouppose.modeling.matcher import Matches, focal_class_cost, match_each_image

DETECTION_LOSS_NAMES = ("loss_det_cls", "loss_det_bbox", "loss_det_giou")


def person_boxes(
    keypoints: Tensor, image_size: Tuple[int, int], boxes_xyxy: Optional[Tensor] = None
) -> Tensor:
    """One image's target boxes.

    Args:
        keypoints: (n, K, 3) x, y pixels and v (0 = unlabeled) of the unpadded image.
        image_size: (H, W) of the unpadded image.
        boxes_xyxy: (n, 4) annotated boxes in pixels, or None to use the extent of each
            person's labeled keypoints (a person without any gets an empty box at 0).

    Returns:
        (n, 4) (cx, cy, w, h) / (W, H), clipped to the image.
    """
    height, width = image_size
    if boxes_xyxy is None:
        visible = keypoints[..., 2:] > 0
        xy = keypoints[..., :2]
        top_left = torch.where(visible, xy, xy.new_tensor(float("inf"))).amin(dim=1)
        bottom_right = torch.where(visible, xy, xy.new_tensor(float("-inf"))).amax(dim=1)
        boxes_xyxy = torch.cat([top_left, bottom_right], dim=-1)
        boxes_xyxy = torch.where(visible.any(dim=1), boxes_xyxy, boxes_xyxy.new_zeros(()))
    scale = boxes_xyxy.new_tensor([width, height, width, height])
    boxes = (boxes_xyxy.float() / scale).clamp(0, 1)
    return box_convert(boxes, "xyxy", "cxcywh")


class DetectionCriterion(nn.Module):
    """Matching and losses of every detection layer's (logits, boxes)."""

    def __init__(
        self, *, num_layers: int, cost_class: float, cost_box_l1: float, cost_giou: float,
        focal_alpha: float, cls_weight: float, box_l1_weight: float, giou_weight: float,
    ):
        """
        Args:
            num_layers: detection layers (one matching and one set of losses each).
            cost_class, cost_box_l1, cost_giou: matching cost weights (focal class cost, L1
                between (cx, cy, w, h) boxes, -GIoU; MODEL.GROUP_POSE.COST_CLASS, COST_BOX_L1,
                COST_GIOU).
            focal_alpha: alpha of the focal loss and cost (MODEL.GROUP_POSE.FOCAL_ALPHA).
            cls_weight, box_l1_weight, giou_weight: loss weights, in ``self.weight_dict``
                (MODEL.GROUP_POSE.CLS_WEIGHT, BOX_L1_WEIGHT, GIOU_WEIGHT).
        """
        super().__init__()
        self.cost_class, self.cost_box_l1, self.cost_giou = cost_class, cost_box_l1, cost_giou
        self.focal_alpha = focal_alpha
        weights = dict(zip(DETECTION_LOSS_NAMES, (cls_weight, box_l1_weight, giou_weight)))
        self.weight_dict = {
            f"{name}_{layer}": weight
            for layer in range(num_layers) for name, weight in weights.items()
        }

    def cost_matrix(self, logits: Tensor, boxes: Tensor, target_boxes: Tensor) -> Tensor:
        """Matching cost of one image: (N,) logits, (N, 4) boxes, (n, 4) target boxes, all
        (cx, cy, w, h) -> (N, n) cost."""
        giou = generalized_box_iou(
            box_convert(boxes, "cxcywh", "xyxy"), box_convert(target_boxes, "cxcywh", "xyxy")
        )
        return (self.cost_class * focal_class_cost(logits, self.focal_alpha)[:, None]
                + self.cost_box_l1 * torch.cdist(boxes, target_boxes, p=1)
                - self.cost_giou * giou)

    @torch.no_grad()
    def match(self, logits: Tensor, boxes: Tensor, targets: List[Dict[str, Tensor]]) -> Matches:
        """(B, N) logits, (B, N, 4) boxes, targets with ``boxes`` (n, 4) -> per image (query
        indices, target indices), int64 on the CPU, ordered by query index (see
        grouppose.modeling.matcher.match_each_image)."""
        return match_each_image(
            targets, "boxes",
            lambda image, target: self.cost_matrix(logits[image], boxes[image], target["boxes"]),
        )

    def forward(
        self, logits: List[Tensor], boxes: List[Tensor], targets: List[Dict[str, Tensor]]
    ) -> Dict[str, Tensor]:
        """
        Args:
            logits: per detection layer (B, N) person logits.
            boxes: per detection layer (B, N, 4) (cx, cy, w, h) in [0, 1].
            targets: B dicts with ``boxes`` (n, 4) (see person_boxes) and the pose targets'
                ``keypoints`` (n, K, 2) (counted for the normalisation).

        Returns:
            unweighted scalar losses by name (see the module docstring).
        """
        matches, diverged = match_each(
            [(f"detection layer {layer}", {"pred_logits": layer_logits, "pred_boxes": layer_boxes})
             for layer, (layer_logits, layer_boxes) in enumerate(zip(logits, boxes))],
            lambda predictions: self.match(
                predictions["pred_logits"], predictions["pred_boxes"], targets
            ),
        )
        num_people = num_people_across_workers(targets, logits[0].device, diverged)
        losses = {}
        for layer, (layer_logits, layer_boxes) in enumerate(zip(logits, boxes)):
            values = self.layer_losses(layer_logits, layer_boxes, targets,
                                       matches[f"detection layer {layer}"], num_people)
            losses.update({f"{name}_{layer}": value for name, value in values.items()})
        return losses

    def layer_losses(
        self, logits: Tensor, boxes: Tensor, targets: List[Dict[str, Tensor]],
        matches: Matches, num_people: float,
    ) -> Dict[str, Tensor]:
        """Unsuffixed losses of one layer given its matching."""
        batch_index, query_index = matched_queries(matches, logits.device)
        focal = focal_classification_loss(logits, batch_index, query_index, self.focal_alpha)
        pred = boxes[batch_index, query_index]
        target = matched_targets(targets, matches, "boxes", logits.device)
        giou = generalized_box_iou_loss(
            box_convert(pred, "cxcywh", "xyxy"), box_convert(target, "cxcywh", "xyxy"),
            reduction="sum",
        )
        return {
            "loss_det_cls": focal / num_people,
            "loss_det_bbox": (pred - target).abs().sum() / num_people,
            "loss_det_giou": giou / num_people,
        }
