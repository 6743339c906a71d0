"""Group Pose decoder: group self-attentions, deformable cross-attention and per-layer heads.

Queries are laid out (B, N, K + 1, C): N persons ("groups"), each an instance query (index 0)
followed by K keypoint queries. Reference points are laid out the same way, (B, N, K + 1, 2):
the instance query's reference is the center (mean) of its person's K keypoints.
"""

from dataclasses import dataclass
from typing import List

import torch
from torch import Tensor, nn

from grouppose.blocks import MLP, FeedForward, inverse_sigmoid, person_prior_logit
from grouppose.encoder import FlattenedLevels
from grouppose.layers import MSDeformAttn
from grouppose.position_encoding import point_position_encoding


def with_instance_centers(keypoints: Tensor) -> Tensor:
    """(B, N, K, 2) keypoints -> (B, N, K + 1, 2) reference points, the person center first."""
    return torch.cat([keypoints.mean(dim=2, keepdim=True), keypoints], dim=2)


def add_keypoint_position(queries: Tensor, keypoint_pos: Tensor) -> Tensor:
    """(B, N, K + 1, C) queries + (B, N, K, C) positions on the keypoint queries only."""
    return torch.cat([queries[:, :, :1], queries[:, :, 1:] + keypoint_pos], dim=2)


class GroupPoseDecoderLayer(nn.Module):
    """One post-norm Group Pose decoder layer.

    1. within-instance self-attention: N attentions, each over one person's K + 1 queries;
    2. across-instance self-attention: K + 1 attentions, each over the N queries of one type
       (all instance queries, all "nose" keypoint queries, ...);
    3. deformable cross-attention into the encoder memory at each query's reference point;
    4. FFN. Each step is followed by add & LayerNorm.

    Keypoint queries carry a position (from their reference point); the instance queries do not.
    As in the official implementation the position is part of the keypoint queries' *content*:
    the layer's input already includes it (see GroupPoseDecoder), and it is added again before
    step 3, so it enters the attention values and the residuals.
    """

    def __init__(
        self, dim: int, num_heads: int, ffn_dim: int, dropout: float, num_levels: int,
        num_points: int,
    ):
        super().__init__()
        self.within_instance_attn = nn.MultiheadAttention(
            dim, num_heads, dropout=dropout, batch_first=True
        )
        self.within_instance_norm = nn.LayerNorm(dim)
        self.across_instance_attn = nn.MultiheadAttention(
            dim, num_heads, dropout=dropout, batch_first=True
        )
        self.across_instance_norm = nn.LayerNorm(dim)
        self.cross_attn = MSDeformAttn(dim, num_levels, num_heads, num_points)
        self.cross_attn_norm = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn_dim, dropout)
        self.dropout = nn.Dropout(dropout)

    def _self_attention(
        self, attn: nn.MultiheadAttention, norm: nn.LayerNorm, x: Tensor
    ) -> Tensor:
        """Post-norm self-attention over dim 1 of (batch, sequence, C)."""
        update = attn(x, x, x, need_weights=False)[0]
        return norm(x + self.dropout(update))

    def within_instance_attention(self, queries: Tensor) -> Tensor:
        """(B, N, K + 1, C): each person's K + 1 queries attend to each other."""
        B, N, G, C = queries.shape
        x = queries.reshape(B * N, G, C)
        x = self._self_attention(self.within_instance_attn, self.within_instance_norm, x)
        return x.view(B, N, G, C)

    def across_instance_attention(self, queries: Tensor) -> Tensor:
        """(B, N, K + 1, C): the N queries of each type (instance, keypoint k) attend to each
        other."""
        B, N, G, C = queries.shape
        x = queries.transpose(1, 2).reshape(B * G, N, C)
        x = self._self_attention(self.across_instance_attn, self.across_instance_norm, x)
        return x.view(B, G, N, C).transpose(1, 2)

    def forward(
        self, queries: Tensor, keypoint_pos: Tensor, reference_points: Tensor,
        memory: Tensor, levels: FlattenedLevels,
    ) -> Tensor:
        """
        Args:
            queries: (B, N, K + 1, C), instance query first, keypoint positions included.
            keypoint_pos: (B, N, K, C) positions of the keypoint queries.
            reference_points: (B, N, K + 1, L, 2) xy per level, in the padded frame.
            memory: (B, S, C) encoder output; levels: its geometry and padding mask.

        Returns:
            (B, N, K + 1, C).
        """
        B, N, G, C = queries.shape
        x = self.across_instance_attention(self.within_instance_attention(queries))
        x = add_keypoint_position(x, keypoint_pos).reshape(B, N * G, C)
        update = self.cross_attn(
            x, reference_points.flatten(1, 2), memory, levels.spatial_shapes,
            levels.level_start_index, levels.padding_mask,
        )
        x = self.cross_attn_norm(x + self.dropout(update))
        return self.ffn(x).view(B, N, G, C)


@dataclass
class DecoderOutput:
    """Per decoder layer l (0 .. L-1) unless noted."""

    # (B, N, K + 1, C) hidden states the heads of layer l read (instance query first). For
    # l < L - 1 the keypoint queries include layer l + 1's keypoint positions (see
    # GroupPoseDecoder).
    hidden: List[Tensor]
    reference_points: List[Tensor]  # L + 1 entries (B, N, K + 1, 2): [0] initial, [l+1] refined
    logits: List[Tensor]  # (B, N) person logit from the instance query
    keypoints: List[Tensor]  # (B, N, K, 2) predicted xy in [0, 1] of the unpadded image


class GroupPoseDecoder(nn.Module):
    """Decoder layers with per-layer class and keypoint heads and keypoint refinement.

    Layer l predicts keypoint offsets in inverse-sigmoid space from its keypoint queries and
    refines its (detached) reference keypoints with them; the refined keypoints are the next
    layer's references. Two details of the official implementation are reproduced:
    - layer l's *prediction* applies its offsets to the previous layer's refined keypoints
      before detaching, so layer l's loss also trains layer l - 1 (the values are the same);
    - the official adds layer l + 1's keypoint positions in place to layer l's output, after
      layer l's refinement but before layer l's heads read it: the prediction of every layer
      but the last is made from its output plus the next layer's keypoint positions.
    """

    def __init__(
        self, num_layers: int, dim: int, num_heads: int, ffn_dim: int, dropout: float,
        num_levels: int, num_points: int,
    ):
        super().__init__()
        self.layers = nn.ModuleList(
            GroupPoseDecoderLayer(dim, num_heads, ffn_dim, dropout, num_levels, num_points)
            for _ in range(num_layers)
        )
        # Position of a keypoint query: MLP of the sine encoding of its reference point.
        self.keypoint_pos_head = MLP(dim, dim, dim, 2)
        self.class_heads = nn.ModuleList(nn.Linear(dim, 1) for _ in range(num_layers))
        self.keypoint_heads = nn.ModuleList(MLP(dim, dim, 2, 3) for _ in range(num_layers))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier for the layers' and the position head's weights, Deformable DETR init for
        deformable attention, class bias at the person prior, zero initial keypoint offsets."""
        for p in self.layers.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for module in self.layers.modules():
            if isinstance(module, MSDeformAttn):
                module.reset_parameters()
        for layer in self.keypoint_pos_head.layers:
            nn.init.xavier_uniform_(layer.weight)
        for head in self.class_heads:
            nn.init.constant_(head.bias, person_prior_logit())
        for head in self.keypoint_heads:
            nn.init.zeros_(head.layers[-1].weight)
            nn.init.zeros_(head.layers[-1].bias)

    def keypoint_positions(self, references: Tensor) -> Tensor:
        """(B, N, K + 1, L, 2) per-level reference points -> (B, N, K, C) keypoint positions,
        from the level-0 points."""
        dim = self.keypoint_pos_head.layers[0].in_features
        return self.keypoint_pos_head(point_position_encoding(references[:, :, 1:, 0], dim // 2))

    def forward(
        self, queries: Tensor, keypoints: Tensor, memory: Tensor, levels: FlattenedLevels
    ) -> DecoderOutput:
        """
        Args:
            queries: (B, N, K + 1, C) initial query content, instance query first.
            keypoints: (B, N, K, 2) initial reference keypoints in [0, 1] (treated as constants).
            memory: (B, S, C) encoder output; levels: its geometry and padding mask.
        """
        keypoints = keypoints.detach()
        output = DecoderOutput([], [with_instance_centers(keypoints)], [], [])
        hidden = queries
        # The reference keypoints of the layer whose prediction is pending (with gradient).
        layer_references = keypoints
        for layer_index, layer in enumerate(self.layers):
            # (B, N, K + 1, L, 2): references are relative to the unpadded image.
            references = with_instance_centers(keypoints.detach())[:, :, :, None]
            references = references * levels.valid_ratios[:, None, None]
            keypoint_pos = self.keypoint_positions(references)
            hidden = add_keypoint_position(hidden, keypoint_pos)
            if layer_index > 0:
                self._predict(output, layer_index - 1, hidden, layer_references)
            layer_references = keypoints
            hidden = layer(hidden, keypoint_pos, references, memory, levels)
            offsets = self.keypoint_heads[layer_index](hidden[:, :, 1:])
            keypoints = (inverse_sigmoid(keypoints.detach()) + offsets).sigmoid()
            output.reference_points.append(with_instance_centers(keypoints))
        self._predict(output, len(self.layers) - 1, hidden, layer_references)
        return output

    def _predict(
        self, output: DecoderOutput, layer_index: int, hidden: Tensor, references: Tensor
    ) -> None:
        """Append layer ``layer_index``'s heads' predictions from ``hidden`` (B, N, K + 1, C) and
        its (B, N, K, 2) reference keypoints (with their gradient) to ``output``."""
        offsets = self.keypoint_heads[layer_index](hidden[:, :, 1:])
        output.hidden.append(hidden)
        output.logits.append(self.class_heads[layer_index](hidden[:, :, 0]).squeeze(-1))
        output.keypoints.append((inverse_sigmoid(references) + offsets).sigmoid())
