"""Layers of Group Pose: multi-scale deformable attention (op, reference and module) and the
linear layer with a fused CPU inference path."""

from .linear import Linear
from .ms_deform_attn import MSDeformAttn, ms_deform_attn, ms_deform_attn_reference

__all__ = ["Linear", "MSDeformAttn", "ms_deform_attn", "ms_deform_attn_reference"]
