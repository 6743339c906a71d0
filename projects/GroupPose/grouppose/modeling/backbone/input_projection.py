"""Backbone feature maps -> the transformer's multi-level inputs (Deformable DETR style)."""

from typing import Dict, List

from detectron2.config import CfgNode
from detectron2.layers import Conv2d, ShapeSpec
from torch import Tensor, nn

# GroupNorm groups of every projection, as in the official implementation.
GROUP_NORM_GROUPS = 32


def _conv_gn(in_channels: int, dim: int, kernel_size: int, stride: int) -> Conv2d:
    conv = Conv2d(
        in_channels, dim, kernel_size, stride=stride, padding=kernel_size // 2,
        norm=nn.GroupNorm(GROUP_NORM_GROUPS, dim),
    )
    nn.init.xavier_uniform_(conv.weight, gain=1)
    nn.init.zeros_(conv.bias)
    return conv


class InputProjection(nn.Module):
    """Projects each backbone level to ``dim`` channels and adds stride-2 extra levels.

    Backbone level i: 1x1 conv + GroupNorm(32, dim). Extra level j: 3x3 stride-2 conv (padding 1)
    + GroupNorm(32, dim), applied to the last backbone level's *raw* output (j = 0) or to the
    previous extra level (j > 0).
    """

    def __init__(self, *, in_channels: List[int], dim: int, num_levels: int):
        """
        Args:
            in_channels: channels of the backbone levels used, finest first.
            dim: transformer hidden size (a multiple of 32).
            num_levels: total number of levels, >= len(in_channels).
        """
        super().__init__()
        if num_levels < len(in_channels):
            raise ValueError(
                f"InputProjection: num_levels ({num_levels}, MODEL.GROUP_POSE.NUM_FEATURE_LEVELS) "
                f"must be >= the number of backbone levels ({len(in_channels)}, "
                f"MODEL.GROUP_POSE.IN_FEATURES): each is one level, the others are extra levels"
            )
        if dim % GROUP_NORM_GROUPS != 0:
            raise ValueError(
                f"InputProjection: dim ({dim}, MODEL.GROUP_POSE.HIDDEN_DIM) must be a multiple "
                f"of {GROUP_NORM_GROUPS}, the GroupNorm groups"
            )
        self.projections = nn.ModuleList(_conv_gn(c, dim, 1, 1) for c in in_channels)
        extra_in = [in_channels[-1]] + [dim] * (num_levels - len(in_channels) - 1)
        self.extra_levels = nn.ModuleList(
            _conv_gn(c, dim, 3, 2) for c in extra_in[: num_levels - len(in_channels)]
        )

    def forward(self, features: List[Tensor]) -> List[Tensor]:
        """Backbone levels [(B, C_i, H_i, W_i)] -> num_levels maps (B, dim, H_l, W_l)."""
        levels = [projection(x) for projection, x in zip(self.projections, features)]
        source = features[-1]
        for extra in self.extra_levels:
            source = extra(source)
            levels.append(source)
        return levels


def build_input_projection(cfg: CfgNode, input_shape: Dict[str, ShapeSpec]) -> InputProjection:
    """The projection of the backbone outputs MODEL.GROUP_POSE.IN_FEATURES (their shapes in
    ``input_shape``, the backbone's ``output_shape()``) to HIDDEN_DIM channels, in
    NUM_FEATURE_LEVELS levels; a ValueError names the IN_FEATURES the backbone lacks."""
    gp = cfg.MODEL.GROUP_POSE
    missing = [name for name in gp.IN_FEATURES if name not in input_shape]
    if missing:
        raise ValueError(f"MODEL.GROUP_POSE.IN_FEATURES {missing} are not backbone outputs "
                         f"({sorted(input_shape)})")
    return InputProjection(
        in_channels=[input_shape[name].channels for name in gp.IN_FEATURES],
        dim=gp.HIDDEN_DIM, num_levels=gp.NUM_FEATURE_LEVELS,
    )
