"""Deformable transformer encoder (Deformable DETR) over the flattened multi-level features."""

from typing import Sequence, Tuple

import torch
from detectron2.config import CfgNode
from torch import Tensor, nn

from grouppose.layers import MSDeformAttn
from grouppose.modeling.blocks import FeedForward, attention_layer_args, init_transformer_layers
from grouppose.modeling.levels import FlattenedLevels


def encoder_reference_points(
    level_shapes: Sequence[Tuple[int, int]], valid_ratios: Tensor
) -> Tensor:
    """Reference point of every flattened position for every level.

    Cell centers normalised by the unpadded size of their own level, then mapped to each level
    by its unpadded ratio (as the official Deformable DETR encoder does).

    Args:
        level_shapes: L (H, W); valid_ratios: (B, L, 2) (w, h).

    Returns:
        (B, S, L, 2) xy.
    """
    points = []
    for level, (height, width) in enumerate(level_shapes):
        device = valid_ratios.device
        # arange + 0.5, not linspace: the same values, and under torch.export with dynamic shapes
        # (the ONNX export) arange keeps the level size symbolic where linspace specialises it.
        ys = torch.arange(height, dtype=torch.float32, device=device) + 0.5
        xs = torch.arange(width, dtype=torch.float32, device=device) + 0.5
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        y = grid_y.reshape(1, -1) / (valid_ratios[:, None, level, 1] * height)
        x = grid_x.reshape(1, -1) / (valid_ratios[:, None, level, 0] * width)
        points.append(torch.stack((x, y), dim=-1))
    return torch.cat(points, dim=1)[:, :, None] * valid_ratios[:, None]


class DeformableEncoderLayer(nn.Module):
    """Post-norm layer: deformable self-attention -> add & norm -> FFN -> add & norm."""

    def __init__(
        self, *, dim: int, num_heads: int, ffn_dim: int, dropout: float, num_levels: int,
        num_points: int,
    ):
        super().__init__()
        self.self_attn = MSDeformAttn(
            dim=dim, num_heads=num_heads, num_levels=num_levels, num_points=num_points
        )
        self.dropout = nn.Dropout(dropout)
        self.self_attn_norm = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn_dim, dropout)

    def forward(
        self, src: Tensor, pos: Tensor, reference_points: Tensor, levels: FlattenedLevels
    ) -> Tensor:
        """
        Args:
            src: (B, S, C); pos: (B, S, C) position + level embedding;
            reference_points: (B, S, L, 2).

        Returns:
            (B, S, C).
        """
        update = self.self_attn(
            src + pos, reference_points, src, levels.spatial_shapes, levels.level_start_index,
            levels.value_mask,
        )
        # In place, as in FeedForward: no autograd formula needs the update.
        src = self.self_attn_norm(self.dropout(update).add_(src))
        return self.ffn(src)


class DeformableEncoder(nn.Module):
    """Stack of deformable encoder layers; adds a learned per-level embedding to positions."""

    def __init__(
        self, *, num_layers: int, dim: int, num_heads: int, ffn_dim: int, dropout: float,
        num_levels: int, num_points: int,
    ):
        super().__init__()
        self.level_embed = nn.Parameter(torch.empty(num_levels, dim))
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(
                dim=dim, num_heads=num_heads, ffn_dim=ffn_dim, dropout=dropout,
                num_levels=num_levels, num_points=num_points,
            )
            for _ in range(num_layers)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The layers as Deformable DETR initialises them, a standard normal level embedding."""
        init_transformer_layers(self.layers)
        nn.init.normal_(self.level_embed)

    def forward(self, levels: FlattenedLevels) -> Tensor:
        """Flattened multi-level features -> memory (B, S, C)."""
        level_embed = torch.cat([
            embed.expand(height * width, -1)
            for embed, (height, width) in zip(self.level_embed, levels.level_shapes)
        ])
        pos = levels.pos + level_embed
        reference_points = encoder_reference_points(levels.level_shapes, levels.valid_ratios)
        memory = levels.features
        for layer in self.layers:
            memory = layer(memory, pos, reference_points, levels)
        return memory


def build_encoder(cfg: CfgNode) -> DeformableEncoder:
    """The encoder of ``cfg.MODEL.GROUP_POSE``: ENC_LAYERS layers of ENC_N_POINTS points."""
    gp = cfg.MODEL.GROUP_POSE
    return DeformableEncoder(
        num_layers=gp.ENC_LAYERS, num_points=gp.ENC_N_POINTS, **attention_layer_args(cfg)
    )
