"""Backbone-side modules. Backbones come from Detectron2's BACKBONE_REGISTRY
(``MODEL.BACKBONE.NAME``): Detectron2's ResNets, and the Swin Transformers registered here
(``build_swin_backbone``); the other modules adapt backbone outputs to the transformer."""

from .frozen_batch_norm import AffineFrozenBatchNorm2d, use_affine_frozen_batch_norm
from .input_projection import InputProjection
from .swin import SwinTransformer, build_swin_backbone  # registers build_swin_backbone

__all__ = [
    "AffineFrozenBatchNorm2d", "InputProjection", "SwinTransformer", "build_swin_backbone",
    "use_affine_frozen_batch_norm",
]
