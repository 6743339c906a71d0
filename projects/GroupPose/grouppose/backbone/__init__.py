"""Backbone-side modules. Backbones themselves come from Detectron2's BACKBONE_REGISTRY
(``MODEL.BACKBONE.NAME``); modules here adapt their outputs to the transformer."""

from .frozen_batch_norm import AffineFrozenBatchNorm2d, use_affine_frozen_batch_norm
from .input_projection import InputProjection

__all__ = ["AffineFrozenBatchNorm2d", "InputProjection", "use_affine_frozen_batch_norm"]
