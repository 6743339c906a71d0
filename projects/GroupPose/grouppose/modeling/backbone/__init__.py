"""Backbone-side modules. Backbones come from Detectron2's BACKBONE_REGISTRY
(``MODEL.BACKBONE.NAME``): Detectron2's ResNets, and the Swin Transformers registered here
(``build_swin_backbone``); the other modules adapt backbone outputs to the transformer."""

from . import swin  # noqa: F401  (importing it registers build_swin_backbone)
from .frozen_batch_norm import use_affine_frozen_batch_norm
from .input_projection import InputProjection, build_input_projection

__all__ = ["InputProjection", "build_input_projection", "use_affine_frozen_batch_norm"]
