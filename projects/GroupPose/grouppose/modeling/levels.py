"""Multi-level feature maps flattened into one sequence: what every attention stack reads
(the encoder, the Group Pose decoder and the human detection decoder)."""

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from torch import Tensor


@dataclass
class FlattenedLevels:
    """Multi-level feature maps flattened level by level, row-major, with their geometry.

    S = sum over levels of H_l * W_l; L levels; B images; C channels.
    """

    features: Tensor  # (B, S, C)
    padding_mask: Tensor  # (B, S) bool, True on padding
    pos: Tensor  # (B, S, C) position encoding (without the level embedding)
    spatial_shapes: Tensor  # (L, 2) int64 (H_l, W_l)
    # The same as Python ints: loops over levels use these, so that they stay static under
    # torch.export (reading a tensor's values there is data-dependent).
    level_shapes: List[Tuple[int, int]]
    level_start_index: Tensor  # (L,) int64 offset of each level in S
    valid_ratios: Tensor  # (B, L, 2) unpadded fraction (w, h) of each level's map
    # What the deformable attentions zero values with: padding_mask, or None when no image of
    # the batch is padded (a mask of all False would only cost a pass over the values).
    value_mask: Optional[Tensor]


def valid_ratios(mask: Tensor) -> Tensor:
    """Unpadded fraction of a padded map: (B, H, W) bool mask (True on padding) -> (B, 2) (w, h).
    """
    _, H, W = mask.shape
    valid_h = (~mask[:, :, 0]).sum(1).float() / H
    valid_w = (~mask[:, 0, :]).sum(1).float() / W
    return torch.stack([valid_w, valid_h], dim=-1)


def flatten_levels(
    features: List[Tensor], masks: List[Tensor], pos: List[Tensor], padded: bool = True
) -> FlattenedLevels:
    """Flatten per-level maps into one sequence.

    Args:
        features: L tensors (B, C, H_l, W_l).
        masks: L tensors (B, H_l, W_l) bool, True on padding.
        pos: L tensors (B, C, H_l, W_l) position encodings.
        padded: whether any image of the batch is padded (known on the host from the image
            sizes; False means the masks are all False).
    """
    device = features[0].device
    level_shapes = [(feature.shape[-2], feature.shape[-1]) for feature in features]
    spatial_shapes = torch.tensor(level_shapes, dtype=torch.long, device=device)
    areas = spatial_shapes.prod(1)
    padding_mask = torch.cat([m.flatten(1) for m in masks], dim=1)
    return FlattenedLevels(
        features=torch.cat([f.flatten(2).transpose(1, 2) for f in features], dim=1),
        padding_mask=padding_mask,
        pos=torch.cat([p.flatten(2).transpose(1, 2) for p in pos], dim=1),
        spatial_shapes=spatial_shapes,
        level_shapes=level_shapes,
        level_start_index=torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]]),
        valid_ratios=torch.stack([valid_ratios(m) for m in masks], dim=1),
        value_mask=padding_mask if padded else None,
    )
