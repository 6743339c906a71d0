"""Human detection decoder (paper Table 5): box-query layers that initialise the persons of the
Group Pose decoder, as ED-Pose's human detection decoder does.

Each of the N selected persons starts as one box query: content = its selected memory feature,
box = its encoder proposal (the position's center, size 0.05 * 2**level). Every layer runs
self-attention over the N box queries, deformable cross-attention sampling around each box
(4-d references) and an FFN, then predicts a person logit and refines the box (offsets in
inverse-sigmoid space, references detached between layers). The last layer's box queries then
initialise the Group Pose decoder: their hidden states become the person features of the
instance and keypoint queries, and each person's initial pose is placed inside its detected box
(``pose_head``: each keypoint's relative position in the box; it starts at the box center and is
trained through the first Group Pose layer's losses).
"""

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import torch
from detectron2.config import CfgNode
from torch import Tensor, nn

from grouppose.layers import Linear
from grouppose.modeling.blocks import (
    MLP,
    DeformableDecoderLayer,
    attention_layer_args,
    init_transformer_layers,
    inverse_sigmoid,
    person_prior_logit,
)
from grouppose.modeling.detection_criterion import DetectionCriterion
from grouppose.modeling.levels import FlattenedLevels
from grouppose.modeling.position_encoding import point_position_encoding
from grouppose.modeling.query_selection import PROPOSAL_BASE_SIZE, encoder_proposals


def proposal_boxes(
    indices: Tensor, padding_mask: Tensor, level_shapes: Sequence[Tuple[int, int]]
) -> Tensor:
    """The encoder proposal box of each selected position.

    Args:
        indices: (B, N) int64 selected positions in the flattened memory.
        padding_mask: (B, S) bool, True on padding; level_shapes: L (H, W).

    Returns:
        (B, N, 4) boxes (cx, cy, w, h) in [0, 1] of the unpadded image.
    """
    center_logit, _ = encoder_proposals(padding_mask, level_shapes)
    centers = center_logit.gather(1, indices[..., None].expand(-1, -1, 2)).sigmoid()
    level_ends = torch.tensor(
        [h * w for h, w in level_shapes], device=indices.device
    ).cumsum(0)
    level = torch.bucketize(indices, level_ends, right=True)
    size = (PROPOSAL_BASE_SIZE * 2.0 ** level.float())[..., None].expand(-1, -1, 2)
    return torch.cat([centers, size], dim=-1)


def box_position_encoding(boxes: Tensor, dim: int) -> Tensor:
    """(..., 4) boxes (cx, cy, w, h) -> (..., 2 * dim) sine encodings of the center and of the
    size, dim / 2 features per coordinate."""
    return torch.cat([
        point_position_encoding(boxes[..., :2], dim // 2),
        point_position_encoding(boxes[..., 2:], dim // 2),
    ], dim=-1)


class HumanDetectionLayer(DeformableDecoderLayer):
    """Post-norm layer: self-attention over the box queries (position added to queries and
    keys), deformable cross-attention around each box, FFN; each followed by add & LayerNorm."""

    def __init__(
        self, *, dim: int, num_heads: int, ffn_dim: int, dropout: float, num_levels: int,
        num_points: int,
    ):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.self_attn_norm = nn.LayerNorm(dim)
        self.add_cross_attention_and_ffn(
            dim=dim, num_heads=num_heads, ffn_dim=ffn_dim, dropout=dropout, num_levels=num_levels,
            num_points=num_points,
        )

    def forward(
        self, content: Tensor, pos: Tensor, boxes: Tensor, memory: Tensor, levels: FlattenedLevels
    ) -> Tensor:
        """
        Args:
            content: (B, N, C); pos: (B, N, C) box position embeddings.
            boxes: (B, N, L, 4) per-level reference boxes (cx, cy, w, h) in the padded frame.
            memory: (B, S, C) encoder output; levels: its geometry and padding mask.

        Returns:
            (B, N, C).
        """
        query = content + pos
        update = self.self_attn(query, query, content, need_weights=False)[0]
        x = self.self_attn_norm(content + self.dropout(update))
        return self.cross_attention_and_ffn(x + pos, x, boxes, memory, levels)


@dataclass
class DetectionOutput:
    """Per detection layer l unless noted (B images, N persons, K keypoints, C channels)."""

    logits: List[Tensor] = field(default_factory=list)  # (B, N) person logits
    boxes: List[Tensor] = field(default_factory=list)  # (B, N, 4) (cx, cy, w, h) in [0, 1]
    hidden: Optional[Tensor] = None  # (B, N, C) last layer's box queries
    # (B, N, K, 2) initial poses for the Group Pose decoder, inside the last boxes (with the
    # gradient of the pose head and the box queries, not of the boxes)
    keypoints: Optional[Tensor] = None


class HumanDetectionDecoder(nn.Module):
    """Box-query layers with per-layer person / box heads, then the pose initialisation."""

    def __init__(
        self, *, num_layers: int, dim: int, num_heads: int, ffn_dim: int, dropout: float,
        num_levels: int, num_points: int, num_keypoints: int,
    ):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"MODEL.GROUP_POSE.DETECTION_DECODER_LAYERS must be >= 1 to build "
                             f"a detection decoder, got {num_layers}")
        self.num_keypoints = num_keypoints
        self.layers = nn.ModuleList(
            HumanDetectionLayer(
                dim=dim, num_heads=num_heads, ffn_dim=ffn_dim, dropout=dropout,
                num_levels=num_levels, num_points=num_points,
            )
            for _ in range(num_layers)
        )
        self.box_pos_head = MLP(2 * dim, dim, dim, 2)
        self.class_heads = nn.ModuleList(Linear(dim, 1) for _ in range(num_layers))
        self.box_heads = nn.ModuleList(MLP(dim, dim, 4, 3) for _ in range(num_layers))
        self.pose_head = MLP(dim, dim, 2 * num_keypoints, 3)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The layers as Deformable DETR initialises them, person-prior class biases, zero last
        layers of the box and pose heads (boxes start at the proposals, poses at the box
        centers)."""
        init_transformer_layers(self.layers)
        for head in self.class_heads:
            nn.init.constant_(head.bias, person_prior_logit())
        for head in [*self.box_heads, self.pose_head]:
            nn.init.zeros_(head.layers[-1].weight)
            nn.init.zeros_(head.layers[-1].bias)

    def forward(
        self, person_features: Tensor, boxes: Tensor, memory: Tensor, levels: FlattenedLevels
    ) -> DetectionOutput:
        """
        Args:
            person_features: (B, N, C) selected memory features (used detached).
            boxes: (B, N, 4) initial boxes (cx, cy, w, h) in [0, 1] (used detached).
            memory: (B, S, C) encoder output; levels: its geometry and padding mask.
        """
        dim = person_features.shape[-1]
        content, boxes = person_features.detach(), boxes.detach()
        output = DetectionOutput()
        # Boxes are relative to the unpadded image; the attention samples in the padded frame.
        scale = torch.cat([levels.valid_ratios, levels.valid_ratios], dim=-1)[:, None]
        for layer, class_head, box_head in zip(self.layers, self.class_heads, self.box_heads):
            pos = self.box_pos_head(box_position_encoding(boxes, dim))
            content = layer(content, pos, boxes[:, :, None] * scale, memory, levels)
            refined = (inverse_sigmoid(boxes) + box_head(content)).sigmoid()
            output.logits.append(class_head(content).squeeze(-1))
            output.boxes.append(refined)
            boxes = refined.detach()
        B, N, _ = content.shape
        relative = self.pose_head(content).view(B, N, self.num_keypoints, 2).sigmoid()
        corner = boxes[..., None, :2] - boxes[..., None, 2:] / 2
        output.hidden = content
        output.keypoints = corner + boxes[..., None, 2:] * relative
        return output


def build_detection_branch(
    cfg: CfgNode,
) -> Tuple[Optional[HumanDetectionDecoder], Optional[DetectionCriterion]]:
    """The human detection decoder of MODEL.GROUP_POSE.DETECTION_DECODER_LAYERS layers and its
    losses (paper Table 5), or (None, None) for 0 layers (the paper's model)."""
    gp = cfg.MODEL.GROUP_POSE
    num_layers = gp.DETECTION_DECODER_LAYERS
    if num_layers == 0:
        return None, None
    decoder = HumanDetectionDecoder(
        num_layers=num_layers, num_points=gp.DEC_N_POINTS, num_keypoints=gp.NUM_KEYPOINTS,
        **attention_layer_args(cfg),
    )
    criterion = DetectionCriterion(
        num_layers=num_layers, cost_class=gp.COST_CLASS, cost_box_l1=gp.COST_BOX_L1,
        cost_giou=gp.COST_GIOU, focal_alpha=gp.FOCAL_ALPHA, cls_weight=gp.CLS_WEIGHT,
        box_l1_weight=gp.BOX_L1_WEIGHT, giou_weight=gp.GIOU_WEIGHT,
    )
    return decoder, criterion
