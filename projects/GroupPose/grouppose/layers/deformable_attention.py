"""The multi-scale deformable attention module of Deformable DETR (``MSDeformAttn``): the
projections that predict sampling points and attention weights around the queries' reference
points, around the op ``grouppose.layers.ms_deform_attn``.

Shapes: B batch, Lq queries, C channels, S = sum_l H_l * W_l flattened positions of all levels,
M heads, L levels, P sampling points per head and level.
"""

import math
from typing import Optional

import torch
from torch import Tensor, nn

from grouppose.layers.linear import Linear
from grouppose.layers.ms_deform_attn_op import ms_deform_attn

__all__ = ["MSDeformAttn"]


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention (Deformable DETR) with its projections.

    Each query predicts, per head, level and point, a sampling offset and an attention weight
    (softmaxed over levels x points) from its own feature; the value is a projection of the
    flattened multi-level input.
    """

    def __init__(self, *, dim: int, num_heads: int, num_levels: int, num_points: int):
        """
        Args:
            dim: channels of the queries, the values and the output (C).
            num_heads: attention heads (M); each attends to dim / num_heads channels, so it
                must divide dim (for a Group Pose model the config check says so, in terms of
                its keys, before any layer is built).
            num_levels: feature levels sampled (L).
            num_points: sampling points per head and level (P).
        """
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.sampling_offsets = Linear(dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = Linear(dim, num_heads * num_levels * num_points)
        self.value_proj = Linear(dim, dim)
        self.output_proj = Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR initialisation: point k of head h starts k + 1 cells away from the
        reference in direction 2*pi*h / num_heads (on a square ring), with uniform attention."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.num_heads, dtype=torch.float32) * (2 * math.pi / self.num_heads)
        directions = torch.stack([angles.cos(), angles.sin()], dim=-1)  # (M, 2)
        directions = directions / directions.abs().max(dim=-1, keepdim=True).values
        distances = torch.arange(1, self.num_points + 1, dtype=torch.float32)
        offsets = directions[:, None, None, :] * distances[None, None, :, None]  # (M, 1, P, 2)
        offsets = offsets.expand(-1, self.num_levels, -1, -1)  # (M, L, P, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(offsets.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for projection in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(projection.weight)
            nn.init.zeros_(projection.bias)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        input_flatten: Tensor,
        input_spatial_shapes: Tensor,
        input_level_start_index: Tensor,
        input_padding_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """
        Args:
            query: (B, Lq, C) query features.
            reference_points: (B, Lq, L, 2) points (x, y) in [0, 1], offsets are in cells of
                each level; or (B, Lq, L, 4) boxes (cx, cy, w, h), offsets are in units of
                half the box size / num_points.
            input_flatten: (B, S, C) features of all levels, flattened level by level.
            input_spatial_shapes: (L, 2) int64 (H, W) of each level.
            input_level_start_index: (L,) int64 offset of each level in S.
            input_padding_mask: (B, S) bool, True on padding (its value is zeroed), or None.

        Returns:
            (B, Lq, C).
        """
        B, Lq, _ = query.shape
        S = input_flatten.shape[1]
        M, L, P = self.num_heads, self.num_levels, self.num_points
        if reference_points.dim() != 4 or tuple(reference_points.shape[:3]) != (B, Lq, L) or (
            reference_points.shape[3] not in (2, 4)
        ):
            raise ValueError(
                f"MSDeformAttn: reference_points must have shape (B, Lq, L, 2 or 4) = "
                f"({B}, {Lq}, {L}, 2 or 4), got {tuple(reference_points.shape)}"
            )
        if input_padding_mask is not None and tuple(input_padding_mask.shape) != (B, S):
            raise ValueError(
                f"MSDeformAttn: input_padding_mask must have shape (B, S) = ({B}, {S}), "
                f"got {tuple(input_padding_mask.shape)}"
            )

        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(B, S, M, self.dim // M)

        offsets = self.sampling_offsets(query).view(B, Lq, M, L, P, 2)
        weights = self.attention_weights(query).view(B, Lq, M, L * P).softmax(dim=-1)
        weights = weights.view(B, Lq, M, L, P)

        if reference_points.shape[-1] == 2:
            # reference + offset / (W, H) of its level, computed over rows of L * P * 2 values
            # (references and level sizes repeated per point): broadcasting pairs instead is
            # 5x slower on the CPU. Level sizes in float32: under bfloat16 autocast they would
            # round above 256.
            level_sizes_xy = input_spatial_shapes.flip(-1).to(torch.float32)  # (L, 2) = (W, H)
            locations = torch.addcdiv(
                reference_points.repeat(1, 1, 1, P).view(B, Lq, 1, L * P * 2),
                offsets.view(B, Lq, M, L * P * 2),
                level_sizes_xy.repeat(1, P).view(L * P * 2),
            ).view(B, Lq, M, L, P, 2)
        else:
            references = reference_points[:, :, None, :, None, :]  # (B, Lq, 1, L, 1, 4)
            locations = references[..., :2] + offsets / P * references[..., 2:] * 0.5
        output = ms_deform_attn(
            value, input_spatial_shapes, input_level_start_index, locations, weights
        )
        return self.output_proj(output)
