"""Sine position encodings: of feature-map cells (encoder) and of keypoint positions (decoder).

Both interleave sin/cos: feature ``2i`` is ``sin(c / T^(2i/F))`` and ``2i + 1`` is
``cos(c / T^(2i/F))`` for a coordinate ``c``, ``F`` features per axis and temperature ``T``;
the y features come before the x features.
"""

import math

import torch
from torch import Tensor

# Coordinates in [0, 1] are scaled to [0, 2*pi] before encoding.
_SCALE = 2 * math.pi
# Keeps the normalisation finite in columns / rows that are entirely padding.
_NORMALIZE_EPS = 1e-6
KEYPOINT_POS_TEMPERATURE = 10000.0


def _sine_features(coordinate: Tensor, num_feats: int, temperature: float) -> Tensor:
    """(...) -> (..., num_feats) interleaved sin/cos of ``coordinate`` at geometric frequencies."""
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=coordinate.device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_feats)
    angles = coordinate[..., None] / dim_t
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)


def feature_map_position_encoding(mask: Tensor, num_feats: int, temperature: float) -> Tensor:
    """Sine encoding of the cells of a padded feature map.

    Each cell's coordinate is its 1-based row (column) index among the unpadded cells divided by
    the number of unpadded rows (columns), times 2*pi; padded cells get 0.

    Args:
        mask: (B, H, W) bool, True on padding.
        num_feats: features per axis (hidden_dim / 2).
        temperature: frequency base.

    Returns:
        (B, 2 * num_feats, H, W): y features then x features.
    """
    not_mask = ~mask
    y = not_mask.cumsum(1, dtype=torch.float32)
    x = not_mask.cumsum(2, dtype=torch.float32)
    y = y / (y[:, -1:, :] + _NORMALIZE_EPS) * _SCALE
    x = x / (x[:, :, -1:] + _NORMALIZE_EPS) * _SCALE
    pos = torch.cat(
        (_sine_features(y, num_feats, temperature), _sine_features(x, num_feats, temperature)),
        dim=-1,
    )
    return pos.permute(0, 3, 1, 2)


def point_position_encoding(
    points: Tensor, num_feats: int, temperature: float = KEYPOINT_POS_TEMPERATURE
) -> Tensor:
    """Sine encoding of normalised points.

    Args:
        points: (..., 2) xy in [0, 1].
        num_feats: features per axis.

    Returns:
        (..., 2 * num_feats): y features then x features.
    """
    x = _sine_features(points[..., 0] * _SCALE, num_feats, temperature)
    y = _sine_features(points[..., 1] * _SCALE, num_feats, temperature)
    return torch.cat((y, x), dim=-1)
